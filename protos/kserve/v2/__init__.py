"""KServe v2 ``inference.GRPCInferenceService``: ``grpc_predict_v2.proto`` and its generated code."""
