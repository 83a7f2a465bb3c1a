"""The streaming executor on the BundleBasedDirectRunner, driven by TestStream.

Parity: streamed features equal the batch executor's on the same events, and equal the
reference features on an entity-sampled slice of the reference data.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from streaming.beam_testing import Collect
from streaming.datasets import iter_transactions, read_table, reference_dir
from streaming.events import Label, Transaction
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import StreamFeatures, time_ns, transaction_features

NAMES = DEFAULT_SPEC.names
T0 = datetime(2018, 4, 2, tzinfo=UTC)  # a Monday


def run_stream(batches: list[list], allowed_lateness_days: float = 1.0) -> tuple[dict, list]:
    """Feed batches of events through StreamFeatures; return ({tx id: features}, dead letters)."""
    stream, watermark = TestStream(), -math.inf
    for batch in batches:
        stream = stream.add_elements([TimestampedValue(e, event_seconds(e)) for e in batch])
        latest = math.floor(max(event_seconds(e) for e in batch) * 1000) / 1000
        if latest > watermark:  # out-of-order batches leave the watermark where it is
            stream, watermark = stream.advance_watermark_to(latest), latest
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    features, dead = Collect("CollectFeatures"), Collect("CollectDeadLetters")
    with beam.Pipeline(options=options) as p:
        out = p | stream | StreamFeatures(allowed_lateness_days=allowed_lateness_days)
        out["features"] | features
        out["dead_letter"] | dead
    by_id: dict = {}
    for f in features.results():
        assert f.transaction.transaction_id not in by_id, f"{f.transaction.transaction_id} emitted twice"
        by_id[f.transaction.transaction_id] = dict(zip(NAMES, f.features))
    return by_id, dead.results()


def event_seconds(event) -> float:
    """Event timestamp of a TestStream element: a label counts at its report time."""
    when = event.reported_at if isinstance(event, Label) else event.event_time
    return when.timestamp()


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


def with_labels(txs: list[Transaction], frauds: dict[str, int], seed: int = 2) -> list:
    """One time-ordered stream: each transaction, and its label 1–7 days (fraud) or 7 days (genuine) later."""
    rng = np.random.default_rng(seed)
    timeline = [(t.event_time, 0, t) for t in txs]
    for t in txs:
        y = frauds[t.transaction_id]
        delay = timedelta(seconds=float(rng.uniform(86_400, 7 * 86_400))) if y else timedelta(days=7)
        label = Label(t.transaction_id, y, t.event_time, t.customer_id, t.terminal_id, t.event_time + delay)
        timeline.append((label.reported_at, 1, label))
    timeline.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in timeline]


def batches_of(events: list, size: int = 50) -> list[list]:
    return [events[i:i + size] for i in range(0, len(events), size)]


@pytest.mark.integration
def test_streamed_features_equal_batch_on_synthetic_events():
    txs, frauds = synthetic()
    streamed, dead = run_stream(batches_of(with_labels(txs, frauds)))
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
    streamed, dead = run_stream(batches_of(redelivered, 30))
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
    streamed, dead = run_stream([[txs[0]], [txs[2]], [txs[1]], [txs[3]]])
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
    streamed, dead = run_stream([[label], [fraud], [later]])
    assert dead == []
    assert streamed["2"]["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1.0
    assert streamed["2"]["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0


@pytest.mark.integration
def test_events_later_than_allowed_lateness_are_dead_lettered():
    early = Transaction("1", T0, "1", "1", 5.0)
    later = Transaction("2", T0 + timedelta(days=3), "1", "1", 5.0)
    streamed, dead = run_stream([[later], [early]], allowed_lateness_days=1.0)
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
    streamed, dead = run_stream(batches_of(with_labels(txs, frauds), 200))
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
    stream, watermark = TestStream(), -math.inf
    for batch in batches_of(with_labels(txs, frauds)):
        stream = stream.add_elements([TimestampedValue(e, event_seconds(e)) for e in batch])
        latest = math.floor(max(event_seconds(e) for e in batch) * 1000) / 1000
        if latest > watermark:
            stream, watermark = stream.advance_watermark_to(latest), latest
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    features, examples = Collect("Features"), Collect("Examples")
    with beam.Pipeline(options=options) as p:
        out = p | stream.advance_watermark_to_infinity() | StreamFeatures(keep_examples_days=8)
        out["features"] | features
        out["examples"] | examples
    scored = {f.transaction.transaction_id: f.features for f in features.results()}
    got = examples.results()
    assert sorted(e.transaction_id for e in got) == sorted(scored)  # every label joined exactly once
    for e in got:
        assert e.features == scored[e.transaction_id] and e.label == frauds[e.transaction_id]
