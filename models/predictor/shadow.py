"""Shadow scoring: the registry's ``challenger`` scored next to production, never the decision.

When the registry's ``challenger`` alias points at a version (``streamscore retrain --shadow``
puts a challenger that passed the gate there; ``streamscore controller`` promotes it after
enough shadow events), the predictor loads it like the production model (same checks, same
hot reload: :class:`~models.predictor.lifecycle.ModelWatcher` with ``alias="challenger"``) and
hands it to a :class:`ShadowScorer`. Every scored request (features or raw transaction, unary
or stream, and KServe's rows) is then also offered to the shadow with its production score:

* :meth:`ShadowScorer.observe` only appends ``(values, transaction id, production score,
  production version)`` to a bounded list: the response is built from the production result
  alone, so the shadow can never change the decision or the response's model version;
* the list is scored with the challenger in one call after ``flush_seconds`` (a timer on the
  event loop, after the responses of that turn were handed to gRPC), or on the loop's next
  turn once it holds ``batch_rows`` rows: off the response path (never inside a request's
  own handling), and one prediction for many requests;
* a full list (``max_pending``) drops the newest shadow work and counts it — the shadow must
  never cost production; a challenger that raises is counted and logged, never propagated.

What is recorded per shadowed event: the Prometheus series of :class:`ShadowStats` (scores of
both models as histograms, events, alerts above ``alert_threshold``, decisions that would
differ) and, with ``log_dir``, one JSON line in a bounded log::

    {"at": 1765100000.123, "transaction_id": "t-1", "production_version": "v1",
     "production_score": 0.01, "shadow_version": "v2", "shadow_score": 0.02}

in ``LOG_DIR/shadow-<host>-<pid>.jsonl`` (one file per predictor process; several replicas
may share a directory). When the file passes ``log_max_bytes`` it is renamed to ``.jsonl.1``
(replacing the previous one): at most twice ``log_max_bytes`` on disk per process.
``streamscore controller --shadow-log DIR`` counts these lines to decide on promotion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import orjson

from models.predictor.core import Model

log = logging.getLogger(__name__)

#: The registry alias of the model served in shadow.
CHALLENGER = "challenger"
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LOG_PREFIX = "shadow-"


@dataclasses.dataclass(frozen=True)
class ShadowSettings:
    """``serve``'s shadow flags: where the log goes (None: metrics only) and its bound, the alert
    threshold the decisions are compared at, and the batching of the shadow's work."""

    log_dir: Path | None = None
    log_max_bytes: int = 64 * 1024 * 1024
    alert_threshold: float = 0.5
    flush_seconds: float = 0.005
    batch_rows: int = 256
    max_pending: int = 65536

    def __post_init__(self) -> None:
        if self.log_max_bytes < 4096:
            raise ValueError(f"shadow log_max_bytes must be >= 4096, got {self.log_max_bytes}")
        if not 0.0 < self.alert_threshold < 1.0:
            raise ValueError(f"shadow alert_threshold must be in (0, 1), got {self.alert_threshold!r}")
        if not 0.0 <= self.flush_seconds <= 1.0:
            raise ValueError(f"shadow flush_seconds must be in [0, 1], got {self.flush_seconds!r}")
        if self.batch_rows < 1 or self.max_pending < self.batch_rows:
            raise ValueError(f"shadow batch_rows must be >= 1 and <= max_pending, got {self.batch_rows}, "
                             f"{self.max_pending}")


class ShadowStats:
    """What the shadow saw, as plain counters (kept by the event-loop thread; exposed at scrape time)."""

    def __init__(self):
        from models.predictor.metrics import FastHistogram

        self._histogram = lambda: FastHistogram(SCORE_BUCKETS)
        #: (role "production"/"shadow", version) -> score histogram of shadowed events
        self.scores: dict[tuple[str, str], object] = {}
        #: shadow version -> events scored / shadow alerts / decisions that differ from production's
        self.events: dict[str, int] = {}
        self.alerts: dict[str, int] = {}
        self.disagreements: dict[str, int] = {}
        self.dropped = 0  # events not shadowed: the pending list was full
        self.failures = 0  # shadow predictions that raised (their events are not shadowed)

    def histogram(self, role: str, version: str):
        key = (role, version)
        histogram = self.scores.get(key)
        if histogram is None:
            histogram = self.scores[key] = self._histogram()
        return histogram


class ShadowLog:
    """The bounded JSON-lines log of one predictor process (see the module docstring)."""

    def __init__(self, directory: Path, max_bytes: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{LOG_PREFIX}{socket.gethostname()}-{os.getpid()}.jsonl"
        self.max_bytes = max_bytes
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def write(self, lines: bytes) -> None:
        if self._size + len(lines) > self.max_bytes and self._size:
            self._file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._file = open(self.path, "ab")
            self._size = 0
        self._file.write(lines)
        self._file.flush()  # readers (the controller) see whole lines only
        self._size += len(lines)

    def close(self) -> None:
        self._file.close()


class ShadowScorer:
    """Score what production scored with the challenger, later, in batches (module docstring)."""

    def __init__(self, n_features: int, settings: ShadowSettings = ShadowSettings(), *,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.n_features = n_features
        self.stats = ShadowStats()
        self.clock = clock
        self._model: Model | None = None
        self._pending: list[tuple[Sequence[float], str, float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a flush is scheduled for the loop's next turn (a full batch)
        self._log = ShadowLog(settings.log_dir, settings.log_max_bytes) if settings.log_dir is not None else None

    @property
    def model(self) -> Model | None:
        return self._model

    def swap(self, model: Model | None) -> None:
        """Shadow ``model`` from now on (None: no shadow). Work already queued is scored with it."""
        self._model = model

    def observe(self, values: Sequence[float], transaction_id: str, score: float, version: str) -> None:
        """Offer one scored request (its feature values in model order) to the shadow; never raises
        for a full queue, and does nothing without a challenger or when it is production itself."""
        model = self._model
        if model is None or model.version == version:
            return
        pending = self._pending
        if len(pending) >= self.settings.max_pending:
            self.stats.dropped += 1
            return
        pending.append((values, transaction_id, float(score), version))
        if self._timer is None or (len(pending) == self.settings.batch_rows and not self._soon):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (in-process callers): score it now
                self.flush()
                return
            if self._timer is None:
                self._timer = loop.call_later(self.settings.flush_seconds, self.flush)
            else:  # a full batch: score it on the loop's next turn, not in this request's
                self._soon = True
                loop.call_soon(self.flush)

    def observe_many(self, X: np.ndarray, scores: np.ndarray, version: str, transaction_ids: Sequence[str] = ()) -> None:
        """Offer the rows of one matrix request (KServe): each row is one event."""
        for i in range(len(X)):
            self.observe(X[i], transaction_ids[i] if i < len(transaction_ids) else "", float(scores[i]), version)

    def flush(self) -> None:
        """Score the pending events with the challenger and record them (called by the timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = False
        batch, self._pending = self._pending, []
        model = self._model
        if not batch or model is None:
            return
        n = len(batch)
        X = np.fromiter(itertools.chain.from_iterable(item[0] for item in batch), np.float64,
                        count=n * self.n_features).reshape(n, self.n_features)
        try:
            shadow = model.predict(X)
        except Exception:  # noqa: BLE001 - the challenger must never cost production anything
            self.stats.failures += 1
            if self.stats.failures == 1 or self.stats.failures % 1000 == 0:
                log.exception("shadow model %s failed to predict (%d batches so far)", model.version,
                              self.stats.failures)
            return
        self._record(batch, shadow, model.version)

    def _record(self, batch, shadow: np.ndarray, shadow_version: str) -> None:
        stats, threshold = self.stats, self.settings.alert_threshold
        production = np.fromiter((item[2] for item in batch), np.float64, count=len(batch))
        versions = {item[3] for item in batch}
        if len(versions) == 1:  # the usual case: one production version per batch
            stats.histogram("production", versions.pop()).observe_many(production)
        else:  # production was swapped while events were queued
            for version in versions:
                mine = np.fromiter((item[3] == version for item in batch), bool, count=len(batch))
                stats.histogram("production", version).observe_many(production[mine])
        stats.histogram("shadow", shadow_version).observe_many(shadow)
        alert = shadow > threshold
        stats.events[shadow_version] = stats.events.get(shadow_version, 0) + len(batch)
        stats.alerts[shadow_version] = stats.alerts.get(shadow_version, 0) + int(alert.sum())
        stats.disagreements[shadow_version] = (stats.disagreements.get(shadow_version, 0)
                                               + int((alert != (production > threshold)).sum()))
        if self._log is not None:
            at, dumps, newline = round(self.clock(), 3), orjson.dumps, orjson.OPT_APPEND_NEWLINE
            self._log.write(b"".join(
                dumps({"at": at, "transaction_id": tid, "production_version": version, "production_score": score,
                       "shadow_version": shadow_version, "shadow_score": s}, option=newline)
                for (_, tid, score, version), s in zip(batch, shadow.tolist())))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = []
        if self._log is not None:
            self._log.close()
