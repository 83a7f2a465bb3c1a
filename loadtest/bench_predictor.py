"""Benchmark the gRPC predictor against Seldon MLServer on the same model, with the same client.

    python -m loadtest.bench_predictor [--repeat 3] [--duration 5] [--concurrency 32]
                                       [--model model.json | --rounds 100 --depth 6] [--json out.json]

1. A model: ``--model`` (an XGBoost model file) or one trained here on synthetic rows with
   the 15 reference features (``--rounds``, ``--depth``).
2. The in-process floor: the scoring core alone (no gRPC), one row at a time and in batches.
3. Our server (``python -m models.predictor.server --model-file``) and MLServer with its
   XGBoost runtime (from ``.venv-bench``; run ``loadtest/setup_bench_env.sh`` first — the peer
   is skipped with a message when that venv is absent), both with ``OMP_NUM_THREADS=1``,
   MLServer with ``parallel_workers=0``.
4. The same client (``loadtest.grpc_loadgen``) runs every scenario, interleaved across
   servers and repeated ``--repeat`` times; the table shows medians and ratios to MLServer
   measured in the same run ("stream C=32 x4": the 32 messages in flight spread over 4
   ScoreStream calls, as several streaming workers would), plus each server's CPU time per request (from /proc: less
   sensitive than latency to other jobs on a shared machine), the client's own CPU time per
   request (when it is near the server's, client and server share the limit: on a busy
   machine throughput follows their summed CPU per request), and the 1-minute load average
   at the end of each run. Numbers only: no pass/fail (the targets are printed alongside).

``--shadow`` also runs our server with a second model scored in shadow (``--shadow-model-file``,
a model trained here with another seed, or ``--shadow-model FILE``) through the same unary,
stream and KServe scenarios, and prints the shadow's cost: its latency and CPU per request as
ratios to our server without a shadow, measured in the same run.

``--raw`` (issue 12; ``--raw-only``: nothing else) adds the raw-transaction modes: a fresh
redis-server holds the stream's per-key states after ``--raw-days`` of data (the reference
data, else simulated at its scale), written by the stream's own writer; a second server of ours
runs with ``--online-store`` on it, and the same client sends it the ``--raw-n`` transactions of
the following day both as ``Score(transaction)`` and as ``Score(features)`` (the features the
raw path computes for them): sequential unary and ScoreStream with 32 in flight (1 and 4
streams), interleaved as above. In process, per transaction, the read path (fetch + features)
against the bare redis-py floor (one pipeline of the two GETs) on the same Redis. The Feast
peer (``loadtest/feast_peer.py`` in ``.venv-feast``, from ``loadtest/setup_feast_env.sh``;
skipped with a message when absent) times ``get_online_features`` for the same two entities
and 12 window features on the same Redis; the report prints PEERS.md's like-for-like ratios.

``--profile-server FILE`` runs our server under cProfile (to find hot spots; it slows the server).

Every run's client is a fresh process (``loadtest.grpc_loadgen`` with the run's spec), so each
run gets the gRPC core I/O meant for it (``GRPC_EXPERIMENTS`` is read once per process, see
``loadtest.grpc_loadgen.select_grpc_io``): ``--client-grpc-io`` (default auto: iomgr for the
sequential blocking client, event-engine for the asyncio one, as the load generator does),
``--server-grpc-io`` for our server (default iomgr, ``streamscore serve``'s default) and
``--peer-grpc-io`` for MLServer (default event-engine: gRPC's own default, which MLServer runs
with); the per-run lines and the table's header say which were in effect.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest.grpc_loadgen import GRPC_IO, LoadSpec, feature_pool, grpc_io_env, percentile

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".venv-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(path: Path, rounds: int, depth: int, seed: int = 0) -> None:
    import xgboost as xgb

    from models.predictor.core import default_feature_names

    X = feature_pool(20_000, seed)
    rng = np.random.default_rng(seed)
    logit = 0.02 * X[:, 0] + 3 * X[:, 10] + 2 * X[:, 12] + X[:, 4] - 5 + rng.normal(0, 0.5, len(X))
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "nthread": 2, "seed": seed}
    booster = xgb.train(params, xgb.DMatrix(X, (logit > 0).astype(int), feature_names=list(default_feature_names())),
                        rounds)
    booster.save_model(str(path))


# --------------------------------------------------------------------------- the floor


def in_process_floor(model_path: Path, n: int = 20_000) -> dict:
    """The scoring core without gRPC: score_one latency and score_many rows/s, per backend."""
    import xgboost as xgb

    from models.predictor.core import Model, Scorer

    booster = xgb.Booster(model_file=str(model_path))
    rows = feature_pool(1024, seed=1)
    out = {}
    for backend in ("native", "xgboost"):
        scorer = Scorer()
        scorer.swap(Model.from_booster(booster, "floor", scorer.feature_names, backend=backend))
        values = [r.tolist() for r in rows]
        for v in values[:200]:
            scorer.score_one(v)
        lat = []
        for i in range(n if backend == "native" else n // 4):
            t0 = time.perf_counter()
            scorer.score_one(values[i % 1024])
            lat.append(time.perf_counter() - t0)
        lat.sort()
        batch = np.ascontiguousarray(np.vstack([rows] * 4)[:256])
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            scorer.score_many(batch)
            k += 1
        out[backend] = {"score_one_p50_us": percentile(lat, 50) * 1e6, "score_one_p99_us": percentile(lat, 99) * 1e6,
                        "score_many_rows_per_s": k * len(batch) / (time.perf_counter() - t0)}
        if backend == "native":
            out[backend]["servicer_p50_us"] = _servicer_floor(scorer, rows)
            out[backend]["stream_servicer_us"] = _stream_servicer_floor(scorer, rows)
        scorer.close()
    return out


def shadow_floor(model_path: Path, shadow_path: Path, log_dir: Path, repeat: int = 5) -> dict:
    """The shadow's cost in process (native backend, no gRPC; less noisy than the servers on a
    shared machine): Score's servicer p50 (the response path) and the µs per request of the
    whole loop (responses plus the shadow's batched scoring and log), ScoreStream's µs per
    message, each without and with the shadow; medians of ``repeat`` runs."""
    import xgboost as xgb

    from models.predictor.core import Model, Scorer
    from models.predictor.shadow import ShadowScorer, ShadowSettings

    rows = feature_pool(1024, seed=1)
    out: dict[str, dict] = {"without": {}, "with": {}}
    for case in out:
        scorer = Scorer()
        scorer.swap(Model.from_booster(xgb.Booster(model_file=str(model_path)), "floor", scorer.feature_names,
                                       backend="native"))
        if case == "with":
            scorer.shadow = ShadowScorer(len(scorer.feature_names), ShadowSettings(log_dir=log_dir))
            scorer.shadow.swap(Model.from_booster(xgb.Booster(model_file=str(shadow_path)), "shadow",
                                                  scorer.feature_names, backend="native"))
        runs = [_servicer_floor(scorer, rows, total=True) for _ in range(repeat)]
        out[case] = {"servicer_p50_us": statistics.median(r[0] for r in runs),
                     "per_request_us": statistics.median(r[1] for r in runs),
                     "stream_us": statistics.median(_stream_servicer_floor(scorer, rows, repeat=1) for _ in range(repeat))}
        if scorer.shadow is not None:
            out[case]["shadow_events"] = sum(scorer.shadow.stats.events.values())
            out[case]["shadow_dropped"] = scorer.shadow.stats.dropped
            scorer.shadow.close()
        scorer.close()
    return out


def _servicer_floor(scorer, rows: np.ndarray, n: int = 10_000, total: bool = False):
    """Scorer.Score's servicer (message in, message out, metrics) called directly: no gRPC.
    p50 µs per call; with ``total``, also the µs per request of the whole loop, which yields to
    the event loop after every request (as a server does), so timers and callbacks run too."""
    import asyncio

    from models.predictor.metrics import Telemetry
    from models.predictor.service import ScorerService
    from protos.streamscore.v1 import scorer_pb2

    class Context:
        def time_remaining(self):
            return None

    service, context = ScorerService(scorer, Telemetry()), Context()
    requests = [scorer_pb2.ScoreRequest(transaction_id=f"t{i}", features=scorer_pb2.FeatureVector(values=r))
                for i, r in enumerate(rows)]

    async def main():
        lat = []
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await service.Score(requests[i % len(requests)], context)
            lat.append(time.perf_counter() - t0)
            if total:
                await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.02)  # the shadow's last batch
        lat.sort()
        return (percentile(lat, 50) * 1e6, elapsed / n * 1e6) if total else percentile(lat, 50) * 1e6

    return asyncio.run(main())


def _stream_servicer_floor(scorer, rows: np.ndarray, n: int = 20_000, repeat: int = 5) -> float:
    """Scorer.ScoreStream's servicer over an in-memory context (read -> score -> response
    message, in order): µs per message, the best of ``repeat`` runs. No gRPC."""
    import asyncio

    import grpc

    from models.predictor.metrics import Telemetry
    from models.predictor.service import ScorerService
    from protos.streamscore.v1 import scorer_pb2

    requests = [scorer_pb2.ScoreRequest(transaction_id=f"t{i}", features=scorer_pb2.FeatureVector(values=r))
                for i, r in enumerate(rows)]

    class Context:
        def __init__(self):
            self.left, self.written = n, 0

        async def read(self):
            if not self.left:
                return grpc.aio.EOF
            self.left -= 1
            return requests[self.left % len(requests)]

        async def write(self, response):
            self.written += 1

        def time_remaining(self):
            return None

    service = ScorerService(scorer, Telemetry())

    async def main() -> float:
        context = Context()
        t0 = time.perf_counter()
        await service.ScoreStream(None, context)
        elapsed = time.perf_counter() - t0
        assert context.written == n
        return elapsed / n * 1e6

    return min(asyncio.run(main()) for _ in range(repeat))


# --------------------------------------------------------------------------- servers


def _wait_ready(target: str, model: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import grpc

    from protos.kserve.v2 import grpc_predict_v2_pb2 as pb
    from protos.kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"{target} not ready after {timeout:.0f} s")


def _wait_metric(url: str, needle: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {needle!r} appeared")
        with contextlib.suppress(OSError):
            if needle in urllib.request.urlopen(url, timeout=2).read().decode():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{needle!r} never appeared at {url}")


def loadavg() -> float:
    """The 1-minute load average (Linux), NaN elsewhere: how busy the shared machine was."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Running(str):
    """A server's target address that also knows the server's pid (and metrics URL, if any)."""

    pid: int
    metrics: str | None = None

    def __new__(cls, target: str, pid: int):
        obj = super().__new__(cls, target)
        obj.pid = pid
        return obj


def batch_rows(metrics_url: str | None) -> tuple[float, float] | None:
    """(sum, count) of ``streamscore_predictor_batch_rows`` from our server's /metrics."""
    if not metrics_url:
        return None
    import urllib.request

    values = {}
    with contextlib.suppress(OSError):
        for line in urllib.request.urlopen(metrics_url, timeout=5).read().decode().splitlines():
            for key in ("streamscore_predictor_batch_rows_sum", "streamscore_predictor_batch_rows_count"):
                if line.startswith(key + " "):
                    values[key] = float(line.split()[1])
    if len(values) != 2:
        return None
    return values["streamscore_predictor_batch_rows_sum"], values["streamscore_predictor_batch_rows_count"]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONSTARTUP", None)
    return env


_CLIENT = ("import json, sys; from loadtest.grpc_loadgen import LoadSpec, run_load; "
           "json.dump(run_load(LoadSpec(**json.loads(sys.argv[1]))), sys.stdout)")


def run_client(spec: LoadSpec) -> dict:
    """``run_load(spec)`` in a fresh client process (its own gRPC I/O choice, no state left over
    from the previous run); its result."""
    done = subprocess.run([sys.executable, "-c", _CLIENT, json.dumps(dataclasses.asdict(spec))], cwd=ROOT,
                          env={k: v for k, v in _env().items() if k != "GRPC_EXPERIMENTS"},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


@contextlib.contextmanager
def our_server(model_path: Path, log_dir: Path, extra: list[str] = (), name: str = "streamscore",
               profile: Path | None = None):
    """Our server in a subprocess; with ``profile``, under cProfile (written there when it stops)."""
    port, metrics_port = _free_port(), _free_port()
    log = open(log_dir / f"{name}.log", "w")
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile is not None else [])
    proc = subprocess.Popen([*python, "-m", "models.predictor.server", "--model-file", str(model_path),
                             "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
                             "--log-level", "WARNING", *extra],
                            cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"127.0.0.1:{port}", "production", proc)
        running = Running(f"127.0.0.1:{port}", proc.pid)
        running.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        if "--shadow-model-file" in extra:  # measure with the shadow loaded, not before it is
            _wait_metric(running.metrics, "streamscore_predictor_shadow_model_info{", proc)
        yield running
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        log.close()


@contextlib.contextmanager
def mlserver(model_path: Path, log_dir: Path, venv: Path, grpc_io: str = "event-engine"):
    """Seldon MLServer + mlserver-xgboost on ``model_path``, model name ``production``."""
    models = log_dir / "mlserver"
    (models / "production").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, models / "production" / "model.json")
    grpc_port, http_port, metrics_port = _free_port(), _free_port(), _free_port()
    (models / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "debug": False, "metrics_endpoint": None}))
    (models / "production" / "model-settings.json").write_text(json.dumps({
        "name": "production", "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json", "version": "v1"}}))
    log = open(log_dir / "mlserver.log", "w")
    env = {**grpc_io_env(grpc_io, _env()), "PYTHONPATH": ""}
    proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(models)], cwd=models, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"127.0.0.1:{grpc_port}", "production", proc)
        yield Running(f"127.0.0.1:{grpc_port}", proc.pid)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        log.close()



# --------------------------------------------------------------------------- raw transactions (issue 12)

RAW_LATENESS_DAYS = 7.0
FEAST_VENV = ROOT / ".venv-feast"
FEAST_PEER = ROOT / "loadtest" / "feast_peer.py"
RAW_SERVER = "ours+store"


def raw_dataset(days: int):
    """(source, history, probe): the reference data's first ``days`` days and the day after them
    (or a simulated dataset at the reference scale: 5,000 cards, 10,000 terminals)."""
    import pandas as pd

    from streaming.io.datasets import read_table, reference_dir

    folder = reference_dir()
    if (folder / "transactions.parquet").exists():
        df, source = read_table(folder / "transactions.parquet"), "reference"
    else:
        from streaming.sim.simulator import simulate
        df, source = simulate(customers=5000, terminals=10000, days=days + 1, seed=0), "simulated"
    cut = df["TX_DATETIME"].min() + pd.Timedelta(days=days)
    history = df[df["TX_DATETIME"] < cut].reset_index(drop=True)
    probe = df[(df["TX_DATETIME"] >= cut) & (df["TX_DATETIME"] < cut + pd.Timedelta(days=1))].reset_index(drop=True)
    return source, history, probe


def raw_states(history) -> tuple[dict, dict]:
    """The stream's per-key states after ``history`` (labels known, as the stream has them within the delay)."""
    from streaming.features.spec import DAY_NS, DEFAULT_SPEC
    from streaming.features.state import CustomerState, TerminalState
    from streaming.features.transaction import time_ns
    from streaming.io.datasets import iter_transactions

    lateness = int(RAW_LATENESS_DAYS * DAY_NS)
    customers, terminals = {}, {}
    frauds = dict(zip(history["TRANSACTION_ID"].astype(str), history["TX_FRAUD"]))
    for tx in iter_transactions(history):
        t = time_ns(tx.event_time)
        c = customers.get(tx.customer_id) or customers.setdefault(tx.customer_id, CustomerState(DEFAULT_SPEC, lateness))
        c.add(tx.transaction_id, t, tx.amount)
        m = terminals.get(tx.terminal_id) or terminals.setdefault(tx.terminal_id, TerminalState(DEFAULT_SPEC, lateness))
        m.add_transaction(tx.transaction_id, t)
        if frauds[tx.transaction_id]:
            m.add_label(tx.transaction_id, t, 1)
    return customers, terminals


def _sizes(values) -> dict:
    a = np.array([len(v) for v in values])
    return {"keys": int(a.size), "median": int(np.median(a)), "p99": int(np.percentile(a, 99)), "max": int(a.max())}


def load_store(url: str, customers: dict, terminals: dict) -> dict:
    """Write the states with the stream's writer (ordered, pipelined); bytes per key."""
    import time as _time

    from streaming.features.spec import DEFAULT_SPEC
    from streaming.store.encoding import encode_state
    from streaming.store.redis_store import StoreConfig, StoreWriter

    config = StoreConfig.for_spec(url, DEFAULT_SPEC, RAW_LATENESS_DAYS)
    writer = StoreWriter(config)
    now = _time.time_ns() // 1_000_000
    c_values = {config.customer_key(k): encode_state(s, written_at_ms=now) for k, s in customers.items()}
    m_values = {config.terminal_key(k): encode_state(s, written_at_ms=now) for k, s in terminals.items()}
    items = list({**c_values, **m_values}.items())
    for i in range(0, len(items), 1000):
        writer.write(dict(items[i:i + 1000]))
    return {"bytes_per_card": _sizes(c_values.values()), "bytes_per_terminal": _sizes(m_values.values()),
            "redis_used_memory_bytes": int(config.client().info("memory")["used_memory"])}


def raw_in_process(url: str, probe_txs, repeat: int) -> dict:
    """Per probe transaction, interleaved: the floor (a bare redis-py pipeline of the two GETs,
    bytes only, on a pooled client as Feast's is), our MGET alone, and our read path in process
    (``RawTransactions``): fetch + features (the reader's MGET, decode, add the transaction,
    the stream's feature code), and the same with the message parsed first. Medians of ``repeat``."""
    from models.predictor.raw_input import RawTransactions
    from streaming.features.spec import DEFAULT_SPEC
    from streaming.io.encoding import to_proto
    from streaming.store.redis_store import StoreConfig

    config = StoreConfig.for_spec(url, DEFAULT_SPEC, RAW_LATENESS_DAYS)
    floor_client = config.client()
    raw = RawTransactions.open(url, DEFAULT_SPEC.names)
    reader, compute = raw.reader, raw._compute
    messages = [to_proto(tx) for tx in probe_txs]
    keys = [(config.customer_key(tx.customer_id), config.terminal_key(tx.terminal_id)) for tx in probe_txs]
    clock = time.perf_counter_ns
    runs = []
    for r in range(repeat + 1):  # the first pass warms up
        floor, mget, fetch_features, whole = [], [], [], []
        for tx, message, (ck, tk) in zip(probe_txs, messages, keys):
            t0 = clock()
            pipe = floor_client.pipeline(transaction=False)
            pipe.get(ck)
            pipe.get(tk)
            pipe.execute()
            t1 = clock()
            reader._client.mget((ck, tk))
            t2 = clock()
            compute(tx, *reader.fetch(tx.customer_id, tx.terminal_id, tx.transaction_id))
            t3 = clock()
            raw.features(message)
            t4 = clock()
            floor.append(t1 - t0)
            mget.append(t2 - t1)
            fetch_features.append(t3 - t2)
            whole.append(t4 - t3)
        if r:
            out = {}
            for name, xs in (("floor_pipeline", floor), ("our_mget", mget), ("fetch_features", fetch_features),
                             ("parse_fetch_features", whole)):
                xs.sort()
                out[f"{name}_p50_us"] = percentile(xs, 50) / 1e3
                out[f"{name}_p99_us"] = percentile(xs, 99) / 1e3
            out["fetch_features_over_floor_p50"] = out["fetch_features_p50_us"] / out["floor_pipeline_p50_us"]
            out["loadavg"] = loadavg()
            runs.append(out)
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]} | {"runs": runs}


def raw_payloads(url: str, probe_txs, folder: Path) -> tuple[Path, Path]:
    """Two payload files of the same transactions: ``Score(transaction)`` requests and
    ``Score(features)`` requests with the features the raw path computes for them."""
    from loadtest.grpc_loadgen import write_payloads
    from models.predictor.raw_input import RawTransactions
    from protos.streamscore.v1 import scorer_pb2
    from streaming.features.spec import DEFAULT_SPEC
    from streaming.io.encoding import to_proto

    raw = RawTransactions.open(url, DEFAULT_SPEC.names)
    raw_reqs, vec_reqs = [], []
    for tx in probe_txs:
        message = to_proto(tx)
        values = raw.features(message).values
        raw_reqs.append(scorer_pb2.ScoreRequest(transaction_id=tx.transaction_id, model_name="production",
                                                transaction=message))
        vec_reqs.append(scorer_pb2.ScoreRequest(transaction_id=tx.transaction_id, model_name="production",
                                                features=scorer_pb2.FeatureVector(values=values)))
    raw_file, vec_file = folder / "raw.payloads", folder / "features.payloads"
    write_payloads(raw_file, raw_reqs)
    write_payloads(vec_file, vec_reqs)
    return raw_file, vec_file


def raw_scenarios(concurrency: int, raw_file: Path, vec_file: Path) -> list[tuple[str, str, dict]]:
    """Both inputs on the same server (ours with --online-store), the same transactions."""
    out = []
    for label, mode in (("unary sequential", dict(concurrency=1)),
                        (f"stream C={concurrency}", dict(mode="stream", concurrency=concurrency)),
                        (f"stream C={concurrency} x4", dict(mode="stream", streams=4, concurrency=concurrency))):
        for kind, path in (("features", vec_file), ("raw", raw_file)):
            out.append((f"{kind}: {label}", RAW_SERVER, dict(protocol="scorer", payload_file=str(path), **mode)))
    return out


def feast_peer(url: str, customers: dict, terminals: dict, probe_txs, folder: Path, venv: Path,
               repeat: int) -> dict | None:
    """Feast's get_online_features for the same two entities and 12 window features, on the same
    Redis (loadtest/feast_peer.py in ``venv``); None (and a message) when the venv is absent."""
    from urllib.parse import urlsplit

    python = venv / "bin" / "python"
    if not python.exists():
        print(f"Feast peer skipped: {python} not found (run loadtest/setup_feast_env.sh to create it)")
        return None
    from streaming.features.spec import DEFAULT_SPEC

    names = DEFAULT_SPEC.names
    c_names = [n for n in names if n.startswith("CUSTOMER_ID_")]
    t_names = [n for n in names if n.startswith("TERMINAL_ID_")]
    wanted_c = {tx.customer_id for tx in probe_txs}
    wanted_t = {tx.terminal_id for tx in probe_txs}

    def values(states, keep, cols):  # each key's window features at its latest event (floats, as stored)
        return {k: dict(zip(cols, (s.features_at(s.max_event_time_ns)[c] for c in cols)))
                for k, s in states.items() if k in keep and s.max_event_time_ns is not None}

    (folder / "feast-values.json").write_text(json.dumps({"customer": values(customers, wanted_c, c_names),
                                                          "terminal": values(terminals, wanted_t, t_names)}))
    (folder / "feast-pairs.json").write_text(json.dumps([[tx.customer_id, tx.terminal_id] for tx in probe_txs]))
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    done = subprocess.run([str(python), str(FEAST_PEER), "--redis", f"{parts.hostname}:{parts.port},db={db}",
                           "--values", str(folder / "feast-values.json"), "--pairs", str(folder / "feast-pairs.json"),
                           "--repeat", str(repeat)], cwd=folder, env={**_env(), "PYTHONPATH": ""},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Feast peer failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    result["loadavg"] = loadavg()
    return result


def _per_repeat_ratio(results: dict, a: tuple, b: tuple, key) -> float:
    """Median over repeats of key(run of a) / key(run of b) (same repeat: same load)."""
    pairs = list(zip(results.get(a, []), results.get(b, [])))
    return statistics.median(key(x) / key(y) for x, y in pairs) if pairs else float("nan")


def raw_report(medians: dict, results: dict, concurrency: int, in_process: dict, feast: dict | None) -> tuple[str, dict]:
    """The raw-transaction figures and PEERS.md's like-for-like ratios (text, and the same as a dict)."""
    f_seq, r_seq = medians[("features: unary sequential", RAW_SERVER)], medians[("raw: unary sequential", RAW_SERVER)]
    out = {"unary_features_p50_ms": f_seq["p50"], "unary_raw_p50_ms": r_seq["p50"],
           "unary_features_p99_ms": f_seq["p99"], "unary_raw_p99_ms": r_seq["p99"],
           "added_raw_p50_ms": r_seq["p50"] - f_seq["p50"]}
    lines = ["raw transactions (issue 12), features vs raw on the same server (--online-store), same transactions:",
             f"  sequential unary Score: features p50 {f_seq['p50']:.3f} / p99 {f_seq['p99']:.3f} ms, "
             f"raw p50 {r_seq['p50']:.3f} / p99 {r_seq['p99']:.3f} ms (targets <= 0.5 / 1.5 ms); "
             f"raw / features p50 {r_seq['p50'] / f_seq['p50']:.2f}x; added cost p50 {out['added_raw_p50_ms'] * 1e3:.0f} us"]
    for label in (f"stream C={concurrency}", f"stream C={concurrency} x4"):
        a, b = (f"raw: {label}", RAW_SERVER), (f"features: {label}", RAW_SERVER)
        ratio = _per_repeat_ratio(results, a, b, lambda r: r["throughput_rps"])
        out[f"{label} raw/features throughput"] = ratio
        lines.append(f"  ScoreStream {label}: features {medians[b]['throughput_rps']:,.0f}/s, raw "
                     f"{medians[a]['throughput_rps']:,.0f}/s: raw/features {ratio:.2f}x (median of per-repeat "
                     f"ratios; target >= 0.7x)")
    ip = in_process
    lines.append(f"  in process (load {ip['loadavg']:.1f}): floor = one redis-py pipeline of 2 GETs p50 "
                 f"{ip['floor_pipeline_p50_us']:.1f} us (p99 {ip['floor_pipeline_p99_us']:.1f}); our MGET alone "
                 f"{ip['our_mget_p50_us']:.1f} us; fetch + features p50 {ip['fetch_features_p50_us']:.1f} us "
                 f"(p99 {ip['fetch_features_p99_us']:.1f}) = {ip['fetch_features_over_floor_p50']:.2f}x the floor "
                 f"(target <= 1.5x); with the parse {ip['parse_fetch_features_p50_us']:.1f} us")
    out["fetch_features_over_floor_p50"] = ip["fetch_features_over_floor_p50"]
    if feast is None:
        lines.append("  Feast peer: not run (no .venv-feast)")
    else:
        single, batch = feast["single"], feast["batch32"]
        fp50 = single["p50_us"]
        out.update({"feast_p50_us": fp50, "added_over_feast_p50": out["added_raw_p50_ms"] * 1e3 / fp50,
                    "feast_over_fetch_features_p50": fp50 / ip["fetch_features_p50_us"],
                    "feast_over_whole_raw_p50": fp50 / (r_seq["p50"] * 1e3)})
        lines += [f"  Feast {feast['feast_version']} get_online_features(...).to_dict(), same Redis, 2 entities x 12 "
                  f"features (load {feast['loadavg']:.1f}; {feast['checked_equal']}/{feast['checked_rows']} rows "
                  f"checked equal): one row per call p50 {fp50:.0f} / p90 {single['p90_us']:.0f} / p99 "
                  f"{single['p99_us']:.0f} us; 32 rows per call {batch['per_call_p50_us']:.0f} us "
                  f"({batch['per_row_p50_us']:.0f} us per row)",
                  f"  PEERS.md ratios: added raw cost / Feast p50 = {out['added_over_feast_p50']:.2f} (goal <= 0.5); "
                  f"Feast p50 / our fetch + features p50 = {out['feast_over_fetch_features_p50']:.2f}x (goal >= 2x); "
                  f"Feast p50 / our whole raw Score p50 = {out['feast_over_whole_raw_p50']:.2f}x (issue's goal >= 5x, "
                  f"not like for like: a gRPC call vs a library call)"]
    return "\n".join(lines), out


# --------------------------------------------------------------------------- scenarios


def scenarios(concurrency: int, xgboost: bool = False, shadow: bool = False) -> list[tuple[str, str, dict]]:
    """(name, server, LoadSpec fields). Server "ours", "ours-xgb" (XGBoost backend), "ours-shadow"
    (a second model scored in shadow) or "mlserver"."""
    seq = dict(concurrency=1)
    closed = dict(concurrency=concurrency)
    return [
        ("unary sequential", "ours", dict(protocol="scorer", **seq)),
        ("kserve sequential", "ours", dict(protocol="kserve", **seq)),
        ("kserve sequential", "mlserver", dict(protocol="kserve", **seq)),
        (f"unary C={concurrency}", "ours", dict(protocol="scorer", **closed)),
        (f"stream C={concurrency}", "ours", dict(protocol="scorer", mode="stream", **closed)),
        (f"stream C={concurrency} x4", "ours", dict(protocol="scorer", mode="stream", streams=4, **closed)),
        (f"kserve C={concurrency}", "ours", dict(protocol="kserve", **closed)),
        (f"kserve C={concurrency}", "mlserver", dict(protocol="kserve", **closed)),
    ] + ([
        ("unary sequential", "ours-xgb", dict(protocol="scorer", **seq)),
        (f"stream C={concurrency} x4", "ours-xgb", dict(protocol="scorer", mode="stream", streams=4, **closed)),
        (f"kserve C={concurrency}", "ours-xgb", dict(protocol="kserve", **closed)),
    ] if xgboost else []) + ([
        ("unary sequential", "ours-shadow", dict(protocol="scorer", **seq)),
        (f"unary C={concurrency}", "ours-shadow", dict(protocol="scorer", **closed)),
        (f"stream C={concurrency} x4", "ours-shadow", dict(protocol="scorer", mode="stream", streams=4, **closed)),
        (f"kserve C={concurrency}", "ours-shadow", dict(protocol="kserve", **closed)),
    ] if shadow else [])


def shadow_cost(medians: dict, floor: dict | None = None) -> str:
    """The shadow's cost per scenario: our server with a shadow over the same server without one."""
    lines = []
    if floor:
        a, b = floor["without"], floor["with"]
        lines += ["shadow cost in process (native backend, no gRPC, medians; without -> with the shadow):",
                  f"  Score servicer p50 (the response path) {a['servicer_p50_us']:.2f} -> {b['servicer_p50_us']:.2f} us "
                  f"({b['servicer_p50_us'] / a['servicer_p50_us']:.2f}x)",
                  f"  per request, shadow scoring and log included {a['per_request_us']:.2f} -> {b['per_request_us']:.2f} us "
                  f"({b['per_request_us'] - a['per_request_us']:+.2f} us)",
                  f"  ScoreStream per message {a['stream_us']:.2f} -> {b['stream_us']:.2f} us "
                  f"({b['stream_us'] - a['stream_us']:+.2f} us); shadow events {b.get('shadow_events')}, "
                  f"dropped {b.get('shadow_dropped')}"]
    lines.append("shadow cost (ours-shadow / ours, same run; > 1 = the shadow costs that much more):")
    for (name, server), m in medians.items():
        base = medians.get((name, "ours"))
        if server != "ours-shadow" or base is None:
            continue
        lines.append(f"  {name:<22} p50 {m['p50'] / base['p50']:.2f}x  p99 {m['p99'] / base['p99']:.2f}x  "
                     f"throughput {m['throughput_rps'] / base['throughput_rps']:.2f}x  "
                     f"server CPU/req {m['server_cpu_us'] / base['server_cpu_us']:.2f}x "
                     f"({m['server_cpu_us'] - base['server_cpu_us']:+.0f} us)")
    return "\n".join(lines)


def _median_result(results: list[dict]) -> dict:
    keys = ("p50", "p90", "p99", "p99.9", "max")
    cpu = [r["server_cpu_us_per_request"] for r in results if r.get("server_cpu_us_per_request") is not None]
    client = [r["client_cpu_us"] for r in results if r.get("client_cpu_us") is not None]
    batch = [r["mean_batch_rows"] for r in results if "mean_batch_rows" in r]
    load = [r["loadavg"] for r in results if "loadavg" in r]
    return {"throughput_rps": statistics.median(r["throughput_rps"] for r in results),
            "rows_per_predict": statistics.median(batch) if batch else float("nan"),
            "server_cpu_us": statistics.median(cpu) if cpu else float("nan"),
            "client_cpu_us": statistics.median(client) if client else float("nan"),
            "loadavg": statistics.median(load) if load else float("nan"),
            **{k: statistics.median(r["latency_ms"][k] for r in results) for k in keys},
            "errors": sum(sum(r["errors"].values()) for r in results), "runs": len(results)}


def format_table(medians: dict, concurrency: int, floor: dict) -> str:
    peer_seq = medians.get(("kserve sequential", "mlserver"))
    peer_tput = medians.get((f"kserve C={concurrency}", "mlserver"))
    lines = [f"{'scenario':<28} {'server':<10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'req/s':>9} "
             f"{'CPU us/req':>10} {'client us':>9} {'rows/pred':>9} {'load':>5} {'errors':>6}  vs MLServer"]
    for (name, server), m in medians.items():
        if server == "mlserver":
            ratio = "1.00x (peer)"
        elif "sequential" in name and peer_seq:
            ratio = f"p50 {peer_seq['p50'] / m['p50']:.2f}x faster, p99 {peer_seq['p99'] / m['p99']:.2f}x"
        elif peer_tput:
            ratio = f"{m['throughput_rps'] / peer_tput['throughput_rps']:.2f}x throughput"
        else:
            ratio = "(no peer)"
        lines.append(f"{name:<28} {server:<10} {m['p50']:>8.3f} {m['p99']:>8.3f} {m['p99.9']:>9.3f} "
                     f"{m['throughput_rps']:>9,.0f} {m['server_cpu_us']:>10.0f} {m['client_cpu_us']:>9.0f} "
                     f"{m['rows_per_predict']:>9.1f} {m['loadavg']:>5.1f} {m['errors']:>6}  {ratio}")
    if floor:
        lines.append("in-process floor (scoring core, no gRPC):")
    for backend, f in floor.items():
        lines.append(f"  {backend:<8} score_one p50 {f['score_one_p50_us']:.1f} us, p99 {f['score_one_p99_us']:.1f} us; "
                     f"score_many(256 rows) {f['score_many_rows_per_s']:,.0f} rows/s")
        if "servicer_p50_us" in f:
            lines.append(f"  {'':<8} Scorer.Score servicer called directly (request message -> response message): "
                         f"p50 {f['servicer_p50_us']:.1f} us")
        if "stream_servicer_us" in f:
            lines.append(f"  {'':<8} Scorer.ScoreStream servicer with an in-memory context (no gRPC): "
                         f"{f['stream_servicer_us']:.1f} us per message")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_predictor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="XGBoost model file (default: train one here)")
    parser.add_argument("--rounds", type=int, default=100, help="trees of the trained model (default 100)")
    parser.add_argument("--depth", type=int, default=6, help="max depth of the trained model (default 6)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every scenario (default 3; medians shown)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run (default 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop requests in flight (default 32)")
    parser.add_argument("--bench-venv", type=Path, default=BENCH_VENV, help="venv with MLServer (.venv-bench)")
    parser.add_argument("--skip-peer", action="store_true", help="do not start MLServer")
    parser.add_argument("--server-args", default="", help="extra flags for our server, e.g. '--event-loop asyncio'")
    parser.add_argument("--xgboost-backend", action="store_true",
                        help="also run our server with --backend xgboost (micro-batching at work)")
    parser.add_argument("--client-grpc-io", choices=GRPC_IO, default="auto",
                        help="gRPC core's I/O in the client processes (default auto: iomgr for sequential unary, "
                             "event-engine for the asyncio client)")
    parser.add_argument("--server-grpc-io", choices=GRPC_IO[1:], default="iomgr",
                        help="our server's --grpc-io (default iomgr, as `streamscore serve`)")
    parser.add_argument("--peer-grpc-io", choices=GRPC_IO[1:], default="event-engine",
                        help="MLServer's gRPC I/O (default event-engine: gRPC's default)")
    parser.add_argument("--shadow", action="store_true",
                        help="also run our server with a second model scored in shadow, and print the shadow's cost")
    parser.add_argument("--shadow-model", type=Path, help="the shadow's XGBoost model file (default: train one here)")
    parser.add_argument("--raw", action="store_true",
                        help="also run the raw-transaction modes (issue 12): our server with --online-store on a "
                             "fresh redis-server holding the stream's states, Score/ScoreStream(transaction) vs "
                             "(features) on it, the in-process read path vs the redis-py floor, and the Feast peer")
    parser.add_argument("--raw-only", action="store_true", help="only the raw-transaction modes (implies --raw)")
    parser.add_argument("--raw-days", type=int, default=60, help="days of history in the store (default 60)")
    parser.add_argument("--raw-n", type=int, default=3000,
                        help="probe transactions of the following day (default 3000)")
    parser.add_argument("--feast-venv", type=Path, default=FEAST_VENV,
                        help="venv with Feast (.venv-feast, loadtest/setup_feast_env.sh); skipped when absent")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument("--profile-server", type=Path, metavar="FILE",
                        help="run our server under cProfile and write its stats here (slows it down: numbers "
                             "are then for finding hot spots, not for the table); read with python -m pstats FILE")
    args = parser.parse_args(argv)
    args.raw = args.raw or args.raw_only
    if args.raw_only:
        args.skip_peer, args.xgboost_backend, args.shadow = True, False, False
    server_args = [*args.server_args.split(), "--grpc-io", args.server_grpc_io]
    raw_in, feast, store_info = None, None, None
    load_start = loadavg()

    with tempfile.TemporaryDirectory(prefix="bench-predictor-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = tmp / "model.json"
            _train(model, args.rounds, args.depth)
            print(f"trained a model: {args.rounds} trees of depth {args.depth}, 15 features")
        floor = {} if args.raw_only else in_process_floor(model)
        shadow_in_process = None
        peer = not args.skip_peer and (args.bench_venv / "bin" / "mlserver").exists()
        if not args.skip_peer and not peer:
            print(f"MLServer peer skipped: {args.bench_venv}/bin/mlserver not found "
                  f"(run loadtest/setup_bench_env.sh to create it)")
        shadow_model = args.shadow_model
        if args.shadow and shadow_model is None:
            shadow_model = tmp / "shadow.json"
            _train(shadow_model, args.rounds, args.depth, seed=1)
        if args.shadow:
            shadow_in_process = shadow_floor(model, shadow_model, tmp / "shadow-floor-log")
        plan = [] if args.raw_only else [
            s for s in scenarios(args.concurrency, args.xgboost_backend, args.shadow) if peer or s[1] != "mlserver"]
        with contextlib.ExitStack() as stack:
            targets = {}
            if args.raw:
                from streaming.io.datasets import iter_transactions
                from streaming.store.redis_server import RedisServer

                redis_server = stack.enter_context(RedisServer())
                source, history, probe = raw_dataset(args.raw_days)
                customers, terminals = raw_states(history)
                store_info = load_store(redis_server.url, customers, terminals)
                probe_txs = list(iter_transactions(probe.head(args.raw_n)))
                print(f"raw: {source} data, {len(history):,} transactions over {args.raw_days} days -> "
                      f"{len(customers):,} cards, {len(terminals):,} terminals in redis-server {redis_server.url}; "
                      f"{len(probe_txs):,} probe transactions of the next day; bytes per card key "
                      f"{store_info['bytes_per_card']}, per terminal key {store_info['bytes_per_terminal']}", flush=True)
                raw_in = raw_in_process(redis_server.url, probe_txs, args.repeat)
                print(f"raw in process (load {raw_in['loadavg']:.2f}): "
                      f"{json.dumps({k: round(v, 2) for k, v in raw_in.items() if k != 'runs'})}", flush=True)
                feast = feast_peer(redis_server.url, customers, terminals, probe_txs, tmp, args.feast_venv, args.repeat)
                if feast is not None:
                    print(f"Feast peer (load {feast['loadavg']:.2f}): one row {json.dumps(feast['single'])}; "
                          f"32 rows {json.dumps(feast['batch32'])}", flush=True)
                del history, customers, terminals
                raw_file, vec_file = raw_payloads(redis_server.url, probe_txs, tmp)
                plan += raw_scenarios(args.concurrency, raw_file, vec_file)
                targets[RAW_SERVER] = stack.enter_context(
                    our_server(model, tmp, [*server_args, "--online-store", redis_server.url], "streamscore-store"))
            results: dict[tuple[str, str], list[dict]] = {(name, server): [] for name, server, _ in plan}
            if not args.raw_only:
                targets["ours"] = stack.enter_context(our_server(model, tmp, server_args, profile=args.profile_server))
            if args.xgboost_backend:
                targets["ours-xgb"] = stack.enter_context(
                    our_server(model, tmp, [*server_args, "--backend", "xgboost"], "streamscore-xgb"))
            if args.shadow:
                targets["ours-shadow"] = stack.enter_context(
                    our_server(model, tmp, [*server_args, "--shadow-model-file", str(shadow_model),
                                            "--shadow-log", str(tmp / "shadow-log")], "streamscore-shadow"))
            if peer:
                targets["mlserver"] = stack.enter_context(mlserver(model, tmp, args.bench_venv, args.peer_grpc_io))
            for r in range(args.repeat):
                # Rotate the order every repeat so no scenario always runs after the same neighbour.
                for name, server, fields in plan[r % len(plan):] + plan[:r % len(plan)]:
                    spec = LoadSpec(target=str(targets[server]), duration=args.duration, warmup=args.warmup,
                                    grpc_io=args.client_grpc_io, **fields)
                    cpu0, batches0 = cpu_seconds(targets[server].pid), batch_rows(targets[server].metrics)
                    result = run_client(spec)
                    cpu1, batches1 = cpu_seconds(targets[server].pid), batch_rows(targets[server].metrics)
                    if batches0 and batches1 and batches1[1] > batches0[1]:
                        result["mean_batch_rows"] = (batches1[0] - batches0[0]) / (batches1[1] - batches0[1])
                    total = result["requests"] + result.get("warmup_requests", 0)
                    result["server_cpu_us_per_request"] = ((cpu1 - cpu0) / total * 1e6
                                                           if cpu0 is not None and cpu1 is not None and total else None)
                    result["loadavg"] = loadavg()
                    results[(name, server)].append(result)
                    print(f"[{r + 1}/{args.repeat}] {name:<20} {server:<10} p50 {result['latency_ms']['p50']:.3f} ms  "
                          f"p99 {result['latency_ms']['p99']:.3f} ms  {result['throughput_rps']:,.0f} req/s  "
                          f"server CPU {result['server_cpu_us_per_request'] or float('nan'):.0f} us/req  "
                          f"client CPU {result.get('client_cpu_us', float('nan')):.0f} us/req  "
                          f"load {result['loadavg']:.2f}  client I/O {result['grpc_io']}  "
                          f"rows/predict {result.get('mean_batch_rows', float('nan')):.1f}  "
                          f"errors {sum(result['errors'].values())}", flush=True)
        medians = {key: _median_result(runs) for key, runs in results.items()}
    print()
    print(f"medians of {args.repeat} runs x {args.duration:g} s, {os.cpu_count()} cores, OMP_NUM_THREADS=1 servers; "
          f"gRPC I/O: client {args.client_grpc_io}, ours {args.server_grpc_io}, MLServer {args.peer_grpc_io}; "
          f"load average {load_start:.1f} at the start, {loadavg():.1f} at the end:")
    print(format_table(medians, args.concurrency, floor))
    if args.shadow:
        print(shadow_cost(medians, shadow_in_process))
    raw_summary = None
    if args.raw:
        text, raw_summary = raw_report(medians, results, args.concurrency, raw_in, feast)
        print(text)
    print("targets: sequential unary p50 <= 0.5 ms and p99 <= 1.5 ms; stream >= 5x and KServe >= 2x MLServer's "
          f"throughput at C={args.concurrency}")
    if args.json:
        args.json.write_text(json.dumps({
            "floor": floor, "shadow_floor": shadow_in_process, "raw": raw_summary, "raw_in_process": raw_in,
            "raw_store": store_info, "feast": feast, "medians": {f"{n} | {s}": m for (n, s), m in medians.items()},
            "runs": {f"{n} | {s}": runs for (n, s), runs in results.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run())
