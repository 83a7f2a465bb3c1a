"""``streamscore score``: score raw transactions against a running predictor, print one JSON line each.

    streamscore score --target 127.0.0.1:50051 --transaction '{"transaction_id": "t1",
        "event_time": "2018-09-30T12:00:00Z", "customer_id": "42", "terminal_id": "7", "amount": 25.0}'
    streamscore score --target HOST:PORT --input transactions.jsonl   # one JSON object a line; - for stdin

Each transaction is validated by the project's event parser first (a bad one is reported with the
field, without a call), then sent as ``Score(transaction=...)``: the predictor (started with
``--online-store``) reads the card's and terminal's state and computes the features. Output per
transaction: its score, model version, the features used, the state's age, whether the card and
terminal were known, and the client's round-trip latency. Exit status 1 if any transaction failed.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from streaming.io.events import EventError, SCHEMA_TRANSACTION, parse
from streaming.io.encoding import to_proto


def _lines(args) -> list[bytes]:
    if args.transaction is not None:
        return [args.transaction.encode()]
    stream = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    with stream:
        return [line for line in stream.read().splitlines() if line.strip()]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamscore score", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of `streamscore serve --online-store ...`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--transaction", help="one transaction as JSON (the event contract's fields)")
    source.add_argument("--input", help="a file of JSON transactions, one per line ('-': stdin)")
    parser.add_argument("--auth-token", default=None, help="bearer token, if the predictor requires one")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per call (default 5)")
    parser.add_argument("--model-name", default="", help="model to use (default: production)")
    args = parser.parse_args(argv)

    import grpc

    from models.predictor.raw_input import spec_for_names
    from models.predictor.core import default_feature_names
    from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc

    names = spec_for_names(default_feature_names()).names
    metadata = (("authorization", f"Bearer {args.auth_token}"),) if args.auth_token else None
    failed = 0
    with grpc.insecure_channel(args.target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        for n, line in enumerate(_lines(args), 1):
            event = parse(line, None, expect=SCHEMA_TRANSACTION, unknown_fields="reject")
            if isinstance(event, EventError):
                failed += 1
                print(orjson.dumps({"line": n, "error": "INVALID_ARGUMENT", "field": event.field,
                                    "message": event.message}).decode(), flush=True)
                continue
            request = scorer_pb2.ScoreRequest(transaction_id=event.transaction_id, model_name=args.model_name,
                                              transaction=to_proto(event))
            start = time.perf_counter()
            try:
                r = stub.Score(request, timeout=args.deadline, metadata=metadata)
            except grpc.RpcError as exc:
                failed += 1
                print(orjson.dumps({"line": n, "transaction_id": event.transaction_id, "error": exc.code().name,
                                    "message": exc.details()}).decode(), flush=True)
                continue
            out = {"transaction_id": r.transaction_id, "score": r.score, "model_version": r.model_version,
                   "client_latency_ms": round((time.perf_counter() - start) * 1000, 3)}
            if r.HasField("online_score"):
                out["online_score"], out["online_model_version"] = r.online_score, r.online_model_version
            out["customer_known"], out["terminal_known"] = r.customer_known, r.terminal_known
            out["state_age_ms"] = r.state_age_ms if r.HasField("state_age_ms") else None
            out["features"] = dict(zip(names, r.features.values))
            print(orjson.dumps(out).decode(), flush=True)
    return 1 if failed else 0
