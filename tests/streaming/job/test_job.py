"""The streaming job: built for Dataflow offline, and run for real against the Pub/Sub emulator."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from streaming.io.datasets import read_table, reference_dir, write_table
from streaming.io.events import SCHEMA_TRANSACTION
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.job.pipeline import build
from streaming.io.publish import LabelDelay, TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import pull_all

ROOT = Path(__file__).resolve().parents[3]


def test_builds_for_dataflow_offline_with_pubsub_read_and_write():
    pipeline, config = build([
        "--runner=DataflowRunner", "--project=streamscore-demo", "--region=europe-west1",
        "--temp_location=gs://streamscore-test/tmp", "--staging_location=gs://streamscore-test/staging",
        "--dry_run=True", "--no_auth", "--sdk_location=container", "--job_name=streamscore-features",
        "--sdk_container_image=europe-docker.pkg.dev/streamscore-demo/streamscore/worker:test",
    ])
    result = pipeline.run()
    transforms = result.job.proto_pipeline.components.transforms.values()
    by_urn: dict[str, list[str]] = {}
    for t in transforms:
        by_urn.setdefault(t.spec.urn, []).append(t.unique_name)
    reads = sorted(by_urn.get("beam:transform:pubsub_read:v1", []))
    writes = sorted(by_urn.get("beam:transform:pubsub_write:v1", []))
    assert [r.split("/")[2] for r in reads] == ["ReadLabels", "ReadTransactions"]
    assert [w.split("/")[1] for w in writes] == ["WriteDeadLetters", "WriteFeatures"]
    names = " ".join(t.unique_name for t in transforms)
    assert "CustomerStateFn" in names and "TerminalStateFn" in names
    assert config.subscription(config.transactions_subscription) == "projects/streamscore-demo/subscriptions/transactions-stream"
    assert result.job.options.view_as(__import__("apache_beam").options.pipeline_options.StandardOptions).streaming


def test_a_remote_runner_without_the_project_code_on_its_workers_is_refused():
    with pytest.raises(ValueError, match="--sdk_container_image IMAGE .* or --setup_file"):
        build(["--runner=DataflowRunner", "--project=streamscore-demo", "--region=europe-west1",
               "--temp_location=gs://streamscore-test/tmp", "--dry_run=True", "--no_auth",
               "--job_name=streamscore-features"])


def test_bad_flags_are_rejected():
    with pytest.raises(ValueError, match="--max-message-bytes must be > 0, got 0"):
        build(["--max-message-bytes=0"])
    with pytest.raises(ValueError, match="--local-pull-size must be >= 1 and --local-pull-deadline > 0, got 0 and 30.0"):
        build(["--local-pull-size=0"])
    with pytest.raises(ValueError, match="got 100 and 0.0"):
        build(["--local-pull-deadline=0"])
    with pytest.raises(ValueError, match="--online-store must start with redis://"):
        build(["--online-store=http://127.0.0.1:6379/0"])


def test_online_store_flag_reaches_the_config():
    _, config = build(["--online-store=rediss://:pw@memorystore.internal:6378/2"])
    assert config.online_store == "rediss://:pw@memorystore.internal:6378/2"


def test_sharded_learners_build_a_combine_step_for_dataflow():
    pipeline, config = build([
        "--runner=DataflowRunner", "--project=streamscore-demo", "--region=europe-west1",
        "--temp_location=gs://streamscore-test/tmp", "--dry_run=True", "--no_auth", "--sdk_location=container",
        "--job_name=streamscore-test", "--sdk_container_image=europe-west1-docker.pkg.dev/p/streamscore/worker:test",
        "--allow-unsigned", "--predictor=localhost:1", "--registry=gs://streamscore-test/registry", "--learner-shards=4",
        "--online-learner=arf-rus", "--online-min-class-labels=25"])
    assert (config.learner_shards, config.online_learner, config.online_min_class_labels) == (4, "arf-rus", 25)
    names = " ".join(t.unique_name for t in pipeline.run().job.proto_pipeline.components.transforms.values())
    assert "LearnerFn" in names and "CombineMembersFn" in names
    with pytest.raises(ValueError, match="--learner-shards must be >= 1"):
        build(["--learner-shards=0"])
    with pytest.raises(SystemExit):
        build(["--online-learner=nope"])


def test_only_the_local_runner_is_tuned(monkeypatch):
    from streaming.runner import local as local_runner
    from streaming.job.pipeline import is_local, pipeline_options

    calls = []
    monkeypatch.setattr(local_runner, "install", lambda *args: calls.append(args))
    build(["--local-pull-size=20", "--local-pull-deadline=0.5"])
    build(["--no-local-tuning"])
    build(["--runner=DataflowRunner", "--project=streamscore-demo", "--region=europe-west1",
           "--temp_location=gs://streamscore-test/tmp", "--dry_run=True", "--no_auth",
           "--sdk_container_image=europe-docker.pkg.dev/streamscore-demo/streamscore/worker:test"])
    assert calls == [(20, 0.5)]
    config = build([])[1]
    assert is_local(pipeline_options([], config)) and not is_local(pipeline_options(["--runner=DataflowRunner"], config))


# --------------------------------------------------------------------------- against the emulator


class RunningJob:
    """``python -m streaming.job.pipeline`` in a subprocess (the local streaming runner), killed on exit."""

    def __init__(self, emulator, names: dict[str, str], log: Path):
        args = [sys.executable, "-m", "streaming.job.pipeline", "--project", emulator.project,
                "--emulator-host", emulator.host_port,
                "--transactions-subscription", names["tx_sub"], "--labels-subscription", names["label_sub"],
                "--features-topic", names["features"], "--dead-letter-topic", names["dead"]]
        self.log = log
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def check_alive(self):
        assert self.proc.poll() is None, f"job exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"


def setup_topics(emulator, prefix: str) -> dict[str, str]:
    names = {"tx": f"{prefix}-transactions", "labels": f"{prefix}-labels", "features": f"{prefix}-features",
             "dead": f"{prefix}-dead-letter", "tx_sub": f"{prefix}-transactions-stream",
             "label_sub": f"{prefix}-labels-stream", "features_sub": f"{prefix}-features-check",
             "dead_sub": f"{prefix}-dead-letter-check"}
    emulator.ensure([names["tx"], names["labels"], names["features"], names["dead"]], {
        names["tx_sub"]: names["tx"], names["label_sub"]: names["labels"],
        names["features_sub"]: names["features"], names["dead_sub"]: names["dead"]})
    return names


def run_job_over(emulator, tmp_path, df: pd.DataFrame, prefix: str, malformed: list[bytes] = ()):
    """Publish df (+ labels, + malformed messages) through the job; return (features by id, dead letters)."""
    names = setup_topics(emulator, prefix)
    job = RunningJob(emulator, names, tmp_path / "job.log")
    try:
        time.sleep(3)
        job.check_alive()
        publisher = make_publisher(emulator.host_port, ordering=True)
        topics = TopicPaths(emulator.topic_path(names["tx"]), emulator.topic_path(names["labels"]))
        for raw in malformed:
            publisher.publish(topics.transactions, raw, schema=SCHEMA_TRANSACTION).result()
        # frauds reported one day later, so each label is published days (of event time) before it matters
        # Each card's events in order (ordering key = customer id, as `streamscore publish` does):
        # without keys the client sends batches concurrently and they can land out of order.
        publish_dataset(df, publisher, topics, rate=400, label_delay=LabelDelay(fraud_days=(1.0, 1.0), genuine_days=1.0),
                        order_by_customer=True)
        subscriber = emulator.subscriber_client()
        features = pull_all(subscriber, emulator.subscription_path(names["features_sub"]), len(df), timeout=240)
        dead = pull_all(subscriber, emulator.subscription_path(names["dead_sub"]), len(malformed), timeout=60, settle=2)
        job.check_alive()
    finally:
        job.stop()
    by_id = {}
    for m in features:
        body = orjson.loads(m.data)
        assert body["transaction_id"] not in by_id, "featurised twice"
        by_id[body["transaction_id"]] = body
    return by_id, [orjson.loads(m.data) for m in dead]


def assert_equal_to_batch(streamed: dict, batch: pd.DataFrame) -> None:
    batch = batch.set_index(batch["TRANSACTION_ID"].astype(str))
    bad = []
    for tid, body in streamed.items():
        assert body["spec_hash"] == DEFAULT_SPEC.spec_hash
        for name in DEFAULT_SPEC.names:
            got, want = body["features"][name], float(batch.at[tid, name])
            if not (np.isclose(got, want, rtol=1e-9, atol=0) if "AVG" in name else got == want):
                bad.append((tid, name, got, want))
    assert not bad, f"{len(bad)} mismatches, first {bad[:5]}"


@pytest.mark.integration
def test_job_over_emulator_featurises_everything_and_dead_letters_bad_input(pubsub_emulator, tmp_path, make_frame):
    df = make_frame(600, seed=4, fraud_rate=0.1)
    malformed = [b"{not json", orjson.dumps({"transaction_id": "bad-1", "event_time": "2018-04-01T00:00:00Z",
                                             "customer_id": "c", "terminal_id": "t", "amount": -3})]
    streamed, dead = run_job_over(pubsub_emulator, tmp_path, df, "jobsynth", malformed)
    assert sorted(streamed, key=int) == [str(i) for i in df["TRANSACTION_ID"]]
    assert_equal_to_batch(streamed, featurize_frame(df))
    assert sorted(d["error"] for d in dead) == [
        "amount must be a finite number >= 0 and <= 1e+11, got -3.0",
        "data must be a UTF-8 JSON object: malformed JSON (unexpected character, expected a string key: line 1 column 2 (char 1))",
    ]
    assert {base64.b64decode(d["data_base64"]) for d in dead} == set(malformed)
    assert {d["transaction_id"] for d in dead} == {"", "bad-1"} and {d["stage"] for d in dead} == {"parse"}


@pytest.mark.integration
@pytest.mark.reference
def test_job_over_emulator_matches_batch_on_reference_entity_sample(pubsub_emulator, tmp_path):
    path = reference_dir() / "transactions.parquet"
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (../shared/data/fraud-handbook is absent)")
    df = read_table(path)
    df = df[df["TX_DATETIME"] < pd.Timestamp("2018-05-20")]  # 49 days
    rng = np.random.default_rng(11)
    customers = rng.choice(df["CUSTOMER_ID"].unique(), 12, replace=False)
    terminals = rng.choice(df["TERMINAL_ID"].unique(), 12, replace=False)
    sample = df[df["CUSTOMER_ID"].isin(customers) | df["TERMINAL_ID"].isin(terminals)].reset_index(drop=True)
    streamed, dead = run_job_over(pubsub_emulator, tmp_path, sample, "jobref")
    assert dead == [] and len(streamed) == len(sample)
    assert_equal_to_batch(streamed, featurize_frame(sample))
