"""Speed of the strict event parser (``streaming.io.events.parse``) on JSON from different writers.

    python -m loadtest.bench_parse [--messages 20000] [--repeat 7]

Three encodings of the same simulated transactions:

* ``compact``   — what our producers write (``orjson.dumps``): strict_json's fast path 1;
* ``spaced``    — Python's ``json.dumps`` (``", "`` / ``": "`` separators);
* ``reordered`` — ``json.dumps`` with the keys in reverse order and ``sort_keys``-free spacing.

Each is parsed with the duplicate-key proof by count (fast path 2, the default) and without it
(``count=False``: the previous behaviour, every non-canonical message parsed again by ``json``
with a duplicate-refusing hook), in the same run, interleaved per repeat. Prints the median µs per
message (CPU time, ``time.process_time``: on a shared box less noisy than wall time) and msg/s
over ``--repeat`` runs, old and new alternating first, the ratio old/new, and the load average.
``compact`` takes the same path both ways: its ratio shows the noise. Numbers only: no thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from unittest import mock

import orjson

from streaming.io import strict_json
from streaming.io.encoding import encode
from streaming.io.events import Transaction, parse
from streaming.io.datasets import iter_transactions
from streaming.sim.simulator import simulate


def corpora(n: int) -> dict[str, list[tuple[bytes, dict]]]:
    frame = simulate(customers=500, terminals=1000, days=max(3, n // 900 + 2), seed=7).head(n)
    txs = list(iter_transactions(frame))
    compact = [encode(t) for t in txs]
    spaced = [(json.dumps(orjson.loads(d)).encode(), a) for d, a in compact]
    reordered = [(json.dumps(dict(reversed(list(orjson.loads(d).items()))), separators=(", ", ":")).encode(), a)
                 for d, a in compact]
    return {"compact": compact, "spaced": spaced, "reordered": reordered}


def time_json(messages: list[tuple[bytes, dict]], count: bool) -> float:
    """Seconds for ``strict_json.loads`` (the JSON layer alone) over all ``messages``."""
    loads = strict_json.loads
    start = time.process_time()
    for data, _ in messages:
        loads(data, count=count)
    return time.process_time() - start


def time_parse(messages: list[tuple[bytes, dict]], count: bool) -> float:
    """Seconds for the whole event parser (``parse``: JSON and the contract) over all ``messages``."""
    original = strict_json.loads
    with mock.patch.object(strict_json, "loads", lambda data, **kw: original(data, count=count, **kw)):
        assert all(isinstance(parse(d, a), Transaction) for d, a in messages[:50])
        start = time.process_time()
        for data, attrs in messages:
            parse(data, attrs)
        return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_parse", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    data = corpora(args.messages)
    n = len(data["compact"])
    print(f"{n} messages per corpus, {args.repeat} repeats (median), load average {os.getloadavg()[0]:.2f}")
    layers = {"strict_json.loads": time_json, "parse (whole event)": time_parse}
    times = {(layer, name, c): [] for layer in layers for name in data for c in (False, True)}
    for name, messages in data.items():  # warm-up
        time_json(messages[:500], True), time_parse(messages[:500], True)
    for r in range(args.repeat):
        for layer, fn in layers.items():
            for name, messages in data.items():
                for count in ((False, True) if r % 2 == 0 else (True, False)):  # alternate the order
                    times[(layer, name, count)].append(fn(messages, count))
    print(f"{'layer':<20} {'corpus':<10} {'old us/msg':>10} {'old msg/s':>10} {'new us/msg':>10} {'new msg/s':>10} "
          f"{'speed-up':>8}")
    for layer in layers:
        for name in data:
            old = statistics.median(times[(layer, name, False)]) / n
            new = statistics.median(times[(layer, name, True)]) / n
            print(f"{layer:<20} {name:<10} {old * 1e6:10.2f} {1 / old:10,.0f} {new * 1e6:10.2f} {1 / new:10,.0f} "
                  f"{old / new:7.2f}x")
    print("CPU time per message; old = count=False (non-canonical JSON re-parsed by json with a duplicate-refusing hook); "
          "new = the colon count (default)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
