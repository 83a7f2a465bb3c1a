"""Batch executor of the feature definition: ``featurize_frame`` and the blocks the ``featurize`` Beam
job (:mod:`streaming.features.featurize`) is made of.

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

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from streaming.io.datasets import DatasetError
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec
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
