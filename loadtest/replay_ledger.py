"""The arithmetic of a replay load test: the open-loop plan, the per-event ledger, and what they add up to.

No Pub/Sub, no gRPC, no threads of its own: everything here takes times as numbers, so it is
tested with constructed cases and a fake clock.

* :func:`plan` turns the recorded timeline (transactions and their labels, in publish order)
  into *intended* send times: ``--speedup X`` keeps the recorded spacing divided by X; a rate
  (one stage, or step-load stages of increasing rate) gives transaction ``j`` of a stage the
  time ``stage start + j / rate``. Labels take no slot: each goes out just before the next
  transaction. Labels that would come after the last replayed transaction are not sent (the
  replay ends with its traffic).
* :class:`Ledger` records per transaction id its intended send time, its publish
  acknowledgement, the arrival of its score (first and repeats) and of a dead letter.
  **Latency is measured from the intended send time** (open loop): when the publisher or the
  client library falls behind, the delay is counted, not hidden (no coordinated omission).
* An event is *scored* when its first score arrived within ``timeout`` of its intended send time,
  *dead-lettered* when a dead letter names it, and otherwise *lost*; a score that came after the
  timeout counts as lost and is reported as *late*. Every score after an id's first is a
  *duplicate*; scores and dead letters for ids this run did not send are *foreign*.
* Latency percentiles are nearest-rank (:func:`loadtest.grpc_loadgen.percentile`) over the
  scored and lost events, **a lost event counting as infinitely late**; ``None`` in a result
  means that percentile lies beyond the timeout.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.grpc_loadgen import percentile

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
TRANSACTION, LABEL = 0, 1  # as in streaming.io.publish


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Stage:
    """``rate`` transactions per second for ``seconds`` (``None``: until the data runs out)."""

    rate: float
    seconds: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"stage rate must be a finite number > 0, got {self.rate}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"stage seconds must be a finite number > 0, got {self.seconds}")

    @property
    def size(self) -> float:
        """Transactions in the stage (``inf`` when unbounded)."""
        return math.inf if self.seconds is None else math.ceil(self.seconds * self.rate - 1e-9)


def step_stages(start: float, *, factor: float | None = None, increment: float | None = None,
                seconds: float, count: int) -> list[Stage]:
    """``count`` stages of ``seconds`` each, from ``start`` per second, multiplied by ``factor`` or raised by ``increment``."""
    if (factor is None) == (increment is None):
        raise ValueError("exactly one of factor and increment must be given")
    if factor is not None and not factor > 1:
        raise ValueError(f"step factor must be > 1, got {factor}")
    if increment is not None and not increment > 0:
        raise ValueError(f"step increment must be > 0, got {increment}")
    rates = [start * factor ** k if factor is not None else start + k * increment for k in range(count)]
    return [Stage(round(r, 6), seconds) for r in rates]


@dataclass(frozen=True)
class Planned:
    """One message to send: ``offset`` seconds after the start, in ``stage``."""

    offset: float
    stage: int
    kind: int
    event: object


def plan(timeline: Iterable[tuple], *, speedup: float | None = None,
         stages: Sequence[Stage] | None = None) -> Iterator[Planned]:
    """Intended send times for ``timeline`` items ``(publish time ns, kind, ..., event)`` in publish order.

    Exactly one of ``speedup`` and ``stages``. Stops when the stages are used up or the
    transactions run out; labels after the last planned transaction are dropped.
    """
    if (speedup is None) == (stages is None):
        raise ValueError("exactly one of speedup and stages must be given")
    if speedup is not None and not (math.isfinite(speedup) and speedup > 0):
        raise ValueError(f"speedup must be a finite number > 0, got {speedup}")
    if stages is not None and not stages:
        raise ValueError("at least one stage is needed")
    pending_labels: list = []
    first_ns = None
    k, j, stage_start = 0, 0, 0.0  # stage, transaction within it, its start offset
    for item in timeline:
        t_ns, kind, event = item[0], item[1], item[-1]
        if kind != TRANSACTION:
            pending_labels.append(event)
            continue
        if speedup is not None:
            first_ns = t_ns if first_ns is None else first_ns
            offset, stage = (t_ns - first_ns) / 1e9 / speedup, 0
        else:
            while j >= stages[k].size:
                stage_start += stages[k].seconds
                k, j = k + 1, 0
                if k == len(stages):
                    return
            offset, stage = stage_start + j / stages[k].rate, k
            j += 1
        for label in pending_labels:
            yield Planned(offset, stage, LABEL, label)
        pending_labels.clear()
        yield Planned(offset, stage, TRANSACTION, event)


def stage_windows(stages: Sequence[Stage]) -> list[tuple[float, float]]:
    """``(start, end)`` offsets of each stage (``end`` is ``inf`` for an unbounded one)."""
    out, start = [], 0.0
    for s in stages:
        end = start + (s.seconds if s.seconds is not None else math.inf)
        out.append((start, end))
        start = end
    return out


# --------------------------------------------------------------------------- the ledger


@dataclass(frozen=True)
class Outcome:
    """The ledger as arrays, one entry per sent transaction (times in seconds; ``nan`` = never)."""

    ids: list
    stage: np.ndarray
    intended: np.ndarray
    acked: np.ndarray
    arrival: np.ndarray      # first score: Pub/Sub publish time of the score message (or receive time)
    received: np.ndarray     # first score: when this client pulled it
    dead: np.ndarray
    score_count: np.ndarray
    timeout: float
    duplicates: int
    foreign_scores: int
    foreign_dead_letters: int

    @property
    def latency(self) -> np.ndarray:
        """End-to-end latency (first score arrival − intended send), seconds; ``nan`` when never scored."""
        return self.arrival - self.intended

    @property
    def is_scored(self) -> np.ndarray:
        return self.latency <= self.timeout  # nan compares False

    @property
    def is_dead(self) -> np.ndarray:
        return ~self.is_scored & ~np.isnan(self.dead)

    @property
    def is_lost(self) -> np.ndarray:
        return ~self.is_scored & ~self.is_dead

    @property
    def is_late(self) -> np.ndarray:
        return self.is_lost & ~np.isnan(self.arrival)

    def accounting(self) -> dict:
        return {"sent": len(self.ids), "published": int(np.sum(~np.isnan(self.acked))),
                "scored": int(self.is_scored.sum()), "dead_lettered": int(self.is_dead.sum()),
                "lost": int(self.is_lost.sum()), "late": int(self.is_late.sum()),
                "duplicates": self.duplicates, "duplicated_ids": int(np.sum(self.score_count > 1)),
                "foreign_scores": self.foreign_scores, "foreign_dead_letters": self.foreign_dead_letters}


class Ledger:
    """Per transaction id: intended send, publish ack, score arrivals, dead letter. Thread-safe."""

    def __init__(self, timeout: float):
        if not (timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._stage: list[int] = []
        self._intended: list[float] = []
        self._acked: list[float] = []
        self._arrival: list[float] = []
        self._received: list[float] = []
        self._dead: list[float] = []
        self._count: list[int] = []
        self._unresolved = 0
        self.duplicates = self.foreign_scores = self.foreign_dead_letters = 0

    def __len__(self) -> int:
        return len(self._ids)

    def sent(self, tid: str, intended: float, stage: int = 0) -> None:
        with self._lock:
            if tid in self._index:
                raise ValueError(f"transaction id {tid!r} sent twice: ids in a replay must be unique")
            self._index[tid] = len(self._ids)
            for column, value in ((self._ids, tid), (self._stage, stage), (self._intended, intended),
                                  (self._acked, math.nan), (self._arrival, math.nan), (self._received, math.nan),
                                  (self._dead, math.nan), (self._count, 0)):
                column.append(value)
            self._unresolved += 1

    def acked(self, tid: str, at: float) -> None:
        with self._lock:
            i = self._index.get(tid)
            if i is not None and math.isnan(self._acked[i]):
                self._acked[i] = at

    def scored(self, tid: str, arrival: float, received: float | None = None) -> bool:
        """Record a score message; True when it is the first for an id this run sent."""
        with self._lock:
            i = self._index.get(tid)
            if i is None:
                self.foreign_scores += 1
                return False
            self._count[i] += 1
            if self._count[i] > 1:
                self.duplicates += 1
                return False
            self._arrival[i] = arrival
            self._received[i] = arrival if received is None else received
            if math.isnan(self._dead[i]):
                self._unresolved -= 1
            return True

    def dead_lettered(self, tid: str | None, at: float) -> None:
        with self._lock:
            i = self._index.get(tid) if tid else None
            if i is None:
                self.foreign_dead_letters += 1
                return
            if math.isnan(self._dead[i]):
                self._dead[i] = at
                if self._count[i] == 0:
                    self._unresolved -= 1

    def unresolved(self) -> int:
        """Sent events with neither a score nor a dead letter yet."""
        with self._lock:
            return self._unresolved

    def outstanding(self, now: float) -> int:
        """Unresolved events still within their timeout (worth waiting for)."""
        with self._lock:
            if not self._unresolved:
                return 0
            intended, arrival, dead = (np.asarray(c, dtype=float) for c in (self._intended, self._arrival, self._dead))
        return int(np.sum(np.isnan(arrival) & np.isnan(dead) & (intended + self.timeout > now)))

    def outcome(self) -> Outcome:
        with self._lock:
            f = lambda c: np.asarray(c, dtype=float)  # noqa: E731
            return Outcome(list(self._ids), np.asarray(self._stage, dtype=int), f(self._intended), f(self._acked),
                           f(self._arrival), f(self._received), f(self._dead), np.asarray(self._count, dtype=int),
                           self.timeout, self.duplicates, self.foreign_scores, self.foreign_dead_letters)


# --------------------------------------------------------------------------- figures


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def latency_stats(latencies_s: np.ndarray, lost: int = 0) -> dict:
    """Percentiles (ms) of ``latencies_s`` with ``lost`` more events counted as infinitely late."""
    values = np.sort(np.concatenate([np.asarray(latencies_s, dtype=float), np.full(lost, math.inf)]))
    out = {"count": int(len(values))}
    for q in PERCENTILES:
        out[f"p{q:g}"] = _finite(percentile(values, q) * 1e3) if len(values) else None
    out["max"] = _finite(values[-1] * 1e3) if len(values) else None
    finite = values[np.isfinite(values)]
    out["mean"] = float(finite.mean() * 1e3) if len(finite) else None
    return out


def latency_figures(o: Outcome) -> dict:
    """End to end (intended send → score), and its two legs: publish (intended → ack) and pipeline (ack → score)."""
    scored, lost = o.is_scored, int(o.is_lost.sum())
    e2e = o.latency[scored]
    e2e_received = (o.received - o.intended)[scored]
    publish = (o.acked - o.intended)[~np.isnan(o.acked)]
    pipeline = (o.arrival - o.acked)[scored & ~np.isnan(o.acked)]
    return {"e2e": latency_stats(e2e, lost), "e2e_received": latency_stats(e2e_received, lost),
            "publish": latency_stats(publish), "pipeline": latency_stats(pipeline)}


def _count_le(sorted_times: np.ndarray, t) -> np.ndarray:
    return np.searchsorted(sorted_times, t, side="right")


def _count_lt(sorted_times: np.ndarray, t) -> np.ndarray:
    return np.searchsorted(sorted_times, t, side="left")


def series(o: Outcome, bucket: float, end: float | None = None) -> dict:
    """Per ``bucket`` seconds since the start (offset 0; buckets ``[a, b)``): rates in and out, latency by send time, backlog.

    ``sent_tps``: intended sends; ``published_tps``: publish acks; ``scored_tps``: first score
    arrivals. ``p50_ms``...: latency of the events *intended* in the bucket (lost = infinitely
    late). ``backlog``: at the bucket's end, events acknowledged by Pub/Sub but neither scored
    (late scores included) nor dead-lettered; ``publisher_lag``: events due by then but not yet acknowledged.
    """
    if not bucket > 0:
        raise ValueError(f"bucket must be > 0 seconds, got {bucket}")
    if end is None:
        times = np.concatenate([o.intended, o.acked, o.arrival, o.dead])
        times = times[np.isfinite(times)]
        end = float(times.max()) if len(times) else 0.0
    n = max(1, math.ceil(end / bucket - 1e-9))
    edges = np.arange(n + 1) * bucket
    count_edges = edges.copy()
    count_edges[-1] += 1e-9  # an event at exactly ``end`` is in the last bucket
    scored = o.is_scored
    out_time = _left_at(o)
    srt = lambda a: np.sort(a[np.isfinite(a)])  # noqa: E731
    intended, acked, arrived, done = srt(o.intended), srt(o.acked), srt(np.where(scored, o.arrival, np.nan)), srt(out_time)
    rate = lambda s: (np.diff(_count_lt(s, count_edges)) / bucket).tolist()  # noqa: E731
    res = {"bucket_s": bucket, "t": edges[1:].tolist(), "sent_tps": rate(intended), "published_tps": rate(acked),
           "scored_tps": rate(arrived)}
    which = np.clip(np.floor(o.intended / bucket).astype(int), 0, n - 1) if len(o.ids) else np.zeros(0, int)
    lat, lost = o.latency, o.is_lost
    for q in (50.0, 90.0, 99.0):
        res[f"p{q:g}_ms"] = []
    for b in range(n):
        sel = which == b
        stats = latency_stats(lat[sel & scored], int(np.sum(sel & lost)))
        for q in (50.0, 90.0, 99.0):
            res[f"p{q:g}_ms"].append(stats[f"p{q:g}"])
    ends = count_edges[1:]
    res["backlog"] = np.maximum(_count_lt(acked, ends) - _count_lt(done, ends), 0).tolist()
    res["publisher_lag"] = np.maximum(_count_lt(intended, ends) - _count_lt(acked, ends), 0).tolist()
    return res


def histogram(o: Outcome, bins: int = 40) -> dict:
    """End-to-end latencies of scored events in log-spaced bins (ms)."""
    ms = o.latency[o.is_scored] * 1e3
    ms = ms[ms > 0]
    if not len(ms):
        return {"edges_ms": [], "counts": []}
    lo, hi = math.log10(ms.min()), math.log10(ms.max())
    edges = np.logspace(lo, hi if hi > lo else lo + 1, bins + 1)
    edges[0], edges[-1] = ms.min(), max(ms.max(), edges[-1])  # exact ends: rounding must not drop the extremes
    counts, _ = np.histogram(ms, bins=edges)
    return {"edges_ms": edges.tolist(), "counts": counts.tolist()}


def _left_at(o: Outcome) -> np.ndarray:
    """When each event left the system: its first score (even a late one), else its dead letter, else ``nan``."""
    return np.where(~np.isnan(o.arrival), o.arrival, o.dead)


def pending_at(o: Outcome, times: np.ndarray) -> np.ndarray:
    """Events due to be sent by each time but neither scored nor dead-lettered by then (open loop)."""
    out_time = _left_at(o)
    due, done = np.sort(o.intended), np.sort(out_time[np.isfinite(out_time)])
    return _count_le(due, times) - _count_le(done, times)


def backlog_growing(o: Outcome, start: float, end: float, rate: float, *, samples: int = 20,
                    min_events: float = 10.0, share: float = 0.2) -> tuple[bool, float]:
    """Whether the open-loop backlog kept growing through the second half of ``[start, end)``.

    A least-squares line through the pending count at ``samples`` points of the second half;
    growing when its rise over that half exceeds both ``min_events`` and ``share`` of the
    events sent meanwhile, i.e. output ran below ``1 - share`` of input. Returns (growing, slope per s).
    """
    times = np.linspace(start + (end - start) / 2, end, samples)
    pending = pending_at(o, times).astype(float)
    slope = float(np.polyfit(times - times[0], pending, 1)[0]) if np.ptp(times) > 0 else 0.0
    rise = slope * (end - start) / 2
    return bool(rise > max(min_events, share * rate * (end - start) / 2)), slope


def slo_certainly_breached(o: Outcome, stage: int, planned: float, slo_s: float, now: float, q: float = 99.0) -> bool:
    """Whether the stage's p``q`` must exceed ``slo_s`` whatever its unresolved events do.

    Nearest rank: the p99 of ``n`` events exceeds the SLO once ``n - ceil(q/100 n) + 1`` of them
    are known to: scored later than the SLO, or still unresolved and older than it.
    """
    sel = o.stage == stage
    if not np.isfinite(planned) or planned <= 0:
        return False
    over_scored = np.sum(sel & (o.latency > slo_s))
    waiting = sel & np.isnan(o.arrival) & np.isnan(o.dead) & (now - o.intended > slo_s)
    allowed = planned - math.ceil(q / 100.0 * planned)
    return bool(over_scored + np.sum(waiting) > allowed)


def assess_stage(o: Outcome, stage: int, rate: float, window: tuple[float, float], slo_ms: float) -> dict:
    """One stage's figures and verdict: sustainable when its p99 ≤ SLO and its backlog did not keep growing."""
    start, end = window
    sel = o.stage == stage
    scored, lost, dead = sel & o.is_scored, sel & o.is_lost, sel & o.is_dead
    stats = latency_stats(o.latency[scored], int(lost.sum()))
    span = end - start
    growing, slope = backlog_growing(o, start, end, rate)
    p99 = stats["p99"]
    reasons = []
    if p99 is None or p99 > slo_ms:
        reasons.append(f"p99 {'beyond the timeout' if p99 is None else f'{p99:,.0f} ms'} > SLO {slo_ms:g} ms")
    if growing:
        reasons.append(f"backlog kept growing ({slope:+.1f} events/s over the stage's second half)")
    return {"stage": stage, "rate_tps": rate, "start_s": start, "end_s": end, "sent": int(sel.sum()),
            "scored": int(scored.sum()), "dead_lettered": int(dead.sum()), "lost": int(lost.sum()),
            "in_tps": float(np.sum((o.acked >= start) & (o.acked < end)) / span),
            "out_tps": float(np.sum((o.arrival >= start) & (o.arrival < end) & o.is_scored) / span),
            "backlog_slope_per_s": slope, "latency_ms": stats, "sustainable": not reasons,
            "reason": "; ".join(reasons) or "ok"}


def highest_sustainable(assessed: Sequence[dict]) -> dict | None:
    """The last stage of the unbroken run of sustainable stages from the first (``None`` if the first failed)."""
    best = None
    for s in assessed:
        if not s["sustainable"]:
            break
        best = s
    return best
