"""Weekly retrain with the gate vs a model trained once, on the reference data (chapter-5 test period).

    python -m loadtest.bench_retrain [--weeks 3] [--gate-margin 0] [--resamples 300] [--nthread 2]

Needs ``../shared/data/fraud-handbook`` (``STREAMSCORE_REFERENCE_DIR``): the transactions and
their features. For each test week starting ``T`` (2018-08-08, then weekly; the reference feature
table ends on 2018-08-31, so three full weeks), ``streamscore retrain``'s core runs with
``as_of = T - 1`` on a temporary registry: the first week's model is the bootstrap (no
champion) and is also the **once** model; later weeks train a challenger and promote it only if
the gate passes. The **maintained** model is whatever production is at each week. Both are
scored on each week's test rows (handbook chapter 5: cards already known to be compromised
left out) and reported per week and pooled: AP with its card-day bootstrap interval, card
precision@100 with a bootstrap interval over the test days, and the paired interval of the AP
difference. Figures only, no pass/fail.

``--loop`` runs the whole loop instead of promoting at the gate: each week's retrain puts a
passing challenger **in shadow** (``retrain --shadow``); the week's test transactions are
served in time order by production while a :class:`~models.predictor.shadow.ShadowScorer`
scores the challenger next to it into a shadow log; after ``--shadow-events`` of them
``streamscore controller``'s tick (:func:`models.cli_controller.tick`, on the same registry and
files) promotes it, and the rest of the week is served by the new model. At the week's end the
served, labelled rows go into a labelled-example log and the controller's watch judges the
promoted model on them (``--min-ap``, ``--min-cp100``, ``--max-alert-rate``): confirm, or
roll back for the next week. The **maintained** figures are then those of the scores actually
served (production before the promotion, the challenger after), against the **once** model on
the same rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from models import gate
from models.evaluation import Split, card_precision_at_k, event_days, normalise_feature_table, split_train_test
from models.registry import CHALLENGER, Registry
from models.retrain import RetrainConfig, retrain
from streaming.io.datasets import reference_dir
from streaming.features.spec import DEFAULT_SPEC

FIRST_TEST = dt.date(2018, 8, 8)


def load_reference_table(start: str = "2018-07-01") -> pd.DataFrame:
    folder = reference_dir()
    keys = pd.read_parquet(folder / "transactions.parquet",
                           columns=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"])
    keys = keys[keys["TX_DATETIME"] >= start]
    lo = int(keys["TRANSACTION_ID"].min())
    features = pd.read_parquet(folder / "features_2018-04_to_2018-08.parquet", filters=[("TRANSACTION_ID", ">=", lo)])
    return normalise_feature_table(keys.merge(features, on="TRANSACTION_ID"), DEFAULT_SPEC.names)


def _cp_days(test: pd.DataFrame, scores) -> np.ndarray:
    return np.asarray(card_precision_at_k(event_days(test), test["CUSTOMER_ID"].to_numpy(), test["TX_FRAUD"].to_numpy(),
                                          scores, k=100).per_day)


def _cp_interval(per_day: np.ndarray, rule: gate.GateRule) -> list[float]:
    rng = np.random.default_rng(rule.seed)
    means = per_day[rng.integers(0, per_day.size, size=(rule.n_boot, per_day.size))].mean(axis=1)
    tail = (1 - rule.confidence) / 2
    return [float(v) for v in np.quantile(means, [tail, 1 - tail])]


def _served_by_the_loop(registry: Registry, test: pd.DataFrame, x: np.ndarray, production, args, folder) -> tuple:
    """One week served by production, its challenger in shadow until the controller promotes it,
    then watched; returns (served scores, what the controller did)."""
    from pathlib import Path

    from models.cli_controller import tick
    from models.controller import Bounds, ControllerConfig
    from models.controller_inputs import ExampleLogRows, ShadowLogReader
    from models.predictor.core import Model
    from models.predictor.shadow import ShadowScorer, ShadowSettings

    folder = Path(folder)
    config = ControllerConfig(shadow_events=args.shadow_events, min_scored=100, min_labelled=100,
                              bounds=Bounds(args.min_ap, args.min_cp100, None, args.max_alert_rate))
    served = production.score_many(x)
    steps = {}
    challenger = registry.alias(CHALLENGER)["version"]
    if challenger is None:
        return served, steps
    loaded = registry.load(challenger, expected_spec_hash=DEFAULT_SPEC.spec_hash)
    model = Model.from_booster(loaded.booster, challenger, DEFAULT_SPEC.names, backend="xgboost")
    shadow = ShadowScorer(len(DEFAULT_SPEC.names), ShadowSettings(log_dir=folder / "shadow", batch_rows=256))
    shadow.swap(model)
    n = min(args.shadow_events, len(x))
    for tid, row, score in zip(test["TRANSACTION_ID"].astype(str), x[:n], served[:n]):
        shadow.observe(row, tid, float(score), production.version)
    shadow.flush()
    shadow.close()
    decision = tick(registry, config, ShadowLogReader(folder / "shadow"), [])
    steps["shadow"] = {k: decision[k] for k in ("action", "reason")}
    if decision["action"] != "promote":
        return served, steps
    served = np.concatenate([served[:n], model.predict(x[n:])])
    day = folder / "example-log" / f"day={test['TX_DATETIME'].iloc[0].date()}"
    day.mkdir(parents=True, exist_ok=True)
    after = test.iloc[n:]
    pd.DataFrame({"TRANSACTION_ID": after["TRANSACTION_ID"].astype(str).to_numpy(),
                  "TX_DATETIME": after["TX_DATETIME"].to_numpy(), "CUSTOMER_ID": after["CUSTOMER_ID"].to_numpy(),
                  "TX_FRAUD": after["TX_FRAUD"].to_numpy(), "label_status": "confirmed", "score": served[n:],
                  "model_version": challenger}).to_parquet(day / "part-0.parquet")
    watched = tick(registry, config, None, [ExampleLogRows(folder / "example-log")])
    steps["watch"] = {k: watched[k] for k in ("action", "reason")}
    return served, steps


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_retrain", description=__doc__.split("\n")[0])
    parser.add_argument("--weeks", type=int, default=3)
    parser.add_argument("--gate-margin", type=float, default=0.0)
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--nthread", type=int, default=2)
    parser.add_argument("--grid", default="default")
    parser.add_argument("--loop", action="store_true",
                        help="the whole loop: shadow, controller promotion after --shadow-events, watch, rollback")
    parser.add_argument("--shadow-events", type=int, default=5000, help="with --loop: events in shadow (5000)")
    parser.add_argument("--min-ap", type=float, default=None, help="with --loop: the watch's AP bound")
    parser.add_argument("--min-cp100", type=float, default=None, help="with --loop: the watch's CP@100 bound")
    parser.add_argument("--max-alert-rate", type=float, default=None, help="with --loop: the alert-rate bound")
    args = parser.parse_args(argv)
    if not (reference_dir() / "features_2018-04_to_2018-08.parquet").exists():
        print(f"reference data not found at {reference_dir()}: nothing to measure", file=sys.stderr)
        return 2
    rule = gate.GateRule(margin=args.gate_margin, n_boot=args.resamples)
    table = load_reference_table()
    weeks, pooled = [], {"rows": [], "once": [], "maintained": [], "cp_once": [], "cp_maintained": []}
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry.open(os.path.join(tmp, "registry"))
        once = None
        for w in range(args.weeks):
            test_start = FIRST_TEST + dt.timedelta(days=7 * w)
            started = time.perf_counter()
            summary = retrain(table, DEFAULT_SPEC.names, DEFAULT_SPEC.spec_hash, registry,
                              RetrainConfig(as_of=test_start - dt.timedelta(days=1), grid=args.grid, nthread=args.nthread,
                                            rule=rule, reason=f"weekly {test_start}", shadow=args.loop))
            seconds = time.perf_counter() - started
            production = registry.load(expected_spec_hash=DEFAULT_SPEC.spec_hash)
            once = once or production
            _, test_pos = split_train_test(table, Split(test_start - dt.timedelta(days=14), 7, 7, 7))
            test = table.iloc[test_pos]
            x = test[list(DEFAULT_SPEC.names)].to_numpy()
            s_once, s_kept = once.score_many(x), production.score_many(x)
            steps = {}
            if args.loop:
                s_kept, steps = _served_by_the_loop(registry, test, x, production, args, os.path.join(tmp, f"w{w}"))
            cp_once, cp_kept = _cp_days(test, s_once), _cp_days(test, s_kept)
            weeks.append({"test_week": str(test_start), "retrain_seconds": round(seconds, 1), "promoted": summary["promoted"],
                          "shadow": summary["shadow"], "controller": steps,
                          "production_after": registry.alias()["version"],
                          "gate": summary["gate"], "maintained_version": production.version,
                          "ap_once": gate.ap_interval(test, s_once, rule), "ap_maintained": gate.ap_interval(test, s_kept, rule),
                          "cp100_once": float(cp_once.mean()), "cp100_maintained": float(cp_kept.mean())})
            pooled["rows"].append(test)
            pooled["once"].append(s_once)
            pooled["maintained"].append(s_kept)
            pooled["cp_once"].append(cp_once)
            pooled["cp_maintained"].append(cp_kept)
            print(json.dumps(weeks[-1]), flush=True)
    rows = pd.concat(pooled["rows"])
    s_once, s_kept = np.concatenate(pooled["once"]), np.concatenate(pooled["maintained"])
    paired = gate.evaluate(rows, s_kept, s_once, rule).to_dict()
    cp_once, cp_kept = np.concatenate(pooled["cp_once"]), np.concatenate(pooled["cp_maintained"])
    result = {"weeks": len(weeks), "gate_margin": args.gate_margin, "resamples": args.resamples, "loop": args.loop,
              "once": {"average_precision": paired["champion"]["average_precision"],
                       "ap_interval": paired["champion"]["average_precision_interval"],
                       "card_precision@100": float(cp_once.mean()), "cp100_interval": _cp_interval(cp_once, rule)},
              "maintained": {"average_precision": paired["challenger"]["average_precision"],
                             "ap_interval": paired["challenger"]["average_precision_interval"],
                             "card_precision@100": float(cp_kept.mean()), "cp100_interval": _cp_interval(cp_kept, rule)},
              "ap_difference": paired["difference"], "loadavg": open("/proc/loadavg").read().split()[:3]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run())
