"""``streamscore up`` (``make demo``): the local stack, end to end, then a summary.

1. starts the official Pub/Sub emulator on a free port and creates the topics;
2. simulates a small labelled history with the project's simulator;
3. starts the streaming job (``streamscore stream`` on the local runner) as a subprocess;
4. publishes the traffic (transactions, labels later in event time, a few malformed
   messages) and shows live progress: published / featurised / dead-lettered, backlog and
   end-to-end latency (publish → output received);
5. prints a summary (and writes it as JSON with ``--summary PATH``) and stops every process
   it started — also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from streaming.events import SCHEMA_TRANSACTION
from streaming.publish import TRANSACTION, LabelDelay, TopicPaths, make_publisher, publish_dataset
from streaming.pubsub_local import PubSubEmulator, pull_all
from streaming.simulator import simulate

PROG = "streamscore up"
TOPICS = {"transactions": "transactions", "labels": "labels", "features": "features", "dead_letter": "dead-letter"}
SUBSCRIPTIONS = {"transactions-stream": "transactions", "labels-stream": "labels",
                 "features-monitor": "features", "dead-letter-monitor": "dead-letter"}
#: Malformed messages injected to show the dead-letter path (each violates the contract differently).
MALFORMED = (
    b"{not json",
    b'{"transaction_id": "bad-amount", "event_time": "2018-04-01T00:00:00Z", "customer_id": "c", '
    b'"terminal_id": "t", "amount": -1}',
    b'{"transaction_id": "bad-time", "event_time": "yesterday", "customer_id": "c", "terminal_id": "t", "amount": 1}',
    b'{"transaction_id": "", "event_time": "2018-04-01T00:00:00Z", "customer_id": "c", "terminal_id": "t", "amount": 1}',
)


@dataclass
class Progress:
    """What the monitor has seen; updated from the publisher and monitor threads."""

    published_transactions: int = 0
    published_labels: int = 0
    malformed: int = 0
    featurised: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    sent_at: dict = field(default_factory=dict, repr=False)
    latencies_ms: list = field(default_factory=list, repr=False)
    seen: set = field(default_factory=set, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def expected(self) -> int:
        return self.published_transactions + self.malformed

    @property
    def done(self) -> int:
        return self.featurised + self.dead_lettered

    def percentile(self, q: float) -> float | None:
        with self.lock:
            return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _status_line(p: Progress, elapsed: float) -> str:
    return (f"[{elapsed:6.1f}s] published {p.published_transactions:,} tx + {p.published_labels:,} labels"
            f" + {p.malformed} malformed | featurised {p.featurised:,} | dead-lettered {p.dead_lettered}"
            f" | backlog {max(p.expected - p.done, 0):,} | e2e p50 {_fmt_ms(p.percentile(50))}"
            f" p99 {_fmt_ms(p.percentile(99))}")


def _monitor(emulator: PubSubEmulator, progress: Progress, stop: threading.Event) -> None:
    """Pull the output subscriptions until ``stop``; record counts and latencies."""
    subscriber = emulator.subscriber_client()
    features = emulator.subscription_path("features-monitor")
    dead = emulator.subscription_path("dead-letter-monitor")
    try:
        while not stop.is_set():
            got = 0
            for received in pull_all(subscriber, features, 1000, timeout=0.3):
                got += 1
                now = time.monotonic()
                tid = orjson.loads(received.data)["transaction_id"]
                with progress.lock:
                    if tid in progress.seen:
                        progress.duplicates += 1
                        continue
                    progress.seen.add(tid)
                    progress.featurised += 1
                    sent = progress.sent_at.pop(tid, None)
                    if sent is not None:
                        progress.latencies_ms.append((now - sent) * 1000)
            for _ in pull_all(subscriber, dead, 1000, timeout=0.1):
                got += 1
                with progress.lock:
                    progress.dead_lettered += 1
            if not got:
                stop.wait(0.1)
    finally:
        subscriber.close()


def _start_job(emulator: PubSubEmulator, log_path: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "streaming.job", "--project", emulator.project,
            "--emulator-host", emulator.host_port, "--features-topic", TOPICS["features"],
            "--dead-letter-topic", TOPICS["dead_letter"]]
    return subprocess.Popen(args, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run the local demo stack end to end.")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--terminals", type=int, default=200)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second to publish (default 100)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this many seconds")
    parser.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--workdir", type=Path, help="folder for logs (default: a temporary folder)")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streamscore-up-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress, stop = Progress(), threading.Event()
    job = monitor = None
    emulator = PubSubEmulator(data_dir=workdir / "emulator")
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    status = "completed"
    try:
        print(f"{PROG}: starting the Pub/Sub emulator ...", flush=True)
        emulator.start()
        emulator.ensure(TOPICS.values(), SUBSCRIPTIONS)
        df = simulate(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed)
        print(f"{PROG}: emulator at {emulator.host_port}; simulated {len(df):,} transactions "
              f"({int(df['TX_FRAUD'].sum())} frauds) over {args.days} days", flush=True)
        job = _start_job(emulator, workdir / "stream-job.log")
        print(f"{PROG}: streaming job started (pid {job.pid}, log {workdir / 'stream-job.log'})", flush=True)
        monitor = threading.Thread(target=_monitor, args=(emulator, progress, stop), daemon=True)
        monitor.start()

        publisher = make_publisher(emulator.host_port, ordering=True)
        topics = TopicPaths(emulator.topic_path(TOPICS["transactions"]), emulator.topic_path(TOPICS["labels"]))
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

        def publish():
            publish_dataset(df, publisher, topics, rate=args.rate, label_delay=LabelDelay(),
                            order_by_customer=True, on_publish=on_publish)

        publisher_thread = threading.Thread(target=publish, daemon=True)
        publisher_thread.start()
        deadline, tty, last_line = started + args.timeout, sys.stdout.isatty(), 0.0
        while time.monotonic() < deadline:
            if job.poll() is not None:
                status = f"the streaming job exited with code {job.returncode}; see {workdir / 'stream-job.log'}"
                break
            if tty:  # one live line on a terminal; a line every 5 s in a log
                print("\r" + _status_line(progress, time.monotonic() - started), end="", flush=True)
            elif time.monotonic() - last_line >= 5:
                print(_status_line(progress, time.monotonic() - started), flush=True)
                last_line = time.monotonic()
            if not publisher_thread.is_alive() and progress.done >= progress.expected:
                break
            time.sleep(0.5)
        else:
            status = f"timed out after {args.timeout:g} s"
        print("\r" + _status_line(progress, time.monotonic() - started), flush=True)
    except KeyboardInterrupt:
        status = "interrupted"
        print(f"\n{PROG}: interrupted, shutting down ...", flush=True)
    finally:
        stop.set()
        if monitor is not None:
            monitor.join(5)
        _stop_process(job)
        emulator.stop()
        signal.signal(signal.SIGTERM, previous)

    summary = {
        "status": status,
        "elapsed_s": round(time.monotonic() - started, 1),
        "published_transactions": progress.published_transactions,
        "published_labels": progress.published_labels,
        "malformed_injected": progress.malformed,
        "featurised": progress.featurised,
        "dead_lettered": progress.dead_lettered,
        "duplicates_seen": progress.duplicates,
        "unaccounted": max(progress.expected - progress.done, 0),
        "e2e_latency_ms": {"p50": progress.percentile(50), "p99": progress.percentile(99)},
        "logs": str(workdir),
    }
    print(json.dumps(summary, indent=2))
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    ok = status == "completed" and summary["unaccounted"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run())
