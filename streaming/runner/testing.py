"""Test helpers for Beam pipelines that run in this process (the local runners).

``assert_that`` cannot run on unbounded PCollections in the global window, so streaming
tests collect outputs with :class:`Collect` and check them after the pipeline finishes.
DoFns are pickled, so results go to a process-global registry, keyed by a name.
"""

from __future__ import annotations

import threading
import uuid

import apache_beam as beam

_RESULTS: dict[str, list] = {}
_LOCK = threading.Lock()


class CollectFn(beam.DoFn):
    def __init__(self, key: str):
        self.key = key

    def process(self, element):
        with _LOCK:
            _RESULTS.setdefault(self.key, []).append(element)


class Collect(beam.PTransform):
    """Appends every element to :meth:`results`; works in streaming and batch on in-process runners."""

    def __init__(self, label: str | None = None):
        super().__init__(label)
        self.key = uuid.uuid4().hex

    def expand(self, pcoll):
        return pcoll | beam.ParDo(CollectFn(self.key))

    def results(self) -> list:
        with _LOCK:
            return list(_RESULTS.get(self.key, []))


def event_seconds(event) -> float:
    """The element timestamp a replay gives an event: a label counts at its report time."""
    from streaming.io.events import Label

    when = event.reported_at if isinstance(event, Label) else event.event_time
    return when.timestamp()


def with_labels(transactions, frauds: dict[str, int], seed: int = 2) -> list:
    """One time-ordered stream: each transaction, and its label 1–7 days (fraud) or 7 days (genuine) later."""
    from datetime import timedelta

    import numpy as np

    from streaming.io.events import Label

    rng = np.random.default_rng(seed)
    timeline = [(t.event_time, 0, t) for t in transactions]
    for t in transactions:
        y = int(frauds[t.transaction_id])
        delay = timedelta(seconds=float(rng.uniform(86_400, 7 * 86_400))) if y else timedelta(days=7)
        label = Label(t.transaction_id, y, t.event_time, t.customer_id, t.terminal_id, t.event_time + delay)
        timeline.append((label.reported_at, 1, label))
    timeline.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in timeline]


def replay(batches, transform: beam.PTransform, timestamp_of=event_seconds) -> dict[str, list]:
    """Run ``transform`` over a TestStream of ``batches`` on the local streaming runner; collect each output.

    Each batch is added at the timestamps ``timestamp_of`` gives, then the watermark advances to
    its latest one (an out-of-order batch leaves it where it is); finally to infinity. The
    transform returns a dict of PCollections; the result has the same keys, with their elements.
    """
    import math

    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    stream, watermark = TestStream(), -math.inf
    for batch in batches:
        stream = stream.add_elements([TimestampedValue(e, timestamp_of(e)) for e in batch])
        latest = math.floor(max(timestamp_of(e) for e in batch) * 1000) / 1000
        if latest > watermark:
            stream, watermark = stream.advance_watermark_to(latest), latest
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    collectors: dict[str, Collect] = {}
    with beam.Pipeline(options=options) as p:
        outputs = p | stream.advance_watermark_to_infinity() | transform
        for name, pcoll in outputs.items():
            collectors[name] = Collect(f"Collect_{name}")
            _ = pcoll | collectors[name]
    return {name: collect.results() for name, collect in collectors.items()}
