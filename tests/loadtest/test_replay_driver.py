"""The whole replay loop (publisher thread, consumer thread, step controller) against a simulated system.

The fake system is one server with a fixed capacity: it finishes each transaction ``1 / capacity``
seconds after the previous one and stamps the score with that time (as Pub/Sub stamps
``publish_time``), so the queueing it builds up is a property of the schedule, not of this
machine's speed. Outcomes asserted are counts and verdicts with wide margins, never timings.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import orjson

from loadtest import replay_ledger as rl
from loadtest.replay import namespaced, replay, wall_clock
from streaming.io.publish import TopicPaths


class FakeSystem:
    """Publisher and subscriber client in one: transactions in, scores out after a single-server queue."""

    def __init__(self, capacity: float, drop=(), duplicate=()):
        self.capacity, self.drop, self.duplicate = capacity, set(drop), set(duplicate)
        self.free_at = 0.0
        self.out: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()
        self.published = 0

    # publisher side
    def publish(self, topic, data, **attrs):
        body = orjson.loads(data)
        with self.lock:
            self.published += 1
            done = max(wall_clock(), self.free_at) + 1.0 / self.capacity
            self.free_at = done
            tid = body["transaction_id"]
            score = orjson.dumps({"transaction_id": tid, "score": 0.2, "model_version": "v", "features": {"a": 1.0}})
            if tid not in self.drop:
                self.out.append((done, score))
            if tid in self.duplicate:
                self.out.append((done + 0.01, score))
        future = Future()
        future.set_result(str(self.published))
        return future

    def resume_publish(self, topic, key):
        pass

    # subscriber side
    def pull(self, request, timeout, retry=None):
        now = wall_clock()
        with self.lock:
            ready = [m for m in self.out if m[0] <= now]
            self.out = [m for m in self.out if m[0] > now]
        if not ready:
            time.sleep(min(timeout, 0.02))
        return SimpleNamespace(received_messages=[
            SimpleNamespace(ack_id=str(i), message=SimpleNamespace(
                data=data, publish_time=dt.datetime.fromtimestamp(t, dt.UTC))) for i, (t, data) in enumerate(ready)])

    def acknowledge(self, request):
        pass


def _run(system, df, **kwargs):
    return replay(df, publisher=system, subscriber=system, topics=TopicPaths("projects/p/topics/tx"),
                  scores_path="projects/p/subscriptions/scores", dead_path=None, labels=False, ordering=False,
                  log=lambda *a: None, **kwargs)


def test_step_load_finds_the_highest_sustainable_rate_below_capacity(make_frame):
    # capacity 100/s; stages 20, 40, 80, 160/s of 1.5 s: the last one queues 60 events a second
    df = namespaced(make_frame(2000, seed=3), "s-")
    stages = rl.step_stages(20.0, factor=2.0, seconds=1.5, count=4)
    result = _run(FakeSystem(capacity=100.0), df, stages=stages, step_slo_ms=300.0, timeout=10.0, settle=0.5,
                  max_seconds=60.0)
    assert result.error is None
    verdicts = [(s["rate_tps"], s["sustainable"]) for s in result.assessed]
    assert verdicts == [(20.0, True), (40.0, True), (80.0, True), (160.0, False)]
    assert "p99" in result.assessed[-1]["reason"] and "backlog kept growing" in result.assessed[-1]["reason"]
    assert rl.highest_sustainable(result.assessed)["rate_tps"] == 80.0
    acc = result.outcome.accounting()
    assert acc["sent"] == sum(int(s.size) for s in stages) and acc["scored"] == acc["sent"] and acc["lost"] == 0


def test_step_load_stops_publishing_once_a_stage_fails(make_frame):
    df = namespaced(make_frame(3000, seed=4), "f-")
    stages = rl.step_stages(150.0, factor=2.0, seconds=1.0, count=5)  # over capacity from the first stage
    result = _run(FakeSystem(capacity=100.0), df, stages=stages, step_slo_ms=200.0, timeout=20.0, settle=0.3,
                  max_seconds=60.0)
    assert not result.assessed[0]["sustainable"] and len(result.assessed) == 1
    assert result.stop_reason.startswith("stage 0 (150 tx/s) not sustainable")
    assert result.outcome.accounting()["sent"] < sum(int(s.size) for s in stages[:3])  # it did not run on


def test_replay_counts_lost_and_duplicated_events(make_frame):
    df = namespaced(make_frame(60, seed=5), "d-")
    ids = list(df["TRANSACTION_ID"])
    system = FakeSystem(capacity=1000.0, drop={ids[7], ids[9]}, duplicate={ids[3]})
    result = _run(system, df, stages=[rl.Stage(200.0)], timeout=0.5, settle=0.3, max_seconds=30.0,
                  progress=True)  # the progress bar's code path too (drawn on stderr)
    acc = result.outcome.accounting()
    assert acc == {**acc, "sent": 60, "published": 60, "scored": 58, "lost": 2, "late": 0, "duplicates": 1,
                   "duplicated_ids": 1, "dead_lettered": 0, "foreign_scores": 0}
    assert set(result.scores) == set(ids) - {ids[7], ids[9]}
    assert result.stop_reason == "replay complete" and result.error is None


def test_every_loop_stops_by_itself_at_max_seconds(make_frame):
    df = namespaced(make_frame(50, seed=6), "m-")
    system = FakeSystem(capacity=1000.0, drop=set(df["TRANSACTION_ID"]))  # nothing ever comes back
    started = time.monotonic()
    result = _run(system, df, stages=[rl.Stage(100.0)], timeout=600.0, settle=0.1, max_seconds=2.0)
    assert result.error.startswith("--max-seconds reached")
    assert time.monotonic() - started < 30  # bounded (generously: this is a hang guard, not a timing)
    assert result.outcome.accounting()["lost"] == 50


def test_duration_bounds_publishing_by_intended_time(make_frame):
    df = namespaced(make_frame(500, seed=7), "u-")
    result = _run(FakeSystem(capacity=1000.0), df, stages=[rl.Stage(100.0)], duration=0.5, timeout=5.0, settle=0.1,
                  max_seconds=30.0)
    acc = result.outcome.accounting()
    assert acc["sent"] == 50 and acc["scored"] == 50  # intended offsets 0, 0.01, ..., 0.49


def test_a_missing_subscription_stops_the_run_with_the_reason(make_frame):
    from google.api_core.exceptions import NotFound

    class NoSubscription(FakeSystem):
        def pull(self, request, timeout, retry=None):
            raise NotFound(f"Subscription does not exist: {request['subscription']}")

    df = namespaced(make_frame(100, seed=8), "n-")
    result = _run(NoSubscription(capacity=1000.0), df, stages=[rl.Stage(50.0)], timeout=600.0, settle=0.1,
                  max_seconds=60.0)
    assert result.error.startswith("consuming projects/p/subscriptions/scores failed: NotFound")
    assert "Subscription does not exist" in result.error
