"""Issue 15's fuzz suite, predictor side: Score / ScoreStream / ModelInfer against a real in-process server.

Wrong shapes and datatypes, NaN/inf, a 1e6-row batch, garbage bytes, 1 us deadlines and
abandoned streams: the server answers each with a status (never UNAVAILABLE: it stays up),
keeps serving correct scores, and its memory stays bounded (RSS before/after, a generous
bound — a leak per call would show, no timing is asserted). Garbage bytes per RPC are also in
test_service.py::test_fuzzed_bytes_never_take_the_server_down.
"""

from __future__ import annotations

import gc

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.kserve.v2 import grpc_predict_v2_pb2 as kpb
from protos.kserve.v2 import grpc_predict_v2_pb2_grpc as kgrpc
from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc

from .conftest import N_FEATURES, synthetic

pytestmark = pytest.mark.integration

ANSWERED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
            "CANCELLED"}
values = st.lists(st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308])),
                  max_size=40)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def outcome(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


@pytest.fixture(scope="module")
def fuzz_server(booster):
    from models.predictor.core import Model, Scorer
    from models.predictor.server import ServerSettings

    from .conftest import ServerThread

    scorer = Scorer()
    scorer.swap(Model.from_booster(booster, "v1", scorer.feature_names))
    handle = ServerThread(ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace=0.5), scorer)
    channel = grpc.insecure_channel(handle.target, options=[("grpc.max_send_message_length", 256 * 1024 * 1024)])
    yield handle, channel
    channel.close()
    handle.stop()


def infer_request(shape, datatype="FP64", raw: bytes | None = None, contents=None) -> kpb.ModelInferRequest:
    req = kpb.ModelInferRequest(model_name="production")
    tensor = req.inputs.add(name="features", datatype=datatype, shape=list(shape))
    if raw is not None:
        req.raw_input_contents.append(raw)
    elif contents is not None:
        tensor.contents.fp64_contents.extend(contents)
    return req


def assert_still_correct(channel, booster) -> None:
    X, _ = synthetic(8, seed=5)
    expected = booster.inplace_predict(X)
    score = scorer_pb2_grpc.ScorerStub(channel).Score
    got = [score(scorer_pb2.ScoreRequest(transaction_id=str(i), features=scorer_pb2.FeatureVector(values=row)),
                 timeout=10).score for i, row in enumerate(X)]
    assert np.allclose(got, expected, atol=1e-6)
    out = kgrpc.GRPCInferenceServiceStub(channel).ModelInfer(
        infer_request(X.shape, raw=np.ascontiguousarray(X, "<f8").tobytes()), timeout=10)
    assert np.allclose(np.frombuffer(out.raw_output_contents[0], "<f8"), expected, atol=1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vals=values, tid=st.text(max_size=300))
def test_score_and_stream_answer_any_vector_with_a_status(fuzz_server, vals, tid):
    _, channel = fuzz_server
    stub = scorer_pb2_grpc.ScorerStub(channel)
    req = scorer_pb2.ScoreRequest(transaction_id=tid, features=scorer_pb2.FeatureVector(values=vals))
    code = outcome(stub.Score, req, timeout=10)
    assert code in ANSWERED
    ok_values = len(vals) == N_FEATURES and all(np.isfinite(vals))
    assert (code == "OK") == ok_values
    answers = list(stub.ScoreStream(iter([req, req]), timeout=10))
    assert len(answers) == 2 and all(a.HasField("error") != ok_values for a in answers)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(-3, 40), max_size=4), datatype=st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "FP16", ""]),
       raw=st.one_of(st.none(), st.binary(max_size=600)))
def test_model_infer_answers_any_tensor_with_a_status(fuzz_server, shape, datatype, raw):
    _, channel = fuzz_server
    code = outcome(kgrpc.GRPCInferenceServiceStub(channel).ModelInfer, infer_request(shape, datatype, raw), timeout=10)
    assert code in ANSWERED


def test_hostile_calls_leave_the_server_up_correct_and_bounded(fuzz_server, booster):
    handle, channel = fuzz_server
    infer = kgrpc.GRPCInferenceServiceStub(channel).ModelInfer
    stub = scorer_pb2_grpc.ScorerStub(channel)
    assert_still_correct(channel, booster)
    gc.collect()
    before = rss_mb()
    seen: dict[str, int] = {}

    def record(code: str) -> None:
        assert code in ANSWERED, code
        seen[code] = seen.get(code, 0) + 1

    X, _ = synthetic(4, seed=7)
    for _ in range(3):
        # a 1e6-row batch (120 MB): over the server's message limit, refused with a status
        big = np.zeros((1_000_000, N_FEATURES), "<f8")
        record(outcome(infer, infer_request(big.shape, raw=big.tobytes()), timeout=60))
        del big
        # a shape that claims 1e6 rows (or 1e12) with a few bytes behind it
        record(outcome(infer, infer_request((1_000_000, N_FEATURES), raw=b"\x00" * 64), timeout=10))
        record(outcome(infer, infer_request((10**6, 10**6), raw=b""), timeout=10))
        record(outcome(infer, infer_request((2, N_FEATURES), contents=[float("nan")] * 30), timeout=10))
        # 1 us deadlines
        for _ in range(50):
            record(outcome(stub.Score, scorer_pb2.ScoreRequest(
                transaction_id="d", features=scorer_pb2.FeatureVector(values=X[0])), timeout=1e-6))
            record(outcome(infer, infer_request(X.shape, raw=X.tobytes()), timeout=1e-6))
        # abandoned streams: read one answer of a never-ending request stream, then walk away
        for _ in range(20):
            def forever():
                while True:
                    yield scorer_pb2.ScoreRequest(transaction_id="s", features=scorer_pb2.FeatureVector(values=X[1]))
            call = stub.ScoreStream(forever(), timeout=10)
            next(call)
            call.cancel()
    gc.collect()
    after = rss_mb()
    print(f"\nhostile calls answered: {seen}; RSS {before:.0f} -> {after:.0f} MB")
    assert "RESOURCE_EXHAUSTED" in seen and "DEADLINE_EXCEEDED" in seen and "INVALID_ARGUMENT" in seen
    assert after - before < 400, f"RSS grew {after - before:.0f} MB"
    assert_still_correct(channel, booster)
