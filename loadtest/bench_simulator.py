"""Benchmark the transaction simulator at the reference size, against the reference run.

    python -m loadtest.bench_simulator [--repeat 3] [--seed 0] [--fixed-seed]

Times ``streaming.sim.simulator.simulate`` at 5,000 customers, 10,000 terminals, 183 days,
r = 5 (seed, seed + 1, ... unless ``--fixed-seed``), then makes one extra traced run for
the tracemalloc peak, and prints each run's totals as ratios to the reference run
(1,754,155 transactions; 973 / 9,077 / 4,631 frauds in scenarios 1 / 2 / 3). Reports
numbers only: no pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np

from streaming.sim.simulator import simulate

REFERENCE = dict(customers=5_000, terminals=10_000, days=183, radius=5.0)
REFERENCE_TX = 1_754_155
REFERENCE_SCENARIOS = np.array([973, 9_077, 4_631])


def _maxrss_mib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


ROW = "{:>4} {:>5} {:>7} {:>10} {:>8} {:>7}  {:<16} {:<17}"


def _row(run, seed, wall, tx, fraud_rate, shares, share_ratios=None) -> str:
    """One table row; ``shares`` of frauds by scenario, ratios to the reference's."""
    return ROW.format(
        run,
        seed,
        wall,
        f"{tx:,}",
        f"{tx / REFERENCE_TX:.3f}",
        f"{100 * fraud_rate:.3f}",
        "/".join(f"{100 * s:.1f}" for s in shares),
        "" if share_ratios is None else "/".join(f"{r:.3f}" for r in share_ratios),
    )


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_simulator", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run (default 0)")
    parser.add_argument("--fixed-seed", action="store_true", help="use --seed for every run")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be an integer >= 1, got {args.repeat}")

    reference_shares = REFERENCE_SCENARIOS / REFERENCE_SCENARIOS.sum()
    arguments = ", ".join(f"{k}={v}" for k, v in REFERENCE.items())
    print(f"simulate({arguments}) on {os.cpu_count()} CPUs, numpy {np.__version__}")
    rss_after_imports = _maxrss_mib()
    header = ROW.format("run", "seed", "wall s", "tx", "tx/ref", "fraud %", "shares % 1/2/3", "share/ref 1/2/3")
    print(header)
    print("-" * len(header))
    walls = []
    for i in range(args.repeat):
        seed = args.seed if args.fixed_seed else args.seed + i
        t0 = time.perf_counter()
        df = simulate(seed=seed, **REFERENCE)
        walls.append(time.perf_counter() - t0)
        counts = np.bincount(df.TX_FRAUD_SCENARIO.to_numpy(), minlength=4)[1:]
        shares = counts / max(counts.sum(), 1)
        print(_row(i + 1, seed, f"{walls[-1]:.2f}", len(df), df.TX_FRAUD.mean(), shares, shares / reference_shares))
        del df
    print(_row("ref", "", "", REFERENCE_TX, REFERENCE_SCENARIOS.sum() / REFERENCE_TX, reference_shares))
    rss_after_runs = _maxrss_mib()

    tracemalloc.start()
    t0 = time.perf_counter()
    simulate(seed=args.seed, **REFERENCE)
    traced_wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print()
    print(f"median wall time  {statistics.median(walls):7.2f} s   (min {min(walls):.2f}, max {max(walls):.2f})")
    print(f"tracemalloc peak  {peak / 2**20:7.1f} MiB (one extra traced run, {traced_wall:.2f} s)")
    print(
        f"process max RSS   {_maxrss_mib():7.1f} MiB "
        f"(after imports {rss_after_imports:.1f}, after the timed runs {rss_after_runs:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run())
