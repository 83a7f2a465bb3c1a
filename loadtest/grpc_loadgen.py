"""``streamscore loadtest grpc``: a gRPC load generator for the predictor (and any KServe v2 server).

    streamscore loadtest grpc --target 127.0.0.1:50051 [--protocol scorer|kserve] [--mode unary|stream]
        (--concurrency C | --rps R) [--duration 10] [--warmup 2] [--json out.json]

* **closed loop** (``--concurrency C``): C requests in flight; each worker sends the next
  request when the previous answer arrives. Latency is measured from the actual send.
* **open loop** (``--rps R``): request i is *intended* at ``start + i / R`` whatever happened
  before; its latency is measured from that intended time, so when the server (or this
  client) falls behind, the queueing delay is counted instead of hidden (no coordinated
  omission). ``--max-outstanding`` bounds the requests in flight (those beyond it are
  counted as ``CLIENT_OVERLOADED``, not silently skipped).
* ``--mode stream`` sends over ``Scorer.ScoreStream`` (``--streams`` streams; C messages in
  flight in total); responses carrying ``error`` count under their code.

Requests are built and serialized before the run (a pool of ``--pool`` random feature
vectors). Prints p50/p90/p99/p99.9/max latency, throughput, and errors by status code; writes
the same as JSON with ``--json``. Only the given target is contacted.

``--grpc-io`` picks gRPC core's I/O for this client process (see :func:`select_grpc_io`):
``iomgr``, where the thread waiting for a response reads the socket itself, or gRPC's
``event-engine`` (its default since 1.80), where an EventEngine thread reads it and wakes the
waiting thread. ``auto`` (the default) takes iomgr for the blocking client (sequential unary:
one thread hop fewer per call, which such a client adds to every latency it measures; ~25 %
less client CPU per call, measured) and event-engine for the asyncio client (with 32 requests
in flight iomgr measured ~25 % less throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from models.predictor.grpc_io import IOMGR_EXPERIMENTS, grpc_io_env, grpc_io_in_effect

N_FEATURES = 15
SCORE = "/streamscore.v1.Scorer/Score"
SCORE_STREAM = "/streamscore.v1.Scorer/ScoreStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

Clock = Callable[[], float]

#: gRPC core's I/O choices for a process: "auto" (iomgr for the blocking client, event-engine
#: for the asyncio one; whatever is in effect once grpc is imported), "event-engine" (gRPC's
#: default since 1.80) or "iomgr" (the I/O manager gRPC used before).
GRPC_IO = ("auto", "event-engine", "iomgr")

def select_grpc_io(kind: str, env=os.environ, modules=sys.modules, *, auto: str = "iomgr") -> str:
    """Ask gRPC core for ``kind`` of I/O in this process (before ``grpc`` is imported; "auto" means
    ``auto``); returns the I/O in effect. Once ``grpc`` is imported its choice is fixed: "auto" then
    accepts it, and asking for the other one is an error (set ``GRPC_EXPERIMENTS`` before starting
    the process)."""
    if kind not in GRPC_IO:
        raise ValueError(f"grpc_io must be one of {', '.join(GRPC_IO)}, got {kind!r}")
    current = grpc_io_in_effect(env)
    wanted = auto if kind == "auto" else kind
    if wanted == current:
        return current
    if "grpc" in modules:
        if kind == "auto":
            return current
        raise ValueError(f"grpc_io {kind!r}: grpc is already imported with {current} I/O in this process; "
                         f"set GRPC_EXPERIMENTS before it starts "
                         f"({','.join(IOMGR_EXPERIMENTS)} for iomgr, unset for event-engine)")
    wanted_env = grpc_io_env(wanted, env)
    if "GRPC_EXPERIMENTS" in wanted_env:
        env["GRPC_EXPERIMENTS"] = wanted_env["GRPC_EXPERIMENTS"]
    else:
        env.pop("GRPC_EXPERIMENTS", None)
    return wanted


# --------------------------------------------------------------------------- recording


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (the value at rank ceil(q/100 * n))."""
    if not len(sorted_values):
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass
class Recorder:
    """Latencies (seconds) of successful requests and counts of failed ones by status code."""

    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)

    def record(self, latency: float, code: str = "OK") -> None:
        if code == "OK":
            self.latencies.append(latency)
        else:
            self.errors[code] += 1

    def summary(self, elapsed: float) -> dict:
        lat = np.sort(np.asarray(self.latencies, dtype=np.float64))
        ok = len(lat)
        out = {"requests": ok + sum(self.errors.values()), "ok": ok, "errors": dict(self.errors),
               "elapsed_s": elapsed, "throughput_rps": ok / elapsed if elapsed > 0 else math.nan}
        ms = {f"p{q:g}": percentile(lat, q) * 1e3 for q in PERCENTILES}
        ms["max"] = float(lat[-1]) * 1e3 if ok else math.nan
        ms["mean"] = float(lat.mean()) * 1e3 if ok else math.nan
        out["latency_ms"] = ms
        return out


# --------------------------------------------------------------------------- load shapes


async def closed_loop(send: Callable[[], Awaitable[str]], concurrency: int, *, until: float,
                      clock: Clock = time.perf_counter, recorder: Recorder | None = None) -> Recorder:
    """``concurrency`` workers, each sending its next request when the previous one is answered."""
    recorder = recorder or Recorder()

    async def worker():
        while clock() < until:
            start = clock()
            code = await send()
            recorder.record(clock() - start, code)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder


async def open_loop(send: Callable[[], Awaitable[str]], rate: float, *, until: float,
                    clock: Clock = time.perf_counter, sleep: Callable[[float], Awaitable] = asyncio.sleep,
                    max_outstanding: int = 10_000, recorder: Recorder | None = None) -> Recorder:
    """Send at ``rate`` per second on a fixed schedule; latency counts from the intended send time."""
    recorder = recorder or Recorder()
    outstanding: set[asyncio.Task] = set()

    async def one(intended: float):
        code = await send()
        recorder.record(clock() - intended, code)

    start = clock()
    i = 0
    while True:
        intended = start + i / rate
        if intended >= until:
            break
        delay = intended - clock()
        if delay > 0:
            await sleep(delay)
        if len(outstanding) >= max_outstanding:
            recorder.record(0.0, "CLIENT_OVERLOADED")
        else:
            task = asyncio.ensure_future(one(intended))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        i += 1
    if outstanding:
        await asyncio.gather(*outstanding)
    return recorder


# --------------------------------------------------------------------------- requests


def feature_pool(n: int, seed: int = 0, n_features: int = N_FEATURES) -> np.ndarray:
    """Plausible feature rows (amounts, flags, counts, averages, risks)."""
    rng = np.random.default_rng(seed)
    cols = [rng.exponential(50.0, n), rng.integers(0, 2, n), rng.integers(0, 2, n)]
    cols += [rng.exponential(3.0, n) for _ in range((n_features - 3) // 2)]
    cols += [rng.uniform(0, 1, n) for _ in range(n_features - len(cols))]
    return np.column_stack(cols).astype(np.float64)


def scorer_requests(pool: np.ndarray, model_name: str) -> list[bytes]:
    from protos.streamscore.v1 import scorer_pb2

    return [scorer_pb2.ScoreRequest(transaction_id=f"load-{i}", model_name=model_name,
                                    features=scorer_pb2.FeatureVector(values=row)).SerializeToString()
            for i, row in enumerate(pool)]


def kserve_requests(pool: np.ndarray, model_name: str, rows: int, datatype: str) -> list[bytes]:
    from protos.kserve.v2 import grpc_predict_v2_pb2 as pb

    dtype = "<f4" if datatype == "FP32" else "<f8"
    out = []
    for i in range(len(pool)):
        block = np.take(pool, range(i, i + rows), axis=0, mode="wrap")
        tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype=datatype, shape=list(block.shape))
        out.append(pb.ModelInferRequest(model_name=model_name, id=f"load-{i}", inputs=[tensor],
                                        raw_input_contents=[block.astype(dtype).tobytes()]).SerializeToString())
    return out


# --------------------------------------------------------------------------- gRPC client


@dataclass(frozen=True)
class LoadSpec:
    target: str
    protocol: str = "scorer"          # scorer | kserve
    mode: str = "unary"               # unary | stream
    concurrency: int = 1
    rps: float | None = None          # open loop when set
    duration: float = 10.0
    warmup: float = 2.0
    streams: int = 1
    rows: int = 1
    datatype: str = "FP32"
    model_name: str = "production"
    timeout: float = 5.0
    pool: int = 1024
    seed: int = 0
    max_outstanding: int = 10_000
    tls_ca: str | None = None
    auth_token: str | None = None
    client: str = "auto"              # auto | aio | sync (sync: closed loop, concurrency 1, unary)
    event_loop: str = "auto"          # auto (uvloop when installed) | asyncio | uvloop, for the aio client
    grpc_io: str = "auto"             # auto (iomgr for the sync client, else event-engine) | event-engine | iomgr
    payload_file: str | None = None   # pre-serialized requests (write_payloads) instead of the random pool


def _channel_options():
    return [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0)]


def _credentials(spec: LoadSpec):
    import grpc

    if spec.tls_ca is None:
        return None
    with open(spec.tls_ca, "rb") as fh:
        return grpc.ssl_channel_credentials(root_certificates=fh.read())


def _registered(channel, kind: str, path: str, **serializers):
    """``channel.unary_unary`` / ``stream_stream`` for ``path`` as generated stubs make them
    (grpcio-tools 1.62+): a registered method, resolved once per channel instead of once per
    call (measured: ~28 us less client CPU per sequential call); plain on older grpcio."""
    make = getattr(channel, kind)
    try:
        return make(path, _registered_method=True, **serializers)
    except TypeError:  # grpcio < 1.62: no registered methods on the client
        return make(path, **serializers)


def _metadata(spec: LoadSpec):
    return (("authorization", f"Bearer {spec.auth_token}"),) if spec.auth_token else None


class Payloads:
    def __init__(self, payloads: list[bytes]):
        self._payloads = payloads
        self._i = 0

    def next(self) -> bytes:
        self._i = (self._i + 1) % len(self._payloads)
        return self._payloads[self._i]


def write_payloads(path, messages) -> int:
    """Write request messages (or their bytes) for ``LoadSpec.payload_file``: each as a 4-byte
    little-endian length and the serialized message. Returns how many."""
    n = 0
    with open(path, "wb") as fh:
        for m in messages:
            data = m if isinstance(m, bytes) else m.SerializeToString()
            fh.write(len(data).to_bytes(4, "little"))
            fh.write(data)
            n += 1
    return n


def read_payloads(path) -> list[bytes]:
    """The serialized requests of a :func:`write_payloads` file, in order."""
    with open(path, "rb") as fh:
        data = fh.read()
    out, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        if pos + 4 + size > len(data):
            raise ValueError(f"payload file {path} is truncated at byte {pos}")
        out.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    if not out:
        raise ValueError(f"payload file {path} holds no request")
    return out


def _payloads(spec: LoadSpec) -> Payloads:
    if spec.payload_file:
        return Payloads(read_payloads(spec.payload_file))
    pool = feature_pool(spec.pool, spec.seed)
    if spec.protocol == "kserve":
        return Payloads(kserve_requests(pool, spec.model_name, spec.rows, spec.datatype))
    return Payloads(scorer_requests(pool, spec.model_name))


def _use_sync(spec: LoadSpec) -> bool:
    simple = spec.mode == "unary" and spec.rps is None and spec.concurrency == 1
    return spec.client == "sync" or (spec.client == "auto" and simple)


def _run_sync(spec: LoadSpec, payloads: Payloads) -> dict:
    """Sequential unary requests on a blocking channel: the least client overhead per request."""
    import grpc

    creds = _credentials(spec)
    channel = (grpc.secure_channel(spec.target, creds, options=_channel_options()) if creds
               else grpc.insecure_channel(spec.target, options=_channel_options()))
    call = _registered(channel, "unary_unary", MODEL_INFER if spec.protocol == "kserve" else SCORE)
    metadata = _metadata(spec)

    def phase(seconds: float, recorder: Recorder) -> float:
        start = time.perf_counter()
        until = start + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= until:
                break
            try:
                call(payloads.next(), timeout=spec.timeout, metadata=metadata)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            recorder.record(time.perf_counter() - t0, code)
        return time.perf_counter() - start

    try:
        warm = Recorder()
        phase(spec.warmup, warm)
        recorder = Recorder()
        elapsed = phase(spec.duration, recorder)
    finally:
        channel.close()
    return recorder.summary(elapsed) | {"warmup_requests": warm.summary(1.0)["requests"]}


async def _run_aio(spec: LoadSpec, payloads: Payloads) -> dict:
    import grpc

    creds = _credentials(spec)
    channel = (grpc.aio.secure_channel(spec.target, creds, options=_channel_options()) if creds
               else grpc.aio.insecure_channel(spec.target, options=_channel_options()))
    metadata = _metadata(spec)
    try:
        await asyncio.wait_for(channel.channel_ready(), spec.timeout)
        if spec.mode == "stream":
            phase = _stream_phase(spec, channel, payloads, metadata)
        else:
            call = _registered(channel, "unary_unary", MODEL_INFER if spec.protocol == "kserve" else SCORE)

            async def send() -> str:
                try:
                    await call(payloads.next(), timeout=spec.timeout, metadata=metadata)
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name

            async def phase(seconds: float, recorder: Recorder) -> None:
                until = time.perf_counter() + seconds
                if spec.rps is not None:
                    await open_loop(send, spec.rps, until=until, recorder=recorder,
                                    max_outstanding=spec.max_outstanding)
                else:
                    await closed_loop(send, spec.concurrency, until=until, recorder=recorder)

        warm = Recorder()
        await phase(spec.warmup, warm)
        recorder = Recorder()
        start = time.perf_counter()
        await phase(spec.duration, recorder)
        return recorder.summary(time.perf_counter() - start) | {"warmup_requests": warm.summary(1.0)["requests"]}
    finally:
        await channel.close()


def _stream_phase(spec: LoadSpec, channel, payloads: Payloads, metadata):
    """Messages over ``spec.streams`` ScoreStream calls; closed (window) or open (schedule) loop."""
    import grpc

    from protos.streamscore.v1 import scorer_pb2

    method = _registered(channel, "stream_stream", SCORE_STREAM, response_deserializer=scorer_pb2.ScoreResponse.FromString)
    codes = {0: "OK", **{c.value[0]: c.name for c in grpc.StatusCode}}

    async def one_stream(recorder: Recorder, until: float, window: int, schedule: Callable[[int], float] | None):
        # Per message: one write, one read, one clock read each side, and a deque append/pop:
        # the client must cost less than the server it measures (see ``client_cpu_us``).
        call = method(metadata=metadata)
        stamps: collections.deque[float] = collections.deque()
        clock, write, read, next_payload = time.perf_counter, call.write, call.read, payloads.next
        latencies, eof = recorder.latencies, grpc.aio.EOF
        free = [window]  # closed loop: messages that may still be sent before an answer comes back
        wake: list[asyncio.Future | None] = [None]

        async def writer():
            i = 0
            loop = asyncio.get_running_loop()
            while True:
                if schedule is None:
                    if not free[0]:
                        wake[0] = loop.create_future()
                        await wake[0]
                    now = clock()
                    if now >= until:
                        break
                    free[0] -= 1
                    stamps.append(now)
                else:
                    intended = schedule(i)
                    if intended >= until:
                        break
                    delay = intended - clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    stamps.append(intended)
                    i += 1
                if call.done():  # refused or failed: the reader reports why
                    return
                await write(next_payload())
            await call.done_writing()

        async def reader():
            try:
                while True:
                    response = await read()
                    if response is eof:
                        return
                    latency = clock() - stamps.popleft()
                    if response.HasField("error"):
                        recorder.record(latency, codes.get(response.error.code, str(response.error.code)))
                    else:
                        latencies.append(latency)
                    if schedule is None:
                        free[0] += 1
                        waiter = wake[0]
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
            finally:  # the call ended: a writer waiting for room must not wait for ever
                waiter = wake[0]
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

        tasks = [asyncio.ensure_future(writer()), asyncio.ensure_future(reader())]
        try:
            await asyncio.gather(*tasks)
        except grpc.aio.AioRpcError as exc:  # the whole stream failed: its unanswered messages count
            # The call's own status says why it ended. (grpc.aio caveat: a write that races the
            # server's early refusal can turn it into INTERNAL "Internal error from Core".)
            code = (await call.code() or exc.code()).name
            for _ in range(max(len(stamps), 1)):
                recorder.record(0.0, code)
        finally:
            for task in tasks:
                task.cancel()

    async def phase(seconds: float, recorder: Recorder) -> None:
        until = time.perf_counter() + seconds
        streams = max(1, spec.streams)
        if spec.rps is not None:
            start, rate = time.perf_counter(), spec.rps / streams
            tasks = [one_stream(recorder, until, 0, lambda i, k=k: start + (i + k / streams) / rate)
                     for k in range(streams)]
        else:
            per = [spec.concurrency // streams + (k < spec.concurrency % streams) for k in range(streams)]
            tasks = [one_stream(recorder, until, w, None) for w in per if w > 0]
        await asyncio.gather(*tasks)

    return phase


def _loop_factory(kind: str):
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def _quiet_gc():
    """Keep this client's garbage collector from stalling a measurement: what exists before the
    run (numpy, gRPC, the request pool: tens of thousands of objects) is frozen out of the
    collector's scans for its duration, so a collection only sees what the run creates."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_load(spec: LoadSpec) -> dict:
    """Run one load test; returns the summary (also what ``--json`` writes)."""
    if spec.mode == "stream" and spec.protocol != "scorer":
        raise ValueError("--mode stream needs --protocol scorer (KServe v2 here is unary ModelInfer)")
    sync = _use_sync(spec)
    # before the first `import grpc` of this process (afterwards: what is in effect)
    grpc_io = select_grpc_io(spec.grpc_io, auto="iomgr" if sync else "event-engine")
    payloads = _payloads(spec)
    cpu0 = time.process_time()
    with _quiet_gc():
        if sync:
            result = _run_sync(spec, payloads)
        else:
            with asyncio.Runner(loop_factory=_loop_factory(spec.event_loop)) as runner:
                result = runner.run(_run_aio(spec, payloads))
    total = result["requests"] + result.get("warmup_requests", 0)
    # CPU of this client per request (warm-up included): compare with the server's, to know
    # which side limits a run on a shared machine.
    result["client_cpu_us"] = (time.process_time() - cpu0) / total * 1e6 if total else math.nan
    result["spec"] = asdict(spec) | {"auth_token": "***" if spec.auth_token else None}
    result["client"] = "sync" if sync else "aio"
    result["loop"] = "open" if spec.rps is not None else "closed"
    result["grpc_io"] = grpc_io
    return result


def format_summary(result: dict) -> str:
    spec, ms = result["spec"], result["latency_ms"]
    shape = f"open loop {spec['rps']:g}/s" if spec["rps"] is not None else f"closed loop C={spec['concurrency']}"
    errors = ", ".join(f"{k}={v}" for k, v in sorted(result["errors"].items())) or "none"
    return (f"{spec['protocol']} {spec['mode']} {shape} ({result['client']} client, "
            f"{result.get('grpc_io', 'event-engine')} I/O) -> {spec['target']}\n"
            f"  requests {result['requests']:,}  ok {result['ok']:,}  errors: {errors}\n"
            f"  throughput {result['throughput_rps']:,.0f} /s over {result['elapsed_s']:.1f} s\n"
            f"  latency ms  p50 {ms['p50']:.3f}  p90 {ms['p90']:.3f}  p99 {ms['p99']:.3f}  "
            f"p99.9 {ms['p99.9']:.3f}  max {ms['max']:.3f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamscore loadtest grpc", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT of the server")
    p.add_argument("--protocol", choices=("scorer", "kserve"), default="scorer",
                   help="streamscore.v1.Scorer or KServe v2 ModelInfer (default scorer)")
    p.add_argument("--mode", choices=("unary", "stream"), default="unary", help="unary RPCs or ScoreStream")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--concurrency", type=int, default=1, help="closed loop: requests in flight (default 1)")
    shape.add_argument("--rps", type=float, help="open loop: requests per second on a fixed schedule")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    p.add_argument("--streams", type=int, default=1, help="ScoreStream calls to spread the load over (default 1)")
    p.add_argument("--rows", type=int, default=1, help="rows per KServe request (default 1)")
    p.add_argument("--datatype", choices=("FP32", "FP64"), default="FP32", help="KServe input datatype (FP32)")
    p.add_argument("--model-name", default="production", help="model name in requests (default production)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline in seconds (default 5)")
    p.add_argument("--pool", type=int, default=1024, help="distinct pre-built requests (default 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-outstanding", type=int, default=10_000, help="open loop: cap on requests in flight")
    p.add_argument("--tls-ca", help="PEM root certificate: connect with TLS")
    p.add_argument("--auth-token", help="send 'authorization: Bearer TOKEN'")
    p.add_argument("--client", choices=("auto", "aio", "sync"), default="auto",
                   help="auto: blocking client for sequential unary, asyncio otherwise")
    p.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="asyncio client's event loop: auto uses uvloop when installed (less client CPU per request)")
    p.add_argument("--grpc-io", choices=GRPC_IO, default="auto",
                   help="gRPC core's I/O in this client: iomgr (the waiting thread reads the socket: one thread "
                        "hop fewer per call) or event-engine (gRPC's default since 1.80); auto: iomgr for the "
                        "blocking client (sequential unary), event-engine for the asyncio one")
    p.add_argument("--json", help="also write the result here as JSON")
    return p


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    for name in ("concurrency", "streams", "rows", "pool"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.rps is not None and args.rps <= 0:
        raise ValueError(f"--rps must be > 0, got {args.rps}")
    if args.duration <= 0 or args.warmup < 0:
        raise ValueError("--duration must be > 0 and --warmup >= 0")
    return LoadSpec(target=args.target, protocol=args.protocol, mode=args.mode, concurrency=args.concurrency,
                    rps=args.rps, duration=args.duration, warmup=args.warmup, streams=args.streams,
                    rows=args.rows, datatype=args.datatype, model_name=args.model_name, timeout=args.timeout,
                    pool=args.pool, seed=args.seed, max_outstanding=args.max_outstanding, tls_ca=args.tls_ca,
                    auth_token=args.auth_token, client=args.client, event_loop=args.event_loop,
                    grpc_io=args.grpc_io)


def run(argv: list[str] | None = None) -> int:
    """``streamscore loadtest grpc``: run one load test and print (and optionally save) the result."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    result = run_load(spec)
    print(format_summary(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
