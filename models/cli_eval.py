"""``streamscore evaluate``: the handbook's assessment protocols, or one registered model on a test period.

Two modes:

* ``--protocol handbook-ch3|handbook-ch5`` — choose parameters on the protocol's validation
  folds (``--grid``, ``--select-by``), train on each test fold's training days and print the
  mean AUC ROC / average precision / card precision@100 over the test folds as JSON;
* ``--model VERSION|production`` — score a registered model (checksums and feature spec
  verified) on the test period that follows its training data, or on ``--train-start``'s.

The feature spec is the one the table records (``streamscore featurize --spec``), or the
named one with ``--spec`` (a table recording another is refused).

Both modes also report precision and alert rate per segment (amount bands, new vs established
cards, terminals with recent fraud: :mod:`models.segments`). ``--json`` and ``--report`` also
write the full result and an HTML report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from models.signing import add_trust_arguments
from models.evaluation import HANDBOOK_RESULTS, PROTOCOLS, Split, feature_table_spec, read_feature_table
from models.segments import segment_report
from models.training import (
    GRIDS,
    FoldOutcome,
    add_model_arguments,
    add_spec_argument,
    apply_tree_method,
    make_folds,
    metrics_text,
    run_protocol,
)

#: The grid each protocol uses unless ``--grid`` says otherwise.
PROTOCOL_GRIDS = {"handbook-ch3": "default", "handbook-ch5": "handbook"}


def _evaluate_model(args, table, spec) -> tuple[dict, list[FoldOutcome], dict]:
    from models.evaluation import assess
    from models.registry import Registry
    from models.signing import keys_from_args

    model = Registry.open(args.registry, keys=keys_from_args(args, signs=False)).load(args.model, expected_spec_hash=spec.spec_hash)
    recorded = model.metadata.get("data", {}).get("split", {})
    train_start = args.train_start or (recorded.get("train") or [None])[0]
    if train_start is None:
        raise ValueError(f"model {model.version} records no training period: pass --train-start")
    split = Split(train_start, args.train_days or recorded.get("train_days", 7),
                  args.delay_days or recorded.get("delay_days", 7), args.test_days or recorded.get("test_days", 7))
    (fold,) = make_folds(table, [split])
    if fold.test.empty or fold.test["TX_FRAUD"].nunique() < 2:
        raise ValueError(f"the feature table has no labelled test data for {split.to_dict()['test']}")
    names = list(model.feature_names)
    scores = model.score_many(fold.test[names].to_numpy())
    metrics = assess(fold.test, scores)
    test = fold.test[["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TX_FRAUD"]].copy()
    test["score"] = scores
    importance = {k: float(v) for k, v in model.booster.get_score(importance_type="total_gain").items()}
    outcome = FoldOutcome(split, metrics, importance, test)
    result = {"model": model.version, **{k: round(v, 6) for k, v in metrics.items()}, "split": split.to_dict(),
              "n_test": len(test), "n_test_frauds": int(test["TX_FRAUD"].sum()),
              "segments": segment_report(fold.test, scores)}
    return result, [outcome], {"title": f"streamscore model {model.version}", "params": model.metadata.get("params")}


def _protocol_segments(table, folds: list[FoldOutcome]) -> dict:
    """Segments over every test fold's rows (each fold's days ranked by that fold's model)."""
    import pandas as pd

    scored = pd.concat([f.test[["TRANSACTION_ID", "score"]] for f in folds], ignore_index=True)
    rows = scored.merge(table, on="TRANSACTION_ID", how="left", validate="many_to_one")
    return segment_report(rows, rows["score"].to_numpy())


def run(argv: list[str] | None = None) -> int:
    """``streamscore evaluate``: the handbook protocols, or a registered model on a test period."""
    parser = argparse.ArgumentParser(prog="streamscore evaluate", description=run.__doc__)
    parser.add_argument("--features", required=True, help="feature table (.parquet) from `streamscore featurize`")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--protocol", choices=sorted(PROTOCOLS), help="train and assess the protocol's folds")
    mode.add_argument("--model", help="assess a registered version (or 'production') instead")
    parser.add_argument("--registry", default="registry", help="registry for --model (default ./registry)")
    parser.add_argument("--train-start", help="--model: training start of the split to assess (default: the model's own)")
    parser.add_argument("--train-days", type=int, help="--model: training days of that split (default: the model's)")
    parser.add_argument("--delay-days", type=int, help="--model: label delay (default: the model's)")
    parser.add_argument("--test-days", type=int, help="--model: test days (default: the model's)")
    add_model_arguments(parser, grid=None)  # None: the protocol's own (handbook-ch3: default, handbook-ch5: handbook)
    add_spec_argument(parser)
    parser.add_argument("--json", dest="json_out", help="also write the full result as JSON here")
    parser.add_argument("--report", help="also write an HTML report here")
    add_trust_arguments(parser, signs=False)
    args = parser.parse_args(argv)
    started = time.monotonic()

    from models.report import write_report

    spec = feature_table_spec(args.features, args.spec)
    table = read_feature_table(args.features, spec.names, spec.spec_hash)
    if args.protocol:
        grid_name = args.grid or PROTOCOL_GRIDS[args.protocol]
        grid = apply_tree_method(GRIDS[grid_name], args.tree_method)
        outcome = run_protocol(table, PROTOCOLS[args.protocol], spec.names, grid=grid,
                               select_by=args.select_by, seed=args.seed, nthread=args.nthread)
        result = outcome.to_dict()
        result.update(grid=grid_name, tree_method=args.tree_method, seed=args.seed,
                      feature_spec={"hash": spec.spec_hash, "extra": list(spec.extra), "n_features": len(spec.names)},
                      handbook=HANDBOOK_RESULTS.get(args.protocol))
        folds = outcome.folds
        result["segments"] = _protocol_segments(table, folds)
        report_args = {"title": f"streamscore evaluate --protocol {args.protocol} (grid {grid_name})",
                       "params": outcome.params, "selection": outcome.selection,
                       "reference": HANDBOOK_RESULTS.get(args.protocol)}
    else:
        result, folds, report_args = _evaluate_model(args, table, spec)
    text = json.dumps(result, indent=2)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    if args.report:
        write_report(args.report, folds, **report_args)
    summary = {k: v for k, v in result.items() if k not in ("folds", "segments")}
    summary["segments"] = {family: {name: {m: row[m] for m in ("alert_rate", "precision")} for name, row in rows.items()}
                           for family, rows in result["segments"].items()}
    print(json.dumps(summary, indent=2))
    what = f"--protocol {args.protocol}" if args.protocol else f"model {result['model']}"
    wrote = [path for path in (args.json_out, args.report) if path]
    print(f"streamscore evaluate: {what} on {len(table):,} rows from {args.features}, {len(folds)} test"
          f" fold{'s' if len(folds) != 1 else ''}: {metrics_text(result)} (mean over the folds)"
          f"{'; wrote ' + ', '.join(wrote) if wrote else ''} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0



if __name__ == "__main__":
    sys.exit(run())
