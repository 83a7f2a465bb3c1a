"""The streaming executor on the BundleBasedDirectRunner, driven by TestStream.

Parity: streamed features equal the batch executor's on the same events, and equal the
reference features on an entity-sampled slice of the reference data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from streaming.runner.testing import replay, with_labels
from streaming.io.datasets import iter_transactions, read_table, reference_dir
from streaming.io.events import Label, Transaction
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import StreamFeatures, time_ns, transaction_features

NAMES = DEFAULT_SPEC.names
T0 = datetime(2018, 4, 2, tzinfo=UTC)  # a Monday


def run_stream(batches: list[list], allowed_lateness_days: float = 1.0, keep_examples_days: float | None = None,
               spec=DEFAULT_SPEC) -> tuple[dict, list, list]:
    """Feed batches of events through StreamFeatures; return ({tx id: features}, dead letters, examples)."""
    out = replay(batches, StreamFeatures(spec, allowed_lateness_days, keep_examples_days))
    by_id: dict = {}
    for f in out["features"]:
        assert f.transaction.transaction_id not in by_id, f"{f.transaction.transaction_id} emitted twice"
        assert len(f.features) == len(spec.names)
        by_id[f.transaction.transaction_id] = dict(zip(spec.names, f.features))
    return by_id, out["dead_letter"], out.get("examples", [])


def frame_of(txs: list[Transaction], frauds: dict[str, int] | None = None) -> pd.DataFrame:
    frauds = frauds or {}
    return pd.DataFrame({
        "TRANSACTION_ID": [int(t.transaction_id) for t in txs],
        "TX_DATETIME": pd.to_datetime([t.event_time for t in txs]).tz_localize(None).astype("datetime64[ns]"),
        "CUSTOMER_ID": [int(t.customer_id) for t in txs],
        "TERMINAL_ID": [int(t.terminal_id) for t in txs],
        "TX_AMOUNT": [t.amount for t in txs],
        "TX_FRAUD": [frauds.get(t.transaction_id, 0) for t in txs],
    })


def assert_same_features(streamed: dict, batch: pd.DataFrame, ids=None, columns=NAMES) -> None:
    batch = batch.set_index(batch["TRANSACTION_ID"].astype(str))
    ids = list(batch.index) if ids is None else ids
    mismatches = []
    for tid in ids:
        got = streamed[tid]
        for name in columns:
            want = float(batch.at[tid, name])
            ok = np.isclose(got[name], want, rtol=1e-9, atol=0) if "AVG" in name else got[name] == want
            if not ok:
                mismatches.append((tid, name, got[name], want))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"


def synthetic(n: int = 400, seed: int = 1) -> tuple[list[Transaction], dict[str, int]]:
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, 60 * 86_400, n))
    txs = [Transaction(str(i), T0 + timedelta(seconds=int(s)), str(rng.integers(0, 8)), str(rng.integers(0, 5)),
                       float(rng.integers(1, 30_000)) / 100) for i, s in enumerate(offsets)]
    frauds = {t.transaction_id: int(rng.random() < 0.2) for t in txs}
    return txs, frauds


def batches_of(events: list, size: int = 50) -> list[list]:
    return [events[i:i + size] for i in range(0, len(events), size)]


@pytest.mark.integration
def test_streamed_features_equal_batch_on_synthetic_events():
    txs, frauds = synthetic()
    streamed, dead, _ = run_stream(batches_of(with_labels(txs, frauds)))
    assert dead == []
    assert len(streamed) == len(txs)
    assert_same_features(streamed, featurize_frame(frame_of(txs, frauds)))
    assert any(v["TERMINAL_ID_RISK_30DAY_WINDOW"] > 0 for v in streamed.values())  # labels did arrive


@pytest.mark.integration
def test_duplicates_change_no_count_and_are_dead_lettered():
    txs, frauds = synthetic(200, seed=3)
    events = with_labels(txs, frauds)
    # redeliver every 10th transaction right after the original, and once more a few batches later
    redelivered = []
    for i, e in enumerate(events):
        redelivered.append(e)
        if isinstance(e, Transaction) and int(e.transaction_id) % 10 == 0:
            redelivered.append(e)
    dups = sum(1 for e in txs if int(e.transaction_id) % 10 == 0)
    streamed, dead, _ = run_stream(batches_of(redelivered, 30))
    assert len(streamed) == len(txs)
    assert sorted(d.transaction_id for d in dead) == sorted(e.transaction_id for e in txs if int(e.transaction_id) % 10 == 0)
    assert len(dead) == dups
    assert all(d.stage == "features" and d.error.startswith("duplicate delivery: transaction_id") for d in dead)
    assert_same_features(streamed, featurize_frame(frame_of(txs, frauds)))


@pytest.mark.integration
def test_out_of_order_arrivals():
    c, m = "1", "9"
    times = [T0 + timedelta(hours=h) for h in (0, 1, 2, 3)]
    txs = [Transaction(str(i), t, c, m, 10.0 * (i + 1)) for i, t in enumerate(times)]
    # arrival order 0, 2, 1, 3: tx 1 arrives after tx 2 (later in event time)
    streamed, dead, _ = run_stream([[txs[0]], [txs[2]], [txs[1]], [txs[3]]])
    assert dead == []
    count = "CUSTOMER_ID_NB_TX_1DAY_WINDOW"
    avg = "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"
    # tx 2 was featurised before tx 1 arrived: it sees {0, 2}
    assert (streamed["2"][count], streamed["2"][avg]) == (2.0, 20.0)
    # the late tx 1 is featurised from its own event time: it sees {0, 1} but not the later tx 2
    assert (streamed["1"][count], streamed["1"][avg]) == (2.0, 15.0)
    # after that, everything is in state
    assert (streamed["3"][count], streamed["3"][avg]) == (4.0, 25.0)


@pytest.mark.integration
def test_label_arriving_before_its_transaction_still_counts():
    fraud = Transaction("1", T0, "1", "7", 5.0)
    later = Transaction("2", T0 + timedelta(days=7, hours=1), "2", "7", 5.0)
    label = Label("1", 1, T0, "1", "7", T0 + timedelta(days=1))
    streamed, dead, _ = run_stream([[label], [fraud], [later]])
    assert dead == []
    assert streamed["2"]["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1.0
    assert streamed["2"]["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0


@pytest.mark.integration
def test_events_later_than_allowed_lateness_are_dead_lettered():
    early = Transaction("1", T0, "1", "1", 5.0)
    later = Transaction("2", T0 + timedelta(days=3), "1", "1", 5.0)
    streamed, dead, _ = run_stream([[later], [early]], allowed_lateness_days=1.0)
    assert list(streamed) == ["2"]
    assert [d.transaction_id for d in dead] == ["1"] and "allowed lateness" in dead[0].error


def test_transaction_features_and_time_conversion():
    tx = Transaction("1", datetime(2018, 4, 7, 6, 59, 59, tzinfo=UTC), "c", "t", 3.5)  # Saturday
    assert transaction_features(tx) == {"TX_AMOUNT": 3.5, "TX_DURING_WEEKEND": 1.0, "TX_DURING_NIGHT": 1.0}
    assert time_ns(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005_000


@pytest.mark.integration
@pytest.mark.reference
def test_stream_matches_reference_on_entity_sample():
    folder = reference_dir()
    if not (folder / "features_2018-04_to_2018-08.parquet").exists():
        pytest.skip(f"reference data not found in {folder} (../shared/data/fraud-handbook is absent)")
    df = read_table(folder / "transactions.parquet")
    df = df[df["TX_DATETIME"] < pd.Timestamp("2018-05-21")]  # the first 50 days: full history for every key
    rng = np.random.default_rng(7)
    customers = rng.choice(df["CUSTOMER_ID"].unique(), 30, replace=False)
    terminals = rng.choice(df["TERMINAL_ID"].unique(), 30, replace=False)
    in_c, in_m = df["CUSTOMER_ID"].isin(customers), df["TERMINAL_ID"].isin(terminals)
    slice_ = df[in_c | in_m].reset_index(drop=True)
    txs = list(iter_transactions(slice_))
    frauds = dict(zip(slice_["TRANSACTION_ID"].astype(str), slice_["TX_FRAUD"]))
    streamed, dead, _ = run_stream(batches_of(with_labels(txs, frauds), 200))
    assert dead == [] and len(streamed) == len(slice_)

    # 1. streaming == batch on the same events, every feature of every row
    assert_same_features(streamed, featurize_frame(slice_))

    # 2. == the reference: customer features for the sampled customers, terminal features for the sampled terminals
    ref = pd.read_parquet(folder / "features_2018-04_to_2018-08.parquet")
    ref = ref[ref["TRANSACTION_ID"].isin(slice_["TRANSACTION_ID"])].reset_index(drop=True)
    same_second = slice_[slice_.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)]["TRANSACTION_ID"].astype(str)
    c_ids = [str(i) for i in slice_.loc[in_c[in_c | in_m].to_numpy(), "TRANSACTION_ID"] if str(i) not in set(same_second)]
    m_ids = [str(i) for i in slice_.loc[in_m[in_c | in_m].to_numpy(), "TRANSACTION_ID"]]
    assert len(c_ids) > 1000 and len(m_ids) > 500
    time_cols = [n for n in NAMES if n.startswith("TX_")]
    assert_same_features(streamed, ref, c_ids, time_cols + [n for n in NAMES if n.startswith("CUSTOMER_")])
    assert_same_features(streamed, ref, m_ids, [n for n in NAMES if n.startswith("TERMINAL_")])


@pytest.mark.integration
def test_labels_yield_examples_with_the_scored_features():
    txs, frauds = synthetic(300, seed=5)
    streamed, _, got = run_stream(batches_of(with_labels(txs, frauds)), keep_examples_days=8)
    assert sorted(e.transaction_id for e in got) == sorted(streamed)  # every label joined exactly once
    for e in got:
        assert e.features == tuple(streamed[e.transaction_id].values()) and e.label == frauds[e.transaction_id]


@pytest.mark.integration
def test_a_label_that_overtakes_its_transaction_still_yields_its_example():
    """Both topics backlogged: the labels reader can deliver a label before its transaction."""
    txs, frauds = synthetic(120, seed=6)
    events = with_labels(txs, frauds)
    early = {e.transaction_id: e for e in events if isinstance(e, Label) and int(e.transaction_id) % 3 == 0}
    reordered = []
    for e in events:  # every third label is delivered right before its transaction instead of days later
        if isinstance(e, Label) and e.transaction_id in early:
            continue
        if isinstance(e, Transaction) and e.transaction_id in early:
            reordered.append(early[e.transaction_id])
        reordered.append(e)
    batch = reordered
    streamed, dead, got = run_stream(batches_of(batch), keep_examples_days=8)
    assert dead == []
    assert sorted(e.transaction_id for e in got) == sorted(streamed)  # early labels joined too
    for e in got:
        assert e.features == tuple(streamed[e.transaction_id].values()) and e.label == frauds[e.transaction_id]
