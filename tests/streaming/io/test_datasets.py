"""Reading the reference layout and the project's own files into typed events."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from streaming.io.datasets import (
    DatasetError,
    iter_labels,
    iter_transactions,
    read_table,
    reference_dir,
    write_table,
)
from streaming.io.events import Label, Transaction


def small_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "TRANSACTION_ID": [1, 0, 2],
        "TX_DATETIME": pd.to_datetime(["2018-04-01 00:10:00", "2018-04-01 00:00:31", "2018-04-02 23:59:59"]),
        "CUSTOMER_ID": [7, 3, 7],
        "TERMINAL_ID": [100, 200, 100],
        "TX_AMOUNT": [10.5, 99.99, 0.0],
        "TX_FRAUD": [0, 1, 0],
        "TX_FRAUD_SCENARIO": [0, 2, 0],
    })


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_round_trip_sorts_by_time_and_keeps_types(tmp_path, suffix):
    path = write_table(small_frame(), tmp_path / f"tx{suffix}")
    df = read_table(path)
    assert list(df["TRANSACTION_ID"]) == [0, 1, 2]
    assert df["TX_DATETIME"].dtype == "datetime64[ns]"
    assert df["TX_AMOUNT"].tolist() == [99.99, 10.5, 0.0]
    assert df["TX_FRAUD"].dtype == "int64"


def test_rows_become_typed_events_with_string_ids_and_utc_times(tmp_path):
    df = read_table(write_table(small_frame(), tmp_path / "tx.parquet"))
    txs = list(iter_transactions(df))
    assert txs[0] == Transaction("0", datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC), "3", "200", 99.99)
    reported = df["TX_DATETIME"].to_numpy() + np.timedelta64(7, "D")
    labels = list(iter_labels(df, reported))
    assert labels[0] == Label("0", 1, txs[0].event_time, "3", "200", datetime(2018, 4, 8, 0, 0, 31, tzinfo=UTC))


def test_timezone_aware_input_is_converted_to_utc(tmp_path):
    df = small_frame()
    df["TX_DATETIME"] = df["TX_DATETIME"].dt.tz_localize("Europe/Brussels")
    out = read_table(write_table(df, tmp_path / "tz.parquet"))
    assert out["TX_DATETIME"].iloc[0] == pd.Timestamp("2018-03-31 22:00:31")


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"input file '.*nope.parquet' does not exist"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"expected a .parquet or .jsonl file, got '.csv'"):
        read_table(tmp_path / "x.csv")
    small_frame().drop(columns=["TX_AMOUNT", "TERMINAL_ID"]).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(DatasetError, match=r"missing column\(s\) TERMINAL_ID, TX_AMOUNT; expected TRANSACTION_ID"):
        read_table(tmp_path / "m.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="could not be read"):
        read_table(tmp_path / "junk.parquet")
    with pytest.raises(DatasetError, match="has no TX_FRAUD column"):
        next(iter_labels(small_frame().drop(columns=["TX_FRAUD"]), np.array([], dtype="datetime64[ns]")))


@pytest.mark.reference
def test_reference_transactions_load_into_events():
    path = reference_dir() / "transactions.parquet"
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (../shared/data/fraud-handbook is absent)")
    df = read_table(path)
    assert len(df) == 1_754_155
    assert int(df["TX_FRAUD"].sum()) == 14_681
    assert df["TRANSACTION_ID"].is_monotonic_increasing and df["TX_DATETIME"].is_monotonic_increasing
    first = next(iter_transactions(df))
    assert first.transaction_id == "0" and isinstance(first.customer_id, str)
    assert first.event_time == datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC)
