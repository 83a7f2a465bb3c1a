"""How long after a transaction's score its state is visible in the online store (issue 12's visibility lag).

:class:`VisibilityProbe` watches sampled transactions from before they are published (their id,
card and terminal: :meth:`~VisibilityProbe.watch`), polling Redis in a thread of its own until
both keys hold a state that contains the transaction; the job's output for it (score or
features message) brings its publish time (:meth:`~VisibilityProbe.published`). The lag of a
sample is the ``written_at_ms`` of the later of the two values that first contained it (the
stream's wall clock when it wrote them) minus the output's publish time:

* when a poll saw the transaction missing before a later one saw it (``exact``: nearly always,
  since polls are much more frequent than a key's writes), that value is the very write that
  made it visible, so the lag is exact to the write's few milliseconds;
* otherwise (visible on the first poll, or rewritten between two polls) it is an upper bound;
* negative lags are states written before the output was published (the stages write the
  store at the end of their bundle, before the scoring stage publishes).

Clocks: the job's and the emulator's wall clocks on the same machine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from streaming.features.spec import FeatureSpec
from streaming.store.redis_store import StoreConfig, StoreReader, StoreUnavailableError


@dataclass
class _Sample:
    transaction_id: str
    customer_id: str
    terminal_id: str
    polls: int = 0


@dataclass
class VisibilitySummary:
    samples: int
    visible: int
    missing: int                     # published but not visible within the probe's timeout
    exact: int                       # seen missing first: the lag is that of the write that made it visible
    before_output: int               # visible before the output was published (lag <= 0)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    lags_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "lags_ms"}


class VisibilityProbe:
    """Poll the store for sampled outputs until their transaction is visible (see the module docs)."""

    def __init__(self, url: str, spec: FeatureSpec, allowed_lateness_days: float, *, interval: float = 0.01):
        self.reader = StoreReader(StoreConfig.for_spec(url, spec, allowed_lateness_days), spec, timeout=1.0)
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: list[_Sample] = []
        self._visible: dict[str, tuple[float, bool]] = {}  # transaction id -> (written ms, exact)
        self._published: dict[str, float] = {}  # transaction id -> publish time of its output (ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="visibility-probe", daemon=True)
        self._thread.start()

    def watch(self, transaction_id: str, customer_id: str, terminal_id: str) -> None:
        """Poll for this transaction until both its keys contain it (call before it is published)."""
        with self._lock:
            self._pending.append(_Sample(str(transaction_id), str(customer_id), str(terminal_id)))

    def published(self, transaction_id: str, published_s: float) -> None:
        """The job's output for a watched transaction was published at ``published_s`` (epoch seconds)."""
        with self._lock:
            self._published.setdefault(str(transaction_id), published_s * 1e3)

    @property
    def watched(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._visible)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """One round: fetch every pending sample's two keys in one MGET, settle those now visible."""
        with self._lock:
            batch = list(self._pending)
        if not batch:
            return
        try:
            values = self.reader.fetch_many([(s.customer_id, s.terminal_id) for s in batch])
        except StoreUnavailableError:
            return
        done = set()
        for sample, (c_value, t_value) in zip(batch, values):
            sample.polls += 1
            try:
                customer = self.reader.decode(c_value, "customer")
                terminal = self.reader.decode(t_value, "terminal")
            except StoreUnavailableError:
                continue
            if customer is None or terminal is None:
                continue
            tid = sample.transaction_id
            if customer.state.seen(tid) and terminal.state.seen(tid):
                written = max(customer.written_at_ms, terminal.written_at_ms)
                self._visible[tid] = (float(written), sample.polls > 1)
                done.add(id(sample))
        if done:
            with self._lock:
                self._pending = [s for s in self._pending if id(s) not in done]

    def close(self, timeout: float = 5.0) -> VisibilitySummary:
        """Wait up to ``timeout`` s for the published samples still invisible, stop, and summarise
        the samples whose output was published (the others are not counted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not any(s.transaction_id in self._published for s in self._pending):
                    break
            time.sleep(self.interval)
        self._stop.set()
        self._thread.join(5.0)
        with self._lock:
            published = dict(self._published)
            missing = sum(1 for s in self._pending if s.transaction_id in published)
            lags = [(self._visible[t][0] - ms, self._visible[t][1]) for t, ms in published.items() if t in self._visible]
            offered = len(lags) + missing
        values = np.array([lag for lag, _ in lags], dtype=float)

        def pct(q):
            return float(np.percentile(values, q)) if len(values) else float("nan")

        return VisibilitySummary(offered, len(lags), missing, sum(1 for _, e in lags if e),
                                 int((values <= 0).sum()), pct(50), pct(90), pct(99),
                                 float(values.max()) if len(values) else float("nan"), values.tolist())


__all__ = ["VisibilityProbe", "VisibilitySummary"]
