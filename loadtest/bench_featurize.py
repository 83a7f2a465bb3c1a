"""Benchmark: featurize the full reference transactions file, ours against the handbook's pandas code.

    python -m loadtest.bench_featurize [--repeat 3] [--input transactions.parquet]

Variants, each run file to file (read the transactions Parquet, compute the 15 features,
write a features Parquet), every repeat in a fresh subprocess so each has its own RSS peak:

* ``beam``   — our batch Beam job, :func:`streaming.features.featurize.run` (FnApiRunner);
* ``frame``  — :func:`streaming.features.batch.featurize_frame` alone (same per-key numpy code);
* ``peer``   — the Fraud Detection Handbook's reference implementation (chapter 3,
  "Baseline feature transformation"), reproduced below: ``is_weekend``/``is_night`` applied
  per row, ``get_customer_spending_behaviour_features`` (per-customer ``groupby().apply``,
  ``rolling('{n}D').sum()/count()`` on a TX_DATETIME index) and
  ``get_count_risk_rolling_window`` (per-terminal rolling windows of ``delay + n`` days minus
  the ``delay``-day window). Adapted only where pandas 3 requires it: ``'D'`` for the
  deprecated ``'d'`` alias, and the grouping column selected explicitly because pandas 3
  no longer passes it to ``apply``.

Prints, per variant, the median and min of the timed call (read + compute + write), the
median whole-process wall time (interpreter start and imports included), the peak RSS, the
ratio to the peer, and how many rows of each output differ from the handbook's published
features (``features_2018-04_to_2018-08.parquet``; ours differ only on same-second twins).
No pass/fail thresholds: timing belongs here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("beam", "frame", "peer")
FEATURES_FILE = "features_2018-04_to_2018-08.parquet"


# ---------------------------------------------------------------------------------------
# the peer: the handbook's pandas implementation
# ---------------------------------------------------------------------------------------

def is_weekend(tx_datetime):
    weekday = tx_datetime.weekday()  # 0 is Monday, 6 is Sunday
    return int(weekday >= 5)


def is_night(tx_datetime):
    return int(tx_datetime.hour <= 6)


def get_customer_spending_behaviour_features(customer_transactions, windows_size_in_days=(1, 7, 30)):
    customer_transactions = customer_transactions.sort_values("TX_DATETIME")
    customer_transactions.index = customer_transactions.TX_DATETIME
    for window_size in windows_size_in_days:
        SUM_AMOUNT_TX_WINDOW = customer_transactions["TX_AMOUNT"].rolling(str(window_size) + "D").sum()
        NB_TX_WINDOW = customer_transactions["TX_AMOUNT"].rolling(str(window_size) + "D").count()
        AVG_AMOUNT_TX_WINDOW = SUM_AMOUNT_TX_WINDOW / NB_TX_WINDOW
        customer_transactions["CUSTOMER_ID_NB_TX_" + str(window_size) + "DAY_WINDOW"] = list(NB_TX_WINDOW)
        customer_transactions["CUSTOMER_ID_AVG_AMOUNT_" + str(window_size) + "DAY_WINDOW"] = list(AVG_AMOUNT_TX_WINDOW)
    customer_transactions.index = customer_transactions.TRANSACTION_ID
    return customer_transactions


def get_count_risk_rolling_window(terminal_transactions, delay_period=7, windows_size_in_days=(1, 7, 30),
                                  feature="TERMINAL_ID"):
    terminal_transactions = terminal_transactions.sort_values("TX_DATETIME")
    terminal_transactions.index = terminal_transactions.TX_DATETIME
    NB_FRAUD_DELAY = terminal_transactions["TX_FRAUD"].rolling(str(delay_period) + "D").sum()
    NB_TX_DELAY = terminal_transactions["TX_FRAUD"].rolling(str(delay_period) + "D").count()
    for window_size in windows_size_in_days:
        NB_FRAUD_DELAY_WINDOW = terminal_transactions["TX_FRAUD"].rolling(str(delay_period + window_size) + "D").sum()
        NB_TX_DELAY_WINDOW = terminal_transactions["TX_FRAUD"].rolling(str(delay_period + window_size) + "D").count()
        NB_FRAUD_WINDOW = NB_FRAUD_DELAY_WINDOW - NB_FRAUD_DELAY
        NB_TX_WINDOW = NB_TX_DELAY_WINDOW - NB_TX_DELAY
        RISK_WINDOW = NB_FRAUD_WINDOW / NB_TX_WINDOW
        terminal_transactions[feature + "_NB_TX_" + str(window_size) + "DAY_WINDOW"] = list(NB_TX_WINDOW)
        terminal_transactions[feature + "_RISK_" + str(window_size) + "DAY_WINDOW"] = list(RISK_WINDOW)
    terminal_transactions.index = terminal_transactions.TRANSACTION_ID
    terminal_transactions.fillna(0, inplace=True)  # undefined risks (empty window) become 0
    return terminal_transactions


def handbook_features(transactions_df):
    """The handbook's sequence of transformations over a whole transactions frame."""
    transactions_df = transactions_df.copy()
    transactions_df["TX_DURING_WEEKEND"] = transactions_df.TX_DATETIME.apply(is_weekend)
    transactions_df["TX_DURING_NIGHT"] = transactions_df.TX_DATETIME.apply(is_night)
    columns = list(transactions_df.columns)
    transactions_df = transactions_df.groupby("CUSTOMER_ID", group_keys=False)[columns].apply(
        lambda x: get_customer_spending_behaviour_features(x, windows_size_in_days=[1, 7, 30]))
    transactions_df = transactions_df.sort_values("TX_DATETIME").reset_index(drop=True)
    columns = list(transactions_df.columns)
    transactions_df = transactions_df.groupby("TERMINAL_ID", group_keys=False)[columns].apply(
        lambda x: get_count_risk_rolling_window(x, delay_period=7, windows_size_in_days=[1, 7, 30],
                                                feature="TERMINAL_ID"))
    return transactions_df.sort_values("TX_DATETIME").reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# one variant, in this process
# ---------------------------------------------------------------------------------------

def _run_variant(variant: str, src: Path, out: Path) -> float:
    if variant == "beam":
        from streaming.features.featurize import run

        t0 = time.perf_counter()
        run(["--input", str(src), "--out", str(out)])
        return time.perf_counter() - t0
    import pandas as pd

    from streaming.io.datasets import read_table
    from streaming.features.batch import featurize_frame

    t0 = time.perf_counter()
    if variant == "frame":
        featurize_frame(read_table(src)).to_parquet(out, index=False, compression="zstd")
    else:
        handbook_features(pd.read_parquet(src)).to_parquet(out, index=False, compression="zstd")
    return time.perf_counter() - t0


def _child(variant: str, src: Path, out: Path) -> None:
    seconds = _run_variant(variant, src, out)
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_mb": peak_kb / 1024}))


# ---------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------

def _differing_rows(out: Path, reference: Path) -> int | None:
    import numpy as np
    import pandas as pd

    from streaming.features.spec import DEFAULT_SPEC

    if not reference.is_file():
        return None
    ref = pd.read_parquet(reference)
    got = pd.read_parquet(out, columns=["TRANSACTION_ID", *DEFAULT_SPEC.names])
    joined = ref.merge(got, on="TRANSACTION_ID", how="left", suffixes=("_ref", ""))
    bad = np.zeros(len(joined), dtype=bool)
    for name in DEFAULT_SPEC.names:
        a, b = joined[name].to_numpy(dtype=float), joined[f"{name}_ref"].to_numpy(dtype=float)
        bad |= ~(np.abs(a - b) <= 1e-9 * np.maximum(np.abs(b), 1.0))
    return int(bad.sum())


def main(argv: list[str] | None = None) -> int:
    from streaming.io.datasets import reference_dir

    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_featurize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (default %(default)s)")
    parser.add_argument("--input", type=Path, default=None, help="transactions file (default: the reference file)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of %(default)s")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    src = args.input or reference_dir() / "transactions.parquet"
    if args.child:
        _child(args.child, src, args.out)
        return 0
    if not src.is_file():
        raise SystemExit(f"bench_featurize: error: input {str(src)!r} not found (pass --input or set STREAMSCORE_REFERENCE_DIR)")
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or args.repeat < 1:
        parser.error(f"--variants must be a subset of {','.join(VARIANTS)} and --repeat >= 1")

    workdir = Path(tempfile.mkdtemp(prefix="bench_featurize."))
    results: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for r in range(args.repeat):
            for variant in variants:  # interleaved, so drift in the machine hits every variant alike
                out = workdir / f"{variant}.parquet"
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "loadtest.bench_featurize", "--child", variant,
                                       "--input", str(src), "--out", str(out)],
                                      capture_output=True, text=True, check=False)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"bench_featurize: {variant} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["process_seconds"] = wall
                results[variant].append(row)
                print(f"  run {r + 1}/{args.repeat} {variant:5s} {row['seconds']:7.2f} s  peak {row['peak_mb']:7.0f} MB",
                      file=sys.stderr)
        differing = {v: _differing_rows(workdir / f"{v}.parquet", src.parent / FEATURES_FILE) for v in variants}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    peer = statistics.median(r["seconds"] for r in results["peer"]) if "peer" in results else None
    print(f"featurize {src} ({args.repeat} run(s) per variant, each in a fresh process)")
    print(f"{'variant':8s} {'median s':>9s} {'min s':>7s} {'process s':>10s} {'peak RSS MB':>12s} {'ours/peer':>10s} "
          f"{'rows != reference':>18s}")
    for variant in variants:
        rows = results[variant]
        median = statistics.median(r["seconds"] for r in rows)
        ratio = f"{median / peer:10.3f}" if peer else f"{'-':>10s}"
        diff = differing[variant]
        print(f"{variant:8s} {median:9.2f} {min(r['seconds'] for r in rows):7.2f} "
              f"{statistics.median(r['process_seconds'] for r in rows):10.2f} "
              f"{max(r['peak_mb'] for r in rows):12.0f} {ratio} {'-' if diff is None else diff:>18}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
