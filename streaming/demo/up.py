"""``streamscore up`` (``make demo``): the local stack, end to end, then a summary.

1. starts the official Pub/Sub emulator on a free port and creates the topics;
2. if the registry has no ``production`` model, trains one on a simulated history (the same
   feature code as the stream) and promotes it;
3. starts the gRPC predictor (``streamscore serve``) and the streaming job (``streamscore
   stream`` on the local runner, with scoring and online learning);
4. publishes simulated traffic — transactions, their labels later in event time, and a few
   malformed messages — and shows live progress: published / scored / dead-lettered,
   backlog, end-to-end latency (publish → score received), alerts, and the running average
   precision of the production (XGBoost) and online (River) scores — the online model's over
   the transactions that were scored while the predictor served one (its first snapshot
   comes after the first labels), with XGBoost's over the same transactions next to it;
   Before the measured traffic it waits until the job scores a warm-up transaction (a card
   and terminal of their own, not counted), so the job's start-up is not measured;
   The predictor and the job share an online feature store (a redis-server on a free port);
   at the end a sample of the stream-scored transactions is scored again over gRPC from the
   raw transaction only (``raw_transaction_check`` in the summary: how many agree, latency);
5. stops every process it started — also on Ctrl-C or SIGTERM — and prints a short summary
   for people (verdict, counts, latency, AP; :func:`streaming.demo.summary.build_summary` makes it a dict of sections,
   ``--summary PATH`` writes that as JSON). Every component's log stays in ``--workdir`` (by
   default a new temporary folder), printed at the start and in the summary. Exits non-zero if
   any event is unaccounted for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from streaming.demo import PROG
from streaming.demo import loop as demo_loop
from streaming.demo.bootstrap import ensure_production_model, ensure_signing_keys
from streaming.demo.processes import free_port, spawn, stop_process, wait_serving
from streaming.demo.progress import Progress, served_summary, status_line, watch_outputs
from streaming.demo.summary import build_summary, raw_check, render_summary
from streaming.io.events import SCHEMA_TRANSACTION
from streaming.io.publish import TRANSACTION, LabelDelay, TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import PubSubEmulator
from streaming.sim.simulator import DRIFT_KINDS, simulate
from streaming.store.redis_server import RedisServer

TOPICS = ("transactions", "labels", "scores", "alerts", "dead-letter", "monitoring")
SUBSCRIPTIONS = {"transactions-stream": "transactions", "labels-stream": "labels", "scores-monitor": "scores",
                 "alerts-monitor": "alerts", "dead-letter-monitor": "dead-letter", "monitoring-monitor": "monitoring"}
#: Malformed messages injected to show the dead-letter path (each violates the contract differently).
MALFORMED = (
    b"{not json",
    b'{"transaction_id": "bad-amount", "event_time": "2018-04-01T00:00:00Z", "customer_id": "c", '
    b'"terminal_id": "t", "amount": -1}',
    b'{"transaction_id": "bad-time", "event_time": "yesterday", "customer_id": "c", "terminal_id": "t", "amount": 1}',
    b'{"transaction_id": "", "event_time": "2018-04-01T00:00:00Z", "customer_id": "c", "terminal_id": "t", "amount": 1}',
)


#: The traffic's defaults; with --drift-day, streaming.demo.loop.DEFAULTS (more cards, so the gate's window has some).
DEFAULTS = {"customers": 100, "terminals": 200, "days": 21, "rate": 100.0}


def _utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run the local demo stack end to end.")
    parser.add_argument("--customers", type=int, help="simulated cards (default 100; 150 with --drift-day)")
    parser.add_argument("--terminals", type=int, help="simulated terminals (default 200; 300 with --drift-day)")
    parser.add_argument("--days", type=int, help="days of live traffic to replay (default 21; 28 with --drift-day)")
    parser.add_argument("--history-days", type=int, default=60, help="days of simulated history to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, help="messages per second to publish (default 100; 150 with --drift-day)")
    parser.add_argument("--registry", type=Path,
                        help="model registry (default ./registry; with --drift-day a new one in the workdir)")
    parser.add_argument("--drift-day", type=int,
                        help="the traffic drifts from this day (0-based) and the continuous-training loop runs: "
                             "drift alarm -> retrain -> gate -> shadow -> promote or refuse -> watch")
    parser.add_argument("--drift-kind", choices=DRIFT_KINDS, default="new-pattern",
                        help="the drift scenario (default new-pattern)")
    parser.add_argument("--snapshot-every-labels", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting after this many seconds")
    parser.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--workdir", type=Path, help="folder for logs (default: a temporary folder)")
    parser.add_argument("--signing-key-file", type=Path,
                        help="registry key ring (default: REGISTRY-signing-key.json beside the registry, generated "
                             "when absent)")
    parser.add_argument("--allow-unsigned", action="store_true", help="run the demo without signed versions")
    return parser


def wait_until_consuming(publisher, topic: str, progress: Progress, alive, timeout: float,
                         resend_every: float = 10.0) -> float:
    """Publish warm-up transactions (a card and terminal of their own, not measured) until one is
    scored: the streaming job is then reading, featurising and scoring. Returns the seconds waited."""
    started = time.monotonic()
    deadline, next_send, n = started + timeout, started, 0
    while True:
        with progress.lock:
            if any(at is not None for at in progress.warmup.values()):
                return time.monotonic() - started
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(f"the streaming job scored no warm-up transaction within {timeout:g} s")
        problem = alive()
        if problem:
            raise RuntimeError(problem)
        if now >= next_send:
            n += 1
            tid, at = f"warmup-{n}", f"2018-01-01T00:00:{n % 60:02d}Z"
            with progress.lock:
                progress.warmup[tid] = None
            body = {"transaction_id": tid, "event_time": at, "customer_id": "warmup-card",
                    "terminal_id": "warmup-terminal", "amount": 1.0}
            publisher.publish(topic, orjson.dumps(body), schema=SCHEMA_TRANSACTION, event_time=at).result()
            next_send = now + resend_every
        waited = now - started
        if sys.stdout.isatty():
            print(f"\r{PROG}: waiting for the job to score a warm-up transaction ... {waited:3.0f}s", end="", flush=True)
        time.sleep(0.25)


def run(argv: list[str] | None = None) -> int:  # noqa: C901 - one linear script with cleanup
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (demo_loop.DEFAULTS if args.drift_day is not None else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.drift_day is not None and not 0 <= args.drift_day < args.days:
        parser.error(f"--drift-day must be a day of the replay, 0 <= N < --days ({args.days}), got {args.drift_day}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streamscore-up-"))
    workdir.mkdir(parents=True, exist_ok=True)
    drifting = args.drift_day is not None
    if args.registry is None:
        args.registry = workdir / "registry" if drifting else Path("registry")
    progress, stop = Progress(), threading.Event()
    predictor = job = monitor = controller = recorder = feed = None
    emulator = PubSubEmulator(data_dir=workdir / "emulator")
    store, raw_result = RedisServer(), None
    logs = {"emulator": str(workdir / "emulator" / "emulator.log"), "predictor": str(workdir / "predictor.log"),
            "streaming job": str(workdir / "stream-job.log")}
    if drifting:
        logs["controller"] = str(workdir / "controller.log")
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    status, version, ready_s = "completed", None, None

    def dead_process() -> str | None:
        for name, proc in (("streaming job", job), ("predictor", predictor), ("controller", controller)):
            if proc is not None and proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode}; see {logs[name]}"
        return None

    try:
        print(f"{PROG}: logs of every component go to {workdir}", flush=True)
        print(f"{PROG}: starting the Pub/Sub emulator ...", flush=True)
        emulator.start()
        emulator.ensure(TOPICS, {**SUBSCRIPTIONS, **({demo_loop.SUBSCRIPTION: "monitoring"} if drifting else {})})
        serve_trust, job_trust = ensure_signing_keys(args)
        version = ensure_production_model(args.registry, args)
        store.start()
        port = free_port()
        print(f"{PROG}: starting the predictor; waiting until its health check says SERVING ...", flush=True)
        predictor = spawn(["serve", "--registry", str(args.registry), "--host", "127.0.0.1", "--port", str(port),
                            "--metrics-port", "0", "--poll-interval", "1", "--online-store", store.url, *serve_trust,
                            *(["--shadow-log", str(workdir / "shadow")] if drifting else [])],
                           Path(logs["predictor"]))
        wait_serving(port, predictor)
        print(f"{PROG}: predictor serving {version} on 127.0.0.1:{port}", flush=True)
        job = spawn(["stream", "--project", emulator.project, "--emulator-host", emulator.host_port,
                      "--predictor", f"127.0.0.1:{port}", "--registry", str(args.registry),
                      "--snapshot-every-labels", str(args.snapshot_every_labels), "--online-store", store.url,
                      *job_trust, *(demo_loop.job_args(workdir) if drifting else [])], Path(logs["streaming job"]))
        df = simulate(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed,
                      **({"drift_day": args.drift_day, "drift_kind": args.drift_kind} if drifting else {}))
        if drifting:
            from models.registry import Registry

            recorder = demo_loop.LoopRecorder(workdir, df, args.drift_day)
            feed = demo_loop.AuditFeed(Registry.open(args.registry, keys=getattr(args, "keys", None)),
                                       _utc_now())
            controller = spawn(demo_loop.controller_args(args.registry, workdir, emulator, job_trust, args.seed),
                               Path(logs["controller"]))
        monitor = threading.Thread(target=watch_outputs, args=(emulator, progress, stop,
                                                               recorder.on_score if recorder else None), daemon=True)
        monitor.start()
        publisher = make_publisher(emulator.host_port, ordering=True)
        topics = TopicPaths(emulator.topic_path("transactions"), emulator.topic_path("labels"))
        print(f"{PROG}: streaming job (pid {job.pid}) starting; waiting until it scores a warm-up"
              f" transaction ...", flush=True)
        ready_s = wait_until_consuming(publisher, topics.transactions, progress, dead_process,
                                       timeout=max(args.timeout - (time.monotonic() - started), 1.0))
        print(f"\r{PROG}: the job is consuming (warm-up scored after {ready_s:.1f} s); measured traffic"
              f" starts now", flush=True)
        progress.truth = dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"].astype(int)))
        progress.cards = dict(zip(df["TRANSACTION_ID"].astype(str), df["CUSTOMER_ID"].astype(int)))
        print(f"{PROG}: publishing {len(df):,} transactions ({int(df['TX_FRAUD'].sum())} frauds) of {args.days}"
              f" days + labels at {args.rate:g} msg/s, and {len(MALFORMED)} malformed messages", flush=True)
        if drifting:
            print(f"{PROG}: drift ({args.drift_kind}) from day {args.drift_day} ({recorder.drift_date}); the"
                  f" controller (pid {controller.pid}) retrains on a drift alarm", flush=True)
        for raw in MALFORMED:
            publisher.publish(topics.transactions, raw, schema=SCHEMA_TRANSACTION).result()
            progress.malformed += 1

        def on_publish(kind, event):
            with progress.lock:
                if kind == TRANSACTION:
                    progress.published_transactions += 1
                    progress.sent_at[event.transaction_id] = time.monotonic()
                else:
                    progress.published_labels += 1
            if recorder is not None:
                (recorder.on_transaction if kind == TRANSACTION else recorder.on_label)(event)

        publisher_thread = threading.Thread(target=lambda: publish_dataset(
            df, publisher, topics, rate=args.rate, label_delay=demo_loop.LABEL_DELAY if drifting else LabelDelay(),
            order_by_customer=True,
            on_publish=on_publish), daemon=True)
        publisher_thread.start()
        print(f"{PROG}: progress: in = transactions published, out = scored, dead = dead-lettered,"
              f"\n  left = still awaited, e2e = publish -> score p50/p99, AP = XGBoost/online", flush=True)
        deadline, tty, last_line = started + args.timeout, sys.stdout.isatty(), 0.0
        width = min(shutil.get_terminal_size((80, 24)).columns, 80) - 1
        while time.monotonic() < deadline:
            problem = dead_process()
            if problem:
                status = problem
                break
            for line in feed.poll(recorder.day) if feed is not None else ():
                print(("\r" if tty else "") + line.ljust(width if tty else 0), flush=True)
            if tty:  # one live line on a terminal; a line every 5 s in a log
                print("\r" + status_line(progress, time.monotonic() - started, width), end="", flush=True)
            elif time.monotonic() - last_line >= 5:
                print(status_line(progress, time.monotonic() - started, width), flush=True)
                last_line = time.monotonic()
            if not publisher_thread.is_alive() and progress.done >= progress.expected:
                break
            time.sleep(0.5)
        else:
            status = f"timed out after {args.timeout:g} s"
        print("\r" + status_line(progress, time.monotonic() - started, width), flush=True)
        serving = feed.registry.alias()["version"] if feed is not None else None  # a promotion changes the scores
        raw_result = raw_check(f"127.0.0.1:{port}", df, progress, serving)
    except KeyboardInterrupt:
        status = "interrupted"
        print(f"\n{PROG}: interrupted, shutting down ...", flush=True)
    except Exception as exc:  # report, then still stop everything below
        status = f"failed: {type(exc).__name__}: {exc}"
    finally:
        print(f"{PROG}: stopping the streaming job, the predictor and the emulator ...", flush=True)
        stop.set()
        if monitor is not None:
            monitor.join(5)
        stop_process(controller)
        if feed is not None:
            for line in feed.poll(recorder.day):
                print(line, flush=True)
        stop_process(job)
        stop_process(predictor)
        store.stop()
        emulator.stop()
        signal.signal(signal.SIGTERM, previous)

    summary = build_summary(status, time.monotonic() - started, version, progress, ready_s, logs)
    summary["online_as_served"] = served_summary(progress)
    summary["raw_transaction_check"] = raw_result
    if recorder is not None:
        recorder.close()
        summary["loop"] = {"drift": {"day": args.drift_day, "date": str(recorder.drift_date), "kind": args.drift_kind},
                           "drift_alarms": progress.drifts, "story": feed.story,
                           "promoted": feed.promoted(), "average_precision": recorder.phases(version, feed.promoted())}
    print(render_summary({k: v for k, v in summary.items() if k != "loop"}))
    if recorder is not None:
        print("\n".join(demo_loop.render_loop(summary["loop"])))
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{PROG}: summary written to {args.summary}")
    return 0 if summary["run"]["verdict"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(run())
