"""The labelled-example log (ExampleLogFn) on the local streaming runner, read back as a feature table.

Features in the log equal the batch featurizer's; every row is confirmed with its true label or
written as genuine, unconfirmed after the label delay; a retried bundle rewrites the same file.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest

from models.controller_inputs import ExampleLogRows
from models.evaluation import feature_table_spec, read_feature_table
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import StreamFeatures
from streaming.features.transaction import time_ns
from streaming.io.events import Label
from streaming.job.example_log import (CONFIRMED, UNCONFIRMED, ExampleLogFn, JoinStore, LogRecord, LogRow,
                                       content_name, log_columns, write_rows)
from streaming.runner.testing import replay, with_labels
from tests.streaming.features.test_stream import batches_of, frame_of, synthetic

NAMES = list(DEFAULT_SPEC.names)
DAY = 86_400 * 10**9


def fake_score(features) -> float:
    return float(1 / (1 + np.exp(-np.tanh(sum(features) / 1e4))))


def to_record(featured) -> tuple[str, LogRecord]:
    tx = featured.transaction
    return tx.terminal_id, LogRecord(tx.transaction_id, time_ns(tx.event_time), tx.customer_id, tx.terminal_id,
                                     tuple(featured.features), fake_score(featured.features), "v-test")


class LoggedStream(beam.PTransform):
    """StreamFeatures → a stand-in scorer → ExampleLogFn, with the labels joined by terminal."""

    def __init__(self, directory: str, keep_days: float, monitor: bool = False):
        super().__init__()
        self.directory, self.keep_days, self.monitor = directory, keep_days, monitor

    def expand(self, events):
        featured = events | StreamFeatures(DEFAULT_SPEC, 1.0)
        records = featured["features"] | "Score" >> beam.Map(to_record).with_output_types(beam.typehints.KV[str, Any])
        labels = (events | "Labels" >> beam.Filter(lambda e: isinstance(e, Label))
                  | "ByTerminal" >> beam.Map(lambda e: (e.terminal_id, e)).with_output_types(beam.typehints.KV[str, Any]))
        batches = (records, labels) | beam.Flatten() | beam.ParDo(
            ExampleLogFn(DEFAULT_SPEC, self.keep_days, self.directory, monitor=self.monitor))
        return {"batches": batches, "dead_letter": featured["dead_letter"]}


@pytest.mark.integration
def test_the_log_holds_the_batch_featurizers_features_with_every_label(tmp_path):
    txs, frauds = synthetic(400, seed=5)
    out = replay(batches_of(with_labels(txs, frauds)), LoggedStream(str(tmp_path / "log"), keep_days=8))
    assert out["dead_letter"] == []
    days = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert days and all(d.startswith("day=") for d in days)
    assert all(not f.name.endswith(".tmp") for f in (tmp_path / "log").rglob("*"))
    spec = feature_table_spec(tmp_path / "log")
    assert spec.spec_hash == DEFAULT_SPEC.spec_hash
    table = read_feature_table(tmp_path / "log", spec.names, spec.spec_hash)
    assert sorted(table["TRANSACTION_ID"], key=int) == [t.transaction_id for t in txs]  # each once
    batch = featurize_frame(frame_of(txs, frauds)).set_index("TRANSACTION_ID")
    got = table.set_index(table["TRANSACTION_ID"].astype(int))
    expected = batch.loc[got.index, NAMES].to_numpy()
    exact = [n for n in NAMES if "AVG" not in n]
    assert np.array_equal(got[exact].to_numpy(), batch.loc[got.index, exact].to_numpy())
    assert np.allclose(got[NAMES].to_numpy(), expected, rtol=1e-9, atol=0)
    assert got["TX_FRAUD"].tolist() == [frauds[str(i)] for i in got.index]
    # the raw files: the log's columns, every row confirmed, the score the scorer gave, its model version
    raw = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "log").glob("day=*/*.parquet"))])
    assert list(raw.columns) == log_columns(DEFAULT_SPEC)
    assert set(raw["label_status"]) == {CONFIRMED} and set(raw["model_version"]) == {"v-test"}
    assert np.allclose(raw["score"], [fake_score(row) for row in raw[NAMES].to_numpy()])
    # each row sits in the partition of its event day
    for f in (tmp_path / "log").glob("day=*/*.parquet"):
        assert set(pd.read_parquet(f)["TX_DATETIME"].dt.strftime("day=%Y-%m-%d")) == {f.parent.name}
    # the controller's reader reads it too
    assert len(ExampleLogRows(tmp_path / "log").rows()) == len(txs)


@pytest.mark.integration
def test_labels_later_than_the_delay_leave_rows_genuine_unconfirmed(tmp_path):
    txs, frauds = synthetic(400, seed=6)
    replay(batches_of(with_labels(txs, frauds)), LoggedStream(str(tmp_path / "log"), keep_days=2))
    raw = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "log").glob("day=*/*.parquet"))])
    assert raw["TRANSACTION_ID"].is_unique
    unconfirmed = raw[raw["label_status"] == UNCONFIRMED]
    confirmed = raw[raw["label_status"] == CONFIRMED]
    # genuine labels come after 7 days, more than the 2-day delay: many rows were written unconfirmed
    assert len(unconfirmed) > 100 and (unconfirmed["TX_FRAUD"] == 0).all()
    assert len(confirmed) > 0
    assert confirmed["TX_FRAUD"].tolist() == [frauds[t] for t in confirmed["TRANSACTION_ID"]]


def test_join_store_keeps_an_overtaking_label_and_drops_it_after_the_delay():
    store = JoinStore(keep_ns=2 * DAY)
    record = LogRecord("a", 5 * DAY, "c", "t", (1.0,), 0.3, "v")
    assert store.label("a", 1, 5 * DAY) is None  # before its transaction: kept pending
    assert store.add(record) == LogRow(record, 1, CONFIRMED)
    store.add(LogRecord("b", 10 * DAY, "c", "t", (1.0,), 0.3, "v"))
    assert store.label("z", 1, 1 * DAY) is None and store.unmatched_labels == 1  # older than the delay: dropped
    assert store.take_expired() == [] and len(store) == 1


def test_a_retried_bundle_rewrites_the_same_file(tmp_path):
    rows = [LogRow(LogRecord(str(i), DAY * 17_000 + i, "c", "t", tuple(float(i) for _ in NAMES), 0.5, "v"), i % 2,
                   CONFIRMED) for i in range(10)]
    first = write_rows(str(tmp_path), rows, DEFAULT_SPEC)
    again = write_rows(str(tmp_path), list(reversed(rows)), DEFAULT_SPEC)
    assert first == again and len(list(tmp_path.rglob("*.parquet"))) == 1
    assert content_name(rows[:5]) != content_name(rows)
    assert content_name([rows[0]._replace(status=UNCONFIRMED, label=0)]) != content_name(rows[:1])
    assert len(read_feature_table(tmp_path, NAMES)) == 10


def test_a_directory_without_log_files_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no .*parquet"):
        read_feature_table(tmp_path, NAMES)



def test_the_job_builds_the_log_and_monitoring_stages_only_when_asked(tmp_path):
    from streaming.job.pipeline import build

    def steps(argv):
        pipeline, _ = build(argv)
        labels = set()

        class Visitor(beam.pipeline.PipelineVisitor):
            def enter_composite_transform(self, node):
                labels.add(node.full_label)

            def visit_transform(self, node):
                labels.add(node.full_label)

        pipeline.visit(Visitor())
        return labels

    scoring = ["--predictor", "127.0.0.1:1", "--registry", str(tmp_path / "reg"), "--allow-unsigned"]
    plain = steps(scoring)
    logged = steps([*scoring, "--example-log", str(tmp_path / "log")])
    monitored = steps([*scoring, "--example-log", str(tmp_path / "log"), "--live-monitoring"])
    assert not any("ExampleLogFn" in s for s in plain)
    assert "StreamingJob/ExampleLogFn" in logged and not any("LiveMonitorFn" in s for s in logged)
    assert {"StreamingJob/LiveMonitorFn", "StreamingJob/WriteLiveMonitoring"} <= monitored


@pytest.mark.parametrize(("argv", "message"), [
    (["--example-log", "x"], "--example-log and --live-monitoring need --predictor"),
    (["--predictor", "h:1", "--live-monitoring"], "--live-monitoring needs --registry"),
    (["--predictor", "h:1", "--registry", "r", "--allow-unsigned", "--live-monitoring", "--psi-warn", "0.5", "--psi-alarm", "0.2"],
     "warn=0.5 alarm=0.2"),
    (["--predictor", "h:1", "--monitoring-window-hours", "0"], "--monitoring-window-hours must be > 0"),
])
def test_bad_log_and_monitoring_flags_are_refused_by_name(argv, message):
    from streaming.job.pipeline import build

    with pytest.raises(ValueError, match=message):
        build(argv)


def test_join_store_expires_exactly_what_a_full_scan_would():
    rng = np.random.default_rng(3)
    store = JoinStore(keep_ns=3 * DAY)
    kept: dict[str, int] = {}
    expired = []
    for i, t in enumerate(np.cumsum(rng.integers(0, DAY // 2, 400))):
        t = int(t) - int(rng.integers(0, DAY))  # some out of order
        store.add(LogRecord(str(i), t, "c", "t", (0.0,), 0.1, "v"))
        kept[str(i)] = t
        if i % 3 == 0 and str(i - 2) in kept:
            store.label(str(i - 2), 1, kept[str(i - 2)])
            kept.pop(str(i - 2), None)
        expired += [r.record.transaction_id for r in store.take_expired()]
    latest = store._latest
    # every record older than the delay (before the latest time) is out, the rest is kept
    assert set(expired) == {tid for tid, t in kept.items() if t < latest - 3 * DAY}
    assert len(store) == len(kept) - len(expired)


def test_the_join_store_rebuilds_the_record_type_it_was_given():
    """streaming.job.served joins its own ServedRecord through the same store (a label after its
    record rebuilt a LogRecord from the served record's 6 fields and failed the job)."""
    from streaming.job.served import ServedRecord

    store = JoinStore(keep_ns=2 * DAY, record_type=ServedRecord)
    record = ServedRecord("t1", 5, "c1", 0.25, 0.5, "online-v1")
    assert store.add(record) is None
    row = store.label("t1", 1, 6)
    assert row.record == record and type(row.record) is ServedRecord and row.label == 1
    store.add(ServedRecord("t2", 6, "c1", 0.1, None, None))
    store.add(ServedRecord("t3", 6 + 3 * DAY, "c1", 0.1, None, None))
    assert [(type(r.record), r.record.transaction_id) for r in store.take_expired()] == [(ServedRecord, "t2")]
