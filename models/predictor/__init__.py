"""The low-latency gRPC predictor (``streamscore serve``).

``core`` (scoring core: model, input checks, micro-batching; no gRPC), ``backends``
(XGBoost ``inplace_predict`` or native compiled trees), ``errors`` (statuses and the one
decorator that maps them to gRPC codes), ``service`` / ``kserve`` (thin servicers for
``streamscore.v1.Scorer`` and KServe v2), ``lifecycle`` (watch the registry's production
alias: load, verify, warm up, swap), ``metrics`` (Prometheus), ``server`` (assembly and
the ``run(argv)`` entry point).
"""
