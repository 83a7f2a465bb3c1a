"""KServe v2 over the same core: the stock tritonclient works against it unchanged.

tritonclient's generated code registers the same protobuf names (``inference.*``) as ours,
and one process cannot hold both, so the tritonclient side runs in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest

from protos.kserve.v2 import grpc_predict_v2_pb2 as pb
from protos.kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

from .conftest import synthetic

pytestmark = pytest.mark.integration

def _tritonclient_available() -> bool:
    code = "import tritonclient.grpc"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


needs_tritonclient = pytest.mark.skipif(not _tritonclient_available(), reason="tritonclient[grpc] is not installed")

CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    url, rows = sys.argv[1], np.array(json.loads(sys.argv[2]))
    client = tc.InferenceServerClient(url)
    out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
           "model_ready": client.is_model_ready("production"),
           "unknown_ready": client.is_model_ready("nope"),
           "server": client.get_server_metadata(as_json=True),
           "metadata": client.get_model_metadata("production", as_json=True)}
    for dtype, np_dtype in (("FP32", np.float32), ("FP64", np.float64)):
        tensor = tc.InferInput("features", list(rows.shape), dtype)
        tensor.set_data_from_numpy(rows.astype(np_dtype))
        result = client.infer("production", [tensor], request_id="req-1",
                              outputs=[tc.InferRequestedOutput("score")])
        response = result.get_response()
        out[dtype] = {"scores": result.as_numpy("score").tolist(), "version": response.model_version,
                      "id": response.id}
    errors = {}
    for name, model, shape in (("unknown_model", "nope", rows.shape), ("bad_shape", "production", (len(rows), 14))):
        tensor = tc.InferInput("features", list(shape), "FP32")
        tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
        try:
            client.infer(model, [tensor])
        except InferenceServerException as exc:
            errors[name] = [exc.status(), exc.message()]
    out["errors"] = errors
    print(json.dumps(out))
""")


@needs_tritonclient
def test_tritonclient_works_unchanged(serve, make_scorer, booster):
    server = serve(make_scorer("v5"))
    X, _ = synthetic(4, seed=21)
    done = subprocess.run([sys.executable, "-c", CLIENT, server.target, json.dumps(X.tolist())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["live"] and out["ready"] and out["model_ready"] and not out["unknown_ready"]
    assert out["server"]["name"] == "streamscore"
    meta = out["metadata"]
    assert meta["name"] == "production" and meta["versions"] == ["v5"]
    assert meta["inputs"][0]["shape"] == ["-1", "15"] and meta["outputs"][0]["name"] == "score"
    expected = booster.inplace_predict(X)
    assert np.allclose(out["FP64"]["scores"], expected, atol=1e-6)
    assert np.allclose(out["FP32"]["scores"], booster.inplace_predict(X.astype(np.float32)), atol=1e-6)
    assert out["FP32"]["version"] == "v5" and out["FP64"]["id"] == "req-1"
    assert out["errors"]["unknown_model"][0] == "StatusCode.NOT_FOUND"
    assert 'model_name "nope" is not served' in out["errors"]["unknown_model"][1]
    assert out["errors"]["bad_shape"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape must be [N, 15]" in out["errors"]["bad_shape"][1]


DUMP = textwrap.dedent("""
    import json
    from tritonclient.grpc import service_pb2
    out = {}
    for name, message in service_pb2.DESCRIPTOR.message_types_by_name.items():
        stack = [(name, message)]
        while stack:
            full, m = stack.pop()
            out[full] = sorted([f.name, f.number, f.type, f.label] for f in m.fields)
            stack += [(full + "." + n.name, n) for n in m.nested_types]
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    out["__methods__"] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    print(json.dumps(out))
""")


@needs_tritonclient
def test_proto_is_wire_compatible_with_tritonclient():
    done = subprocess.run([sys.executable, "-c", DUMP], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    ours = {}
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        stack = [(name, message)]
        while stack:
            full, m = stack.pop()
            ours[full] = sorted([f.name, f.number, f.type, f.label] for f in m.fields)
            stack += [(full + "." + n.name, n) for n in m.nested_types]
    assert pb.DESCRIPTOR.package == "inference"
    for full, fields in ours.items():
        assert fields == theirs[full], full
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert theirs["__methods__"][method.name] == [method.input_type.full_name, method.output_type.full_name]


# --------------------------------------------------------------------------- our own stubs


def _infer(target, **kwargs):
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target)).ModelInfer(pb.ModelInferRequest(**kwargs))


def _tensor(shape, datatype="FP64", **kwargs):
    return pb.ModelInferRequest.InferInputTensor(name="features", datatype=datatype, shape=shape, **kwargs)


def test_typed_contents_in_typed_contents_out(serve, make_scorer, booster):
    server = serve(make_scorer("v2"))
    X, _ = synthetic(3, seed=4)
    response = _infer(server.target, model_name="production", inputs=[
        _tensor([3, 15], contents=pb.InferTensorContents(fp64_contents=X.ravel()))])
    assert not response.raw_output_contents
    assert np.allclose(response.outputs[0].contents.fp64_contents, booster.inplace_predict(X), atol=1e-6)
    assert list(response.outputs[0].shape) == [3] and response.model_version == "v2"
    single = _infer(server.target, model_name="production", inputs=[_tensor([15])],
                    raw_input_contents=[X[0].astype("<f8").tobytes()])
    assert np.frombuffer(single.raw_output_contents[0], "<f8")[0] == pytest.approx(response.outputs[0].contents.fp64_contents[0])


@pytest.mark.parametrize("kwargs, code, needle", [
    (dict(model_name="", inputs=[_tensor([1, 15])]), grpc.StatusCode.INVALID_ARGUMENT, "model_name is required"),
    (dict(model_name="production", model_version="v0", inputs=[_tensor([1, 15])]), grpc.StatusCode.NOT_FOUND,
     'model_version "v0" is not served'),
    (dict(model_name="production"), grpc.StatusCode.INVALID_ARGUMENT, "inputs must hold exactly one tensor"),
    (dict(model_name="production", inputs=[_tensor([1, 15], "INT64")]), grpc.StatusCode.INVALID_ARGUMENT,
     "inputs[0].datatype must be FP32 or FP64"),
    (dict(model_name="production", inputs=[_tensor([1, 15])], raw_input_contents=[b"\0" * 8]),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0] must hold 120 bytes"),
    (dict(model_name="production", inputs=[_tensor([2, 15], contents=pb.InferTensorContents(fp64_contents=[1.0] * 29))]),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].contents.fp64_contents must hold 30 values"),
    (dict(model_name="production", inputs=[_tensor([1, 15])],
          raw_input_contents=[np.r_[np.ones(6), np.nan, np.ones(8)].astype("<f8").tobytes()]),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0] row 0, column 6 (CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW) must be a finite"),
    (dict(model_name="production", inputs=[_tensor([1, 15])], raw_input_contents=[np.ones(15).tobytes()],
          outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="proba")]),
     grpc.StatusCode.INVALID_ARGUMENT, 'outputs[0].name "proba" is not an output'),
])
def test_bad_infer_requests_name_the_field(serve, make_scorer, kwargs, code, needle):
    server = serve(make_scorer())
    with pytest.raises(grpc.RpcError) as info:
        _infer(server.target, **kwargs)
    assert info.value.code() == code and needle in info.value.details()


def test_readiness_without_a_model(serve, tmp_path):
    server = serve(model_file=tmp_path / "absent.json")
    client = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.target))
    assert client.ServerLive(pb.ServerLiveRequest()).live
    assert not client.ServerReady(pb.ServerReadyRequest()).ready
    assert not client.ModelReady(pb.ModelReadyRequest(name="production")).ready
    with pytest.raises(grpc.RpcError) as info:
        _infer(server.target, model_name="production", inputs=[_tensor([1, 15])], raw_input_contents=[np.ones(15).tobytes()])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


ONLINE_CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc

    url, rows = sys.argv[1], np.array(json.loads(sys.argv[2]))
    client = tc.InferenceServerClient(url)
    out = {"metadata_outputs": [o["name"] for o in client.get_model_metadata("production", as_json=True)["outputs"]]}
    tensor = tc.InferInput("features", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    result = client.infer("production", [tensor])  # no outputs asked for: every output
    response = result.get_response()
    out["all"] = {"names": [o.name for o in response.outputs], "score": result.as_numpy("score").tolist(),
                  "online": result.as_numpy("online_score").tolist(),
                  "online_version": response.parameters["online_model_version"].string_param}
    result = client.infer("production", [tensor], outputs=[tc.InferRequestedOutput("online_score")])
    out["only_online"] = {"names": [o.name for o in result.get_response().outputs],
                          "online": result.as_numpy("online_score").tolist()}
    print(json.dumps(out))
""")


@needs_tritonclient
def test_tritonclient_reads_the_online_score_output(serve, make_scorer, booster):
    from models.online import OnlineLearner
    from models.predictor.online import PARITY_TOLERANCE, OnlineModel

    scorer = make_scorer("v6")
    learner = OnlineLearner(scorer.feature_names)
    X, y = synthetic(400, seed=8)
    for row, label in zip(X, y):
        learner.learn_one(row.tolist(), int(label))
    scorer.swap_online(OnlineModel.from_learner(learner, "o3"))
    server = serve(scorer)
    rows = X[:5]
    done = subprocess.run([sys.executable, "-c", ONLINE_CLIENT, server.target, json.dumps(rows.tolist())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    expected = [learner.predict_proba_one(row.tolist()) for row in rows]
    assert out["metadata_outputs"] == ["score", "online_score"]
    assert out["all"]["names"] == ["score", "online_score"] and out["all"]["online_version"] == "o3"
    assert np.allclose(out["all"]["score"], booster.inplace_predict(rows), atol=1e-6)
    assert np.max(np.abs(np.array(out["all"]["online"]) - expected)) <= PARITY_TOLERANCE
    assert out["only_online"]["names"] == ["online_score"]
    assert np.max(np.abs(np.array(out["only_online"]["online"]) - expected)) <= PARITY_TOLERANCE


def test_online_score_without_an_online_model_is_unavailable(serve, make_scorer):
    server = serve(make_scorer())
    response = _infer(server.target, model_name="production", inputs=[_tensor([1, 15])],
                      raw_input_contents=[np.ones(15).tobytes()])
    assert [o.name for o in response.outputs] == ["score"] and "online_model_version" not in response.parameters
    with pytest.raises(grpc.RpcError) as info:
        _infer(server.target, model_name="production", inputs=[_tensor([1, 15])], raw_input_contents=[np.ones(15).tobytes()],
               outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="online_score")])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "no online model is loaded" in info.value.details()
