"""Benchmark the producer against a local Pub/Sub emulator.

    python -m loadtest.bench_publish [--messages 20000] [--repeat 3] [--labels] [--seed 0]
                                     [--ordering-key customer|none|both]

Starts an emulator, then per run: fresh topics and check subscriptions, publishes
``--messages`` messages with the CLI's client settings (``make_publisher``) as fast as
possible (``--rate`` 1e12, so no pacing), every publish confirmed; then pulls everything
back and checks the count. ``--ordering-key`` publishes with per-card ordering keys (the
CLI's default), without, or both in alternating runs. Data comes from the project's simulator. ``--labels`` makes
half the messages transactions and half their labels; by default all are transactions.
Prints one row per run and the median publish rate. Numbers only: no pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import pandas as pd

from streaming.io.publish import TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import PubSubEmulator, pull_all
from streaming.sim.simulator import simulate

ROW = "{:>4} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10}  {}"


def transactions(n: int, seed: int) -> pd.DataFrame:
    """At least ``n`` simulated transactions (the first ``n``, in time order)."""
    days = max(2, n // 1_800 + 1)  # ~2,000 transactions a day at 1,000 customers
    while True:
        df = simulate(customers=1_000, terminals=2_000, days=days, seed=seed)
        if len(df) >= n:
            return df.iloc[:n]
        days *= 2


def bench_once(emulator: PubSubEmulator, df: pd.DataFrame, labels: bool, expected: int, ordered: bool) -> dict:
    tag = uuid.uuid4().hex[:8]
    tx_topic, lb_topic = f"bench-tx-{tag}", f"bench-lb-{tag}"
    subs = {f"bench-tx-check-{tag}": tx_topic, f"bench-lb-check-{tag}": lb_topic}
    _, sub_paths = emulator.ensure([tx_topic, lb_topic], subs)
    paths = TopicPaths(emulator.topic_path(tx_topic), emulator.topic_path(lb_topic) if labels else None)
    publisher = make_publisher(emulator.host_port, ordering=ordered)
    try:
        report = publish_dataset(df, publisher, paths, rate=1e12, labels=labels, order_by_customer=ordered)
    finally:
        publisher.stop()
        publisher.transport.close()
    subscriber = emulator.subscriber_client()
    pulled, start = 0, time.monotonic()
    try:
        wanted = [len(df), len(df) if labels else 0]
        for path, n in zip(sub_paths, wanted):
            pulled += len(pull_all(subscriber, path, n, timeout=max(30.0, n / 1_000)))
    finally:
        subscriber.close()
    return {"published": report.messages, "elapsed": report.elapsed, "rate": report.rate,
            "retries": report.retries, "pulled": pulled, "pull_s": time.monotonic() - start,
            "ok": report.messages == expected == pulled, "keys": "customer" if ordered else "none"}


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--labels", action="store_true", help="half transactions, half labels")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--ordering-key", choices=("customer", "none", "both"), default="both",
                        help="publish with per-card ordering keys, without, or both (default both)")
    args = parser.parse_args(argv)
    if args.messages < 2 or args.repeat < 1:
        parser.error("--messages must be >= 2 and --repeat >= 1")

    n_tx = args.messages // 2 if args.labels else args.messages
    expected = 2 * n_tx if args.labels else n_tx
    df = transactions(n_tx, args.seed)
    print(f"publishing {expected:,} messages ({'transactions + labels' if args.labels else 'transactions'}) "
          f"x {args.repeat} to a local emulator; data {df.memory_usage(deep=True).sum() / 2**20:.1f} MiB")
    rows = []
    with PubSubEmulator() as emulator:
        print(f"emulator at {emulator.host_port}")
        print(ROW.format("run", "keys", "published", "seconds", "msg/s", "retries", "pulled", "pull s", "check"))
        modes = {"customer": [True], "none": [False], "both": [False, True]}[args.ordering_key]
        runs = [(i, ordered) for i in range(1, args.repeat + 1) for ordered in (modes if i % 2 else modes[::-1])]
        for i, ordered in runs:  # alternating the order of the variants
            row = bench_once(emulator, df, args.labels, expected, ordered)
            rows.append(row)
            print(ROW.format(i, row["keys"], f"{row['published']:,}", f"{row['elapsed']:.2f}", f"{row['rate']:,.0f}",
                             row["retries"], f"{row['pulled']:,}", f"{row['pull_s']:.2f}",
                             "ok" if row["ok"] else f"MISMATCH (expected {expected:,})"), flush=True)
    for keys in dict.fromkeys(r["keys"] for r in rows):
        rates = [r["rate"] for r in rows if r["keys"] == keys]
        print(f"median publish rate, ordering keys {keys}: {statistics.median(rates):,.0f} msg/s "
              f"over {len(rates)} runs of {expected:,} messages")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run())
