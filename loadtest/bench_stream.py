"""Sustained throughput of the streaming features job vs a bare Pub/Sub pipeline, on the local runner.

    python -m loadtest.bench_stream [--messages 6000] [--repeat 3] [--customers 5000 --terminals 10000]
                                    [--labels off|backlog|idle] [--variants bare,features] [--timeout 900]

One emulator for the whole run. Per repeat and per variant (the order alternates between
repeats), with fresh topic and subscription names:

1. the first ``--messages`` transactions of ``simulate(customers, terminals, days=...)`` are
   published (as fast as possible, every publish confirmed) into the backlog of the input
   subscription BEFORE the pipeline starts, so the source, not the publisher, is the limit;
2. the pipeline starts in its own process group on the local ``BundleBasedDirectRunner`` in
   streaming mode — ``bare``: :func:`run_bare` (``ReadFromPubSub(with_attributes=True) →
   WriteToPubSub(with_attributes=True)``, started as ``python -m loadtest.bench_stream bare-job``);
   ``features``: the real job, ``python -m streaming.job.pipeline`` (``--labels`` decides its labels
   subscription: ``off`` passes ``--labels-subscription ''``; ``backlog`` pre-publishes every
   transaction's label too (2N input messages, N outputs); ``idle`` gives it an empty one);
3. the outputs are pulled from a check subscription on the output topic until all N came (or
   ``--timeout``); each output's Pub/Sub publish time is its arrival time;
4. before the process group is killed its peak RSS (``VmHWM``) and CPU time are read from /proc.

Reported per run: startup (process start → first output), drain (process start → last output),
the sustained rate (outputs between the 10th and 90th percentile of arrival times divided by
that span), the job's CPU per output over that same span, peak RSS, and whether exactly the N
expected outputs came (features: distinct transaction ids; duplicates and dead letters are
counted). Then medians over repeats and the ratio features/bare. Numbers only, no thresholds.

Variants (``--variants``, same method): ``bare`` and ``features`` as above, and ``scoring``: the
real job scoring every transaction over gRPC (``--predictor``: a ``streamscore serve --model-file``
started once for the run, on an XGBoost model trained on a simulated history of the same
population, so alerts are about as rare as frauds; its ``scores`` topic is the output). Every variant
runs on the local runner as ``streamscore stream`` does, tuned by :mod:`streaming.runner.local`
(100-message pulls that answer at once when empty); ``-pull<N>`` / ``-wait<S>`` change the tuning's pull size
and deadline, ``-untuned`` runs Beam's runner as it ships (10-message pulls, 30 s deadline), e.g.
``features-untuned``, ``bare-pull10``. The ratio compares each variant with the bare run of the
same tuning. Scoring only: ``-learn`` gives the job ``--registry`` (the predictor's model, promoted
in a registry of the run with its training reference), so labels train the online learner;
``-log`` adds ``--example-log DIR`` and ``-monitor`` ``--live-monitoring`` (with ``-learn``),
e.g. ``scoring-learn,scoring-learn-log-monitor`` for the cost of the example log and live monitoring.

``BENCH_STREAM_PROFILE=DIR`` runs every job subprocess under cProfile (the runner's worker
thread, where all transforms execute) and writes ``DIR/<variant>-<repeat>.prof``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub, WriteToPubSub

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "local-project"
PROFILE_ENV = "BENCH_STREAM_PROFILE"
PULL_SIZE = 100  # streaming.job.pipeline's --local-pull-size default (Beam 2.77's own reader pulls 10)
PULL_TIMEOUT = 30.0  # its --local-pull-deadline default (Beam's, with return_immediately)
BASE_VARIANTS = ("bare", "features", "scoring")
JOB_KINDS = tuple(f"{v}-job" for v in BASE_VARIANTS)
_VARIANT = re.compile(
    r"^(?P<base>[a-z]+)(?P<mods>(?:-pull\d+|-wait\d+(?:\.\d+)?|-untuned|-store|-learn|-log|-monitor)*)$")
#: redis:// URL of the run's redis-server, set by run() when a variant has ``-store``.
_ONLINE_STORE: list[str] = []
#: The run's registry (the predictor's model, promoted, with its training reference), set when a variant has ``-learn``.
_REGISTRY: list[str] = []


# --------------------------------------------------------------------------- pure helpers


def steady_rate(times: Sequence[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Messages per second between the ``lo`` and ``hi`` quantiles of the arrival ``times``.

    The outputs strictly after the ``lo`` one up to the ``hi`` one, divided by the time between
    them (nearest-rank indices on the sorted times). ``nan`` with fewer than 2 distinct
    points; ``inf`` if they all arrived at the same instant.
    """
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"need 0 <= lo < hi <= 1, got {lo}, {hi}")
    ts = sorted(times)
    if len(ts) < 2:
        return math.nan
    i, j = round(lo * (len(ts) - 1)), round(hi * (len(ts) - 1))
    if j <= i:
        return math.nan
    span = ts[j] - ts[i]
    return (j - i) / span if span > 0 else math.inf


def interpolate(samples: Sequence[tuple[float, float]], t: float) -> float:
    """Linear interpolation of ``(time, value)`` samples (sorted by time) at ``t``, clamped at the ends."""
    if not samples:
        return math.nan
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in zip(samples, samples[1:]):
        if t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


def cpu_per_message(times: Sequence[float], cpu_samples: Sequence[tuple[float, float]],
                    lo: float = 0.1, hi: float = 0.9) -> float:
    """CPU seconds per output over the same steady span as :func:`steady_rate`."""
    ts = sorted(times)
    if len(ts) < 2 or len(cpu_samples) < 2:
        return math.nan
    i, j = round(lo * (len(ts) - 1)), round(hi * (len(ts) - 1))
    if j <= i:
        return math.nan
    return (interpolate(cpu_samples, ts[j]) - interpolate(cpu_samples, ts[i])) / (j - i)


def proc_status_kib(status_text: str, field_name: str) -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``...) of a ``/proc/<pid>/status`` text, in KiB."""
    for line in status_text.splitlines():
        if line.startswith(field_name + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return None


def proc_stat_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) of a ``/proc/<pid>/stat`` line (the command may contain spaces)."""
    fields = stat_text[stat_text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def variant_order(variants: Sequence[str], repeat: int) -> list[str]:
    """The variants in the given order on even repeats (0, 2, ...), reversed on odd ones."""
    return list(variants) if repeat % 2 == 0 else list(reversed(variants))


@dataclass(frozen=True)
class Variant:
    """``<base>[-pull<N>][-wait<S>][-untuned]``: a pipeline and the local-runner tuning it runs with.

    Tuned (the default, as ``streamscore stream`` runs locally): :func:`streaming.runner.local.install`
    with ``pull_size`` / ``pull_timeout``; ``-untuned``: Beam's local runner as it ships.
    """

    name: str
    base: str
    pull_size: int = PULL_SIZE
    pull_timeout: float = PULL_TIMEOUT
    tuned: bool = True
    store: bool = False  # -store: the job also writes the online store (--online-store, a redis-server)
    learn: bool = False  # -learn: --registry, so labels train the online learner (scoring only)
    log: bool = False  # -log: --example-log DIR (scoring only)
    monitor: bool = False  # -monitor: --live-monitoring (needs -learn: the registry's reference)

    @property
    def tuning(self) -> tuple:
        return (self.pull_size, self.pull_timeout) if self.tuned else ()

    def job_flags(self) -> list[str]:
        """Flags of the bench's own job processes (bare, prototypes)."""
        return ["--pull-size", str(self.pull_size), "--pull-timeout", str(self.pull_timeout)] + (
            [] if self.tuned else ["--untuned"])


def parse_variant(name: str) -> Variant:
    """``features-pull10-wait30`` → Variant(base="features", pull_size=10, pull_timeout=30.0); ValueError if bad."""
    match = _VARIANT.match(name)
    if not match or match["base"] not in BASE_VARIANTS:
        raise ValueError(f"bad variant {name!r}: expected one of {', '.join(BASE_VARIANTS)} "
                         "optionally followed by -pull<N>, -wait<seconds> and/or -untuned")
    size, timeout, tuned, store = PULL_SIZE, PULL_TIMEOUT, True, False
    scoring_mods = {"learn": False, "log": False, "monitor": False}
    for mod in match["mods"].split("-")[1:]:
        if mod in scoring_mods:
            if match["base"] != "scoring":
                raise ValueError(f"bad variant {name!r}: -{mod} needs the scoring job")
            scoring_mods[mod] = True
        elif mod == "store":
            if match["base"] == "bare":
                raise ValueError(f"bad variant {name!r}: -store needs the real job (features or scoring)")
            store = True
        elif mod == "untuned":
            tuned = False
        elif mod.startswith("pull"):
            size = int(mod[4:])
        else:
            timeout = float(mod[4:])
    if size < 1 or timeout <= 0:
        raise ValueError(f"bad variant {name!r}: pull size must be >= 1 and wait > 0")
    if not tuned and (size, timeout) != (PULL_SIZE, PULL_TIMEOUT):
        raise ValueError(f"bad variant {name!r}: -pull/-wait are local-runner tuning, not with -untuned")
    if scoring_mods["monitor"] and not scoring_mods["learn"]:
        raise ValueError(f"bad variant {name!r}: -monitor needs -learn (the registry holding the reference)")
    return Variant(name, match["base"], size, timeout, tuned, store, **scoring_mods)


# --------------------------------------------------------------------------- /proc


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def peak_rss_mib(pid: int) -> float:
    text = _read(f"/proc/{pid}/status")
    kib = proc_status_kib(text, "VmHWM") if text else None
    return kib / 1024 if kib is not None else math.nan


def load_average() -> float:
    """The 1-minute load average (the machine is shared: a hint of how noisy a run was)."""
    text = _read("/proc/loadavg")
    return float(text.split()[0]) if text else math.nan


def cpu_seconds(pid: int) -> float:
    text = _read(f"/proc/{pid}/stat")
    return proc_stat_cpu_ticks(text) / os.sysconf("SC_CLK_TCK") if text else math.nan


# --------------------------------------------------------------------------- the pipelines (subprocess side)


def _local_options(project: str, extra: Sequence[str] = ()):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(list(extra), streaming=True, runner="BundleBasedDirectRunner", project=project)


def _job_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--project", default=PROJECT)
    parser.add_argument("--emulator-host", required=True)
    _tuning_flags(parser)
    return parser


def _tuning_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pull-size", type=int, default=PULL_SIZE, help="local-runner tuning: messages per pull")
    parser.add_argument("--pull-timeout", type=float, default=PULL_TIMEOUT, help="local-runner tuning: pull deadline")
    parser.add_argument("--untuned", action="store_true", help="Beam's local runner as it ships")


def _tune(args) -> None:
    if not args.untuned:
        from streaming.runner import local as local_runner

        local_runner.install(args.pull_size, args.pull_timeout)


def _run_until_cancelled(pipeline) -> int:
    result = pipeline.run()
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        result.cancel()
    return 0


def run_bare(argv: list[str] | None = None) -> int:
    """The bare pipeline: ``ReadFromPubSub(subscription, with_attributes=True) → WriteToPubSub(topic, with_attributes=True)``."""
    import logging

    parser = _job_parser("bench_stream bare-job")
    parser.add_argument("--subscription", required=True)
    parser.add_argument("--topic", required=True)
    args, beam_args = parser.parse_known_args(argv)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ["PUBSUB_EMULATOR_HOST"] = args.emulator_host
    _tune(args)
    pipeline = beam.Pipeline(options=_local_options(args.project, beam_args))
    _ = (pipeline
         | "Read" >> ReadFromPubSub(subscription=f"projects/{args.project}/subscriptions/{args.subscription}",
                                    with_attributes=True)
         | "Write" >> WriteToPubSub(f"projects/{args.project}/topics/{args.topic}", with_attributes=True))
    return _run_until_cancelled(pipeline)


def run_job(argv: list[str] | None = None) -> int:
    """The real job (``streaming.job.pipeline.run``, tuned by its own flags), e.g. under the profiler."""
    from streaming.job.pipeline import run

    return run(argv)


def install_profiler(out: str) -> None:
    """cProfile the runner's worker thread (where every transform runs); dump to ``out`` on SIGTERM/SIGINT.

    The worker may be blocked in a 30 s Pub/Sub pull when the signal comes, so the main thread
    dumps the profile itself if the worker has not done so within 2 s, then exits.
    """
    import cProfile

    from apache_beam.runners.direct import executor as ex
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils import counters

    stop, dumped = threading.Event(), threading.Event()
    profiles: list[cProfile.Profile] = []

    def run(self):  # Beam's worker loop, with the profiler on around every task
        profile = cProfile.Profile()
        profiles.append(profile)
        state_sampler = statesampler.StateSampler("", counters.CounterFactory())
        statesampler.set_current_tracker(state_sampler)
        while not self.shutdown_requested and not stop.is_set():
            task = self._get_task_or_none()
            if task:
                try:
                    if not self.shutdown_requested:
                        self._update_name(task)
                        profile.enable()
                        try:
                            task.call(state_sampler)
                        finally:
                            profile.disable()
                        self._update_name()
                finally:
                    self.queue.task_done()
        if stop.is_set() and not dumped.is_set():
            profile.dump_stats(out)
            dumped.set()

    ex._ExecutorService._ExecutorServiceWorker.run = run

    def on_signal(signum, frame):
        stop.set()
        if not dumped.wait(2.0) and profiles:
            profiles[0].dump_stats(out)
            dumped.set()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _job_main(argv: list[str]) -> int:
    """``python -m loadtest.bench_stream {bare-job|features-job|scoring-job} [--profile OUT] ARGS...``."""
    kind, rest = argv[0], argv[1:]
    if rest[:1] == ["--profile"]:
        install_profiler(rest[1])
        rest = rest[2:]
    if kind == "bare-job":
        return run_bare(rest)
    return run_job(rest)


# --------------------------------------------------------------------------- the bench (driver side)


@dataclass
class Outcome:
    variant: str
    repeat: int
    expected: int
    received: int = 0
    distinct: int = 0
    dead_letters: int = 0
    startup: float = math.nan
    drain: float = math.nan
    rate: float = math.nan
    rate_early: float = math.nan
    rate_late: float = math.nan
    overall: float = math.nan
    cpu_ms: float = math.nan
    rss_mib: float = math.nan
    publish_s: float = math.nan
    exit_note: str = ""
    load: float = math.nan
    visibility: dict | None = None  # -store: how long after its output a transaction's state is in Redis
    arrivals: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.distinct == self.expected == self.received and self.dead_letters == 0 and not self.exit_note


class Job:
    """A pipeline subprocess in its own process group, killed (group) on stop."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self._log_handle = log.open("wb")
        self.started = time.time()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 25.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (grpc helpers, a profiler that did not exit)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log_handle.close()

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def scoring_predictor(workdir: Path, customers: int, terminals: int, seed: int, registry: bool = False):
    """``streamscore serve`` for the scoring variant, on a real fraud model (so alerts are as rare as frauds).

    The model is trained as ``streamscore up`` trains one: XGBoost (100 trees of depth 6) on the
    batch features of a 30-day simulated history of the same population, another seed.
    """
    from loadtest.bench_predictor import our_server
    from models.training import fit
    from streaming.features.batch import featurize_frame
    from streaming.features.spec import DEFAULT_SPEC
    from streaming.sim.simulator import simulate

    table = featurize_frame(simulate(customers=customers, terminals=terminals, days=30, seed=seed + 1))
    booster = fit(table, DEFAULT_SPEC.names, {"max_depth": 6, "learning_rate": 0.1, "n_estimators": 100}, seed=seed)
    model = workdir / "model.json"
    booster.save_model(str(model))
    if registry:  # -learn variants: the same model, promoted, with its training reference
        from models.monitoring import REFERENCE_FILE, Reference
        from models.registry import Registry
        from models.training import predict

        reg = Registry.open(workdir / "registry")
        reference = Reference.fit(table, DEFAULT_SPEC.names, predict(booster, table, DEFAULT_SPEC.names))
        reg.promote(reg.register(booster, {"feature_names": list(DEFAULT_SPEC.names)}, spec_hash=DEFAULT_SPEC.spec_hash,
                                 extra_files={REFERENCE_FILE: reference.to_json()}))
        _REGISTRY[:] = [str(workdir / "registry")]
    with our_server(model, workdir, name="predictor") as target:
        yield str(target)


def make_transactions(n: int, customers: int, terminals: int, seed: int):
    """The first ``n`` transactions of ``simulate(customers, terminals, days)`` (enough days)."""
    from streaming.sim.simulator import simulate

    per_day = max(1.0, customers * 2.0)  # ~2 transactions per customer-day on average
    days = max(2, math.ceil(n / per_day) + 1)
    while True:
        df = simulate(customers=customers, terminals=terminals, days=days, seed=seed)
        if len(df) >= n:
            return df.iloc[:n].reset_index(drop=True)
        days *= 2


def _job_command(variant: Variant, emulator, names: dict[str, str], labels: str, profile: str | None,
                 predictor: str | None = None) -> list[str]:
    wrapper = ["--profile", profile] if profile else []
    if variant.base == "bare":
        return [sys.executable, "-m", "loadtest.bench_stream", "bare-job", *wrapper, *variant.job_flags(),
                "--project", emulator.project, "--emulator-host", emulator.host_port,
                "--subscription", names["in_sub"], "--topic", names["out"]]
    job_args = ["--project", emulator.project, "--emulator-host", emulator.host_port,
                "--transactions-subscription", names["in_sub"],
                "--labels-subscription", names["labels_sub"] if labels != "off" else "",
                "--features-topic", names["out"], "--dead-letter-topic", names["dead"]]
    if variant.base == "scoring":  # the real job scoring over gRPC: its scores topic is the output
        if predictor is None:
            raise ValueError("the scoring variant needs a predictor")
        job_args += ["--predictor", predictor, "--scores-topic", names["out"], "--alerts-topic", names["alerts"]]
    if variant.store:
        job_args += ["--online-store", _ONLINE_STORE[0]]
    if variant.learn:
        job_args += ["--registry", _REGISTRY[0], "--allow-unsigned", "--monitoring-topic", names["monitoring"]]
    if variant.log:
        job_args += ["--example-log", names["log_dir"]]
    if variant.monitor:
        job_args += ["--live-monitoring"]
    if variant.base in ("features", "scoring"):
        tuning = (["--local-pull-size", str(variant.pull_size), "--local-pull-deadline", str(variant.pull_timeout)]
                  if variant.tuned else ["--no-local-tuning"])
        if not profile:
            return [sys.executable, "-m", "streaming.job.pipeline", *job_args, *tuning]  # exactly the real job
        return [sys.executable, "-m", "loadtest.bench_stream", f"{variant.base}-job", *wrapper, *job_args, *tuning]
    return [sys.executable, "-m", "loadtest.bench_stream", f"{variant.base}-job", *wrapper, *variant.job_flags(),
            *job_args]


def _collect(subscriber, path: str, expected: int, deadline: float, job: Job, key_of, out: Outcome,
             cpu_samples: list[tuple[float, float]], settle: float = 1.0, on_output=None) -> None:
    """Pull and ack until ``expected`` distinct outputs came, the job died or the deadline; then settle."""
    from google.api_core import exceptions

    seen: set = set()
    settle_until = None
    while True:
        now = time.monotonic()
        if settle_until is None and len(seen) >= expected:
            settle_until = now + settle
        stop_at = deadline if settle_until is None else min(deadline, settle_until)
        if now >= stop_at or (not job.alive and settle_until is None):
            break
        cpu_samples.append((time.time(), cpu_seconds(job.proc.pid)))
        try:
            response = subscriber.pull(request={"subscription": path, "max_messages": 1000},
                                       timeout=max(0.05, min(1.0, stop_at - now)), retry=None)
        except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable):
            continue
        received = response.received_messages
        if received:
            subscriber.acknowledge(request={"subscription": path, "ack_ids": [r.ack_id for r in received]})
        for item in received:
            out.received += 1
            out.arrivals.append(item.message.publish_time.timestamp())
            seen.add(key_of(item.message))
            if on_output is not None:
                on_output(item.message)
        if len(received) < 200:
            time.sleep(0.25)  # arrival times are publish times: pulling less often costs no precision
    out.distinct = len(seen)


VISIBILITY_SAMPLES = 300


def visibility_probe(df):
    """A VisibilityProbe on the run's store watching every k-th transaction (VISIBILITY_SAMPLES per
    run, watched from before they are published), and the callback giving it their outputs' publish times."""
    import orjson

    from streaming.features.spec import DEFAULT_SPEC
    from streaming.store.visibility import VisibilityProbe

    every = max(1, len(df) // VISIBILITY_SAMPLES)
    probe = VisibilityProbe(_ONLINE_STORE[0], DEFAULT_SPEC, 7.0, interval=0.02)
    sampled = df.iloc[::every]
    for tid, customer, terminal in zip(sampled["TRANSACTION_ID"], sampled["CUSTOMER_ID"], sampled["TERMINAL_ID"]):
        probe.watch(str(tid), str(customer), str(terminal))

    def on_output(message):
        probe.published(str(orjson.loads(message.data)["transaction_id"]), message.publish_time.timestamp())

    return probe, on_output


def bench_variant(emulator, variant: Variant, repeat: int, df, labels: str, timeout: float, workdir: Path,
                  profile_dir: str | None, predictor: str | None = None) -> Outcome:
    import orjson

    from streaming.io.publish import TopicPaths, make_publisher, publish_dataset

    n = len(df)
    tag = f"{variant.name}-{repeat}-{uuid.uuid4().hex[:6]}"
    names = {"in": f"bench-in-{tag}", "out": f"bench-out-{tag}", "dead": f"bench-dead-{tag}",
             "labels": f"bench-labels-{tag}", "in_sub": f"bench-in-sub-{tag}", "out_sub": f"bench-out-check-{tag}",
             "dead_sub": f"bench-dead-check-{tag}", "labels_sub": f"bench-labels-sub-{tag}", "alerts": f"bench-alerts-{tag}",
             "monitoring": f"bench-monitoring-{tag}", "log_dir": str(workdir / f"{tag}-log")}
    emulator.ensure([names["in"], names["out"], names["dead"], names["labels"], names["alerts"], names["monitoring"]], {
        names["in_sub"]: names["in"], names["out_sub"]: names["out"], names["dead_sub"]: names["dead"],
        names["labels_sub"]: names["labels"]})
    out = Outcome(variant.name, repeat, n)

    bare = variant.base == "bare"
    with_labels = labels == "backlog" and not bare
    if variant.store:  # every run writes the same keys: start empty (else the compare-and-set refuses them all)
        import redis

        redis.Redis.from_url(_ONLINE_STORE[0]).flushdb()
    probe, on_output = visibility_probe(df) if variant.store else (None, None)
    publisher = make_publisher(emulator.host_port)
    try:
        topics = TopicPaths(emulator.topic_path(names["in"]), emulator.topic_path(names["labels"]) if with_labels else None)
        report = publish_dataset(df, publisher, topics, rate=1e12, labels=with_labels)
    finally:
        publisher.stop()
        publisher.transport.close()
    out.publish_s = report.elapsed
    if report.transactions != n:
        out.exit_note = f"published {report.transactions}/{n}"
        if probe is not None:
            probe.close(timeout=0)
        return out

    if bare:
        def key_of(msg):
            return bytes(msg.data)
    else:
        def key_of(msg):
            return orjson.loads(msg.data)["transaction_id"]

    profile = str(Path(profile_dir, f"{variant.name}-{repeat}.prof")) if profile_dir else None
    subscriber = emulator.subscriber_client()
    cpu_samples: list[tuple[float, float]] = []
    try:
        job = Job(_job_command(variant, emulator, names, labels, profile, predictor), workdir / f"{tag}.log")
    except BaseException:
        subscriber.close()
        raise
    try:
        _collect(subscriber, emulator.subscription_path(names["out_sub"]), n, time.monotonic() + timeout, job,
                 key_of, out, cpu_samples, on_output=on_output)
        if probe is not None:
            out.visibility = probe.close(timeout=5.0).as_dict()
        if not bare:
            dead: list = []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    response = subscriber.pull(request={"subscription": emulator.subscription_path(names["dead_sub"]),
                                                        "max_messages": 1000}, timeout=1.0, retry=None)
                except Exception:  # noqa: BLE001 - an empty pull times out
                    continue
                dead += response.received_messages
            out.dead_letters = len(dead)
        out.load = load_average()
        if job.alive:
            cpu_samples.append((time.time(), cpu_seconds(job.proc.pid)))
            out.rss_mib = peak_rss_mib(job.proc.pid)
        else:
            out.exit_note = f"job exited with {job.proc.returncode}"
    finally:
        job.stop()
        for sub in (names["in_sub"], names["out_sub"], names["dead_sub"], names["labels_sub"]):
            try:
                subscriber.delete_subscription(request={"subscription": emulator.subscription_path(sub)})
            except Exception:  # noqa: BLE001 - best effort cleanup of the emulator's memory
                pass
        subscriber.close()
    if out.exit_note:
        print(f"  {variant.name} #{repeat}: {out.exit_note}; log tail:\n{job.tail()}", file=sys.stderr)
    if variant.log:
        import pyarrow.parquet as pq

        files = sorted(Path(names["log_dir"]).glob("day=*/*.parquet"))
        print(f"  {variant.name} #{repeat}: example log {sum(pq.read_metadata(f).num_rows for f in files):,} rows "
              f"in {len(files)} files", file=sys.stderr)
    if out.arrivals:
        ts = sorted(out.arrivals)
        out.startup = ts[0] - job.started
        out.drain = ts[-1] - job.started
        out.rate = steady_rate(ts)
        out.rate_early, out.rate_late = steady_rate(ts, 0.1, 0.5), steady_rate(ts, 0.5, 0.9)
        out.overall = (len(ts) - 1) / (ts[-1] - ts[0]) if ts[-1] > ts[0] else math.nan
        out.cpu_ms = cpu_per_message(ts, cpu_samples) * 1e3
    return out


ROW = "{:>3} {:<20} {:>13} {:>6} {:>8} {:>8} {:>9} {:>15} {:>10} {:>7} {:>8} {:>5}  {}"


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_row(o: Outcome) -> None:
    status = "ok" if o.ok else (o.exit_note or f"MISMATCH: {o.distinct} distinct of {o.expected}, "
                                              f"{o.received} received, {o.dead_letters} dead letters")
    print(ROW.format(o.repeat, o.variant, f"{o.distinct:,}/{o.expected:,}", _fmt(o.publish_s, ".1f"),
                     _fmt(o.startup, ".1f"), _fmt(o.drain, ".1f"), _fmt(o.rate, ",.1f"),
                     f"{_fmt(o.rate_early, ',.0f')} / {_fmt(o.rate_late, ',.0f')}", _fmt(o.overall, ",.1f"),
                     _fmt(o.cpu_ms, ".1f"), _fmt(o.rss_mib, ",.0f"), _fmt(o.load, ".1f"), status), flush=True)
    if o.visibility:
        v = o.visibility
        print(f"    store visibility after the output: p50 {v['p50_ms']:.0f} ms, p90 {v['p90_ms']:.0f} ms, "
              f"p99 {v['p99_ms']:.0f} ms, max {v['max_ms']:.0f} ms ({v['visible']}/{v['samples']} sampled visible, "
              f"{v['exact']} exact, {v['before_output']} before the output)", flush=True)


def baseline_of(variant: Variant, variants: Sequence[Variant]) -> Variant | None:
    """The bare variant to compare with: same tuning if run, else plain ``bare``; None for bare ones."""
    if variant.base == "bare":
        return None
    same = [v for v in variants if v.base == "bare" and v.tuning == variant.tuning]
    plain = [v for v in variants if v.name == "bare"]
    return (same or plain or [None])[0]


def summarize(outcomes: list[Outcome], variants: Sequence[Variant]) -> None:
    print()
    print("medians over repeats (vs bare: median over repeats of rate / the same repeat's bare rate; "
          "bare = the bare variant with the same pull patch if run, else plain bare)")
    print("{:<22} {:>5} {:>9} {:>15} {:>8} {:>8} {:>7} {:>8} {:>8}".format(
        "variant", "ok", "msg/s", "p10-50 / p50-90", "startup", "drain", "CPU ms", "RSS MiB", "vs bare"))
    by = {v.name: [o for o in outcomes if o.variant == v.name] for v in variants}
    for v in variants:
        rows = by[v.name]
        base = baseline_of(v, variants)
        ratios = []
        for o in rows if base else ():
            b = next((x for x in by[base.name] if x.repeat == o.repeat), None)
            if b is not None and b.rate > 0:
                ratios.append(o.rate / b.rate)
        early, late = median([o.rate_early for o in rows]), median([o.rate_late for o in rows])
        print("{:<22} {:>5} {:>9} {:>15} {:>8} {:>8} {:>7} {:>8} {:>8}".format(
            v.name, f"{sum(o.ok for o in rows)}/{len(rows)}", _fmt(median([o.rate for o in rows]), ",.1f"),
            f"{_fmt(early, ',.0f')} / {_fmt(late, ',.0f')}",
            _fmt(median([o.startup for o in rows]), ".1f"), _fmt(median([o.drain for o in rows]), ".1f"),
            _fmt(median([o.cpu_ms for o in rows]), ".1f"), _fmt(median([o.rss_mib for o in rows]), ",.0f"),
            _fmt(median(ratios), ".2f") if ratios else "-"))
    for v in variants:  # the cost of the example log / live monitoring: same run, same repeat
        plain = v.name.replace("-log", "").replace("-monitor", "")
        if plain != v.name and plain in by:
            ratios = [o.rate / b.rate for o in by[v.name] for b in by[plain] if b.repeat == o.repeat and b.rate > 0]
            print(f"\nratio {v.name}/{plain} per repeat: {', '.join(format(r, '.2f') for r in ratios)}; "
                  f"median {_fmt(median(ratios), '.2f')}")
    for v in variants:
        vis = [o.visibility for o in by[v.name] if o.visibility]
        if vis:
            print(f"{v.name}: store visible after the output, medians over repeats: p50 "
                  f"{_fmt(median([x['p50_ms'] for x in vis]), '.0f')} ms, p99 {_fmt(median([x['p99_ms'] for x in vis]), '.0f')}"
                  f" ms (target p99 <= 1000 ms); worst max {_fmt(max(x['max_ms'] for x in vis), '.0f')} ms; never "
                  f"visible {sum(x['missing'] for x in vis)} of {sum(x['samples'] for x in vis)} sampled")
    if "bare" in by and "features" in by:
        bare_rate, feat_rate = median([o.rate for o in by["bare"]]), median([o.rate for o in by["features"]])
        print(f"\nratio features/bare (ratio of the medians): {_fmt(feat_rate / bare_rate, '.2f')}")


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in JOB_KINDS:
        return _job_main(argv)
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6_000, help="transactions per run (default 6000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every variant (default 3)")
    parser.add_argument("--customers", type=int, default=5_000, help="simulated customers (default 5000)")
    parser.add_argument("--terminals", type=int, default=10_000, help="simulated terminals (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--labels", choices=("off", "backlog", "idle"), default="off",
                        help="features job's labels subscription: off (none), backlog (every label "
                             "pre-published too) or idle (subscribed, empty); default off")
    parser.add_argument("--variants", default="bare,features",
                        help=f"comma-separated: {'|'.join(BASE_VARIANTS)}, each optionally followed by "
                             "-pull<N> (local-runner pull size), -wait<S> (pull deadline) and/or -store (the job "
                             "writes the online store, a redis-server of the run); default bare,features")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run before giving up (default 900)")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.messages < 10 or args.repeat < 1 or args.timeout <= 0:
        parser.error("--messages must be >= 10, --repeat >= 1, --timeout > 0")
    try:
        variants = [parse_variant(v) for v in names]
    except ValueError as exc:
        parser.error(f"--variants: {exc}")
    if not variants or len(set(names)) != len(names):
        parser.error("--variants: give at least one, each once")

    from streaming.io.pubsub_local import PubSubEmulator

    profile_dir = os.environ.get(PROFILE_ENV) or None
    if profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
    df = make_transactions(args.messages, args.customers, args.terminals, args.seed)
    span = (df["TX_DATETIME"].iloc[-1] - df["TX_DATETIME"].iloc[0]).total_seconds() / 3600
    print(f"{args.messages:,} transactions from simulate({args.customers}, {args.terminals}): "
          f"{df['CUSTOMER_ID'].nunique():,} customers + {df['TERMINAL_ID'].nunique():,} terminals touched, "
          f"{span:.1f} h of event time; labels={args.labels}; variants {', '.join(names)} x {args.repeat}"
          + (f"; cProfile -> {profile_dir}" if profile_dir else ""))
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-stream-"))
        emulator = stack.enter_context(PubSubEmulator())
        predictor = stack.enter_context(scoring_predictor(
            Path(workdir), args.customers, args.terminals, args.seed, registry=any(v.learn for v in variants))) if any(
            v.base == "scoring" for v in variants) else None
        if any(v.store for v in variants):
            from streaming.store.redis_server import RedisServer
            _ONLINE_STORE[:] = [stack.enter_context(RedisServer()).url]
        print(f"emulator at {emulator.host_port}; job logs in {workdir}"
              + (f"; predictor at {predictor} (streamscore serve --model-file)" if predictor else ""))
        print(ROW.format("run", "variant", "out/expected", "pub s", "startup", "drain", "msg/s", "msg/s",
                         "msg/s", "CPU ms", "RSS MiB", "load", "check"))
        print(ROW.format("", "", "", "", "s", "s", "p10-p90", "p10-50 / p50-90", "first-last", "/msg", "peak", "1 min", ""))
        for r in range(1, args.repeat + 1):
            for variant in variant_order(variants, r - 1):
                outcome = bench_variant(emulator, variant, r, df, args.labels, args.timeout, Path(workdir),
                                        profile_dir, predictor)
                outcomes.append(outcome)
                print_row(outcome)
    summarize(outcomes, variants)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    # Run the importable module, not __main__: Beam pickles DoFn classes of __main__ by value
    # (the local runner round-trips every DoFn through pickle once per bundle).
    from loadtest import bench_stream

    sys.exit(bench_stream.run())
