"""The stream's side of the online store: collect a bundle's updated keys, write them at its end.

:class:`OnlineStoreWrites` lives inside the customer and terminal stages (no extra Beam stage:
on the local runner each stage costs per bundle). ``updated(key, state)`` remembers the latest
state object of each key touched in the bundle; ``finish_bundle()`` encodes each once and hands
them to this process's :class:`~streaming.store.redis_store.StoreWriter` as one pipeline. The
writer never blocks the bundle on an unreachable Redis (it retries in the background), and
its counts become Beam metrics of the stage: ``online_store_writes``, ``online_store_stale``,
``online_store_failures`` and the ``online_store_waiting`` gauge.

Without a URL every method is a no-op.
"""

from __future__ import annotations

import time

from apache_beam.metrics import Metrics

from streaming.features.spec import FeatureSpec
from streaming.store.encoding import encode_state
from streaming.store.redis_store import StoreConfig, writer_for


class OnlineStoreWrites:
    """Per-bundle writes of one stage's key states (``kind``: "customer" or "terminal")."""

    def __init__(self, namespace, kind: str, url: str | None, spec: FeatureSpec, allowed_lateness_days: float):
        if kind not in ("customer", "terminal"):
            raise ValueError(f"kind must be customer or terminal, got {kind!r}")
        self.kind = kind
        self.config = StoreConfig.for_spec(url, spec, allowed_lateness_days) if url else None
        self._dirty: dict | None = None
        if self.config is not None:
            self._writes = Metrics.counter(namespace, "online_store_writes")
            self._stale = Metrics.counter(namespace, "online_store_stale")
            self._failures = Metrics.counter(namespace, "online_store_failures")
            self._waiting = Metrics.gauge(namespace, "online_store_waiting")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_dirty"] = None
        return state

    def start_bundle(self) -> None:
        if self.config is not None:
            self._dirty = {}

    def updated(self, key: str, state) -> None:
        """``state`` is now the latest state of ``key`` (encoded at the end of the bundle)."""
        dirty = self._dirty
        if dirty is not None:
            dirty[key] = state

    def finish_bundle(self) -> None:
        dirty, config = self._dirty, self.config
        if config is None:
            return
        self._dirty = {}
        writer = writer_for(config, self.kind)
        if dirty:
            now_ms = time.time_ns() // 1_000_000
            name = config.customer_key if self.kind == "customer" else config.terminal_key
            writer.write({name(key): encode_state(state, written_at_ms=now_ms) for key, state in dirty.items()})
        stats = writer.take_stats()
        if stats.written:
            self._writes.inc(stats.written)
        if stats.stale:
            self._stale.inc(stats.stale)
        if stats.failures:
            self._failures.inc(stats.failures)
        self._waiting.set(stats.waiting)
