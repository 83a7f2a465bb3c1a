"""Replay simulated traffic through a local stack and print what a user would feel.

Starts what ``streamscore up`` starts (Pub/Sub emulator, predictor, streaming job; a model is
trained first when the registry has none), replays a small simulated dataset at a fixed rate,
open loop, and prints the end-to-end latency and the accounting from the JSON report:

    python examples/replay.py --transactions 200 --rate 20 --workdir /tmp/replay

The same as ``streamscore loadtest replay --input tx.parquet --local-stack --rate 20 --json
report.json``; see docs/load-testing.md for step load, real Pub/Sub and shadow comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from loadtest.replay import run as replay
from streaming.io.datasets import write_table
from streaming.sim.simulator import simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=200, help="transactions to replay (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="transactions per second (default 20)")
    parser.add_argument("--registry", type=Path, default=Path("registry"), help="model registry (default ./registry)")
    parser.add_argument("--workdir", type=Path, help="folder for the data, the report and the logs")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streamscore-replay-"))
    workdir.mkdir(parents=True, exist_ok=True)

    data = write_table(simulate(customers=50, terminals=100, days=30, seed=7), workdir / "tx.parquet")
    report_path = workdir / "report.json"
    code = replay(["--input", str(data), "--local-stack", "--registry", str(args.registry),
                   "--workdir", str(workdir / "logs"), "--rate", str(args.rate),
                   "--limit", str(args.transactions), "--json", str(report_path), "--no-progress"])
    report = json.loads(report_path.read_text())
    acc, e2e = report["accounting"], report["latency_ms"]["e2e"]
    print(f"replayed {acc['sent']} transactions at {args.rate:g} tx/s: {acc['scored']} scored,"
          f" {acc['dead_lettered']} dead-lettered, {acc['lost']} lost;"
          f" end-to-end p50 {e2e['p50']} ms, p99 {e2e['p99']} ms; report {report_path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
