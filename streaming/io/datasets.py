"""Reading and writing transaction datasets.

Two layouts are accepted everywhere a command takes ``--input``:

* the reference layout of ``../shared/data/fraud-handbook/transactions.parquet``
  (``TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD,
  TX_FRAUD_SCENARIO``) — also what ``streamscore simulate`` writes;
* the same columns as JSON Lines (``.jsonl``), ``TX_DATETIME`` as RFC 3339.

``read_table`` returns a pandas DataFrame in the reference layout, sorted by event time
(ties by id), with ``TX_DATETIME`` as naive UTC ``datetime64[ns]``.
``iter_transactions`` / ``iter_labels`` turn it into the project's typed events
(ids become strings, times become timezone-aware UTC).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from streaming.io.events import Label, Transaction

REFERENCE_COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
REQUIRED_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")

#: Where the shared reference data lives relative to the repository root.
REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fraud-handbook"


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or not in an accepted layout."""


def reference_dir() -> Path:
    """The fraud-handbook folder (``STREAMSCORE_REFERENCE_DIR`` overrides the default)."""
    return Path(os.environ.get("STREAMSCORE_REFERENCE_DIR", REFERENCE_DIR))


def read_table(path: str | os.PathLike, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a transactions file (``.parquet`` or ``.jsonl``) into the reference layout."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"input file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path, columns=list(columns) if columns else None)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            raise DatasetError(f"input file {str(path)!r}: expected a .parquet or .jsonl file, got {suffix or 'no extension'!r}")
    except DatasetError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many types for a corrupt file
        raise DatasetError(f"input file {str(path)!r} could not be read: {exc}") from exc
    return _normalise(df, path)


def _normalise(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"input file {str(path)!r}: missing column(s) {', '.join(missing)}; expected {', '.join(REFERENCE_COLUMNS)}")
    out = pd.DataFrame(index=df.index)
    for col in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"):
        out[col] = df[col]
    ts = pd.to_datetime(df["TX_DATETIME"], utc=True)
    out["TX_DATETIME"] = ts.dt.tz_localize(None).astype("datetime64[ns]")
    out["TX_AMOUNT"] = df["TX_AMOUNT"].astype("float64")
    for col in ("TX_FRAUD", "TX_FRAUD_SCENARIO"):
        if col in df.columns:
            out[col] = df[col].astype("int64")
    out = out[[c for c in REFERENCE_COLUMNS if c in out.columns]]
    order = np.lexsort((out["TRANSACTION_ID"].to_numpy(), out["TX_DATETIME"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a reference-layout DataFrame as Parquet (zstd) or JSON Lines, by extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df.to_parquet(path, index=False, compression="zstd")
    elif suffix in (".jsonl", ".ndjson"):
        out = df.copy()
        out["TX_DATETIME"] = out["TX_DATETIME"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        out.to_json(path, orient="records", lines=True)
    else:
        raise DatasetError(f"output file {str(path)!r}: expected a .parquet or .jsonl extension, got {suffix or 'no extension'!r}")
    return path


def _utc_datetimes(values: np.ndarray) -> list:
    return list(pd.DatetimeIndex(values).tz_localize("UTC").to_pydatetime())


def iter_transactions(df: pd.DataFrame) -> Iterator[Transaction]:
    """The rows of a reference-layout frame as typed :class:`Transaction` events."""
    times = _utc_datetimes(df["TX_DATETIME"].to_numpy())
    for tid, t, cid, mid, amount in zip(
        df["TRANSACTION_ID"].to_numpy(), times, df["CUSTOMER_ID"].to_numpy(),
        df["TERMINAL_ID"].to_numpy(), df["TX_AMOUNT"].to_numpy(),
    ):
        yield Transaction(transaction_id=str(tid), event_time=t, customer_id=str(cid),
                          terminal_id=str(mid), amount=float(amount))


def iter_labels(df: pd.DataFrame, reported_at: np.ndarray) -> Iterator[Label]:
    """Labels for the rows of ``df`` (which must have ``TX_FRAUD``), reported at the given times."""
    if "TX_FRAUD" not in df.columns:
        raise DatasetError("the dataset has no TX_FRAUD column, so it has no labels to publish")
    times = _utc_datetimes(df["TX_DATETIME"].to_numpy())
    reported = _utc_datetimes(np.asarray(reported_at, dtype="datetime64[ns]"))
    for tid, t, cid, mid, y, r in zip(
        df["TRANSACTION_ID"].to_numpy(), times, df["CUSTOMER_ID"].to_numpy(),
        df["TERMINAL_ID"].to_numpy(), df["TX_FRAUD"].to_numpy(), reported,
    ):
        yield Label(transaction_id=str(tid), label=int(y), event_time=t, customer_id=str(cid),
                    terminal_id=str(mid), reported_at=r)
