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
   for people (verdict, counts, latency, AP; :func:`build_summary` makes it a dict of sections,
   ``--summary PATH`` writes that as JSON). Every component's log stays in ``--workdir`` (by
   default a new temporary folder), printed at the start and in the summary. Exits non-zero if
   any event is unaccounted for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from models.online import average_precision
from models.served import ServedFigures
from streaming.io.events import SCHEMA_TRANSACTION
from streaming.features.spec import DEFAULT_SPEC
from streaming.io.publish import TRANSACTION, LabelDelay, TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import PubSubEmulator, pull_all
from streaming.sim.simulator import simulate
from streaming.store.check import raw_transaction_check
from streaming.store.redis_server import RedisServer

PROG = "streamscore up"
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


def _status_line(p: Progress, elapsed: float, width: int = 79) -> str:
    """One progress line of at most ``width`` characters (an 80-column terminal does not wrap it):
    transactions published | scored, dead-lettered, still awaited | e2e p50/p99 | AP XGBoost/online."""
    line = (f"{elapsed:4.0f}s in {p.published_transactions:,}"
            f" | out {p.scored:,} dead {p.dead_lettered} left {max(p.expected - p.done, 0):,}"
            f" | e2e {_latency(p.percentile(50))}/{_latency(p.percentile(99))}"
            f" | AP {_ap(p.ap('batch'))}/{_ap(p.ap('online'))}")
    return line if len(line) <= width else line[:width - 1] + "…"


def _on_score(progress: Progress, body: dict, now: float) -> None:
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


def _monitor(emulator: PubSubEmulator, progress: Progress, stop: threading.Event) -> None:
    """Pull the output subscriptions until ``stop``; record counts, latencies and scores."""
    subscriber = emulator.subscriber_client()
    path = emulator.subscription_path
    try:
        while not stop.is_set():
            got = 0
            for received in pull_all(subscriber, path("scores-monitor"), 1000, timeout=0.3):
                got += 1
                _on_score(progress, orjson.loads(received.data), time.monotonic())
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


def ensure_signing_keys(args) -> tuple[list[str], list[str]]:
    """The registry trust flags for the predictor and for the job. Unless ``--allow-unsigned``,
    the demo's key ring (``--signing-key-file``, generated beside the registry when absent; never
    inside it) signs the models and the learner's snapshots, and the predictor gets only its
    verify-only half."""
    from models.signing import ED25519, KeyRing, generate

    if args.allow_unsigned:
        return ["--allow-unsigned"], ["--allow-unsigned"]
    path = args.signing_key_file or args.registry.parent / f"{args.registry.name}-signing-key.json"
    public = path.with_name(path.stem + ".public.json")
    if not path.exists():
        generate("demo-1", ED25519).save(path)
        print(f"{PROG}: generated the registry signing key {path} (keep it out of the registry)", flush=True)
    ring = KeyRing.load(path)
    if not public.exists() or KeyRing.load(public) != ring.public():
        public.unlink(missing_ok=True)
        ring.save(public, public_only=True)
    args.keys = ring
    return ["--signing-key-file", str(public)], ["--signing-key-file", str(path)]


def ensure_production_model(registry_dir: Path, args) -> str:
    """The production version, training one on a simulated history first if there is none
    (or if the one there is not signed by the demo's key)."""
    from models.registry import Registry, RegistryError
    from models.training import booster_params
    from streaming.features.batch import featurize_frame

    registry = Registry.open(registry_dir, keys=getattr(args, "keys", None))
    try:
        return registry.metadata(registry.resolve())["version"]
    except RegistryError as exc:
        if "no version is in production" not in str(exc):
            print(f"{PROG}: the production model is not usable here ({exc})", flush=True)
    import xgboost as xgb

    print(f"{PROG}: no production model in {registry_dir}; training one on a simulated history ...", flush=True)
    history = simulate(customers=args.customers, terminals=args.terminals, days=args.history_days, seed=args.seed + 1)
    table = featurize_frame(history)
    names = list(DEFAULT_SPEC.names)
    params, rounds = booster_params({"max_depth": 6, "learning_rate": 0.1, "n_estimators": 100}, seed=args.seed, nthread=2)
    dtrain = xgb.DMatrix(table[names].to_numpy(), label=table["TX_FRAUD"].to_numpy(), feature_names=names)
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    version = registry.register(booster, {
        "feature_names": names, "params": {**params, "n_estimators": rounds},
        "data": {"source": "streamscore simulate", "seed": args.seed + 1, "rows": len(table),
                 "frauds": int(table["TX_FRAUD"].sum()), "days": args.history_days,
                 **training_table(registry_dir, table)},
    }, spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(version)
    print(f"{PROG}: trained and promoted {version} ({len(table):,} transactions)", flush=True)
    return version


def training_table(registry_dir: Path, table) -> dict:
    """Keep the demo model's feature table next to the registry and say where, with its training window:
    the online learner's warm start (models/online_start.py) learns those rows."""
    path = (Path(registry_dir) / "training" / "features.parquet").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path)
    days = table["TX_DATETIME"].dt.date
    return {"features": str(path), "split": {"train": [str(days.min()), str(days.max())]}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streaming.cli", *args], stdout=log_path.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def _wait_serving(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise RuntimeError(f"the predictor did not become SERVING on port {port} within {timeout:g} s")


def _stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _raw_check(target: str, df, progress: Progress) -> dict:
    """The summary's raw-transaction check over the sampled stream scores (see streaming/store/check.py)."""
    from streaming.io.datasets import iter_transactions

    with progress.lock:
        sampled = dict(progress.sampled)
    # The store keeps each key's latest state, so the check takes each card's last transaction whose
    # terminal saw nothing later either: its raw score must equal the stream's (up to 200 of them).
    ordered = df.sort_values("TX_DATETIME", kind="stable")
    last = ordered.drop_duplicates("CUSTOMER_ID", keep="last")
    last = last[last["TRANSACTION_ID"].isin(ordered.drop_duplicates("TERMINAL_ID", keep="last")["TRANSACTION_ID"])]
    rows = last[last["TRANSACTION_ID"].astype(str).isin(sampled)].head(200)
    try:
        return raw_transaction_check(target, list(iter_transactions(rows)), sampled)
    except Exception as exc:  # noqa: BLE001 - the check reports, it never costs the demo its summary
        return {"error": f"{type(exc).__name__}: {exc}"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run the local demo stack end to end.")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--terminals", type=int, default=200)
    parser.add_argument("--days", type=int, default=21, help="days of live traffic to replay (default 21)")
    parser.add_argument("--history-days", type=int, default=60, help="days of simulated history to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second to publish (default 100)")
    parser.add_argument("--registry", type=Path, default=Path("registry"), help="model registry (default ./registry)")
    parser.add_argument("--snapshot-every-labels", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting after this many seconds")
    parser.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--workdir", type=Path, help="folder for logs (default: a temporary folder)")
    parser.add_argument("--signing-key-file", type=Path,
                        help="registry key ring (default: REGISTRY-signing-key.json beside the registry, generated "
                             "when absent)")
    parser.add_argument("--allow-unsigned", action="store_true", help="run the demo without signed versions")
    return parser


def _round(value, digits: int):
    return None if value is None or value != value else round(float(value), digits)  # NaN -> None


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


def build_summary(status: str, elapsed: float, version: str | None, progress: Progress, ready_s: float | None,
                  logs: dict[str, str]) -> dict:
    """The run's summary as a dict of sections (other sections can be added by key)."""
    p = progress
    unaccounted = max(p.expected - p.done, 0)
    return {
        "run": {"status": status, "verdict": "ok" if status == "completed" and unaccounted == 0 else "failed",
                "elapsed_s": round(elapsed, 1), "ready_after_s": _round(ready_s, 1), "production_model": version},
        "traffic": {"published_transactions": p.published_transactions, "published_labels": p.published_labels,
                    "malformed_injected": p.malformed, "scored": p.scored, "dead_lettered": p.dead_lettered,
                    "duplicates_seen": p.duplicates, "unaccounted": unaccounted, "alerts": p.alerts},
        "latency_ms": {"e2e_p50": _round(p.percentile(50), 0), "e2e_p99": _round(p.percentile(99), 0)},
        "average_precision": {"xgboost": _round(p.ap("batch"), 3), "online": _round(p.ap("online"), 3),
                              "xgboost_where_online": _round(p.ap("paired"), 3),
                              "online_prequential": _round(p.online_prequential_ap, 3)},
        "online": {"scored_with_online": len(p.online_scores), "snapshots": p.online_snapshots,
                   "last_version": p.online_version, "versions_served": len(p.online_served_versions),
                   "drift_events": p.drifts},
        "logs": logs,
    }


def render_summary(summary: dict, width: int = 79) -> str:
    """The summary for people: a verdict line, then one line per section (each fits ``width``)."""
    run, traffic = summary["run"], summary["traffic"]
    lines = [f"{PROG}: {'OK' if run['verdict'] == 'ok' else 'FAILED'}"
             f" ({run['status']}) in {run['elapsed_s']:g} s"]
    if "traffic" in summary:
        lines.append(f"  {traffic['published_transactions']:,} transactions + {traffic['malformed_injected']}"
                     f" malformed -> {traffic['scored']:,} scored, {traffic['dead_lettered']} dead-lettered")
        lines.append(f"  {traffic['unaccounted']:,} unaccounted, {traffic['duplicates_seen']:,} duplicates,"
                     f" {traffic['alerts']:,} alerts, {traffic['published_labels']:,} labels published")
    for name, section in summary.items():
        if name in ("run", "traffic") or not isinstance(section, dict):
            continue
        if name == "logs":
            lines.append("  logs:")
            lines.extend(f"    {path}" for path in section.values())
            continue
        items = [f"{key} {_human(value)}" for key, value in section.items()
                 if value is not None and not (isinstance(value, (dict, list)) and len(str(value)) > 60)]
        if len(items) < sum(value is not None for value in section.values()):
            items.append("(more in the JSON summary)")  # nested tables (e.g. per day) do not fit a terminal
        line = f"  {name}:"
        for item in items:  # wrap at width
            if len(line) + len(item) + 2 > width:
                lines.append(line.rstrip(","))
                line = "    "
            line += f" {item},"
        lines.append(line.rstrip(","))
    return "\n".join(lines)


def _human(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def run(argv: list[str] | None = None) -> int:  # noqa: C901 - one linear script with cleanup
    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streamscore-up-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress, stop = Progress(), threading.Event()
    predictor = job = monitor = None
    emulator = PubSubEmulator(data_dir=workdir / "emulator")
    store, raw_check = RedisServer(), None
    logs = {"emulator": str(workdir / "emulator" / "emulator.log"), "predictor": str(workdir / "predictor.log"),
            "streaming job": str(workdir / "stream-job.log")}
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    status, version, ready_s = "completed", None, None

    def dead_process() -> str | None:
        for name, proc in (("streaming job", job), ("predictor", predictor)):
            if proc is not None and proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode}; see {logs[name]}"
        return None

    try:
        print(f"{PROG}: logs of every component go to {workdir}", flush=True)
        print(f"{PROG}: starting the Pub/Sub emulator ...", flush=True)
        emulator.start()
        emulator.ensure(TOPICS, SUBSCRIPTIONS)
        serve_trust, job_trust = ensure_signing_keys(args)
        version = ensure_production_model(args.registry, args)
        store.start()
        port = _free_port()
        print(f"{PROG}: starting the predictor; waiting until its health check says SERVING ...", flush=True)
        predictor = _spawn(["serve", "--registry", str(args.registry), "--host", "127.0.0.1", "--port", str(port),
                            "--metrics-port", "0", "--poll-interval", "1", "--online-store", store.url, *serve_trust],
                           Path(logs["predictor"]))
        _wait_serving(port, predictor)
        print(f"{PROG}: predictor serving {version} on 127.0.0.1:{port}", flush=True)
        job = _spawn(["stream", "--project", emulator.project, "--emulator-host", emulator.host_port,
                      "--predictor", f"127.0.0.1:{port}", "--registry", str(args.registry),
                      "--snapshot-every-labels", str(args.snapshot_every_labels), "--online-store", store.url,
                      *job_trust], Path(logs["streaming job"]))
        monitor = threading.Thread(target=_monitor, args=(emulator, progress, stop), daemon=True)
        monitor.start()
        publisher = make_publisher(emulator.host_port, ordering=True)
        topics = TopicPaths(emulator.topic_path("transactions"), emulator.topic_path("labels"))
        print(f"{PROG}: streaming job (pid {job.pid}) starting; waiting until it scores a warm-up"
              f" transaction ...", flush=True)
        ready_s = wait_until_consuming(publisher, topics.transactions, progress, dead_process,
                                       timeout=max(args.timeout - (time.monotonic() - started), 1.0))
        print(f"\r{PROG}: the job is consuming (warm-up scored after {ready_s:.1f} s); measured traffic"
              f" starts now", flush=True)
        df = simulate(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed)
        progress.truth = dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"].astype(int)))
        progress.cards = dict(zip(df["TRANSACTION_ID"].astype(str), df["CUSTOMER_ID"].astype(int)))
        print(f"{PROG}: publishing {len(df):,} transactions ({int(df['TX_FRAUD'].sum())} frauds) of {args.days}"
              f" days + labels at {args.rate:g} msg/s, and {len(MALFORMED)} malformed messages", flush=True)
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

        publisher_thread = threading.Thread(target=lambda: publish_dataset(
            df, publisher, topics, rate=args.rate, label_delay=LabelDelay(), order_by_customer=True,
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
            if tty:  # one live line on a terminal; a line every 5 s in a log
                print("\r" + _status_line(progress, time.monotonic() - started, width), end="", flush=True)
            elif time.monotonic() - last_line >= 5:
                print(_status_line(progress, time.monotonic() - started, width), flush=True)
                last_line = time.monotonic()
            if not publisher_thread.is_alive() and progress.done >= progress.expected:
                break
            time.sleep(0.5)
        else:
            status = f"timed out after {args.timeout:g} s"
        print("\r" + _status_line(progress, time.monotonic() - started, width), flush=True)
        raw_check = _raw_check(f"127.0.0.1:{port}", df, progress)
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
        _stop_process(job)
        _stop_process(predictor)
        store.stop()
        emulator.stop()
        signal.signal(signal.SIGTERM, previous)

    summary = build_summary(status, time.monotonic() - started, version, progress, ready_s, logs)
    summary["online_as_served"] = served_summary(progress)
    summary["raw_transaction_check"] = raw_check
    print(render_summary(summary))
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{PROG}: summary written to {args.summary}")
    return 0 if summary["run"]["verdict"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(run())
