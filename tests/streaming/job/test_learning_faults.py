"""The learner under registry faults: a failing snapshot write is retried with capped backoff by the
flush timer (counted, reported, never a dead letter of an already-learned example), and anything the
timer callback raises is caught, counted, reported and the timer set again (the pipeline survives)."""

from __future__ import annotations

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from models.registry import Registry
from streaming.features.spec import DEFAULT_SPEC
from streaming.job.guard import DEAD_LETTER
from streaming.job.learning import MEMBERS, LearnerFn, LearnerState
from streaming.runner.testing import Collect
from tests.streaming.job.test_learning import examples


def _bump(path) -> int:
    """Attempts so far (a file: the DoFn is pickled, so instance counters would not be shared)."""
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


class _FlakyRegistry:
    """The real registry, whose ``register_online`` fails the first ``fail`` times."""

    def __init__(self, registry, counter, fail: int):
        self._registry, self._counter, self._fail = registry, counter, fail

    def __getattr__(self, name):
        return getattr(self._registry, name)

    def register_online(self, *args, **kwargs):
        if _bump(self._counter) <= self._fail:
            raise OSError("registry unavailable (injected)")
        return self._registry.register_online(*args, **kwargs)


class FlakyWriteLearnerFn(LearnerFn):
    def __init__(self, *args, counter, fail, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter, self.fail = counter, fail

    def setup(self):
        super().setup()
        self._registry = _FlakyRegistry(self._registry, self.counter, self.fail)


class FlakyTimerLearnerFn(LearnerFn):
    """The snapshot gate raises the first ``fail`` times it is asked (outside the write's own retry)."""

    def __init__(self, *args, counter, fail, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter, self.fail = counter, fail

    def _gate(self, learner):
        if _bump(self.counter) <= self.fail:
            raise RuntimeError("gate exploded (injected)")
        return super()._gate(learner)


def run(stream: TestStream, learner: LearnerFn):
    """(monitoring events but online_start, dead letters, counters). Beam's local runner reports the
    counters of ``process`` only (not of timer callbacks): the events carry what the timers did."""
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    monitoring, dead = Collect("CollectMonitoring"), Collect("CollectDead")
    p = beam.Pipeline(options=options)
    out = p | stream | beam.ParDo(learner).with_outputs(DEAD_LETTER, MEMBERS, main="monitoring")
    out.monitoring | monitoring
    out[DEAD_LETTER] | dead
    result = p.run()
    result.wait_until_finish()
    counters: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter())["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    events = [orjson.loads(m.data) for m in monitoring.results()]
    return [e for e in events if e["kind"] != "online_start"], dead.results(), counters


def _learner(cls, tmp_path, fail, **kwargs):
    kwargs.setdefault("min_class_labels", 0)
    return cls(str(tmp_path / "reg"), DEFAULT_SPEC, None, clock=lambda: 0.0, counter=tmp_path / "attempts", fail=fail,
               **kwargs)


@pytest.mark.parametrize("fail", [1, 3])
def test_a_failing_snapshot_write_is_retried_with_backoff_and_never_dead_letters(tmp_path, fail):
    stream = TestStream().add_elements(examples(4)).advance_watermark_to(10)
    for _ in range(fail + 1):  # each step passes the (capped) backoff: one retry per step
        stream = stream.advance_processing_time(10)
    stream = stream.advance_watermark_to_infinity()
    learner = _learner(FlakyWriteLearnerFn, tmp_path, fail, snapshot_every_labels=4, snapshot_every_seconds=1000,
                       snapshot_retry_seconds=2, snapshot_retry_max_seconds=5)
    events, dead, counters = run(stream, learner)
    failed = [e for e in events if e["kind"] == "online_snapshot_failed"]
    assert [(e["attempt"], e["retry_in_seconds"], e["where"]) for e in failed] == [
        (a, min(5.0, 2.0 * 2 ** (a - 1)), "write") for a in range(1, fail + 1)]
    assert all(e["error"] == "OSError: registry unavailable (injected)" for e in failed)
    snapshots = [e for e in events if e["kind"] == "online_snapshot"]
    assert [e["labels"] for e in snapshots] == [4]  # every learned example is in the snapshot written at last
    assert dead == []  # learned examples are never reported lost
    # the first failure happened in process (the 4th label), the retries in the timer
    assert counters["snapshot_failures"] == 1 and counters["labels_learned"] == 4
    assert counters.get("guard_failures", 0) == 0
    registry = Registry.open(tmp_path / "reg")
    assert registry.alias("online")["version"] == snapshots[0]["version"]
    assert registry.load_online(expected_spec_hash=DEFAULT_SPEC.spec_hash)[1].labels_seen == 4


def test_labels_learned_while_the_registry_is_down_are_in_the_next_snapshot(tmp_path):
    # the write fails at label 4; labels 5-6 come before the retry, which writes all six
    stream = (TestStream().add_elements(examples(4)).advance_watermark_to(5).add_elements(examples(2, start=4))
              .advance_watermark_to(10).advance_processing_time(10).advance_watermark_to_infinity())
    learner = _learner(FlakyWriteLearnerFn, tmp_path, 1, snapshot_every_labels=4, snapshot_every_seconds=1000)
    events, dead, counters = run(stream, learner)
    assert [e["kind"] for e in events] == ["online_snapshot_failed", "online_snapshot"]
    assert events[1]["labels"] == 6 and dead == [] and counters["snapshot_failures"] == 1


def test_an_exception_in_the_flush_timer_is_caught_reported_and_the_timer_set_again(tmp_path):
    stream = (TestStream().add_elements(examples(3)).advance_watermark_to(10)
              .advance_processing_time(31).advance_processing_time(31).advance_watermark_to_infinity())
    learner = _learner(FlakyTimerLearnerFn, tmp_path, 1, snapshot_every_labels=500, snapshot_every_seconds=30)
    events, dead, counters = run(stream, learner)
    assert [(e["kind"], e.get("where")) for e in events] == [("online_snapshot_failed", "timer"), ("online_snapshot", None)]
    assert events[0]["error"] == "RuntimeError: gate exploded (injected)"
    assert events[1]["labels"] == 3
    assert dead == [] and counters["labels_learned"] == 3 and counters.get("guard_failures", 0) == 0


def test_a_learner_state_pickled_before_the_retry_fields_loads(tmp_path):
    import pickle

    from models.online import DriftMonitor, OnlineLearner

    state = LearnerState(OnlineLearner(DEFAULT_SPEC.names), DriftMonitor(), 3, 0.0)
    old = dict(vars(state))
    del old["failures"], old["retry_at"]
    state.__dict__.clear()
    state.__dict__.update(old)  # the shape pickled by the job before this change
    loaded = pickle.loads(pickle.dumps(state))
    assert (loaded.failures, loaded.retry_at, loaded.since_snapshot) == (0, 0.0, 3)


def test_backoff_doubles_and_is_capped():
    learner = LearnerFn("unused", DEFAULT_SPEC, None, snapshot_retry_seconds=1, snapshot_retry_max_seconds=10)
    assert [learner._backoff(a) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    with pytest.raises(ValueError, match="snapshot_retry_seconds must be > 0"):
        LearnerFn("unused", DEFAULT_SPEC, None, snapshot_retry_seconds=0)
