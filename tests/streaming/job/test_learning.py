"""The online learner inside the job (LearnerFn), driven by TestStream on the BundleBasedDirectRunner.

Snapshots are written every N labels, and also ``snapshot_every_seconds`` after the first label
not yet in a snapshot even when no other label follows (a processing-time timer).
"""

from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from models.registry import Registry
from streaming.runner.testing import Collect
from streaming.features.spec import DEFAULT_SPEC
from streaming.job.labelled import Example
from streaming.job.learning import LEARNER_KEY, LearnerFn

NAMES = DEFAULT_SPEC.names


def examples(n: int, start: int = 0) -> list:
    return [TimestampedValue((LEARNER_KEY, Example(str(i), i, tuple(float((i * 7 + j) % 5) for j in range(len(NAMES))),
                                                   i % 3 == 0)), 1.0 + i) for i in range(start, start + n)]


def run_learner(stream: TestStream, registry: str, kinds=("online_snapshot",), **kwargs) -> list[dict]:
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    out = Collect("CollectMonitoring")
    # The runner's test clock starts at 0: so does the learner's injected clock.
    kwargs.setdefault("min_class_labels", 0)
    learner = LearnerFn(registry, DEFAULT_SPEC, None, clock=lambda: 0.0, **kwargs)
    with beam.Pipeline(options=options) as p:
        p | stream | beam.ParDo(learner) | out
    events = [orjson.loads(m.data) for m in out.results()]
    return [e for e in events if e["kind"] in kinds]


def test_labels_below_the_count_are_snapshotted_when_the_seconds_pass(tmp_path):
    stream = (TestStream().add_elements(examples(3)).advance_watermark_to(10)
              .advance_processing_time(31).advance_watermark_to_infinity())
    events = run_learner(stream, str(tmp_path), snapshot_every_labels=500, snapshot_every_seconds=30)
    assert [e["kind"] for e in events] == ["online_snapshot"]
    assert events[0]["labels"] == 3
    registry = Registry.open(tmp_path)
    assert registry.alias("online")["version"] == events[0]["version"]
    version, learner = registry.load_online(expected_spec_hash=DEFAULT_SPEC.spec_hash)
    assert learner.labels_seen == 3


def test_no_snapshot_before_the_seconds_and_none_without_new_labels(tmp_path):
    stream = (TestStream().add_elements(examples(3)).advance_watermark_to(10)
              .advance_processing_time(10).advance_watermark_to_infinity())
    assert run_learner(stream, str(tmp_path), snapshot_every_labels=500, snapshot_every_seconds=30) == []
    assert Registry.open(tmp_path).alias("online")["version"] is None


def test_count_snapshots_and_the_timer_for_the_rest(tmp_path):
    stream = (TestStream().add_elements(examples(5)).advance_watermark_to(10)
              .advance_processing_time(31)  # 5 labels: one count snapshot at 4, the fifth by the timer
              .advance_processing_time(31)  # nothing new: no snapshot
              .advance_watermark_to_infinity())
    events = run_learner(stream, str(tmp_path), snapshot_every_labels=4, snapshot_every_seconds=30)
    assert [e["labels"] for e in events] == [4, 5]
    versions = [e["version"] for e in events]
    registry = Registry.open(tmp_path)
    assert registry.metadata(versions[1])["previous_version"] == versions[0]


def test_snapshots_are_signed_with_the_jobs_key(tmp_path):
    import pytest

    from models.registry import UntrustedVersionError
    from models.signing import generate

    ring = generate("learner")
    ring.save(tmp_path / "ring.json")
    stream = TestStream().add_elements(examples(4)).advance_watermark_to_infinity()
    events = run_learner(stream, str(tmp_path / "reg"), snapshot_every_labels=4, signing_key_file=str(tmp_path / "ring.json"))
    version = events[0]["version"]
    assert Registry.open(tmp_path / "reg", keys=ring.public()).load_online(
        expected_spec_hash=DEFAULT_SPEC.spec_hash)[0] == version
    with pytest.raises(UntrustedVersionError, match="learner: not a trusted key"):
        Registry.open(tmp_path / "reg", keys=generate("trainer")).load_online(expected_spec_hash=DEFAULT_SPEC.spec_hash)
