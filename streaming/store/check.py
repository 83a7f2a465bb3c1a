"""The demo's raw-transaction check: transactions the stream scored, scored again from the raw transaction only.

:func:`raw_transaction_check` sends each sampled transaction (just its five fields) to the
predictor as ``Score(transaction=...)`` and compares the features and score with what the stream
published for it. They agree unless events the stream processed after it fell into its windows
(a same-time twin, an out-of-order arrival, a fraud label of an older terminal transaction):
the store holds each key's latest state, not its history.
"""

from __future__ import annotations

import time

import numpy as np

from streaming.io.events import Transaction
from streaming.io.encoding import to_proto
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec


def _same(a: list[float], b: list[float], spec: FeatureSpec) -> bool:
    for name, x, y in zip(spec.names, a, b):
        if ("AVG" in name and not abs(x - y) <= 1e-9 * max(abs(y), 1.0)) or ("AVG" not in name and x != y):
            return False
    return len(a) == len(b)


def raw_transaction_check(target: str, transactions: list[Transaction], streamed: dict[str, dict],
                          spec: FeatureSpec = DEFAULT_SPEC, timeout: float = 5.0) -> dict:
    """``streamed``: transaction id -> the stream's score message body (``score``, ``features``)."""
    import grpc

    from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc

    latencies, agree_features, agree_score, failed, errors = [], 0, 0, 0, {}
    with grpc.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        if transactions:  # connect and warm up outside the timed calls
            try:
                stub.Score(scorer_pb2.ScoreRequest(transaction=to_proto(transactions[0])), timeout=timeout)
            except grpc.RpcError:
                pass  # counted below
        for tx in transactions:
            body = streamed[tx.transaction_id]
            request = scorer_pb2.ScoreRequest(transaction_id=tx.transaction_id, transaction=to_proto(tx))
            start = time.perf_counter()
            try:
                response = stub.Score(request, timeout=timeout)
            except grpc.RpcError as exc:
                failed += 1
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            want = [float(body["features"][name]) for name in spec.names]
            if _same(list(response.features.values), want, spec):
                agree_features += 1
            if abs(response.score - float(body["score"])) <= 1e-9:
                agree_score += 1
    lat = np.array(latencies) if latencies else None
    return {
        "checked": len(transactions), "features_agree": agree_features, "score_agrees": agree_score,
        "failed": failed, "errors": errors,
        "client_latency_ms": None if lat is None else {
            "p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
    }
