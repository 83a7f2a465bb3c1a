"""Labels per second of the online learners: one key, and N shards learning in parallel.

``python -m loadtest.bench_online`` learns ``--labels`` examples (the reference feature rows when
``../shared/data/fraud-handbook`` is there, else seeded synthetic rows with 1 % fraud) with each
learner, exactly as :class:`streaming.job.learning.LearnerFn` does (``OnlineLearner.learn_one``:
predict, then learn). For N shards the examples are split by :func:`models.online_shards.shard_of`
and N processes learn their shares at once (on Dataflow: N keys on N worker threads); the
figure is all labels over the wall time of the slowest shard, plus one :func:`combine` of
the members. Each configuration runs ``--repeat`` times; medians are printed with the load
average, and the ratio of N shards to one key. On a machine with fewer free cores than N the
shards share cores and the ratio shows it.

``--mode sequential`` (also in ``both``, the default) learns the N shares one after the other in
this process: each shard's labels/s is then measured alone on one core, undisturbed by the other
shards, and the figure is what N keys on N worker threads would reach — all labels over the
slowest share's time plus the combine — i.e. what a Dataflow job with N learner keys and at
least N free cores gets. ``parallel`` is what this machine gets with N processes at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time

import numpy as np

from models.online import LEARNERS, OnlineLearner
from models.online_shards import combine, shard_of
from streaming.features.spec import DEFAULT_SPEC


def examples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from streaming.io.datasets import reference_dir

    path = reference_dir() / "features_2018-04_to_2018-08.parquet"
    if path.exists():
        import pandas as pd

        from models.online_eval import reference_table

        table = reference_table(pd.Timestamp("2018-06-01").date()).tail(n)
        return (table[list(DEFAULT_SPEC.names)].to_numpy(np.float64), table["TX_FRAUD"].to_numpy(int),
                table["TRANSACTION_ID"].astype(str).tolist())
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(DEFAULT_SPEC.names)))
    return X, (rng.random(n) < 0.01).astype(int), [str(i) for i in range(n)]


def _learn(args) -> tuple[float, int, bytes]:
    name, X, y = args
    learner = OnlineLearner(DEFAULT_SPEC.names, LEARNERS[name])
    begin = time.perf_counter()
    for x, label in zip(X.tolist(), y.tolist()):
        learner.learn_one(x, label)
    return time.perf_counter() - begin, len(y), learner.snapshot()


def measure(name: str, X, y, ids, shards: int, pool) -> dict:
    """``pool`` None: the shares are learned one after the other here (see the module docs)."""
    parts = [[i for i, t in enumerate(ids) if shard_of(t, shards) == s] for s in range(shards)]
    begin = time.perf_counter()
    if shards > 1 and pool is not None:
        results = pool.map(_learn, [(name, X[p], y[p]) for p in parts])
    else:
        results = [_learn((name, X[p], y[p])) for p in parts]
    learned = time.perf_counter() - begin
    start = time.perf_counter()
    if shards > 1:
        combine([OnlineLearner.restore(snapshot) for _, _, snapshot in results])
    combine_s = time.perf_counter() - start
    slowest = max(s for s, _, _ in results)
    return {"labels_per_s": len(y) / (slowest + combine_s),
            "per_key_labels_per_s": statistics.median(n / s for s, n, _ in results),
            "wall_labels_per_s": len(y) / (learned + combine_s), "combine_ms": combine_s * 1000}


def run(argv: list[str] | None = None) -> int:
    """Median labels/s per learner and shard count."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_online", description=run.__doc__)
    parser.add_argument("--learners", default="binned,linear,arf-rus")
    parser.add_argument("--mode", choices=("sequential", "parallel", "both"), default="both",
                        help="shards learned one after the other (each alone on a core) or in N processes at once")
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--labels", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    X, y, ids = examples(args.labels)
    for name in LEARNERS:  # imports and first-call costs out of the figures
        _learn((name, X[:50], y[:50]))
    out = []
    modes = ("sequential", "parallel") if args.mode == "both" else (args.mode,)
    with mp.get_context("fork").Pool(max(int(s) for s in args.shards.split(","))) as pool:
        for mode in modes:
            for name in args.learners.split(","):
                base = None
                for shards in map(int, args.shards.split(",")):
                    runs = [measure(name, X, y, ids, shards, pool if mode == "parallel" else None)
                            for _ in range(args.repeat)]
                    row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    row.update(learner=name, shards=shards, mode=mode, loadavg=open("/proc/loadavg").read().split()[:3])
                    base = base or row["labels_per_s"]
                    row["ratio_to_1"] = row["labels_per_s"] / base
                    out.append(row)
                    print(f"{mode:<10} {name:<8} N={shards}: {row['labels_per_s']:>9,.0f} labels/s (slowest shard "
                          f"+ combine), {row['per_key_labels_per_s']:>9,.0f}/s per key, {1e6 / row['per_key_labels_per_s']:.1f} "
                          f"µs/label, wall {row['wall_labels_per_s']:>9,.0f}/s, combine {row['combine_ms']:.1f} ms, "
                          f"x{row['ratio_to_1']:.2f} vs N=1 | load {' '.join(row['loadavg'])}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run())
