"""``streamscore loadtest replay``: drive recorded traffic through the whole system and report what users feel.

    streamscore loadtest replay --input TX (--speedup X | --rate R) [--step --slo-ms MS ...]
        [--local-stack | --project P [--emulator-host H:P]] [--limit N] [--timeout S]
        [--json OUT] [--html OUT] [--shadow-predictor H:P | --shadow-model-file F]

Publishes a dataset's transactions (with ``--labels`` also their labels, in their place in the
recorded timeline) to the ``transactions``/``labels`` topics of a running stack and consumes
``scores`` and ``dead-letter`` from subscriptions of its own (created before the run). Per event it measures intended send → score
latency (open loop, see :mod:`loadtest.replay_ledger`), the publish ack, and whether the
event was scored, dead-lettered, lost (not scored within ``--timeout``) or scored twice.

* **Score arrival time** is the Pub/Sub ``publish_time`` of the score message, stamped by the
  Pub/Sub server when the job published it: it does not depend on how often this client polls
  or how busy it is. On real Pub/Sub it is compared with this machine's clock, so clock skew
  (NTP: usually a few ms) enters the figures; ``--arrival-time receive`` uses the local receive
  time instead (the report always holds both: ``e2e`` and ``e2e_received``).
* **Ids**: transaction, customer and terminal ids get a per-run prefix (``--id-prefix``,
  default ``r<random>-``), so a replay never collides with earlier traffic: the job
  dead-letters duplicate transaction ids and events far behind a card's latest one. Features
  therefore start from an empty history, as on a fresh job.
* **Pacing**: ``--rate R`` is R *transactions* per second (labels ride along without a slot);
  ``--speedup X`` keeps the recorded spacing divided by X. ``--step`` raises the rate in stages
  until p99 exceeds ``--slo-ms`` or the backlog keeps growing, and reports the highest
  sustainable rate.
* **Labels** are opt-in (``--labels``; ``--label-delay-days`` makes them flow in replays shorter
  than the 1-7 recorded days of label delay, which otherwise have none to send). Without them
  ``--local-stack`` runs the job without its labels input: on Beam's untuned local runner
  (``stream --no-local-tuning``) a read that receives nothing stalls the pipeline ~29 s per pull.
* **Bounds**: publishing stops after ``--limit`` transactions or ``--duration`` seconds; the run
  waits at most ``--timeout`` seconds per event, and ``--max-seconds`` caps everything.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd

from loadtest.replay_ledger import (TRANSACTION, Ledger, Outcome, Planned, Stage, assess_stage, plan,
                                    slo_certainly_breached, stage_windows, step_stages)
from streaming.io.datasets import DatasetError, read_table
from streaming.io.encoding import encode
from streaming.io.publish import (LabelDelay, PublishReport, TopicPaths, _Confirmer, _Parser, _positive, _timeline,
                               schedule_labels)

PROG = "streamscore loadtest replay"
_BASE = time.time() - time.monotonic()


def wall_clock() -> float:
    """Seconds since the epoch, advancing like ``time.monotonic`` (no jumps during a run)."""
    return _BASE + time.monotonic()


# --------------------------------------------------------------------------- input


def namespaced(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """``df`` with ``prefix`` before every transaction, customer and terminal id."""
    if not prefix:
        return df
    out = df.copy()
    for col in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"):
        out[col] = prefix + out[col].astype(str)
    return out


def timeline(df: pd.DataFrame, labels: bool, delay: LabelDelay = LabelDelay(), seed: int = 0) -> Iterable[tuple]:
    """The recorded stream, as ``streamscore publish`` would send it: transactions and (optionally) labels."""
    with_labels = labels and "TX_FRAUD" in df.columns
    return _timeline(df, schedule_labels(df, delay, seed) if with_labels else None)


# --------------------------------------------------------------------------- publishing


class _AckTimer:
    """Wraps a ``PublisherClient``: records in the ledger when Pub/Sub confirms each transaction."""

    def __init__(self, publisher, ledger: Ledger, clock: Callable[[], float], start: float, transactions_topic: str):
        self._publisher, self._ledger, self._clock, self._start = publisher, ledger, clock, start
        self._topic = transactions_topic

    def publish(self, topic: str, data: bytes, **kwargs):
        future = self._publisher.publish(topic, data, **kwargs)
        if topic == self._topic:
            tid = orjson.loads(data)["transaction_id"]

            def done(f, tid=tid):
                if f.exception() is None:
                    self._ledger.acked(tid, self._clock() - self._start)
            future.add_done_callback(done)
        return future

    def resume_publish(self, topic: str, key: str) -> None:
        self._publisher.resume_publish(topic, key)


@dataclass
class PublishState:
    """What the publisher thread has done so far (read by the controller)."""

    report: PublishReport = field(default_factory=PublishReport)
    offset: float = 0.0          # intended offset of the last message sent
    finished: bool = False
    error: str | None = None


def publish_plan(planned: Iterable[Planned], publisher, topics: TopicPaths, ledger: Ledger, *, start: float,
                 clock: Callable[[], float], sleep: Callable[[float], None], stop: threading.Event | None = None,
                 until: float = math.inf, ordering: bool = True, state: PublishState | None = None,
                 on_sent: Callable[[Planned], None] | None = None, confirm_timeout: float = 120.0) -> PublishState:
    """Send each planned message at ``start + offset`` (open loop; a late send is not rescheduled).

    The transaction is entered in the ledger with its *intended* offset before it is handed to
    the client; its ack time is recorded when Pub/Sub confirms it. Failed publishes are retried
    as ``streamscore publish`` does. Stops at ``stop``, or before the first message due at
    ``until`` or later.
    """
    state = state or PublishState()
    confirmer = _Confirmer(_AckTimer(publisher, ledger, clock, start, topics.transactions), state.report, sleep)
    try:
        for p in planned:
            if (stop is not None and stop.is_set()) or p.offset >= until:
                break
            lag = start + p.offset - clock()
            if lag > 0:
                sleep(lag)
                if stop is not None and stop.is_set():
                    break
            if p.kind == TRANSACTION:
                ledger.sent(p.event.transaction_id, p.offset, p.stage)
                topic = topics.transactions
            elif topics.labels is not None:
                topic = topics.labels
            else:
                continue
            data, attrs = encode(p.event)
            confirmer.publish(topic, p.kind, data, attrs, key=p.event.customer_id if ordering else "")
            state.offset = p.offset
            if on_sent is not None:
                on_sent(p)
            if confirmer.outstanding >= 1000:
                confirmer.drain()
        confirmer.drain(block=True, timeout=confirm_timeout)
    except Exception as exc:  # noqa: BLE001 - PublishError and client errors: the controller reports and stops
        state.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        state.finished = True
    return state


# --------------------------------------------------------------------------- consuming


class ScoreConsumer:
    """Pulls the scores and dead-letter subscriptions and records what arrives in the ledger.

    ``route(transaction id)`` picks the ledger (warm-up or measured run). With
    ``arrival="publish"`` a score arrives at its message's Pub/Sub ``publish_time``, otherwise
    when it is pulled. First scores are kept in ``scores``: id → (score, model version,
    features if ``keep_features``).
    """

    def __init__(self, subscriber, scores_path: str, dead_path: str | None, route: Callable[[str], Ledger], *,
                 clock: Callable[[], float], start: float, arrival: str = "publish", keep_features: bool = False):
        self.subscriber, self.scores_path, self.dead_path, self.route = subscriber, scores_path, dead_path, route
        self.clock, self.start, self.arrival, self.keep_features = clock, start, arrival, keep_features
        self.scores: dict[str, tuple] = {}
        self.malformed = 0
        self.error: str | None = None  # why consuming stopped early (no such subscription, permission denied)

    def _at(self, publish_time) -> tuple[float, float]:
        received = self.clock() - self.start
        if self.arrival == "publish" and publish_time is not None:
            return publish_time.timestamp() - self.start, received
        return received, received

    def handle_score(self, data: bytes, publish_time) -> None:
        try:
            body = orjson.loads(data)
            tid = str(body["transaction_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.malformed += 1
            return
        arrival, received = self._at(publish_time)
        if self.route(tid).scored(tid, arrival, received):
            self.scores[tid] = (body.get("score"), body.get("model_version"),
                                body.get("features") if self.keep_features else None)

    def handle_dead(self, data: bytes, publish_time) -> None:
        try:
            tid = orjson.loads(data).get("transaction_id")
        except (orjson.JSONDecodeError, AttributeError):
            tid = None
        arrival, _ = self._at(publish_time)
        tid = str(tid) if tid else None
        self.route(tid or "").dead_lettered(tid, arrival)

    def _pull(self, path: str, timeout: float, handle) -> int:
        from google.api_core import exceptions

        try:
            response = self.subscriber.pull(request={"subscription": path, "max_messages": 1000},
                                            timeout=timeout, retry=None)
        except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable):
            return 0
        ack_ids = []
        for item in response.received_messages:
            handle(bytes(item.message.data), item.message.publish_time)
            ack_ids.append(item.ack_id)
        if ack_ids:
            self.subscriber.acknowledge(request={"subscription": path, "ack_ids": ack_ids})
        return len(ack_ids)

    def poll(self) -> int:
        got = self._pull(self.scores_path, 0.5, self.handle_score)
        if self.dead_path:
            got += self._pull(self.dead_path, 0.05, self.handle_dead)
        return got

    def run(self, stop: threading.Event, deadline: float) -> None:
        """Poll until ``stop`` is set or the wall clock passes ``deadline``; a failure ends it in ``error``."""
        try:
            while not stop.is_set() and self.clock() < deadline:
                if not self.poll():
                    stop.wait(0.05)
        except Exception as exc:  # noqa: BLE001 - the controller reports it and stops the run
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# --------------------------------------------------------------------------- one run


@dataclass
class ReplayResult:
    outcome: Outcome
    stages: list[Stage] | None
    assessed: list[dict]
    stop_reason: str
    publish: PublishState
    scores: dict
    elapsed_s: float
    warmup: dict | None = None
    error: str | None = None  # why the run was cut short (a process of the stack died, publishing failed)


def _stage_done(o: Outcome, k: int, now: float) -> bool:
    """Whether every event of stage ``k`` is scored, dead-lettered or past its timeout."""
    import numpy as np

    waiting = (o.stage == k) & np.isnan(o.arrival) & np.isnan(o.dead) & (now - o.intended <= o.timeout)
    return not waiting.any()


def replay(df: pd.DataFrame, *, publisher, subscriber, topics: TopicPaths, scores_path: str, dead_path: str | None,
           speedup: float | None = None, stages: list[Stage] | None = None, step_slo_ms: float | None = None,
           timeout: float = 30.0, duration: float = math.inf, max_seconds: float = 3600.0, settle: float = 2.0,
           labels: bool = True, label_delay: LabelDelay = LabelDelay(), seed: int = 0, ordering: bool = True,
           warmup: pd.DataFrame | None = None, warmup_rate: float = 20.0, arrival: str = "publish",
           keep_features: bool = False, clock: Callable[[], float] = wall_clock,
           health: Callable[[], None] | None = None, progress: bool = False, log=print) -> ReplayResult:
    """Run one replay against live topics; see the module docstring. ``df`` is already namespaced."""
    hard_deadline = clock() + max_seconds
    ledgers: dict[str, Ledger] = {"run": Ledger(timeout), "warmup": Ledger(timeout)}
    warm_ids = set(warmup["TRANSACTION_ID"].astype(str)) if warmup is not None else set()
    route = lambda tid: ledgers["warmup"] if tid in warm_ids else ledgers["run"]  # noqa: E731
    consumer = ScoreConsumer(subscriber, scores_path, dead_path, route, clock=clock, start=clock(),
                             arrival=arrival, keep_features=keep_features)
    stop_consumer, stop_publish = threading.Event(), threading.Event()
    consuming = threading.Thread(target=consumer.run, args=(stop_consumer, hard_deadline), daemon=True)
    consuming.start()
    sleep = stop_publish.wait  # wakes up early when the run is stopped
    try:
        warm = None
        if warmup is not None and len(warmup):
            warm = _warm_up(warmup, publisher, topics, ledgers["warmup"], consumer, clock, rate=warmup_rate,
                            ordering=ordering, deadline=min(hard_deadline, clock() + max(timeout, 60.0) * 2),
                            health=health, log=log)
        ledger = ledgers["run"]
        start = clock()
        consumer.start = start
        planned = plan(timeline(df, labels, label_delay, seed), speedup=speedup, stages=None if speedup else stages)
        state = PublishState()
        total = len(df) if speedup or stages is None else min(len(df), int(sum(min(s.size, len(df)) for s in stages)))
        from tqdm import tqdm

        bar = tqdm(total=total, disable=not progress, unit="tx", desc="replay", file=sys.stderr, smoothing=0.1)
        on_sent = (lambda p: bar.update(1) if p.kind == TRANSACTION else None) if progress else None
        publishing = threading.Thread(target=publish_plan, args=(planned, publisher, topics, ledger), kwargs=dict(
            start=start, clock=clock, sleep=sleep, stop=stop_publish, until=duration, ordering=ordering,
            state=state, on_sent=on_sent), daemon=True)
        publishing.start()
        assessed, reason, error = [], None, None
        windows = stage_windows(stages) if stages and not speedup else []
        while True:
            now = clock() - start
            if clock() > hard_deadline:
                error = f"--max-seconds reached ({max_seconds:g} s)"
                reason = reason or error
                break
            if health is not None:
                try:
                    health()
                except RuntimeError as exc:
                    reason = error = str(exc)
                    break
            if state.error:
                reason = error = f"publishing failed: {state.error}"
                break
            if consumer.error:
                reason = error = f"consuming {scores_path} failed: {consumer.error}"
                break
            o = ledger.outcome()
            if step_slo_ms is not None and reason is None:
                reason = _assess_ready(o, stages, windows, assessed, state, now, step_slo_ms, settle)
                if reason is not None:
                    stop_publish.set()
            if progress:  # in flight: awaiting a score within the timeout; lost: past it
                in_flight = ledger.outstanding(now)
                bar.set_postfix(scored=int(o.is_scored.sum()), in_flight=in_flight,
                                lost=ledger.unresolved() - in_flight, refresh=False)
            if state.finished and ledger.outstanding(now) == 0 and (step_slo_ms is None or reason is not None
                                                                    or len(assessed) == _stages_sent(o)):
                break
            time.sleep(0.25)
        if reason is None:
            reason = ("all stages sustainable" if step_slo_ms is not None else "replay complete")
        stop_publish.set()
        publishing.join(30)
        time.sleep(min(settle, max(0.0, hard_deadline - clock())))  # late duplicates show up
        bar.close()
        o = ledger.outcome()
        if step_slo_ms is not None and len(assessed) < _stages_sent(o):
            _assess_ready(o, stages, windows, assessed, state, clock() - start, step_slo_ms, settle, final=True,
                          cut=any(not s["sustainable"] for s in assessed) or error is not None)
        if step_slo_ms is not None:  # final figures: events still in flight at a verdict have arrived since
            assessed = [_reassess(o, stages, v, step_slo_ms) for v in assessed]
        scores = {tid: v for tid, v in consumer.scores.items() if tid not in warm_ids}
        return ReplayResult(o, stages, assessed, reason, state, scores, clock() - start, warm, error)
    finally:
        stop_publish.set()
        stop_consumer.set()
        consuming.join(10)


def _reassess(o: Outcome, stages, verdict: dict, slo_ms: float) -> dict:
    """A stage's figures from the final outcome; a verdict of unsustainable given during the run stands."""
    k = verdict["stage"]
    final = assess_stage(o, k, stages[k].rate, (verdict["start_s"], verdict["end_s"]), slo_ms)
    if not verdict["sustainable"] and final["sustainable"]:
        final["sustainable"], final["reason"] = False, verdict["reason"]
    return final


def _stages_sent(o: Outcome) -> int:
    return int(o.stage.max()) + 1 if len(o.stage) else 0


def _assess_ready(o: Outcome, stages, windows, assessed: list, state: PublishState, now: float, slo_ms: float,
                  settle: float, final: bool = False, cut: bool = False) -> str | None:
    """Assess, in order, every stage whose verdict is known; returns the reason to stop once one fails.

    A stage is assessed once it has been sent in full (the publisher moved past it, or
    finished), ``settle`` seconds have passed since its end (so the backlog through it is
    known), and its verdict cannot change: all its events are resolved, or its p99 must exceed
    the SLO whatever the rest do, or its backlog kept growing. ``final`` assesses what there is,
    except a stage the run ``cut`` short (stopped after a failure before the stage was sent in full).
    """
    while len(assessed) < len(windows):
        k = len(assessed)
        start, end = windows[k]
        sel = o.stage == k
        if not sel.any():
            return None
        if state.finished:
            if cut and sel.sum() < stages[k].size:
                return None
            end = min(end, float(o.intended[sel].max()) + 1 / stages[k].rate)  # the data or the run ended
        elif state.offset < end:
            return None  # still sending this stage
        if not final and now < end + settle:
            return None
        verdict = assess_stage(o, k, stages[k].rate, (start, end), slo_ms)
        breached = slo_certainly_breached(o, k, int(sel.sum()), slo_ms / 1e3, now)
        growing = "backlog" in verdict["reason"]
        if not (final or breached or growing or _stage_done(o, k, now)):
            return None
        if breached and verdict["sustainable"]:
            verdict["sustainable"], verdict["reason"] = False, f"p99 certainly > SLO {slo_ms:g} ms (events still unscored)"
        assessed.append(verdict)
        if not verdict["sustainable"]:
            return f"stage {k} ({stages[k].rate:g} tx/s) not sustainable: {verdict['reason']}"
    return None


def _warm_up(df, publisher, topics, ledger, consumer, clock, *, rate, ordering, deadline, health, log) -> dict:
    """Send ``df`` at ``rate`` and wait until every event is scored or dead-lettered (bounded)."""
    start = consumer.start = clock()
    log(f"{PROG}: warming up with {len(df)} transactions ...")
    planned = plan(timeline(df, labels=False), stages=[Stage(rate)])
    state = publish_plan(planned, publisher, TopicPaths(topics.transactions), ledger, start=start, clock=clock,
                         sleep=time.sleep, ordering=ordering, until=math.inf)
    while ledger.unresolved() and clock() < deadline and not state.error and not consumer.error:
        if health is not None:
            health()
        time.sleep(0.25)
    out = {"transactions": len(df), "answered": len(df) - ledger.unresolved(), "seconds": round(clock() - start, 1)}
    log(f"{PROG}: warm-up: {out['answered']} of {len(df)} scored or dead-lettered in {out['seconds']} s")
    return out


# --------------------------------------------------------------------------- command line


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--input", required=True, metavar="TX", help="recorded transactions (.parquet or .jsonl, "
                   "the project's files or the reference layout)")
    pace = p.add_mutually_exclusive_group(required=True)
    pace.add_argument("--speedup", type=_positive, metavar="X", help="replay X times faster than recorded time")
    pace.add_argument("--rate", type=_positive, metavar="R", help="R transactions per second (with --step: the first stage)")
    step = p.add_argument_group("step load (needs --rate)")
    step.add_argument("--step", action="store_true", help="raise the rate in stages until the SLO or the backlog breaks")
    step.add_argument("--slo-ms", type=_positive, default=1000.0, help="p99 end-to-end SLO in ms (default %(default)g)")
    grow = step.add_mutually_exclusive_group()
    grow.add_argument("--step-factor", type=_positive, help="multiply the rate by this each stage (default 1.5)")
    grow.add_argument("--step-increment", type=_positive, help="add this many tx/s each stage instead")
    step.add_argument("--stage-seconds", type=_positive, default=20.0, help="seconds per stage (default %(default)g)")
    step.add_argument("--max-stages", type=int, default=10, help="stop after this many stages (default %(default)s)")
    target = p.add_argument_group("the system under test")
    target.add_argument("--local-stack", action="store_true",
                        help="start emulator + predictor + streaming job as `streamscore up` does (no other traffic)")
    target.add_argument("--registry", type=Path, default=Path("registry"),
                        help="--local-stack: model registry (a model is trained if it has none; default ./registry)")
    target.add_argument("--workdir", type=Path, help="--local-stack: folder for logs (default: a temporary folder)")
    target.add_argument("--job-args", default="", metavar="'ARGS'",
                        help="--local-stack: extra flags for `streamscore stream`, written with '=': --job-args=--no-local-tuning")
    target.add_argument("--project", default="local-project", help="Pub/Sub project (default %(default)s)")
    target.add_argument("--emulator-host", metavar="HOST:PORT", help="Pub/Sub emulator (default: real Pub/Sub "
                        "with application-default credentials, or $PUBSUB_EMULATOR_HOST)")
    target.add_argument("--transactions-topic", default="transactions", metavar="NAME")
    target.add_argument("--labels-topic", default="labels", metavar="NAME")
    target.add_argument("--scores-subscription", default="scores-loadtest", metavar="NAME",
                        help="a subscription on the scores topic, used by this run only (default %(default)s)")
    target.add_argument("--dead-letter-subscription", default="dead-letter-loadtest", metavar="NAME",
                        help="a subscription on the dead-letter topic ('' to ignore dead letters)")
    target.add_argument("--create-subscriptions", action="store_true",
                        help="create the two subscriptions (on --scores-topic / --dead-letter-topic) if missing")
    target.add_argument("--scores-topic", default="scores", metavar="NAME")
    target.add_argument("--dead-letter-topic", default="dead-letter", metavar="NAME")
    run = p.add_argument_group("the run")
    run.add_argument("--limit", type=_count, metavar="N", help="replay at most the first N transactions")
    run.add_argument("--duration", type=_positive, metavar="S", help="stop publishing after S seconds")
    run.add_argument("--timeout", type=_positive, default=30.0, help="an event not scored within S seconds of its "
                     "intended send is lost (default %(default)g)")
    run.add_argument("--max-seconds", type=_positive, default=3600.0, help="hard cap on the whole run (default %(default)g)")
    run.add_argument("--warmup", type=_count, default=20, metavar="N",
                     help="first send N unmeasured transactions and wait for their scores (default %(default)s)")
    run.add_argument("--labels", action="store_true", help="also publish the labels (needs TX_FRAUD), in their place in "
                     "the recorded timeline; with --local-stack the job then reads them and learns online")
    run.add_argument("--label-delay-days", type=float, metavar="D",
                     help="with --labels: every label is known D days after its transaction (default: frauds "
                          "uniformly 1-7 days, genuine 7 days, as `streamscore publish`)")
    run.add_argument("--ordering-key", choices=("customer", "none"), default="customer")
    run.add_argument("--id-prefix", default=None, help="prefix for transaction/customer/terminal ids "
                     "(default: r<random>-; '' keeps the recorded ids)")
    run.add_argument("--arrival-time", choices=("publish", "receive"), default="publish",
                     help="score arrival: the score message's Pub/Sub publish_time (default) or its receive time")
    run.add_argument("--bucket-seconds", type=_positive, help="time-series bucket (default: run length / 120, >= 1 s)")
    run.add_argument("--seed", type=int, default=0, help="seed for the label delays")
    shadow = p.add_argument_group("shadow comparison")
    shadow.add_argument("--shadow-predictor", metavar="HOST:PORT", help="a candidate predictor to score the same features")
    shadow.add_argument("--shadow-model-file", type=Path, help="--local-stack: serve this model file as the candidate")
    shadow.add_argument("--alert-threshold", type=float, default=0.5, help="score at which an alert is raised (0.5)")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    out.add_argument("--html", type=Path, metavar="OUT", help="write the report as HTML with plots")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check(args, parser) -> None:
    if args.step and args.rate is None:
        parser.error("--step needs --rate (the first stage's rate), not --speedup")
    if args.max_stages < 1:
        parser.error(f"--max-stages must be >= 1, got {args.max_stages}")
    if args.shadow_model_file and not args.local_stack:
        parser.error("--shadow-model-file needs --local-stack (otherwise serve it and pass --shadow-predictor)")
    if args.shadow_model_file and args.shadow_predictor:
        parser.error("give --shadow-predictor or --shadow-model-file, not both")
    if args.shadow_model_file and not args.shadow_model_file.is_file():
        parser.error(f"--shadow-model-file {str(args.shadow_model_file)!r} does not exist")
    if args.job_args and not args.local_stack:
        parser.error("--job-args needs --local-stack")
    if args.local_stack and args.emulator_host:
        parser.error("--local-stack starts its own emulator; drop --emulator-host")
    if args.label_delay_days is not None and not args.labels:
        parser.error("--label-delay-days needs --labels")
    if args.label_delay_days is not None and not (math.isfinite(args.label_delay_days) and args.label_delay_days >= 0):
        parser.error(f"--label-delay-days must be a number of days >= 0, got {args.label_delay_days}")
    if not 0 <= args.alert_threshold <= 1:
        parser.error(f"--alert-threshold must be in [0, 1], got {args.alert_threshold}")


def _stages(args) -> list[Stage] | None:
    """The rate stages: step load, one unbounded stage at ``--rate``, or none (``--speedup``)."""
    if args.step:
        return step_stages(args.rate, factor=None if args.step_increment else (args.step_factor or 1.5),
                           increment=args.step_increment, seconds=args.stage_seconds, count=args.max_stages)
    return None if args.speedup else [Stage(args.rate)]


def _clients(args):
    from streaming.io.publish import make_publisher

    publisher = make_publisher(args.emulator_host, ordering=args.ordering_key == "customer")
    if args.emulator_host:
        from streaming.io.pubsub_local import subscriber_client

        return publisher, subscriber_client(args.emulator_host)
    from google.cloud import pubsub_v1

    return publisher, pubsub_v1.SubscriberClient()


def _ensure_subscriptions(subscriber, project: str, pairs: dict[str, str]) -> None:
    from google.api_core.exceptions import AlreadyExists

    from streaming.io.pubsub_local import subscription_path, topic_path

    for sub, topic in pairs.items():
        try:
            subscriber.create_subscription(request={"name": subscription_path(project, sub),
                                                    "topic": topic_path(project, topic), "ack_deadline_seconds": 60})
        except AlreadyExists:
            pass


def run(argv: list[str] | None = None) -> int:
    """Exit code: 0 done, 1 the run failed or lost events, 2 bad arguments or input."""
    from loadtest.replay_report import build_report, format_summary, strict, write_html
    from loadtest.replay_stack import LocalStack
    from streaming.io.pubsub_local import subscription_path

    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    try:
        raw = read_table(args.input)
    except DatasetError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        raw = raw.iloc[: args.limit]
    stages = _stages(args)
    if args.step:  # no more than the stages can send
        raw = raw.iloc[: int(sum(s.size for s in stages))]
    if raw.empty:
        print(f"{PROG}: --input {args.input!r} has no transactions to replay", file=sys.stderr)
        return 2
    prefix = f"r{uuid.uuid4().hex[:6]}-" if args.id_prefix is None else args.id_prefix
    d = args.label_delay_days
    delay = LabelDelay() if d is None else LabelDelay((d, d), d)
    df = namespaced(raw, prefix)
    warm = namespaced(raw.iloc[: args.warmup], f"warmup-{prefix or 'x-'}") if args.warmup else None
    labels = args.labels and "TX_FRAUD" in df.columns
    # The job reads labels only when this run sends some (an idle read costs a pull per second
    # on the tuned local runner, and stalls the untuned one ~29 s per pull).
    job_args = (() if labels else ("--labels-subscription", "")) + tuple(shlex.split(args.job_args))
    stack = (LocalStack(args.registry, args.workdir, shadow_model_file=args.shadow_model_file, job_args=job_args)
             if args.local_stack else None)
    publisher = subscriber = None
    try:
        if stack is not None:
            stack.__enter__()
            args.emulator_host, args.project = stack.emulator.host_port, stack.emulator.project
        publisher, subscriber = _clients(args)
        if args.create_subscriptions:
            pairs = {args.scores_subscription: args.scores_topic}
            if args.dead_letter_subscription:
                pairs[args.dead_letter_subscription] = args.dead_letter_topic
            _ensure_subscriptions(subscriber, args.project, pairs)
        topics = TopicPaths.for_project(args.project, args.transactions_topic, args.labels_topic if labels else None)
        dead = subscription_path(args.project, args.dead_letter_subscription) if args.dead_letter_subscription else None
        result = replay(
            df, publisher=publisher, subscriber=subscriber, topics=topics,
            scores_path=subscription_path(args.project, args.scores_subscription), dead_path=dead,
            speedup=args.speedup, stages=stages, step_slo_ms=args.slo_ms if args.step else None,
            timeout=args.timeout, duration=args.duration or math.inf, max_seconds=args.max_seconds, labels=labels,
            label_delay=delay,
            seed=args.seed, ordering=args.ordering_key == "customer", warmup=warm,
            warmup_rate=min(args.rate or 20.0, 50.0), arrival=args.arrival_time,
            keep_features=bool(args.shadow_predictor or args.shadow_model_file),
            health=stack.check if stack is not None else None,
            progress=not args.no_progress and sys.stderr.isatty())
        truth = dict(zip(df["TRANSACTION_ID"], df["TX_FRAUD"].astype(int))) if "TX_FRAUD" in df.columns else {}
        shadow_target = args.shadow_predictor or (stack.shadow_target if stack is not None else None)
        shadow = None
        if shadow_target:
            from loadtest.shadow import shadow_compare

            print(f"{PROG}: scoring {len(result.scores):,} feature vectors with the candidate at {shadow_target} ...")
            shadow = shadow_compare(result.scores, truth, shadow_target, threshold=args.alert_threshold)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, then clean up below
        hint = ("; for the emulator pass --emulator-host HOST:PORT (or --local-stack)"
                if type(exc).__module__.startswith("google.auth") else "")
        print(f"{PROG}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{hint}", file=sys.stderr)
        return 1
    finally:
        if publisher is not None:
            publisher.stop()
        if subscriber is not None:
            subscriber.close()
        if stack is not None:
            stack.stop()
    report = build_report(result, truth=truth, shadow=shadow, bucket=args.bucket_seconds, run={
        "command": " ".join(["streamscore", "loadtest", "replay", *(argv if argv is not None else sys.argv[1:])]),
        "input": str(args.input), "mode": "step" if args.step else ("speedup" if args.speedup else "rate"),
        "speedup": args.speedup, "rate_tps": args.rate, "slo_ms": args.slo_ms if args.step else None,
        "timeout_s": args.timeout, "id_prefix": prefix, "labels": labels, "arrival_time": args.arrival_time,
        "project": args.project, "emulator_host": args.emulator_host, "local_stack": bool(stack),
        "production_model": stack.version if stack is not None else None, "job_args": args.job_args or None,
        "logs": str(stack.workdir) if stack is not None else None})
    print(format_summary(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(strict(report), indent=2, allow_nan=False) + "\n")
    if args.html:
        write_html(report, args.html)
    acc = report["accounting"]
    return 1 if result.error or (acc["lost"] and not args.step) else 0


if __name__ == "__main__":
    sys.exit(run())
