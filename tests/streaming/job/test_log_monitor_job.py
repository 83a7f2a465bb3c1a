"""The real job over the Pub/Sub emulator with the real predictor, the example log and live monitoring on.

A 30-day simulated stream whose amounts shift by 1.5x from day 24: every transaction is scored or
dead-lettered (none is), the log holds each one once with the batch featurizer's features, the
score it was published with and its label, and the ``stability`` events raise the amount's PSI
alarm only for the windows from the shift on.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import pandas as pd
import pytest

from models.controller_inputs import ExampleLogRows
from models.evaluation import read_feature_table
from models.monitoring import REFERENCE_FILE, Reference
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.io.publish import LabelDelay, TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import pull_all
from streaming.sim.simulator import simulate
from streaming.job.scoring import PredictorUnavailable, RetryPolicy, ScoringClient
from tests.integration.test_stream_scoring import Proc, free_port, wait_for

pytestmark = pytest.mark.integration
NAMES = list(DEFAULT_SPEC.names)
DRIFT_DAY = 24
START = pd.Timestamp("2018-04-01")


def wait_scoring(port: int, proc: Proc, timeout: float = 60) -> None:
    client = ScoringClient(f"127.0.0.1:{port}", deadline=2, retry=RetryPolicy(max_attempts=1))
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.score_many([("probe", [0.0] * len(NAMES))])[0].score is not None:
                return
        except PredictorUnavailable:
            pass
        proc.alive()
        assert time.monotonic() < deadline, f"predictor not serving within {timeout} s"
        time.sleep(0.5)


@pytest.fixture
def drifted_stack(pubsub_emulator, tmp_path):
    from models.registry import Registry
    from models.training import fit, predict

    df = simulate(customers=150, terminals=300, days=30, seed=3, drift_day=DRIFT_DAY, drift_kind="amount-shift")
    table = featurize_frame(df)
    train = table[table["TX_DATETIME"] < START + pd.Timedelta(days=20)]
    booster = fit(train, NAMES, {"max_depth": 3, "learning_rate": 0.3, "n_estimators": 20}, nthread=1)
    reference = Reference.fit(train, NAMES, predict(booster, train, NAMES))
    registry = Registry.open(tmp_path / "registry")
    version = registry.register(booster, {"feature_names": NAMES}, spec_hash=DEFAULT_SPEC.spec_hash,
                                extra_files={REFERENCE_FILE: reference.to_json()})
    registry.promote(version)
    prefix = "lm" + uuid.uuid4().hex[:8]
    names = {k: f"{prefix}-{k}" for k in ("tx", "labels", "scores", "alerts", "dead", "monitoring")}
    pubsub_emulator.ensure([*names.values()], {
        f"{names['tx']}-job": names["tx"], f"{names['labels']}-job": names["labels"],
        f"{names['scores']}-check": names["scores"], f"{names['dead']}-check": names["dead"],
        f"{names['monitoring']}-check": names["monitoring"]})
    port = free_port()
    predictor = Proc(["-m", "streaming.cli", "serve", "--registry", str(tmp_path / "registry"), "--port", str(port),
                      "--host", "127.0.0.1", "--metrics-port", "0", "--allow-unsigned", "--no-online"],
                     tmp_path / "serve.log")
    try:
        wait_scoring(port, predictor)
    except BaseException:
        predictor.stop()
        raise
    job = Proc(["-m", "streaming.job.pipeline", "--project", pubsub_emulator.project,
                "--emulator-host", pubsub_emulator.host_port,
                "--transactions-subscription", f"{names['tx']}-job", "--labels-subscription", f"{names['labels']}-job",
                "--scores-topic", names["scores"], "--alerts-topic", names["alerts"], "--dead-letter-topic", names["dead"],
                "--monitoring-topic", names["monitoring"], "--predictor", f"127.0.0.1:{port}",
                "--registry", str(tmp_path / "registry"), "--allow-unsigned",
                "--example-log", str(tmp_path / "log"), "--live-monitoring", "--monitoring-window-hours", "48",
                "--psi-alarm", "0.2"], tmp_path / "job.log")
    try:
        time.sleep(3)
        job.alive()
    except BaseException:
        job.stop()
        predictor.stop()
        raise
    yield {"df": df, "table": table, "names": names, "version": version, "job": job, "log": tmp_path / "log"}
    job.stop()
    predictor.stop()


def test_the_job_logs_every_scored_transaction_and_alarms_only_after_the_shift(pubsub_emulator, drifted_stack):
    df, table, names, job = drifted_stack["df"], drifted_stack["table"], drifted_stack["names"], drifted_stack["job"]
    publisher = make_publisher(pubsub_emulator.host_port, ordering=True)
    topics = TopicPaths(pubsub_emulator.topic_path(names["tx"]), pubsub_emulator.topic_path(names["labels"]))
    publish_dataset(df, publisher, topics, rate=1500, label_delay=LabelDelay(fraud_days=(1.0, 1.0), genuine_days=1.0),
                    order_by_customer=True)
    subscriber = pubsub_emulator.subscriber_client()
    scores = [orjson.loads(m.data) for m in pull_all(
        subscriber, pubsub_emulator.subscription_path(f"{names['scores']}-check"), len(df), timeout=400, settle=2)]
    dead = pull_all(subscriber, pubsub_emulator.subscription_path(f"{names['dead']}-check"), 0, timeout=5, settle=2)
    job.alive()
    # in = scored + dead-lettered, with the log on
    ids = [s["transaction_id"] for s in scores]
    assert len(ids) == len(set(ids)) and sorted(ids, key=int) == [str(i) for i in df["TRANSACTION_ID"]]
    assert dead == []

    # every label came within the delay: the log ends up holding every transaction, confirmed
    log = drifted_stack["log"]
    wait_for(lambda: log.is_dir() and len(ExampleLogRows(log).rows()) == len(df), 180,
             "the example log holding every scored transaction", job)
    raw = pd.concat([pd.read_parquet(f) for f in sorted(log.glob("day=*/*.parquet"))], ignore_index=True)
    assert raw["TRANSACTION_ID"].is_unique and set(raw["label_status"]) == {"confirmed"}
    assert set(raw["model_version"]) == {drifted_stack["version"]}
    logged = read_feature_table(log, NAMES, DEFAULT_SPEC.spec_hash).set_index("TRANSACTION_ID")
    batch = table.set_index(table["TRANSACTION_ID"].astype(str))
    exact = [n for n in NAMES if "AVG" not in n]
    assert np.array_equal(logged.loc[batch.index, exact].to_numpy(), batch[exact].to_numpy())
    assert np.allclose(logged.loc[batch.index, NAMES].to_numpy(), batch[NAMES].to_numpy(), rtol=1e-9, atol=0)
    assert (logged.loc[batch.index, "TX_FRAUD"].to_numpy() == batch["TX_FRAUD"].to_numpy()).all()
    published = {s["transaction_id"]: s["score"] for s in scores}
    assert np.array_equal(raw["score"].to_numpy(), np.array([published[t] for t in raw["TRANSACTION_ID"]]))

    # stability events: one per 48 h window (the last waits for more traffic), the alarm only after the shift
    events = []

    def windows_through_day_26():
        events.extend(e for e in (orjson.loads(m.data) for m in pull_all(
            subscriber, pubsub_emulator.subscription_path(f"{names['monitoring']}-check"), 1, timeout=5, settle=1))
            if e["kind"] == "stability")
        return any(e["window_start"] == "2018-04-27T00:00:00Z" for e in events)

    wait_for(windows_through_day_26, 120, "the stability event of days 26-27", job)
    by_start = {pd.Timestamp(e["window_start"].rstrip("Z")): e for e in events}
    assert sorted(by_start) == [START + pd.Timedelta(days=d) for d in range(0, 28, 2)]
    for start, event in sorted(by_start.items()):
        shifted = (start - START).days >= DRIFT_DAY
        assert ("TX_AMOUNT" in event["drifted"]) == shifted, (start, event["psi"]["TX_AMOUNT"])
        assert event["model_version"] == drifted_stack["version"] and event["thresholds"]["alarm"] == 0.2
    assert by_start[START + pd.Timedelta(days=26)]["live"]["average_precision"] is not None
    print("\nstability: " + ", ".join(f"{s.date()} TX_AMOUNT {e['psi']['TX_AMOUNT']:.2f} {e['status']}"
                                     for s, e in sorted(by_start.items())))
