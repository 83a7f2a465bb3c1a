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
