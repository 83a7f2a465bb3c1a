"""The gRPC load generator: its arithmetic, open-loop honesty about queueing, and a real run."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import pytest

from loadtest import grpc_loadgen as lg


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert lg.percentile(values, 50) == 50
    assert lg.percentile(values, 90) == 90
    assert lg.percentile(values, 99) == 99
    assert lg.percentile(values, 99.9) == 100
    assert lg.percentile([7.0], 99.9) == 7.0
    assert math.isnan(lg.percentile([], 50))


def test_summary_counts_errors_apart_from_latencies():
    recorder = lg.Recorder()
    for ms in (1, 2, 3, 4):
        recorder.record(ms / 1e3)
    recorder.record(9.0, "DEADLINE_EXCEEDED")
    recorder.record(0.0, "RESOURCE_EXHAUSTED")
    out = recorder.summary(elapsed=2.0)
    assert out["requests"] == 6 and out["ok"] == 4
    assert out["errors"] == {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 1}
    assert out["throughput_rps"] == 2.0
    assert out["latency_ms"]["p50"] == pytest.approx(2.0) and out["latency_ms"]["max"] == pytest.approx(4.0)
    assert out["latency_ms"]["mean"] == pytest.approx(2.5)


class FakeClock:
    """Virtual time: ``sleep`` jumps the clock (and lets other tasks run)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class SerialServer:
    """Answers one request at a time, ``service`` seconds each, and blocks its caller meanwhile."""

    def __init__(self, clock: FakeClock, service: float):
        self.clock, self.service = clock, service
        self.free_at = 0.0
        self.sent: list[float] = []
        self.done: list[float] = []

    async def send(self) -> str:
        self.sent.append(self.clock())
        self.free_at = max(self.clock(), self.free_at) + self.service
        self.clock.now = self.free_at  # the caller is stuck until the answer comes
        self.done.append(self.free_at)
        return "OK"


def test_open_loop_counts_queueing_from_the_intended_send_time():
    clock = FakeClock()
    server = SerialServer(clock, service=0.020)  # capacity 50/s
    rate = 100.0  # offered: twice the capacity

    recorder = asyncio.run(lg.open_loop(server.send, rate, until=0.5, clock=clock, sleep=clock.sleep))

    n = len(server.done)
    assert n == 50  # the schedule is kept: 0.5 s x 100/s, however late the sends go out
    intended = [i / rate for i in range(n)]
    assert sorted(recorder.latencies) == pytest.approx(sorted(d - t for d, t in zip(server.done, intended)))
    # Measured from the actual send, every request would look like 20 ms; from the intended
    # time the queue shows: the last request waited ~0.5 s.
    assert [d - s for d, s in zip(server.done, server.sent)] == pytest.approx([0.020] * n)
    assert max(recorder.latencies) > 0.45
    assert recorder.summary(0.5)["latency_ms"]["p99"] > 400


def test_closed_loop_measures_from_the_actual_send():
    clock = FakeClock()
    server = SerialServer(clock, service=0.020)
    recorder = asyncio.run(lg.closed_loop(server.send, 1, until=0.19, clock=clock))
    assert recorder.latencies == pytest.approx([0.020] * 10)


def test_open_loop_against_a_real_slow_server():
    """Real time: a server that needs 20 ms per request, offered 100/s for 0.3 s."""
    lock = asyncio.Lock

    async def main():
        busy = lock()

        async def send() -> str:
            async with busy:
                await asyncio.sleep(0.020)
            return "OK"

        return await lg.open_loop(send, 100.0, until=time.perf_counter() + 0.3)

    recorder = asyncio.run(main())
    assert len(recorder.latencies) == 30
    assert max(recorder.latencies) > 0.2  # ~30 x 20 ms - 0.3 s of queueing, not 20 ms


# --------------------------------------------------------------------------- against the predictor


@pytest.fixture(scope="module")
def predictor():
    import numpy as np
    import xgboost as xgb

    from models.predictor.core import Model, Scorer
    from models.predictor.server import PredictorServer, ServerSettings

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, lg.N_FEATURES))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(X, (X[:, 0] > 0).astype(int)), 10)
    scorer = Scorer()
    scorer.swap(Model.from_booster(booster, "lg-1", scorer.feature_names))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = PredictorServer(ServerSettings(host="127.0.0.1", port=0, metrics_port=None), scorer=scorer)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield f"127.0.0.1:{server.port}"
    asyncio.run_coroutine_threadsafe(server.stop(0.1), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.integration
@pytest.mark.parametrize("args", [
    ["--concurrency", "1"],
    ["--concurrency", "4"],
    ["--mode", "stream", "--concurrency", "8", "--streams", "2"],
    ["--protocol", "kserve", "--concurrency", "4"],
    ["--rps", "200"],
    ["--mode", "stream", "--rps", "200"],
])
def test_runs_against_the_predictor(predictor, tmp_path, capsys, args):
    out = tmp_path / "result.json"
    assert lg.run(["--target", predictor, "--duration", "0.4", "--warmup", "0.1", "--json", str(out), *args]) == 0
    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["ok"] > 10
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["client_cpu_us"] > 0  # the client's own CPU per request, to compare with the server's
    assert result["grpc_io"] == lg.grpc_io_in_effect()  # grpc is imported here already: its I/O is reported
    printed = capsys.readouterr().out
    assert "p99.9" in printed and "throughput" in printed


@pytest.mark.integration
def test_errors_are_counted_by_code(predictor):
    for mode in ("unary", "stream"):
        result = lg.run_load(lg.LoadSpec(target=predictor, mode=mode, concurrency=2, duration=0.3, warmup=0,
                                         model_name="nope"))
        assert result["ok"] == 0 and set(result["errors"]) == {"NOT_FOUND"}


@pytest.mark.integration
def test_closed_loop_stream_answers_everything_and_leaves_gc_as_it_was(predictor):
    import gc

    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    result = lg.run_load(lg.LoadSpec(target=predictor, mode="stream", concurrency=8, duration=0.4, warmup=0.1))
    assert result["errors"] == {} and result["ok"] > 50 and result["requests"] == result["ok"]
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == frozen and gc.isenabled()


def test_grpc_io_is_chosen_before_grpc_is_imported():
    env = {"GRPC_EXPERIMENTS": "other"}
    assert lg.select_grpc_io("auto", env, modules={}) == "iomgr"
    assert env["GRPC_EXPERIMENTS"].split(",") == ["other", *lg.IOMGR_EXPERIMENTS]
    assert lg.select_grpc_io("iomgr", env, modules={}) == "iomgr"  # already asked for: unchanged
    assert lg.select_grpc_io("event-engine", env, modules={}) == "event-engine"
    assert env == {"GRPC_EXPERIMENTS": "other"}
    env = {}
    assert lg.select_grpc_io("event-engine", env, modules={}) == "event-engine" and env == {}
    assert lg.select_grpc_io("auto", env, modules={}, auto="event-engine") == "event-engine" and env == {}
    # once grpc is imported the choice is fixed: auto accepts it, the other one is refused
    imported = {"grpc": object()}
    assert lg.select_grpc_io("auto", env, modules=imported) == "event-engine" and env == {}
    with pytest.raises(ValueError, match="grpc is already imported with event-engine I/O"):
        lg.select_grpc_io("iomgr", env, modules=imported)
    with pytest.raises(ValueError, match="grpc_io must be one of"):
        lg.select_grpc_io("epoll", env, modules={})


def test_grpc_io_env_for_a_child_process_keeps_everything_else():
    base = {"PATH": "/bin", "GRPC_EXPERIMENTS": ",".join(lg.IOMGR_EXPERIMENTS)}
    peer = lg.grpc_io_env("event-engine", base)
    assert peer == {"PATH": "/bin"} and lg.grpc_io_in_effect(peer) == "event-engine"
    assert lg.grpc_io_in_effect(lg.grpc_io_env("iomgr", peer)) == "iomgr"
    assert lg.grpc_io_in_effect(base) == "iomgr"


def test_the_grpc_io_module_does_not_import_grpc():
    """Client and server share models.predictor.grpc_io, which must be importable before grpc is."""
    import subprocess
    import sys

    code = "import sys, models.predictor.grpc_io, loadtest.grpc_loadgen; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_arguments_exit_with_a_reason(capsys):
    with pytest.raises(SystemExit) as info:
        lg.run(["--target", "127.0.0.1:1", "--concurrency", "0"])
    assert info.value.code == 2 and "--concurrency must be >= 1" in capsys.readouterr().err


@pytest.mark.integration
def test_a_refused_stream_counts_as_errors():
    """An auth-protected server refuses the whole stream: the failure is counted, not hidden."""
    import asyncio as aio

    from models.predictor.server import PredictorServer, ServerSettings

    async def main():
        server = PredictorServer(ServerSettings(host="127.0.0.1", port=0, metrics_port=None, auth_token="t0ken"))
        await server.start()
        try:
            spec = lg.LoadSpec(target=f"127.0.0.1:{server.port}", mode="stream", concurrency=4, duration=0.3,
                               warmup=0)
            return await lg._run_aio(spec, lg._payloads(spec))
        finally:
            await server.stop(0.1)

    result = aio.run(main())
    # grpc.aio may report a write racing the refusal as INTERNAL; either way nothing is "ok".
    assert result["ok"] == 0 and result["errors"] and set(result["errors"]) <= {"UNAUTHENTICATED", "INTERNAL"}
