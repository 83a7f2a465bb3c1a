"""KServe v2 / Open Inference Protocol (``inference.GRPCInferenceService``) over the same core.

One model is served, under the names ``production`` and the scorer's name. ``ModelInfer``
takes one input tensor of shape ``[N, 15]`` (or ``[15]``) as FP32 or FP64, in
``raw_input_contents`` (what tritonclient sends) or in typed ``contents``; it answers the
output ``score`` (FP64, shape ``[N]``) in the same form, with the model version that
computed it. While an online (River) model is loaded there is a second output,
``online_score`` (FP64, ``[N]``), and the response parameter ``online_model_version``;
requested outputs are answered in the order asked (without ``outputs``: every output).
Bad requests fail with INVALID_ARGUMENT / NOT_FOUND naming the field; asking for
``online_score`` while no online model is loaded is UNAVAILABLE.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np

from models.predictor.core import Scorer
from models.predictor.errors import InvalidArgument, ModelNotFound, NotReady, rpc
from models.predictor.service import check_deadline
from protos.kserve.v2 import grpc_predict_v2_pb2 as pb
from protos.kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
INPUT_NAME = "features"
OUTPUT_NAME = "score"
ONLINE_OUTPUT_NAME = "online_score"
ONLINE_VERSION_PARAMETER = "online_model_version"
PLATFORM = "streamscore_xgboost"
_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


def _server_version() -> str:
    try:
        return metadata.version("streamscore")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, scorer: Scorer, telemetry=None):
        self._scorer = scorer
        self._telemetry = telemetry
        self._version = _server_version()

    # -- health and metadata --------------------------------------------------------------

    @rpc("ServerLive")
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._scorer.ready)

    @rpc("ModelReady")
    async def ModelReady(self, request, context):
        if request.name not in self._scorer.served_names:
            return pb.ModelReadyResponse(ready=False)
        model = self._scorer.model
        ready = model is not None and (not request.version or request.version == model.version)
        return pb.ModelReadyResponse(ready=ready)

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="streamscore", version=self._version, extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request, context):
        model = self._model(request.name, request.version, "name", "version")
        n = len(self._scorer.feature_names)
        outputs = [OUTPUT_NAME] + ([ONLINE_OUTPUT_NAME] if self._scorer.online_model is not None else [])
        return pb.ModelMetadataResponse(
            name=request.name, versions=[model.version], platform=PLATFORM,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=INPUT_NAME, datatype="FP64", shape=[-1, n])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=name, datatype="FP64", shape=[-1]) for name in outputs])

    # -- inference --------------------------------------------------------------------------

    @rpc("ModelInfer")
    async def ModelInfer(self, request, context):
        self._model(request.model_name, request.model_version, "model_name", "model_version")
        wanted = []
        for i, output in enumerate(request.outputs):
            if output.name not in (OUTPUT_NAME, ONLINE_OUTPUT_NAME):
                raise InvalidArgument(f'outputs[{i}].name "{output.name[:100]}" is not an output of the model: '
                                      f'expected "{OUTPUT_NAME}" or "{ONLINE_OUTPUT_NAME}"', field=f"outputs[{i}].name")
            wanted.append(output.name)
        if ONLINE_OUTPUT_NAME in wanted and self._scorer.online_model is None:
            raise NotReady(f'no online model is loaded yet, so there is no "{ONLINE_OUTPUT_NAME}" output: ask for '
                           f'"{OUTPUT_NAME}" only, or retry once the registry has an online snapshot',
                           field="outputs")
        X, raw = self._input(request)
        check_deadline(context)
        result = self._scorer.dispatch(X)
        if type(result) is not tuple:  # queued for the micro-batcher (XGBoost)
            result = await result
        scores, version, online_scores, online_version = result
        shadow = self._scorer.shadow
        if shadow is not None:
            shadow.observe_many(X, scores, version, (request.id,) * len(scores) if request.id else ())
        values = {OUTPUT_NAME: scores}
        if online_scores is not None:
            values[ONLINE_OUTPUT_NAME] = online_scores
        elif ONLINE_OUTPUT_NAME in wanted:  # the online model was refused or failed for this batch
            raise NotReady(f'the online model did not score this request: no "{ONLINE_OUTPUT_NAME}"; retry',
                           field="outputs")
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
        if online_scores is not None:
            response.parameters[ONLINE_VERSION_PARAMETER].string_param = online_version
        for name in dict.fromkeys(wanted) or values:
            out = response.outputs.add(name=name, datatype="FP64", shape=[len(scores)])
            if raw:
                response.raw_output_contents.append(np.asarray(values[name], dtype="<f8").tobytes())
            else:
                out.contents.fp64_contents.extend(values[name].tolist())
        return response

    def _model(self, name: str, version: str, name_field: str, version_field: str):
        if not name:
            raise InvalidArgument(f"{name_field} is required: expected one of "
                                  f"{', '.join(self._scorer.served_names)}", field=name_field)
        model = self._scorer.resolve(name, field=name_field)
        if version and version != model.version:
            raise ModelNotFound(f'{version_field} "{version[:100]}" is not served: {name} is version '
                                f'{model.version} (leave {version_field} empty for the served one)', field=version_field)
        return model

    def _input(self, request) -> tuple[np.ndarray, bool]:
        n = len(self._scorer.feature_names)
        if len(request.inputs) != 1:
            raise InvalidArgument(f"inputs must hold exactly one tensor (\"{INPUT_NAME}\", shape [N, {n}]), "
                                  f"got {len(request.inputs)}", field="inputs")
        tensor = request.inputs[0]
        dtype = _DTYPES.get(tensor.datatype)
        if dtype is None:
            raise InvalidArgument(f'inputs[0].datatype must be FP32 or FP64, got "{tensor.datatype[:20]}"',
                                  field="inputs[0].datatype")
        shape = list(tensor.shape)
        if shape == [n]:
            shape = [1, n]
        if len(shape) != 2 or shape[1] != n or shape[0] < 1:
            raise InvalidArgument(f"inputs[0].shape must be [N, {n}] with N >= 1 (or [{n}]), got {list(tensor.shape)}",
                                  field="inputs[0].shape")
        count = shape[0] * n
        raw = len(request.raw_input_contents) > 0
        if raw:
            if len(request.raw_input_contents) != 1:
                raise InvalidArgument(f"raw_input_contents must hold one entry per input (1), got "
                                      f"{len(request.raw_input_contents)}", field="raw_input_contents")
            data = request.raw_input_contents[0]
            if len(data) != count * dtype.itemsize:
                raise InvalidArgument(f"raw_input_contents[0] must hold {count * dtype.itemsize} bytes "
                                      f"({tensor.datatype} x {shape}), got {len(data)}", field="raw_input_contents[0]")
            X = np.frombuffer(data, dtype=dtype)
        else:
            values = tensor.contents.fp64_contents if dtype.itemsize == 8 else tensor.contents.fp32_contents
            kind = "fp64_contents" if dtype.itemsize == 8 else "fp32_contents"
            if len(values) != count:
                raise InvalidArgument(f"inputs[0].contents.{kind} must hold {count} values for shape {shape}, "
                                      f"got {len(values)}", field=f"inputs[0].contents.{kind}")
            X = np.array(values, dtype=np.float64)
        return self._scorer.check_matrix(X.reshape(shape[0], n), field="inputs[0]"), raw
