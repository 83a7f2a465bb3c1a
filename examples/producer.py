"""Publish card transactions to streamscore's ``transactions`` topic, as a producing service would.

Only the Google Pub/Sub client is needed; the message is the event contract
(docs/architecture.md#event-contract): UTF-8 JSON data, and the attributes ``event_time``
(RFC 3339) and ``schema``. The card id is the ordering key, so a card's transactions reach
the job in order (its windowed features depend on it).

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python examples/producer.py --project local-project --count 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys

from google.cloud import pubsub_v1

SCHEMA = "streamscore.transaction.v1"


def make_transaction(i: int, rng: random.Random, at: dt.datetime) -> dict:
    """One transaction as the contract wants it (ids non-empty strings, amount a finite number >= 0)."""
    return {"transaction_id": f"example-{i}", "event_time": at.isoformat().replace("+00:00", "Z"),
            "customer_id": f"card-{rng.randrange(5)}", "terminal_id": f"terminal-{rng.randrange(10)}",
            "amount": round(rng.uniform(1, 200), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="Google Cloud project (local-project for the emulator)")
    parser.add_argument("--topic", default="transactions", help="topic name (default transactions)")
    parser.add_argument("--count", type=int, default=10, help="transactions to publish (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # PublisherClient talks to the emulator when PUBSUB_EMULATOR_HOST is set.
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
    topic = publisher.topic_path(args.project, args.topic)
    rng, start = random.Random(args.seed), dt.datetime(2018, 4, 1, tzinfo=dt.timezone.utc)
    futures = []
    for i in range(args.count):
        tx = make_transaction(i, rng, start + dt.timedelta(minutes=i))
        futures.append(publisher.publish(topic, json.dumps(tx).encode(), ordering_key=tx["customer_id"],
                                         event_time=tx["event_time"], schema=SCHEMA))
    ids = [f.result(timeout=60) for f in futures]  # raises if a message was not accepted
    print(f"published {len(ids)} transactions to {topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
