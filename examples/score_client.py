"""Score feature vectors with the streamscore predictor over gRPC, with the generated Python stubs.

Start a predictor first (``streamscore serve --registry ./registry --port 50051``), then:

    python examples/score_client.py --target 127.0.0.1:50051

``Score`` answers one request; ``ScoreStream`` keeps one stream open and answers each message in
order (a bad message gets an ``error`` and does not end the stream). Values go in the order of
the feature spec, or by name.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc
from streaming.features.spec import DEFAULT_SPEC


def request(transaction_id: str, amount: float) -> scorer_pb2.ScoreRequest:
    """A request with named features: the amount (the first feature), every other feature 0."""
    values = {name: 0.0 for name in DEFAULT_SPEC.names}
    values[DEFAULT_SPEC.names[0]] = amount
    return scorer_pb2.ScoreRequest(transaction_id=transaction_id, features=scorer_pb2.FeatureVector(
        names=list(values), values=list(values.values())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="predictor HOST:PORT")
    parser.add_argument("--count", type=int, default=3, help="messages to send over ScoreStream (default 3)")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        one = stub.Score(request("tx-1", 42.0), timeout=10)
        print(f"Score: {one.transaction_id} -> {one.score:.4f} (model {one.model_version})")
        replies = stub.ScoreStream(iter([request(f"tx-s{i}", 10.0 * i) for i in range(args.count)]), timeout=10)
        for reply in replies:
            outcome = f"error {reply.error.message}" if reply.HasField("error") else f"{reply.score:.4f}"
            print(f"ScoreStream: {reply.transaction_id} -> {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
