"""The replay's arithmetic: the open-loop plan, latency from the intended send, and the accounting."""

from __future__ import annotations

import datetime as dt
import math
import threading
from concurrent.futures import Future

import numpy as np
import pytest

from loadtest import replay_ledger as rl
from loadtest.replay import ScoreConsumer, namespaced, publish_plan, timeline
from streaming.io.publish import TopicPaths

TX, LB = rl.TRANSACTION, rl.LABEL


def items(spec):
    """``[(seconds, kind, name)]`` → timeline items ``(ns, kind, seq, name)``."""
    return [(int(t * 1e9), kind, i, name) for i, (t, kind, name) in enumerate(spec)]


# --------------------------------------------------------------------------- the plan


def test_rate_plan_spaces_transactions_and_labels_ride_along_without_a_slot():
    tl = items([(0, TX, "t0"), (5, TX, "t1"), (6, LB, "l0"), (7, LB, "l1"), (9, TX, "t2"), (20, LB, "trailing")])
    got = [(p.offset, p.stage, p.kind, p.event) for p in rl.plan(tl, stages=[rl.Stage(4.0)])]
    assert got == [(0.0, 0, TX, "t0"), (0.25, 0, TX, "t1"), (0.5, 0, LB, "l0"), (0.5, 0, LB, "l1"), (0.5, 0, TX, "t2")]


def test_step_plan_moves_through_stages_and_stops_after_the_last():
    tl = items([(i, TX, f"t{i}") for i in range(100)])
    stages = rl.step_stages(2.0, factor=2.0, seconds=1.5, count=2)  # 2/s then 4/s, 1.5 s each
    assert stages == [rl.Stage(2.0, 1.5), rl.Stage(4.0, 1.5)]
    got = [(p.offset, p.stage) for p in rl.plan(tl, stages=stages)]
    # stage 0: ceil(1.5 * 2) = 3 transactions at 0, .5, 1; stage 1 starts at 1.5: 6 at 1.5 + j/4
    assert got == [(0.0, 0), (0.5, 0), (1.0, 0)] + [(1.5 + j / 4, 1) for j in range(6)]
    assert rl.stage_windows(stages) == [(0.0, 1.5), (1.5, 3.0)]
    assert [s.rate for s in rl.step_stages(10, increment=5, seconds=1, count=3)] == [10, 15, 20]
    with pytest.raises(ValueError, match="exactly one"):
        rl.step_stages(1, factor=2, increment=1, seconds=1, count=2)


def test_speedup_plan_keeps_recorded_spacing():
    tl = items([(100, TX, "a"), (110, TX, "b"), (130, LB, "l"), (140, TX, "c")])
    got = [(p.offset, p.kind) for p in rl.plan(tl, speedup=10.0)]
    assert got == [(0.0, TX), (1.0, TX), (4.0, LB), (4.0, TX)]
    with pytest.raises(ValueError, match="speedup must be"):
        list(rl.plan(tl, speedup=0.0))


def test_timeline_of_a_namespaced_frame(make_frame):
    df = namespaced(make_frame(20, seed=1), "r1-")
    assert df["TRANSACTION_ID"].str.startswith("r1-").all() and df["CUSTOMER_ID"].str.startswith("r1-").all()
    kinds = [item[1] for item in timeline(df, labels=True)]
    assert kinds.count(TX) == 20 and kinds.count(LB) == 20
    assert [item[1] for item in timeline(df, labels=False)] == [TX] * 20


# --------------------------------------------------------------------------- open loop against a fake clock


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.0)


class StallingPublisher:
    """Confirms each publish at once; the ``stall_at``-th publish blocks the caller ``stall`` seconds
    (as the client library does when its flow control is full)."""

    def __init__(self, clock: FakeClock, stall_at: int, stall: float):
        self.clock, self.stall_at, self.stall = clock, stall_at, stall
        self.calls = 0
        self.sent_at: dict[str, float] = {}

    def publish(self, topic, data, **attrs):
        import orjson

        self.calls += 1
        if self.calls == self.stall_at:
            self.clock.now += self.stall
        tid = orjson.loads(data)["transaction_id"]
        self.sent_at[tid] = self.clock.now
        future = Future()
        future.set_result("id")
        return future


def _published_run(make_frame, stall_at=5, stall=2.0, rate=10.0, n=20):
    clock = FakeClock()
    df = namespaced(make_frame(n, seed=2), "x-")
    publisher = StallingPublisher(clock, stall_at, stall)
    ledger = rl.Ledger(timeout=30.0)
    start = clock()
    planned = rl.plan(timeline(df, labels=False), stages=[rl.Stage(rate)])
    state = publish_plan(planned, publisher, TopicPaths("projects/p/topics/tx"), ledger, start=start, clock=clock,
                         sleep=clock.sleep, ordering=False)
    assert state.error is None and state.finished
    return clock, start, publisher, ledger


def test_injected_consumer_delays_are_reflected_exactly(make_frame):
    clock, start, publisher, ledger = _published_run(make_frame, stall_at=10**9)  # no stall
    consumer = ScoreConsumer(None, "scores", None, lambda tid: ledger, clock=clock, start=start)
    delays = {}
    for i, (tid, sent) in enumerate(publisher.sent_at.items()):
        delays[tid] = 0.05 + 0.01 * i
        publish_time = dt.datetime.fromtimestamp(sent + delays[tid], dt.UTC)
        consumer.handle_score(b'{"transaction_id": "%s", "score": 0.1}' % tid.encode(), publish_time)
    o = ledger.outcome()
    expected = np.array([delays[t] for t in o.ids])
    assert np.allclose(o.latency, expected, atol=1e-6, rtol=0)  # publish_time has microsecond precision
    stats = rl.latency_stats(o.latency[o.is_scored])
    assert stats["max"] == pytest.approx(1e3 * max(delays.values()), abs=1e-3)
    assert o.accounting()["scored"] == 20 and o.accounting()["lost"] == 0


def test_open_loop_counts_a_stalled_publisher_coordinated_omission_impossible(make_frame):
    # 10/s; the 5th publish blocks 2 s. Events due meanwhile go out late, and their latency
    # counts the wait: measured from the schedule, not from when the stalled client got to them.
    clock, start, publisher, ledger = _published_run(make_frame, stall_at=5, stall=2.0, n=40)
    consumer = ScoreConsumer(None, "scores", None, lambda tid: ledger, clock=clock, start=start)
    service = 0.1  # the system answers every event 100 ms after it was actually sent
    for tid, sent in publisher.sent_at.items():
        consumer.handle_score(b'{"transaction_id": "%s"}' % tid.encode(),
                              dt.datetime.fromtimestamp(sent + service, dt.UTC))
    o = ledger.outcome()
    intended = np.arange(40) / 10.0
    assert np.allclose(o.intended, intended)
    actual = np.array([publisher.sent_at[t] - start for t in o.ids])
    assert np.allclose(o.latency, actual - intended + service, atol=1e-6)
    # the 5th event (index 4, due at 0.4 s) went out at 2.4 s; those due up to 2.4 s queued behind it
    assert o.latency[4] == pytest.approx(2.0 + service, abs=1e-6)
    assert o.latency[10] == pytest.approx(2.4 - 1.0 + service, abs=1e-6)
    assert o.latency[-1] == pytest.approx(service, abs=1e-6)  # caught up by the end
    from_actual_send = np.array([service] * 40)  # what timing from the actual send would report: no sign of the stall
    assert rl.latency_stats(from_actual_send)["max"] == pytest.approx(100.0)
    assert rl.latency_stats(o.latency)["max"] == pytest.approx(2100.0, abs=1e-3)
    # 20 of the 40 events were due during the stall (0.4 .. 2.3 s) and waited 2.0 .. 0.1 s for it:
    # sorted, 20 latencies of 100 ms, then 200 .. 2100 ms, so p50 = 100 ms and p90 (rank 36) = 1700 ms
    stats = rl.latency_stats(o.latency)
    assert stats["p50"] == pytest.approx(100.0, abs=1e-3) and stats["p90"] == pytest.approx(1700.0, abs=1e-3)
    # the publish leg (intended -> ack) carries the stall; the pipeline leg (ack -> score) does not
    legs = rl.latency_figures(o)
    assert legs["publish"]["max"] == pytest.approx(2000.0, abs=1e-3)
    assert legs["pipeline"]["max"] == pytest.approx(100.0, abs=1e-3)


def test_receive_time_arrival_when_asked():
    clock = FakeClock()
    ledger = rl.Ledger(timeout=5)
    ledger.sent("a", 0.0)
    consumer = ScoreConsumer(None, "s", None, lambda tid: ledger, clock=clock, start=clock(), arrival="receive")
    clock.now += 0.7
    consumer.handle_score(b'{"transaction_id": "a"}', dt.datetime.fromtimestamp(clock.now - 0.5, dt.UTC))
    assert ledger.outcome().latency[0] == pytest.approx(0.7)
    consumer.handle_score(b"not json", None)
    assert consumer.malformed == 1


# --------------------------------------------------------------------------- accounting


def test_lost_duplicate_dead_late_and_foreign_on_a_constructed_case():
    ledger = rl.Ledger(timeout=10.0)
    for i, tid in enumerate("abcdefg"):
        ledger.sent(tid, float(i))
    assert ledger.scored("a", 1.5)
    assert ledger.scored("b", 2.0) and not ledger.scored("b", 2.5) and not ledger.scored("b", 9.0)  # 2 duplicates
    ledger.dead_lettered("c", 3.0)
    # d: never answered -> lost
    assert ledger.scored("e", 4.0 + 10.5)  # after its timeout -> lost, late
    assert ledger.scored("f", 5.5)
    ledger.dead_lettered("f", 6.0)  # scored wins
    ledger.acked("g", 6.1)  # g: published, never scored -> lost
    assert not ledger.scored("zz", 1.0)
    ledger.dead_lettered(None, 1.0)
    ledger.dead_lettered("yy", 1.0)
    acc = ledger.outcome().accounting()
    assert acc == {"sent": 7, "published": 1, "scored": 3, "dead_lettered": 1, "lost": 3, "late": 1,
                   "duplicates": 2, "duplicated_ids": 1, "foreign_scores": 1, "foreign_dead_letters": 2}
    assert ledger.unresolved() == 2  # d and g
    assert ledger.outstanding(now=15.0) == 1 and ledger.outstanding(now=16.1) == 0  # g times out at 16
    with pytest.raises(ValueError, match="sent twice"):
        ledger.sent("a", 7.0)


def test_lost_events_count_as_infinitely_late_in_percentiles():
    stats = rl.latency_stats(np.arange(1, 99) / 1e3, lost=2)  # 98 scored (1..98 ms) + 2 lost
    assert stats["count"] == 100 and stats["p50"] == pytest.approx(50.0) and stats["p90"] == pytest.approx(90.0)
    assert stats["p99"] is None and stats["max"] is None  # beyond the timeout
    assert stats["mean"] == pytest.approx(49.5)
    stats = rl.latency_stats(np.arange(1, 100) / 1e3, lost=1)
    assert stats["p99"] == pytest.approx(99.0) and stats["p99.9"] is None
    assert rl.latency_stats(np.array([]))["p50"] is None


def _outcome(intended, acked, arrival, dead=None, timeout=10.0, stage=None):
    ledger = rl.Ledger(timeout)
    for i, t in enumerate(intended):
        ledger.sent(str(i), t, 0 if stage is None else stage[i])
        if acked[i] is not None:
            ledger.acked(str(i), acked[i])
        if arrival[i] is not None:
            ledger.scored(str(i), arrival[i])
        if dead is not None and dead[i] is not None:
            ledger.dead_lettered(str(i), dead[i])
    return ledger.outcome()


def test_series_rates_latency_by_send_time_and_backlog():
    # four events due at 0, 0.5, 1, 1.5 s; acked 0.1 s later; scored at 1.2, 1.3, 2.9 and never
    o = _outcome([0, 0.5, 1.0, 1.5], [0.1, 0.6, 1.1, 1.6], [1.2, 1.3, 2.9, None])
    s = rl.series(o, bucket=1.0, end=3.0)
    assert s["t"] == [1.0, 2.0, 3.0]
    assert s["sent_tps"] == [2, 2, 0] and s["published_tps"] == [2, 2, 0] and s["scored_tps"] == [0, 2, 1]
    assert s["p50_ms"][0] == pytest.approx(800.0) and s["p99_ms"][0] == pytest.approx(1200.0)
    assert s["p50_ms"][1] == pytest.approx(1900.0) and s["p99_ms"][1] is None  # the lost one is in bucket 2
    assert s["p50_ms"][2] is None
    assert s["backlog"] == [2, 2, 1] and s["publisher_lag"] == [0, 0, 0]
    h = rl.histogram(o, bins=4)
    assert sum(h["counts"]) == 3 and h["edges_ms"][0] == pytest.approx(800.0)


def test_a_late_score_still_empties_the_backlog_but_counts_as_lost():
    o = _outcome([0.0], [0.1], [15.0], timeout=5.0)
    assert o.accounting()["lost"] == 1 and o.accounting()["late"] == 1
    s = rl.series(o, bucket=10.0, end=30.0)
    assert s["backlog"] == [1, 0, 0] and s["p50_ms"] == [None, None, None]


def test_backlog_growing_when_output_falls_behind_input():
    n, rate = 200, 10.0
    intended = np.arange(n) / rate
    keeping_up = _outcome(intended, intended + 0.01, intended + 0.3)
    assert rl.backlog_growing(keeping_up, 0.0, n / rate, rate) == (False, pytest.approx(0.0, abs=0.5))
    half = _outcome(intended, intended + 0.01, 0.3 + np.arange(n) / (rate / 2), timeout=1e6)  # served at 5/s
    growing, slope = rl.backlog_growing(half, 0.0, n / rate, rate)
    assert growing and slope == pytest.approx(5.0, rel=0.1)


def test_slo_certainly_breached_by_nearest_rank():
    # 100 events planned; p99 is the 99th smallest, so one event over the SLO is allowed, two are not
    intended = np.zeros(100)
    arrival = [0.1] * 98 + [5.0, None]
    o = _outcome(intended, intended, arrival, timeout=60.0)
    assert not rl.slo_certainly_breached(o, 0, 100, slo_s=1.0, now=0.5)  # the unscored one is young
    assert rl.slo_certainly_breached(o, 0, 100, slo_s=1.0, now=2.0)  # ...now it is over the SLO too


def test_assess_stage_verdicts_and_highest_sustainable():
    rate = 10.0
    intended = np.arange(100) / rate
    fast = _outcome(intended, intended, intended + 0.2)
    ok = rl.assess_stage(fast, 0, rate, (0.0, 10.0), slo_ms=500)
    assert ok["sustainable"] and ok["reason"] == "ok" and ok["latency_ms"]["p99"] == pytest.approx(200.0)
    assert ok["in_tps"] == pytest.approx(10.0) and ok["out_tps"] == pytest.approx(9.8)
    slow = rl.assess_stage(_outcome(intended, intended, intended + 0.8), 0, rate, (0.0, 10.0), slo_ms=500)
    assert not slow["sustainable"] and "p99 800 ms > SLO 500 ms" in slow["reason"]
    assert rl.highest_sustainable([ok, {**ok, "rate_tps": 20.0}, slow, {**ok, "rate_tps": 80.0}])["rate_tps"] == 20.0
    assert rl.highest_sustainable([slow, ok]) is None


def test_ledger_is_thread_safe():
    ledger = rl.Ledger(timeout=1.0)
    for i in range(2000):
        ledger.sent(str(i), 0.0)

    def score(ids):
        for i in ids:
            ledger.scored(str(i), 0.1)

    threads = [threading.Thread(target=score, args=(range(k, 2000, 4),)) for k in range(4)]
    threads += [threading.Thread(target=score, args=(range(0, 2000, 2),))]  # duplicates of the even ids
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acc = ledger.outcome().accounting()
    assert acc["scored"] == 2000 and acc["duplicates"] == 1000 and ledger.unresolved() == 0
    assert math.isclose(ledger.outcome().latency.max(), 0.1)
