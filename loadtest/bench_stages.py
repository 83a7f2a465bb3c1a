"""CPU per event of each stage of the streaming job, outside any runner (for docs/capacity.md).

    python -m loadtest.bench_stages [--messages 20000] [--repeat 5] [--customers 5000 --terminals 10000]

The job's own DoFns are called directly on simulated transactions, in the job's order, with each
key's state kept as its coder's bytes and decoded / encoded around every element (what a
Streaming Engine worker does per key and bundle; here per element, the worst case):

* ``parse``      — ``ParsePubsubFn`` on the encoded message (``PubsubMessage``) → (customer_id, tx);
* ``customer``   — ``CustomerStateFn`` with its state round trip;
* ``terminal``   — ``TerminalStateFn`` (with the labelled-examples store, as when learning) + round trips;
* ``score_msg``  — building the ``scores`` message (``score_message``) from a score;
* ``pubsub_out`` — Beam's Pub/Sub write serialisation of that message (``_to_proto_str``).

The gRPC scoring call itself is measured by ``loadtest.bench_predictor`` (client and server CPU
per call). Prints the median CPU µs per event of each stage over ``--repeat`` runs (``time.process_time``)
and the load average. Numbers only: no thresholds. Runner overhead (Beam's SDK harness, Streaming
Engine shuffles between stages) is NOT in these figures; docs/capacity.md adds it as an assumption.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from apache_beam.coders import PickleCoder
from apache_beam.io.gcp.pubsub import PubsubMessage

from streaming.io.datasets import iter_transactions
from streaming.io.events import SCHEMA_TRANSACTION
from streaming.io.encoding import encode
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import CustomerStateFn, TerminalStateFn
from streaming.job.pipeline import ParsePubsubFn
from streaming.job.scoring import Scored, score_message
from streaming.sim.simulator import simulate


class CodedState:
    """One key's ReadModifyWrite state, held as the coder's bytes (decoded on read, encoded on write)."""

    coder = PickleCoder()

    def __init__(self, store: dict, key: str):
        self.store, self.key = store, key

    def read(self):
        raw = self.store.get(self.key)
        return None if raw is None else self.coder.decode(raw)

    def write(self, value) -> None:
        self.store[self.key] = self.coder.encode(value)


def run_once(messages: list[PubsubMessage]) -> dict[str, float]:
    parse = ParsePubsubFn(SCHEMA_TRANSACTION, keyed=True)
    customer = CustomerStateFn(DEFAULT_SPEC, 7.0)
    terminal = TerminalStateFn(DEFAULT_SPEC, 7.0, keep_examples_days=8.0)
    customers, terminals, scored = {}, {}, {}
    spent = dict.fromkeys(("parse", "customer", "terminal", "score_msg", "pubsub_out"), 0.0)
    clock: Callable[[], float] = time.process_time
    for message in messages:
        t0 = clock()
        (keyed,) = parse.process(message)
        t1 = clock()
        (pair,) = customer.process(keyed, state=CodedState(customers, keyed[0]))
        t2 = clock()
        (featured,) = terminal.process(pair, state=CodedState(terminals, pair[0]), scored=CodedState(scored, pair[0]))
        t3 = clock()
        out = score_message(featured, Scored(featured.transaction.transaction_id, 0.01, "v1"), DEFAULT_SPEC)
        t4 = clock()
        out._to_proto_str(for_publish=True)
        t5 = clock()
        for name, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            spent[name] += dt
    return {name: 1e6 * total / len(messages) for name, total in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--terminals", type=int, default=10_000)
    args = parser.parse_args(argv)
    df = simulate(customers=args.customers, terminals=args.terminals, days=60, seed=0).head(args.messages)
    messages = [PubsubMessage(*encode(tx)) for tx in iter_transactions(df)]
    runs = [run_once(messages) for _ in range(args.repeat)]
    print(f"{len(messages):,} transactions, {args.repeat} runs; CPU us per event (median [min-max]); "
          f"load average {open('/proc/loadavg').read().split()[0]}")
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"  {name:<11} {statistics.median(values):8.1f}  [{min(values):.1f}-{max(values):.1f}]")
    totals = [sum(run.values()) for run in runs]
    print(f"  {'total':<11} {statistics.median(totals):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
