"""The gRPC predictor end to end: an in-process grpc.aio server on port 0, synchronous clients."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from models.predictor import kserve, service
from models.predictor.core import Model, Scorer, default_feature_names
from models.predictor.errors import RPC_MARKER
from protos.kserve.v2 import grpc_predict_v2_pb2
from protos.streamscore.v1 import events_pb2, scorer_pb2, scorer_pb2_grpc

from .conftest import synthetic

pytestmark = pytest.mark.integration

NAMES = default_feature_names()
ROOT = Path(__file__).resolve().parents[3]


class SlowBackend:
    """Predicts 0.5 after ``delay`` seconds, off the event loop (like XGBoost)."""

    name, inline = "slow", False

    def __init__(self, delay: float):
        self.delay = delay
        self.rows = 0

    def predict(self, X):
        self.rows += len(X)
        time.sleep(self.delay)
        return np.full(len(X), 0.5)


def slow_scorer(delay: float) -> Scorer:
    scorer = Scorer()
    scorer.swap(Model("slow-1", SlowBackend(delay), NAMES))
    return scorer


def request(values=None, tx="t-1", **kwargs) -> scorer_pb2.ScoreRequest:
    if values is None:
        values = synthetic(1)[0][0]
    return scorer_pb2.ScoreRequest(transaction_id=tx, features=scorer_pb2.FeatureVector(values=values), **kwargs)


def stub(target: str, credentials=None) -> scorer_pb2_grpc.ScorerStub:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    return scorer_pb2_grpc.ScorerStub(channel)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------- scoring


def test_score_returns_score_version_and_latency(serve, make_scorer, booster):
    server = serve(make_scorer("v3"))
    X, _ = synthetic(5, seed=11)
    response = stub(server.target).Score(request(X[2], tx="tx-42"))
    assert response.transaction_id == "tx-42" and response.model_version == "v3"
    assert response.score == pytest.approx(float(booster.inplace_predict(X[2:3])[0]), abs=1e-6)
    assert 0 < response.latency_us < 1_000_000
    assert not response.HasField("online_score") and not response.HasField("error")


@pytest.mark.parametrize("backend", ["auto", "xgboost"])  # answered as read / pipelined and batched
def test_score_stream_answers_in_order_and_survives_bad_messages(serve, make_scorer, booster, backend):
    server = serve(make_scorer("v3", backend=backend))
    X, _ = synthetic(40, seed=12)
    tx = events_pb2.Transaction(transaction_id="raw", customer_id="c", terminal_id="t", amount=1.0)
    messages = [request(X[i], tx=f"t{i}") for i in range(40)]
    messages[5] = request([1.0, 2.0], tx="short")
    messages[9] = scorer_pb2.ScoreRequest(transaction_id="raw", transaction=tx)
    messages[20] = request(X[20], tx="unknown-model", model_name="nope")
    responses = list(stub(server.target).ScoreStream(iter(messages)))
    assert [r.transaction_id for r in responses] == [m.transaction_id for m in messages]
    codes = {r.transaction_id: r.error.code for r in responses if r.HasField("error")}
    assert codes == {"short": grpc.StatusCode.INVALID_ARGUMENT.value[0], "raw": grpc.StatusCode.UNIMPLEMENTED.value[0],
                     "unknown-model": grpc.StatusCode.NOT_FOUND.value[0]}
    assert "features.values must have 15 values" in responses[5].error.message
    good = [i for i in range(40) if i not in (5, 9, 20)]
    expected = booster.inplace_predict(X[good])
    assert np.allclose([responses[i].score for i in good], expected, atol=1e-6)
    assert {responses[i].model_version for i in good} == {"v3"}


@pytest.mark.parametrize("message, code, needle", [
    (scorer_pb2.ScoreRequest(transaction_id="empty"), grpc.StatusCode.INVALID_ARGUMENT, "input is required"),
    (request([1.0] * 14), grpc.StatusCode.INVALID_ARGUMENT, "features.values must have 15 values"),
    (request([1.0] * 3 + [float("nan")] + [1.0] * 11), grpc.StatusCode.INVALID_ARGUMENT,
     "features.values[3] (CUSTOMER_ID_NB_TX_1DAY_WINDOW) must be a finite number, got NaN"),
    (request([float("inf")] + [1.0] * 14), grpc.StatusCode.INVALID_ARGUMENT, "features.values[0] (TX_AMOUNT)"),
    (request(model_name="champion"), grpc.StatusCode.NOT_FOUND, 'model_name "champion" is not served'),
    (scorer_pb2.ScoreRequest(transaction=events_pb2.Transaction(transaction_id="1")), grpc.StatusCode.UNIMPLEMENTED,
     "transaction input needs the online feature store"),
])
def test_bad_input_maps_to_codes_naming_the_field(serve, make_scorer, message, code, needle):
    server = serve(make_scorer())
    error = rpc_error(stub(server.target).Score, message)
    assert error.code() == code and needle in error.details()


def test_every_rpc_is_wrapped_by_the_error_decorator():
    servicers = {service.SERVICE_NAME: (service.ScorerService, scorer_pb2),
                 kserve.SERVICE_NAME: (kserve.InferenceService, grpc_predict_v2_pb2)}
    for full_name, (cls, module) in servicers.items():
        methods = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[-1]].methods
        assert methods
        for method in methods:
            assert getattr(getattr(cls, method.name), RPC_MARKER, None) == method.name, f"{full_name}/{method.name}"


def test_unexpected_errors_become_internal(serve, make_scorer, monkeypatch):
    scorer = make_scorer()
    server = serve(scorer)

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(scorer, "score_now", broken)  # the lone-row path
    error = rpc_error(stub(server.target).Score, request())
    assert error.code() == grpc.StatusCode.INTERNAL and "RuntimeError" in error.details()
    monkeypatch.setattr(scorer, "score_now", lambda *args: None)  # the general path
    monkeypatch.setattr(scorer, "features_row", broken)
    error = rpc_error(stub(server.target).Score, request())
    assert error.code() == grpc.StatusCode.INTERNAL and "RuntimeError" in error.details()
    monkeypatch.undo()
    assert stub(server.target).Score(request()).model_version == "v1"


def test_stream_messages_that_arrive_together_share_predictions(serve, make_scorer):
    scorer = make_scorer(backend="xgboost")  # predicts off the event loop: ~100 us per call
    server = serve(scorer)
    X, _ = synthetic(300, seed=8)
    responses = list(stub(server.target).ScoreStream(iter([request(x, tx=str(i)) for i, x in enumerate(X)])))
    assert [r.transaction_id for r in responses] == [str(i) for i in range(300)]
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5).read().decode()
    predictions = float(text.split("streamscore_predictor_batch_rows_count ")[1].split()[0])
    rows = float(text.split("streamscore_predictor_batch_rows_sum ")[1].split()[0])
    assert rows == 300 and predictions < 300  # at least some messages were predicted together


def test_a_failing_stream_message_does_not_end_the_stream(serve, make_scorer, monkeypatch):
    scorer = make_scorer()
    server = serve(scorer)
    real = scorer.features_row

    def sometimes_broken(values, names=(), **kwargs):
        if values[0] == 13.0:
            raise RuntimeError("bug")
        return real(values, names, **kwargs)

    monkeypatch.setattr(scorer, "features_row", sometimes_broken)
    messages = [request([float(v)] + [1.0] * 14, tx=str(v)) for v in (1, 13, 2)]
    responses = list(stub(server.target).ScoreStream(iter(messages)))
    assert [r.transaction_id for r in responses] == ["1", "13", "2"]
    assert responses[1].error.code == grpc.StatusCode.INTERNAL.value[0] and "RuntimeError" in responses[1].error.message
    assert not responses[0].HasField("error") and not responses[2].HasField("error")


def test_fuzzed_bytes_never_take_the_server_down(serve, make_scorer):
    server = serve(make_scorer())
    channel = grpc.insecure_channel(server.target)
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(int(n)) for n in rng.integers(0, 300, 150)]
    valid = request().SerializeToString()
    payloads += [valid[:cut] + rng.bytes(5) + valid[cut:] for cut in range(0, len(valid), 7)]
    seen = set()
    for path in ("/streamscore.v1.Scorer/Score", "/inference.GRPCInferenceService/ModelInfer",
                 "/inference.GRPCInferenceService/ModelMetadata"):
        call = channel.unary_unary(path)
        for data in payloads:
            try:
                call(data, timeout=5)
                seen.add("OK")
            except grpc.RpcError as exc:
                seen.add(exc.code().name)
                assert exc.code() != grpc.StatusCode.UNAVAILABLE
    stream = channel.stream_stream("/streamscore.v1.Scorer/ScoreStream",
                                   response_deserializer=scorer_pb2.ScoreResponse.FromString)
    answers = list(stream(iter(payloads[:50]), timeout=5))
    assert len(answers) == 50
    assert any("is not a valid streamscore.v1.ScoreRequest" in a.error.message for a in answers)
    # Undecodable bytes are INVALID_ARGUMENT (never UNKNOWN or INTERNAL); a stream reports them per message.
    assert "INVALID_ARGUMENT" in seen and seen <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"}
    assert stub(server.target).Score(request()).model_version == "v1"


# --------------------------------------------------------------------------- health and reflection


def test_health_goes_serving_once_a_model_is_loaded(serve, booster, tmp_path):
    model_file = tmp_path / "model.json"
    server = serve(model_file=model_file, poll_interval=0.1)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.target))
    NOT_SERVING, SERVING = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
    for name in ("", "streamscore.v1.Scorer", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == NOT_SERVING
    error = rpc_error(stub(server.target).Score, request())
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "no model is loaded yet" in error.details()
    booster.save_model(str(model_file))
    deadline = time.monotonic() + 10
    while health.Check(health_pb2.HealthCheckRequest(service="")).status != SERVING:
        assert time.monotonic() < deadline, "never became SERVING"
        time.sleep(0.05)
    assert stub(server.target).Score(request()).model_version.startswith("file-")


def test_a_long_stream_answers_every_message_in_order(serve, make_scorer, booster):
    # More messages than the read-ahead window (STREAM_WINDOW), sent as fast as the client can:
    # reading pauses while the window is full, and nothing is lost or reordered.
    server = serve(make_scorer("v2"))
    X, _ = synthetic(3 * service.STREAM_WINDOW + 7, seed=21)
    responses = list(stub(server.target).ScoreStream(iter([request(x, tx=str(i)) for i, x in enumerate(X)])))
    assert [r.transaction_id for r in responses] == [str(i) for i in range(len(X))]
    assert np.allclose([r.score for r in responses], booster.inplace_predict(X), atol=1e-6)
    assert all(r.latency_us >= 0 and r.model_version == "v2" for r in responses)


def test_a_cancelled_stream_leaves_the_server_clean(serve, make_scorer):
    server = serve(make_scorer(), max_in_flight=1)
    client = stub(server.target)

    def endless():
        while True:
            yield request()
            time.sleep(0.001)

    call = client.ScoreStream(endless())
    assert next(call).model_version == "v1" and next(call).model_version == "v1"
    # One stream is in flight: with max_in_flight=1 another RPC (unary or stream) is refused.
    error = rpc_error(lambda: list(client.ScoreStream(iter([request()]))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1 RPCs in flight" in error.details()
    call.cancel()
    deadline = time.monotonic() + 5
    while server.server.guard.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.guard.in_flight == 0  # the stream's reader and writer are gone
    assert client.Score(request()).model_version == "v1"
    assert [r.transaction_id for r in client.ScoreStream(iter([request(tx="a"), request(tx="b")]))] == ["a", "b"]


def test_a_stream_past_its_deadline_ends_with_deadline_exceeded(serve, make_scorer):
    server = serve(make_scorer())

    def slow():
        for i in range(100):
            yield request(tx=str(i))
            time.sleep(0.01)

    answered = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stub(server.target).ScoreStream(slow(), timeout=0.2):
            answered.append(response.transaction_id)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answered == [str(i) for i in range(len(answered))] and answered  # in order, until the deadline
    assert stub(server.target).Score(request()).model_version == "v1"


def test_a_stream_without_a_model_fails_the_call_as_retryable(serve, tmp_path):
    server = serve(model_file=tmp_path / "absent.json")
    error = rpc_error(lambda: list(stub(server.target).ScoreStream(iter([request(), request()]))))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "no model is loaded yet" in error.details()


def test_reflection_lists_the_services(serve, make_scorer):
    server = serve(make_scorer())
    reflection = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.target))
    (response,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in response.list_services_response.service}
    assert {"streamscore.v1.Scorer", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    (response,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="streamscore.v1.Scorer")]))
    assert response.file_descriptor_response.file_descriptor_proto


def test_health_and_reflection_are_served_as_generic_handlers_only():
    # Each registered method would add a pending accept that grpc.aio waits on for every call.
    from grpc_health.v1 import health

    from models.predictor.server import GenericOnly

    class Recording:
        def __init__(self):
            self.generic, self.registered = [], []

        def add_generic_rpc_handlers(self, handlers):
            self.generic += handlers

        def add_registered_method_handlers(self, name, handlers):
            self.registered.append(name)

    server = Recording()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), GenericOnly(server))
    assert server.registered == [] and [h.service_name() for h in server.generic] == ["grpc.health.v1.Health"]


# --------------------------------------------------------------------------- operations


def test_in_flight_bound_answers_resource_exhausted(serve):
    server = serve(slow_scorer(0.4), max_in_flight=2)
    client = stub(server.target)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.Score, request(), timeout=10) for _ in range(6)]
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)
                assert "limit of 2 RPCs in flight" in exc.details()
    assert outcomes.count("OK") >= 2 and "RESOURCE_EXHAUSTED" in outcomes
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.target))
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_deadlines_are_honoured(serve):
    scorer = slow_scorer(1.0)
    server = serve(scorer)
    client = stub(server.target)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.Score, request(), timeout=10)  # occupies the backend for 1 s
        time.sleep(0.1)
        started = time.monotonic()
        error = rpc_error(client.Score, request(), timeout=0.05)  # waits behind it, then expires
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.8  # not held until the backend is free
        assert first.result().score == 0.5
    assert client.Score(request(), timeout=10).score == 0.5  # the server is fine afterwards
    assert scorer.model.backend.rows == 2  # the expired request was never predicted


def test_max_message_size(serve, make_scorer):
    server = serve(make_scorer(), max_message_bytes=64 * 1024)
    error = rpc_error(stub(server.target).Score, request(tx="x" * 100_000))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bearer_token(serve, make_scorer):
    server = serve(make_scorer(), auth_token="s3cret")
    client = stub(server.target)
    for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
        error = rpc_error(client.Score, request(), metadata=metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in error.details()
    error = rpc_error(lambda: list(client.ScoreStream(iter([request()]))))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = client.Score(request(), metadata=(("authorization", "Bearer s3cret"),))
    assert ok.model_version == "v1"
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.target))  # probes need no token
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_tls(serve, make_scorer, tmp_path):
    from models.predictor.tls_testing import self_signed

    cert, key = self_signed(tmp_path)
    server = serve(make_scorer(), tls_cert=cert, tls_key=key)
    target = f"localhost:{server.port}"
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    assert stub(target, credentials).Score(request(), timeout=10).model_version == "v1"
    error = rpc_error(stub(target).Score, request(), timeout=2)  # plaintext client, TLS server
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_metrics_endpoint(serve, make_scorer):
    server = serve(make_scorer("v9"))
    client = stub(server.target)
    for _ in range(3):
        client.Score(request())
    rpc_error(client.Score, request([1.0]))
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    deadline = time.monotonic() + 5
    while True:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        # An aborted RPC's status reaches the client just before its handler returns (and
        # leaves the in-flight count): give it that moment.
        if "streamscore_predictor_in_flight 0.0" in text or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert 'streamscore_predictor_requests_total{code="OK",method="Score"} 3.0' in text
    assert 'streamscore_predictor_requests_total{code="INVALID_ARGUMENT",method="Score"} 1.0' in text
    assert 'streamscore_predictor_latency_seconds_count{method="Score"} 3.0' in text
    assert "streamscore_predictor_batch_rows_count 3.0" in text
    assert "streamscore_predictor_in_flight 0.0" in text
    assert 'version="v9"} 1.0' in text and "streamscore_predictor_model_info{backend=" in text


def test_stop_drains_rpcs_in_flight(serve):
    scorer = slow_scorer(1.0)
    server = serve(scorer)
    client = stub(server.target)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(client.Score, request(), timeout=10)
        deadline = time.monotonic() + 5
        while scorer.model.backend.rows == 0:  # the RPC is being served
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopping = pool.submit(server.call, server.server.stop(5))
        time.sleep(0.1)
        error = rpc_error(client.Score, request(), timeout=2)  # new RPCs are refused while draining
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert in_flight.result().score == 0.5  # ...but the one in flight finishes
        stopping.result()


def test_sigterm_drains_and_exits_cleanly(booster, tmp_path):
    from models.registry import Registry
    from models.signing import generate
    from streaming.features.spec import DEFAULT_SPEC

    ring = generate("trainer")
    registry = Registry.open(tmp_path / "registry", keys=ring)
    version = registry.register(booster, {"feature_names": list(NAMES)}, spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(version)
    ring.save(tmp_path / "verify.json", public_only=True)  # the predictor holds only the public half
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "models.predictor.server", "--registry", str(tmp_path / "registry"),
                             "--signing-key-file", str(tmp_path / "verify.json"),
                             "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--grace", "5"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        while not line.startswith("streamscore serve: listening"):  # the log line comes first
            line = proc.stdout.readline()
            assert line, "the server exited before saying it listens"
        # started without GRPC_EXPERIMENTS: the process re-executed itself (same pid) with iomgr I/O
        assert "(gRPC iomgr I/O)" in line, line
        port = int(line.split("127.0.0.1:")[1].split(",")[0].split()[0])
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        deadline = time.monotonic() + 20
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stub(f"127.0.0.1:{port}").Score(request(), timeout=5).model_version == version
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "draining" in out and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, needle", [
    ([], "one of the arguments --registry --model-file is required"),
    (["--model-file", "/nonexistent/model.json"], "--model-file /nonexistent/model.json is not a file"),
    (["--registry", "/nonexistent"], "--registry /nonexistent is not a directory"),
    (["--registry", "/"], "give --signing-key-file FILE"),
    (["--registry", "/", "--signing-key-file", "/nonexistent.json"], "--signing-key-file /nonexistent.json does not exist"),
])
def test_serve_refuses_bad_arguments_with_a_reason(argv, needle, capsys):
    from models.predictor.server import run

    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2 and needle in capsys.readouterr().err


def test_settings_are_checked():
    from models.predictor.server import ServerSettings

    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerSettings(tls_cert=Path("cert.pem"))
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        ServerSettings(max_in_flight=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        ServerSettings(backend="gpu")
    with pytest.raises(ValueError, match="grpc_io must be one of iomgr, event-engine"):
        ServerSettings(grpc_io="epoll")


def test_serve_restarts_itself_only_when_grpc_io_is_not_in_effect():
    from models.predictor.grpc_io import IOMGR_EXPERIMENTS, grpc_io_in_effect
    from models.predictor.server import ServerSettings, restart_with_grpc_io

    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env))

    argv = ["--model-file", "m.json", "--port", "0"]
    base = {"PATH": "/bin", "GRPC_EXPERIMENTS": "some_other_experiment"}
    restart_with_grpc_io(ServerSettings(grpc_io="iomgr"), argv, env=base, execve=execve)
    (path, new_argv, env), = calls
    assert path == sys.executable and new_argv == [sys.executable, "-m", "models.predictor.server", *argv]
    assert env["PATH"] == "/bin" and grpc_io_in_effect(env) == "iomgr"
    assert env["GRPC_EXPERIMENTS"].split(",") == ["some_other_experiment", *IOMGR_EXPERIMENTS]  # others kept
    assert base["GRPC_EXPERIMENTS"] == "some_other_experiment"  # the caller's mapping is not changed

    calls.clear()
    restart_with_grpc_io(ServerSettings(grpc_io="iomgr"), argv, env=env, execve=execve)  # in effect: no loop
    restart_with_grpc_io(ServerSettings(grpc_io="event-engine"), argv, env=base, execve=execve)
    assert calls == []
    restart_with_grpc_io(ServerSettings(grpc_io="event-engine"), argv, env=env, execve=execve)
    assert calls[0][2]["GRPC_EXPERIMENTS"] == "some_other_experiment"
    assert grpc_io_in_effect(calls[0][2]) == "event-engine"
