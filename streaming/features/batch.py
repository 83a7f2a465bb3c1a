"""Batch executor of the feature definition: ``featurize_frame`` and the ``featurize`` Beam job.

Both run the same per-key functions of :mod:`streaming.features.windows` on each
customer's and each terminal's whole history. Beam elements are coarse (shards of whole
keys, blocks of rows) and the bulky intermediate columns go through scratch Arrow files
next to the output, as Beam's own file sinks do, so the job costs little more than the
numpy work itself (``python -m loadtest.bench_featurize``).

    streamscore featurize --input transactions.parquet --out features.parquet

Output: one row per input transaction, in the input's event-time order, with
``TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID[, TX_FRAUD]`` and the 15 features
under their reference names (float64, as in the reference file), then the spec's extra
features if it has any (``--spec extended``: the terminal fraud streak comes with the
terminal blocks; the derived ones are computed by
:func:`~streaming.features.windows.derived_features` when the blocks are assembled). The
Parquet file's metadata records ``streamscore.feature_spec_hash`` and ``streamscore.feature_spec``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from streaming.io.datasets import DatasetError, read_table
from streaming.features.spec import DEFAULT_SPEC, SPECS, FeatureSpec
from streaming.features.windows import (
    MAX_ABS_AMOUNT,
    customer_features,
    derived_features,
    terminal_features,
    time_features,
)

KEY_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID")
REQUIRED_COLUMNS = KEY_COLUMNS + ("TX_AMOUNT",)
#: About this many rows per Beam element (blocks of rows; shards of whole keys).
SHARD_ROWS = 1 << 16
POSITION = "__position__"

# ---------------------------------------------------------------------------------------
# shared building blocks (pure; used by featurize_frame and by the Beam DoFns)
# ---------------------------------------------------------------------------------------


class KeyShard(NamedTuple):
    """The rows of some whole keys (customers or terminals), sorted by key, time, then id.

    ``offsets`` (length keys + 1) delimit the keys; ``positions`` are row numbers in the
    source frame; ``values`` are amounts (customers) or 0/1 frauds (terminals).
    """

    positions: np.ndarray
    times: np.ndarray
    values: np.ndarray
    offsets: np.ndarray


#: Some columns of some rows: (positions int64[n], {column name: array[n]}).
Block = tuple


def validate_frame(df: pd.DataFrame) -> None:
    """Raise :class:`DatasetError` unless ``df`` has the columns and unique ids featurizing needs."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"cannot featurize: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}")
    absent = [c for c in KEY_COLUMNS if df[c].isna().any()]
    if absent:
        raise DatasetError(f"cannot featurize: column(s) {', '.join(absent)} have missing values")
    ids = df["TRANSACTION_ID"]
    if not ids.is_unique:
        dup = ids[ids.duplicated()].iloc[:3].tolist()
        raise DatasetError(f"cannot featurize: TRANSACTION_ID must be unique, "
                           f"found {int(ids.duplicated().sum())} repeats (e.g. {dup})")
    amounts = df["TX_AMOUNT"].to_numpy(dtype=np.float64)
    if not np.all(np.abs(amounts) <= MAX_ABS_AMOUNT):
        bad = int((~(np.abs(amounts) <= MAX_ABS_AMOUNT)).sum())
        raise DatasetError(f"cannot featurize: TX_AMOUNT must be finite numbers with |amount| <= "
                           f"{MAX_ABS_AMOUNT:g}, found {bad} that are not")
    if "TX_FRAUD" in df.columns and not df["TX_FRAUD"].isin((0, 1)).all():
        raise DatasetError("cannot featurize: TX_FRAUD must be 0 or 1")


def _times_ns(df: pd.DataFrame) -> np.ndarray:
    return df["TX_DATETIME"].to_numpy(dtype="datetime64[ns]").view(np.int64)


def _is_time_ordered(times: np.ndarray, ids: np.ndarray) -> bool:
    """True when rows are sorted by time, then id (the order :func:`read_table` returns)."""
    dt = np.diff(times)
    if np.any(dt < 0):
        return False
    ties = np.flatnonzero(dt == 0)
    try:
        return bool(np.all(ids[ties + 1] > ids[ties]))
    except TypeError:  # ids of mixed types: no order to rely on
        return False


def key_shards(df: pd.DataFrame, key: str, value: str, rows_per_shard: int = SHARD_ROWS) -> Iterator[KeyShard]:
    """Split a frame by ``df[key]`` into shards of about ``rows_per_shard`` rows (keys never split).

    ``values`` come from column ``value``, or are zeros when ``df`` has no such column
    (no TX_FRAUD means no fraud is known).
    """
    n = len(df)
    if n == 0:
        return
    codes, _ = pd.factorize(df[key], sort=True)
    times = _times_ns(df)
    ids = df["TRANSACTION_ID"].to_numpy()
    if _is_time_ordered(times, ids):  # read_table's order: a stable sort by key is enough
        small = codes.astype(np.int16 if codes.max() < np.iinfo(np.int16).max else np.int32)
        order = np.argsort(small, kind="stable")
    else:
        order = np.lexsort((ids, times, codes))
    values = df[value].to_numpy() if value in df.columns else np.zeros(n, dtype=np.int64)
    sorted_codes = codes[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1, [n]))
    # cut at the first key start at or after each multiple of rows_per_shard
    cuts = np.unique(starts[np.searchsorted(starts, np.arange(0, n, max(1, rows_per_shard)))])
    cuts = np.append(cuts[cuts < n], n)
    times_sorted, values_sorted = times[order], values[order]
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        inner = starts[(starts >= a) & (starts <= b)]
        yield KeyShard(order[a:b], times_sorted[a:b], values_sorted[a:b], inner - a)


def _shard_block(shard: KeyShard, per_key, names: tuple[str, ...], spec: FeatureSpec) -> Block:
    n = len(shard.positions)
    columns = {name: np.empty(n, dtype=np.float64) for name in names}
    offsets = shard.offsets.tolist()
    for a, b in zip(offsets[:-1], offsets[1:]):
        for name, values in per_key(shard.times[a:b], shard.values[a:b], spec).items():
            columns[name][a:b] = values
    return shard.positions, columns


def customer_block(shard: KeyShard, spec: FeatureSpec) -> Block:
    """The customer features of a shard of customers (each customer's history at once)."""
    return _shard_block(shard, customer_features, spec.customer_names, spec)


def terminal_block(shard: KeyShard, spec: FeatureSpec) -> Block:
    """The terminal features of a shard of terminals (each terminal's history at once)."""
    return _shard_block(shard, terminal_features, spec.terminal_names + spec.terminal_extra_names, spec)


def row_block(df: pd.DataFrame, start: int, stop: int) -> Block:
    """Identity columns, TX_AMOUNT and the time features of rows ``start:stop``."""
    part = df.iloc[start:stop]
    columns = {c: part[c].to_numpy() for c in KEY_COLUMNS}
    if "TX_FRAUD" in part.columns:
        columns["TX_FRAUD"] = part["TX_FRAUD"].to_numpy()
    columns["TX_AMOUNT"] = part["TX_AMOUNT"].to_numpy(dtype=np.float64)
    columns.update(time_features(_times_ns(part)))
    return np.arange(start, stop, dtype=np.int64), columns


def output_columns(has_fraud: bool, spec: FeatureSpec) -> tuple[str, ...]:
    """Column order of a features table."""
    return KEY_COLUMNS + (("TX_FRAUD",) if has_fraud else ()) + spec.names


def assemble(blocks, n_rows: int, spec: FeatureSpec) -> pd.DataFrame:
    """Scatter blocks (each covering some rows and some columns) into one frame of ``n_rows`` rows.

    The blocks hold the per-row, customer and terminal features; the spec's derived features
    are computed here, once every row has all of those values.
    """
    features = np.empty((len(spec.names), n_rows), dtype=np.float64)  # one C block: no pandas copy
    row_of = {name: i for i, name in enumerate(spec.names)}
    seen: set[str] = set()
    others: dict[str, np.ndarray] = {}
    for positions, columns in blocks:
        for name, values in columns.items():
            if name in row_of:
                features[row_of[name], positions] = values
            else:
                if name not in others:
                    others[name] = np.empty(n_rows, dtype=values.dtype)
                others[name][positions] = values
            seen.add(name)
    missing = [c for c in output_columns(False, spec) if c not in seen and c not in spec.derived_names]
    if n_rows and missing or any(c not in seen for c in KEY_COLUMNS):
        raise RuntimeError(f"feature blocks are missing column(s) {missing}")
    computed = {name: features[row_of[name]] for name in spec.names if name not in spec.derived_names}
    for name, values in derived_features(computed, spec).items():
        features[row_of[name]] = values
    parts = [pd.DataFrame({c: others[c]}, copy=False) for c in output_columns("TX_FRAUD" in others, spec) if c in others]
    parts.append(pd.DataFrame(features.T, columns=list(spec.names), copy=False))
    return pd.concat(parts, axis=1)


def featurize_frame(df: pd.DataFrame, spec: FeatureSpec = DEFAULT_SPEC) -> pd.DataFrame:
    """The features of every transaction of ``df`` (reference layout), one row each, in ``df``'s row order.

    Does not modify ``df``. Without a ``TX_FRAUD`` column no fraud is known, so terminal risks are 0.
    """
    validate_frame(df)
    df = df.reset_index(drop=True)
    blocks: list[Block] = [row_block(df, 0, len(df))]
    blocks += [customer_block(s, spec) for s in key_shards(df, "CUSTOMER_ID", "TX_AMOUNT", len(df))]
    blocks += [terminal_block(s, spec) for s in key_shards(df, "TERMINAL_ID", "TX_FRAUD", len(df))]
    out = assemble(blocks, len(df), spec)
    out.attrs["feature_spec_hash"] = spec.spec_hash
    return out


def write_features(frame: pd.DataFrame, path: str | Path, spec: FeatureSpec) -> Path:
    """Write a features frame as Parquet (zstd) with the spec and its hash in the file metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[b"streamscore.feature_spec_hash"] = spec.spec_hash.encode()
    metadata[b"streamscore.feature_spec"] = json.dumps(spec.to_dict(), sort_keys=True).encode()
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table.replace_schema_metadata(metadata), partial, compression="zstd")
    os.replace(partial, path)  # readers never see a half-written file
    return path


def spill_block(block: Block, path: Path) -> Path:
    """Write a block as an uncompressed Arrow IPC file (cheap to write and to memory-map back)."""
    positions, columns = block
    table = pa.table({POSITION: positions, **columns})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def load_block(path: str | Path) -> Block:
    """Read back a block written by :func:`spill_block`."""
    with pa.OSFile(str(path), "rb") as source:
        table = pa.ipc.open_file(source).read_all()
    columns = {name: _to_numpy(table.column(name)) for name in table.column_names}
    return columns.pop(POSITION), columns


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        return column.to_numpy().astype("datetime64[ns]")
    return column.to_numpy()


# ---------------------------------------------------------------------------------------
# the Beam job
# ---------------------------------------------------------------------------------------


class ReadTableFn(beam.DoFn):
    """Input path -> one element: the transactions frame (it stays inside one fused stage)."""

    def process(self, path: str):
        df = read_table(path)
        validate_frame(df)
        yield df


class SplitByKeyFn(beam.DoFn):
    """Frame -> :class:`KeyShard` elements, each holding the whole history of some values of ``key``."""

    def __init__(self, key: str, value: str, rows_per_shard: int = SHARD_ROWS):
        self.key, self.value, self.rows_per_shard = key, value, rows_per_shard

    def process(self, df: pd.DataFrame):
        yield from key_shards(df, self.key, self.value, self.rows_per_shard)


class RowBlocksFn(beam.DoFn):
    """Frame -> blocks of identity columns, TX_AMOUNT and time features."""

    def __init__(self, rows_per_block: int = SHARD_ROWS):
        self.rows_per_block = rows_per_block

    def process(self, df: pd.DataFrame):
        for start in range(0, max(len(df), 1), self.rows_per_block):  # an empty frame: one empty block
            yield row_block(df, start, min(start + self.rows_per_block, len(df)))


class CustomerFeaturesFn(beam.DoFn):
    """Shard of customers -> block of their customer features."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec

    def process(self, shard: KeyShard):
        yield customer_block(shard, self.spec)


class TerminalFeaturesFn(beam.DoFn):
    """Shard of terminals -> block of their terminal features."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec

    def process(self, shard: KeyShard):
        yield terminal_block(shard, self.spec)


class SpillBlockFn(beam.DoFn):
    """Block -> path of an Arrow IPC file holding it, under ``spill_dir``.

    Like Beam's file sinks (temporary shards, then one finalize step), so the bulk of the
    data goes through files rather than through the runner's data plane.
    """

    def __init__(self, spill_dir: str, kind: str):
        self.spill_dir, self.kind = spill_dir, kind

    def process(self, block: Block):
        positions, columns = block
        path = Path(self.spill_dir) / f"{self.kind}-{int(positions[0]) if len(positions) else 0:012d}.arrow"
        yield str(spill_block(block, path))


class WriteFeaturesFn(beam.DoFn):
    """Paths of all spilled blocks -> the features Parquet file (yields its path)."""

    def __init__(self, out: str, spec: FeatureSpec):
        self.out, self.spec = out, spec

    def process(self, paths: list[str]):
        blocks = [load_block(p) for p in sorted(paths)]
        n_rows = sum(len(pos) for pos, cols in blocks if "TRANSACTION_ID" in cols)
        yield str(write_features(assemble(blocks, n_rows, self.spec), self.out, self.spec))


class ReadTransactions(beam.PTransform):
    """Pipeline -> one element: the transactions frame read from ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pbegin):
        return pbegin | "CreatePath" >> beam.Create([self.path]) | ReadTableFn.__name__ >> beam.ParDo(ReadTableFn())


class ComputeFeatures(beam.PTransform):
    """Frame -> paths of spilled blocks covering every row: per-row, customer and terminal features."""

    def __init__(self, spec: FeatureSpec, spill_dir: str, shard_rows: int = SHARD_ROWS):
        super().__init__()
        self.spec, self.spill_dir, self.shard_rows = spec, spill_dir, shard_rows

    def expand(self, frames):
        rows = (frames
                | RowBlocksFn.__name__ >> beam.ParDo(RowBlocksFn(self.shard_rows))
                | "SpillBlockFn(rows)" >> beam.ParDo(SpillBlockFn(self.spill_dir, "rows")))
        customers = (frames
                     | "SplitByKeyFn(CUSTOMER_ID)" >> beam.ParDo(SplitByKeyFn("CUSTOMER_ID", "TX_AMOUNT", self.shard_rows))
                     | CustomerFeaturesFn.__name__ >> beam.ParDo(CustomerFeaturesFn(self.spec))
                     | "SpillBlockFn(customer)" >> beam.ParDo(SpillBlockFn(self.spill_dir, "customer")))
        terminals = (frames
                     | "SplitByKeyFn(TERMINAL_ID)" >> beam.ParDo(SplitByKeyFn("TERMINAL_ID", "TX_FRAUD", self.shard_rows))
                     | TerminalFeaturesFn.__name__ >> beam.ParDo(TerminalFeaturesFn(self.spec))
                     | "SpillBlockFn(terminal)" >> beam.ParDo(SpillBlockFn(self.spill_dir, "terminal")))
        return (rows, customers, terminals) | "FlattenPaths" >> beam.Flatten()


class WriteFeatures(beam.PTransform):
    """Paths of spilled blocks -> the Parquet file at ``out``, assembled on one worker."""

    def __init__(self, out: str, spec: FeatureSpec):
        super().__init__()
        self.out, self.spec = out, spec

    def expand(self, paths):
        return (paths
                | "GatherPaths" >> beam.combiners.ToList()
                | WriteFeaturesFn.__name__ >> beam.ParDo(WriteFeaturesFn(self.out, self.spec)))


class Featurize(beam.PTransform):
    """Pipeline -> features Parquet file at ``out`` for the transactions file at ``path``.

    ``spill_dir`` is an existing scratch directory for intermediate blocks, visible to every
    worker (any local path with the in-process FnApiRunner); the caller removes it.
    """

    def __init__(self, path: str, out: str, spill_dir: str, spec: FeatureSpec = DEFAULT_SPEC,
                 shard_rows: int = SHARD_ROWS):
        super().__init__()
        self.path, self.out, self.spill_dir, self.spec, self.shard_rows = path, out, spill_dir, spec, shard_rows

    def expand(self, pbegin):
        return (pbegin
                | ReadTransactions.__name__ >> ReadTransactions(self.path)
                | ComputeFeatures.__name__ >> ComputeFeatures(self.spec, self.spill_dir, self.shard_rows)
                | WriteFeatures.__name__ >> WriteFeatures(self.out, self.spec))


def _windows_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole days like 1,7,30, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamscore featurize",
        description="Compute the reference features of every transaction in a file (batch, Apache Beam).")
    parser.add_argument("--input", required=True, help="transactions file (.parquet or .jsonl, reference layout)")
    parser.add_argument("--out", required=True, help="features Parquet file to write")
    parser.add_argument("--spec", choices=sorted(SPECS), default="default",
                        help="feature set: default (the 15 reference features) or extended "
                             "(plus the terminal fraud streak and the amount ratios); --windows/--delay-days still apply")
    parser.add_argument("--windows", type=_windows_arg, default=None,
                        help="customer and terminal window lengths in days (default 1,7,30)")
    parser.add_argument("--delay-days", type=int, default=DEFAULT_SPEC.delay_days,
                        help="terminal label delay in days (default %(default)s)")
    parser.add_argument("--shard-rows", type=_positive, default=SHARD_ROWS,
                        help="about this many rows per Beam element (default %(default)s)")
    return parser


def run(argv: list[str] | None = None) -> Path:
    """Run the featurize job; returns the written path. Unknown flags go to Beam's PipelineOptions.

    Raises :class:`DatasetError` (one-line message) on unusable input; argument errors exit(2).
    """
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        spec = FeatureSpec(args.windows or DEFAULT_SPEC.customer_windows,
                           args.windows or DEFAULT_SPEC.terminal_windows, args.delay_days, SPECS[args.spec].extra)
    except ValueError as exc:
        parser.error(str(exc))
    if Path(args.out).suffix.lower() != ".parquet":
        parser.error(f"--out must name a .parquet file, got {args.out!r}")
    _check_input(args.input)
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if runner is None:  # never the DirectRunner default: it would try to download Prism
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        runner = FnApiRunner()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spill_dir = tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            _ = pipeline | Featurize.__name__ >> Featurize(args.input, args.out, spill_dir, spec, args.shard_rows)
    except DatasetError as exc:  # Beam appends the step name and traceback; keep the first line
        raise DatasetError(str(exc).splitlines()[0]) from None
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    logging.getLogger(__name__).info("wrote %s (feature spec %s)", args.out, spec.spec_hash[:12])
    return Path(args.out)


def _check_input(path: str) -> None:
    """Fail fast, before Beam starts, on a missing input or a Parquet file of the wrong layout."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"input file {path!r} does not exist")
    if p.suffix.lower() != ".parquet":
        return  # JSON Lines: read_table validates it inside the job
    try:
        names = set(pq.read_schema(p).names)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetError(f"input file {path!r} could not be read: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DatasetError(f"input file {path!r}: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}")


def main(argv: list[str] | None = None) -> int:
    """CLI wrapper: input problems become a one-line ``error:`` message and exit status 1."""
    started = time.monotonic()
    try:
        path = run(argv)
    except DatasetError as exc:
        raise SystemExit(f"streamscore featurize: error: {exc}") from None
    meta = pq.read_metadata(path)
    print(f"wrote {meta.num_rows:,} rows x {meta.num_columns} columns to {path}"
          f" in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
