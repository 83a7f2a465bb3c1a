"""The ``featurize`` Beam batch job: :mod:`streaming.features.batch`'s blocks as a pipeline.

Beam elements are coarse (shards of whole keys, blocks of rows) and the bulky intermediate
columns go through scratch Arrow files next to the output, as Beam's own file sinks do, so the
job costs little more than the numpy work itself (``python -m loadtest.bench_featurize``).

    streamscore featurize --input transactions.parquet --out features.parquet
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pandas as pd
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from streaming.features.batch import (
    REQUIRED_COLUMNS,
    SHARD_ROWS,
    Block,
    KeyShard,
    assemble,
    customer_block,
    key_shards,
    load_block,
    row_block,
    spill_block,
    terminal_block,
    validate_frame,
    write_features,
)
from streaming.features.spec import DEFAULT_SPEC, SPECS, FeatureSpec
from streaming.io.datasets import DatasetError, read_table


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
