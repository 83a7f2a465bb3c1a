"""How the job's learner starts (snapshot / training window / cold, another spec refused), the
snapshot gate, retried bundles writing one version, and sharded learners combined in the job."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from models import training
from models.evaluation import Split, normalise_feature_table
from models.online import DEFAULT_LEARNER, OnlineLearner, learner_factory
from models.online_shards import combine, shard_of
from models.registry import Registry
from streaming.features.spec import DEFAULT_SPEC
from streaming.runner.testing import Collect
from streaming.job.learning import MEMBERS, CombineMembersFn, LearnerFn, key_example
from tests.streaming.job.test_learning import examples, run_learner

NAMES = list(DEFAULT_SPEC.names)
OTHER_SPEC = "f" * 64


def feature_table(path, days=21, per_day=80, seed=0) -> str:
    rng = np.random.default_rng(seed)
    n = days * per_day
    x = rng.normal(size=(n, len(NAMES)))
    frame = pd.DataFrame(x, columns=NAMES)
    frame.insert(0, "TRANSACTION_ID", np.arange(n))
    frame.insert(1, "TX_DATETIME", pd.Timestamp("2018-07-01") + pd.to_timedelta(np.sort(rng.integers(0, days * 86_400, n)), unit="s"))
    frame.insert(2, "CUSTOMER_ID", rng.integers(0, 50, n))
    frame.insert(3, "TERMINAL_ID", rng.integers(0, 80, n))
    frame.insert(4, "TX_FRAUD", (x[:, 0] > 1.3).astype(int))
    table = normalise_feature_table(frame, NAMES)
    table.to_parquet(path)
    return table


def production_with_window(registry: Registry, path) -> tuple[str, int]:
    """A production XGBoost version recording its feature table and training window, as `train` does."""
    table = feature_table(path)
    split = Split("2018-07-01", 7, 7, 7)
    train = table[(table["TX_DATETIME"] >= "2018-07-01") & (table["TX_DATETIME"] < "2018-07-08")]
    booster = training.fit(train, NAMES, {"max_depth": 2, "n_estimators": 5}, nthread=1)
    version = registry.register(booster, {"feature_names": NAMES, "data": {"features": str(path), "split": split.to_dict()}},
                                spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(version)
    return version, len(train)


def snapshot(registry: Registry, labels: int, spec_hash: str = DEFAULT_SPEC.spec_hash, key="learner") -> str:
    learner = OnlineLearner(NAMES, learner_factory(DEFAULT_LEARNER))  # the job's learner kind
    for i in range(labels):
        learner.learn_one([float((i * 3 + j) % 7) for j in range(len(NAMES))], i % 4 == 0)
    return registry.register_online(learner.snapshot(), {"feature_names": NAMES, "labels_learned": labels,
                                                          "learner": DEFAULT_LEARNER, "learner_key": key},
                                    spec_hash=spec_hash, learner_key=key)


def stream(n=6):
    return TestStream().add_elements(examples(n)).advance_watermark_to(10).advance_processing_time(31) \
        .advance_watermark_to_infinity()


def starts(tmp_path, **kwargs) -> tuple[dict, list[dict]]:
    events = run_learner(stream(), str(tmp_path / "reg"), kinds=("online_start", "online_snapshot"),
                         snapshot_every_labels=500, snapshot_every_seconds=30, **kwargs)
    (start,) = [e for e in events if e["kind"] == "online_start"]
    return start, [e for e in events if e["kind"] == "online_snapshot"]


def test_resumes_from_the_latest_snapshot_of_its_spec(tmp_path):
    registry = Registry.open(tmp_path / "reg")
    snapshot(registry, 40)
    latest = snapshot(registry, 50)
    start, snaps = starts(tmp_path)
    assert (start["start"], start["version"], start["labels"]) == ("snapshot", latest, 50)
    assert len(snaps) == 1  # the resumed snapshot is served already: nothing new until labels come
    assert snaps[-1]["labels"] == 56  # 50 resumed + 6 learned
    assert registry.metadata(snaps[-1]["version"])["learner_key"] == "learner"


def test_a_snapshot_of_another_spec_is_refused_and_the_training_window_used(tmp_path):
    registry = Registry.open(tmp_path / "reg")
    production, train_rows = production_with_window(registry, tmp_path / "features.parquet")
    foreign = snapshot(registry, 30, spec_hash=OTHER_SPEC)
    start, snaps = starts(tmp_path)
    assert start["start"] == "training_window" and start["version"] == production
    assert start["refused"]["version"] == foreign and "feature spec" in start["refused"]["reason"]
    assert start["labels"] == train_rows > 0
    assert snaps[0]["labels"] == train_rows  # the warm model is served before any live label
    _, learner = registry.load_online(snaps[-1]["version"], expected_spec_hash=DEFAULT_SPEC.spec_hash)
    assert learner.labels_seen == train_rows + 6
    # learned in event-time order on exactly those rows: the same as doing it by hand
    table = pd.read_parquet(tmp_path / "features.parquet")
    window = table[(table["TX_DATETIME"] >= "2018-07-01") & (table["TX_DATETIME"] < "2018-07-08")]
    by_hand = OnlineLearner(NAMES)
    for x, y in zip(window[NAMES].to_numpy().tolist(), window["TX_FRAUD"].tolist()):
        by_hand.learn_one(x, y, prequential=False)
    x = window[NAMES].to_numpy()[0].tolist()
    assert start["frauds"] == by_hand.frauds_seen
    restored = OnlineLearner.restore(by_hand.snapshot())
    assert restored.predict_proba_one(x) == by_hand.predict_proba_one(x)


def test_cold_without_snapshot_or_production(tmp_path):
    start, _ = starts(tmp_path)
    assert (start["start"], start["labels"], start["refused"]) == ("cold", 0, None)


def test_the_gate_holds_snapshots_until_both_classes_have_enough_labels(tmp_path):
    # 6 examples, 2 frauds (i % 3 == 0): a gate of 3 per class writes nothing, of 2 writes one
    assert starts(tmp_path / "a", min_class_labels=3)[1] == []
    assert Registry.open(tmp_path / "a" / "reg").alias("online")["version"] is None
    assert [s["labels"] for s in starts(tmp_path / "b", min_class_labels=2)[1]] == [6]


class State:
    """What Beam's read-modify-write state does for one key: the committed value, and a write."""

    def __init__(self, value=None):
        self.value = value

    def read(self):
        return self.value

    def write(self, value):
        self.value = value


class Timer:
    def set(self, _):
        pass


def test_a_retried_bundle_rewrites_the_same_version(tmp_path):
    fn = LearnerFn(str(tmp_path), DEFAULT_SPEC, None, snapshot_every_labels=4, min_class_labels=0, clock=lambda: 0.0)
    fn.setup()
    bundle = [e.value for e in examples(4)]
    committed = State()
    for element in bundle[:1]:  # an earlier, committed bundle
        list(fn.process(element, committed, Timer()))
    before = committed.read()
    outputs = []
    for attempt in range(2):  # the bundle fails after writing its snapshot, and is retried from the committed state
        state = State(dataclasses.replace(before, learner=OnlineLearner.restore(before.learner.snapshot())))
        outputs.append([m for element in bundle[1:] for m in fn.process(element, state, Timer())])
    registry = Registry.open(tmp_path)
    versions = [v for v in registry.versions() if v.startswith("online-")]
    assert len(versions) == 1 and registry.alias("online")["version"] == versions[0]
    assert outputs[0][-1].data == outputs[1][-1].data  # both attempts reported the same version


def test_sharded_learners_register_their_combination(tmp_path):
    # the shards' LearnerFn emits members on its tagged output; CombineMembersFn registers their combination
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    out = Collect("CollectCombined")
    items = [e.value[1] for e in examples(40)]
    test_stream = TestStream().add_elements(items).advance_watermark_to(10).advance_processing_time(31) \
        .advance_watermark_to_infinity()
    with beam.Pipeline(options=options) as p:
        learned = (p | test_stream | beam.Map(key_example, 2)
                   | beam.ParDo(LearnerFn(str(tmp_path), DEFAULT_SPEC, None, shards=2, min_class_labels=0,
                                          snapshot_every_seconds=30, clock=lambda: 0.0)).with_outputs(MEMBERS, main="m"))
        learned[MEMBERS] | beam.ParDo(CombineMembersFn(str(tmp_path), DEFAULT_SPEC, 2)) | out
    registry = Registry.open(tmp_path)
    version = registry.alias("online")["version"]
    assert version.startswith("online-shards-2-")
    _, served = registry.load_online(version, expected_spec_hash=DEFAULT_SPEC.spec_hash)
    assert served.labels_seen == 40 and len(served.members) == 2
    assert sorted(m.labels_seen for m in served.members) == sorted(
        np.bincount([shard_of(str(i), 2) for i in range(40)]).tolist())
    expected = combine(list(served.members))
    x = list(items[0].features)
    assert served.predict_proba_one(x) == pytest.approx(expected.predict_proba_one(x), abs=1e-12)
