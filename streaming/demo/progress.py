"""What the demo has seen of the job's outputs: counts, end-to-end latency, AP — and its progress line."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import orjson

from models.online import average_precision
from models.served import ServedFigures
from streaming.io.pubsub_local import PubSubEmulator, pull_all


@dataclass
class Progress:
    """What the monitor has seen; updated from the publisher and monitor threads."""

    truth: dict = field(default_factory=dict, repr=False)  # transaction id -> TX_FRAUD
    published_transactions: int = 0
    published_labels: int = 0
    malformed: int = 0
    scored: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    alerts: int = 0
    online_snapshots: int = 0
    online_version: str | None = None
    online_prequential_ap: float | None = None  # the learner's own (predict, then learn) AP at its last snapshot
    online_served_versions: set = field(default_factory=set, repr=False)  # carried by scores
    sampled: dict = field(default_factory=dict, repr=False)  # score bodies (up to 20,000), for the raw check
    drifts: int = 0
    sent_at: dict = field(default_factory=dict, repr=False)
    latencies_ms: list = field(default_factory=list, repr=False)
    seen: set = field(default_factory=set, repr=False)
    batch_scores: list = field(default_factory=list, repr=False)  # (score, label)
    online_scores: list = field(default_factory=list, repr=False)
    paired_batch_scores: list = field(default_factory=list, repr=False)  # XGBoost's, where an online score exists
    cards: dict = field(default_factory=dict, repr=False)  # transaction id -> CUSTOMER_ID, for card precision
    served: ServedFigures = field(default_factory=ServedFigures, repr=False)  # AP and CP@100 as served, per day
    online_starts: list = field(default_factory=list, repr=False)  # the learner's online_start events
    warmup: dict = field(default_factory=dict, repr=False)  # warm-up transaction id -> time scored (or None)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def expected(self) -> int:
        return self.published_transactions + self.malformed

    @property
    def done(self) -> int:
        return self.scored + self.dead_lettered

    def percentile(self, q: float) -> float | None:
        import numpy as np

        with self.lock:
            return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def ap(self, which: str) -> float | None:
        """AP of ``"batch"`` (XGBoost, all), ``"online"`` or ``"paired"`` (XGBoost, where online exists)."""
        with self.lock:
            pairs = list({"batch": self.batch_scores, "online": self.online_scores,
                          "paired": self.paired_batch_scores}[which])
        if not pairs or not any(y for _, y in pairs):
            return None
        return average_precision([s for s, _ in pairs], [y for _, y in pairs])


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}".removeprefix("0")


def status_line(p: Progress, elapsed: float, width: int = 79) -> str:
    """One progress line of at most ``width`` characters (an 80-column terminal does not wrap it):
    transactions published | scored, dead-lettered, still awaited | e2e p50/p99 | AP XGBoost/online."""
    line = (f"{elapsed:4.0f}s in {p.published_transactions:,}"
            f" | out {p.scored:,} dead {p.dead_lettered} left {max(p.expected - p.done, 0):,}"
            f" | e2e {_latency(p.percentile(50))}/{_latency(p.percentile(99))}"
            f" | AP {_ap(p.ap('batch'))}/{_ap(p.ap('online'))}")
    return line if len(line) <= width else line[:width - 1] + "…"


def on_score(progress: Progress, body: dict, now: float) -> None:
    tid = body["transaction_id"]
    with progress.lock:
        if tid in progress.warmup:
            progress.warmup[tid] = now
            return
        if tid in progress.seen:
            progress.duplicates += 1
            return
        progress.seen.add(tid)
        progress.scored += 1
        if len(progress.sampled) < 20_000:
            progress.sampled[tid] = body
        sent = progress.sent_at.pop(tid, None)
        if sent is not None:
            progress.latencies_ms.append((now - sent) * 1000)
        label = progress.truth.get(tid)
        if label is not None:
            progress.batch_scores.append((body["score"], label))
            if body.get("online_score") is not None:
                progress.online_scores.append((body["online_score"], label))
                progress.paired_batch_scores.append((body["score"], label))
                progress.online_served_versions.add(body.get("online_model_version"))
            progress.served.add(body, label=label, card=progress.cards.get(tid))


def served_summary(progress: Progress) -> dict:
    """The online model next to XGBoost as served (overall and per event day), its prequential AP, its start."""
    return {"overall": progress.served.overall(), "per_day": progress.served.per_day(),
            "online_prequential_ap": progress.online_prequential_ap,
            "online_start": [{k: e.get(k) for k in ("learner_key", "start", "version", "labels", "refused")}
                             for e in progress.online_starts]}


def watch_outputs(emulator: PubSubEmulator, progress: Progress, stop: threading.Event, on_body=None) -> None:
    """Pull the output subscriptions until ``stop``; record counts, latencies and scores (each
    score's body also to ``on_body``, when given)."""
    subscriber = emulator.subscriber_client()
    path = emulator.subscription_path
    try:
        while not stop.is_set():
            got = 0
            for received in pull_all(subscriber, path("scores-monitor"), 1000, timeout=0.3):
                got += 1
                body = orjson.loads(received.data)
                on_score(progress, body, time.monotonic())
                if on_body is not None:
                    on_body(body)
            for _ in pull_all(subscriber, path("dead-letter-monitor"), 1000, timeout=0.05):
                got += 1
                with progress.lock:
                    progress.dead_lettered += 1
            for _ in pull_all(subscriber, path("alerts-monitor"), 1000, timeout=0.05):
                with progress.lock:
                    progress.alerts += 1
            for received in pull_all(subscriber, path("monitoring-monitor"), 1000, timeout=0.05):
                event = orjson.loads(received.data)
                with progress.lock:
                    if event["kind"] == "online_snapshot":
                        progress.online_snapshots += 1
                        progress.online_version = event["version"]
                        progress.online_prequential_ap = event.get("average_precision")
                    elif event["kind"] == "online_start":
                        progress.online_starts.append(event)
                    elif event["kind"] == "drift":
                        progress.drifts += 1
            if not got:
                stop.wait(0.1)
    finally:
        subscriber.close()
