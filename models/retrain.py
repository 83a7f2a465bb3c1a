"""``streamscore retrain``: train a challenger on the latest labelled data, gate it, register, maybe promote.

The windows, for a retrain on day ``as_of`` (default: the feature table's last day) with a
label delay of ``delay_days``:

* labels are complete up to ``labelled = as_of - delay_days`` (a transaction's label is
  known ``delay_days`` full days after its day, as in :func:`~models.evaluation.split_train_test`);
  no row after that day is read;
* the gate's window is the ``eval_days`` days ending on ``labelled``; cards with a fraud on an
  earlier day are left out of it (they would be blocked already);
* the challenger trains on the ``train_days`` days just before that window (parameters chosen
  on ``valid_folds`` validation folds before it when the grid has several candidates).

Challenger and champion (the ``production`` alias) are scored on the same window and judged
by :mod:`models.gate`; the challenger is registered with its training reference, the gate's
verdict and both models' segment reports, and promoted when the gate says so (unless
``--no-promote``) — or, with ``--shadow``, put behind the ``challenger`` alias instead: the
predictors score it in shadow and ``streamscore controller`` promotes it after enough shadow
events. Each step — register, gate, promote, shadow or refuse — is an audit event in the
registry (:meth:`~models.registry.Registry.record_event`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time

import numpy as np
import pandas as pd

from models import gate
from models.evaluation import Split, feature_table_spec, read_feature_table
from models.monitoring import REFERENCE_FILE
from models.registry import CHALLENGER, Registry, RegistryError
from models.segments import segment_report
from models.training import GRIDS, add_model_arguments, add_spec_argument, apply_tree_method, make_folds, train_model

ACTOR = "streamscore retrain"


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """What ``streamscore retrain`` was asked to do (its flags)."""

    as_of: dt.date | None = None
    train_days: int = 7
    delay_days: int = 7
    eval_days: int = 7
    valid_folds: int = 0
    grid: str = "default"
    tree_method: str = "hist"
    select_by: str = "average_precision"
    seed: int = 0
    nthread: int = 2
    rule: gate.GateRule = gate.GateRule()
    promote: bool = True
    reason: str = "scheduled"
    shadow: bool = False  # a passing challenger goes behind the challenger alias, not production

    def windows(self, last_day: dt.date) -> tuple[dt.date, Split]:
        """``(last labelled day, the challenger's split: training days then the gate's window)``."""
        as_of = self.as_of or last_day
        labelled = as_of - dt.timedelta(days=self.delay_days)
        eval_start = labelled - dt.timedelta(days=self.eval_days - 1)
        return labelled, Split(eval_start - dt.timedelta(days=self.train_days), self.train_days, 0, self.eval_days)


def _champion(registry: Registry, spec_hash: str):
    try:
        return registry.load(expected_spec_hash=spec_hash)
    except RegistryError as exc:
        if registry.alias()["version"] is None:
            return None
        raise exc


def retrain(table: pd.DataFrame, feature_names, spec_hash: str, registry: Registry, config: RetrainConfig,
            features_path: str | None = None) -> dict:
    """Run one retrain on ``table`` against ``registry``; returns the summary (also in the events)."""
    if table.empty:
        raise ValueError("retrain: the feature table is empty")
    labelled, split = config.windows(table["TX_DATETIME"].max().date())
    visible = table[table["TX_DATETIME"] < pd.Timestamp(labelled + dt.timedelta(days=1))]
    if visible.empty or visible["TX_DATETIME"].min().date() > split.train_start:
        raise ValueError(f"retrain: the training window starts {split.train_start} but the labelled rows "
                         f"(up to {labelled}) start {visible['TX_DATETIME'].min() if len(visible) else 'nowhere'}; "
                         "the table needs train_days + eval_days + delay_days days")
    grid = apply_tree_method(GRIDS[config.grid], config.tree_method)
    result = train_model(visible, feature_names, split.train_start, train_days=split.train_days, delay_days=0,
                         test_days=split.test_days, valid_folds=config.valid_folds, grid=grid,
                         select_by=config.select_by, seed=config.seed, nthread=config.nthread)
    if result.test is None:
        raise ValueError(f"retrain: the gate's window {split.to_dict()['test']} needs frauds and genuine transactions")
    (fold,) = make_folds(visible, [split])
    window = fold.test
    challenger_scores = result.test.test["score"].to_numpy()

    champion = _champion(registry, spec_hash)
    champion_scores = None if champion is None else champion.score_many(window[list(champion.feature_names)].to_numpy())
    verdict = gate.evaluate(window, challenger_scores, champion_scores, config.rule).to_dict()
    champion_info = None
    if champion is not None:
        trained = (champion.metadata.get("data", {}).get("split", {}).get("train") or [None, None])[-1]
        champion_info = {"version": champion.version, "trained_until": trained,
                         # Trained on the gate's window: its figures there are optimistic (the gate is then conservative).
                         "trained_on_window": bool(trained and trained >= split.to_dict()["test"][0])}
    segments = {"challenger": segment_report(window, challenger_scores)}
    if champion_scores is not None:
        segments["champion"] = segment_report(window, champion_scores)

    meta = result.metadata()
    meta["data"].update(features=features_path, grid={"name": config.grid, "candidates": grid,
                                                      "select_by": config.select_by})
    meta["retrain"] = {"as_of": str(config.as_of or table["TX_DATETIME"].max().date()), "labelled_until": str(labelled),
                       "reason": config.reason, "champion": champion_info, "gate": verdict, "segments": segments}
    version = registry.register(result.booster, meta, spec_hash=spec_hash,
                                extra_files={REFERENCE_FILE: result.reference.to_json()})
    metrics = {"challenger": {k: verdict["challenger"][k] for k in ("average_precision", "card_precision@100")},
               "champion": None if verdict["champion"] is None else
               {k: verdict["champion"][k] for k in ("average_precision", "card_precision@100")},
               "difference": verdict["difference"], "window": verdict["window"]}
    registry.record_event("register", actor=ACTOR, version=version, reason=f"retrain ({config.reason})",
                          details={"train": split.to_dict()["train"], "gate_window": split.to_dict()["test"],
                                   "params": result.params, "counts": result.counts})
    registry.record_event("gate", actor=ACTOR, version=version, reason=verdict["reason"],
                          details={**metrics, "promote": verdict["promote"], "rule": verdict["rule"],
                                   "champion_model": champion_info})  # "champion" holds its metrics
    promoted = bool(verdict["promote"] and config.promote)
    shadowed = promoted and config.shadow and champion is not None  # a first model has no production to shadow
    if shadowed:
        promoted = False
        registry.promote(version, CHALLENGER)
        registry.record_event("shadow", actor=ACTOR, version=version, reason=verdict["reason"],
                              details={"champion": champion.version, **metrics})
    elif promoted:
        before = registry.alias()["version"]
        registry.promote(version)
        registry.record_event("promote", actor=ACTOR, version=version, reason=verdict["reason"],
                              details={"from": before, "to": version, **metrics})
    else:
        why = verdict["reason"] if not verdict["promote"] else "the gate passed but --no-promote was given"
        registry.record_event("refuse", actor=ACTOR, version=version, reason=why, details=metrics)
    return {"version": version, "promoted": promoted, "shadow": shadowed, "gate": gate.summary(verdict),
            "champion_model": champion_info, **metrics}


def retrain_from(source: str, registry: Registry, config: RetrainConfig, spec: str | None = None) -> dict:
    """:func:`retrain` on the feature table at ``source`` (read as ``--features`` is); what
    ``streamscore controller``'s trigger calls."""
    table_spec = feature_table_spec(source, spec)
    table = read_feature_table(source, table_spec.names, table_spec.spec_hash)
    return {**retrain(table, table_spec.names, table_spec.spec_hash, registry, config, str(source)), "rows": len(table)}


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def run(argv: list[str] | None = None) -> int:
    """``streamscore retrain``: challenger on the latest labelled window, gate vs production, register, promote."""
    parser = argparse.ArgumentParser(prog="streamscore retrain", description=run.__doc__)
    parser.add_argument("--features", required=True, help="feature table (.parquet) from `streamscore featurize`")
    parser.add_argument("--registry", default="registry", help="registry directory or gs://bucket/prefix (default ./registry)")
    parser.add_argument("--as-of", type=_date, help="the retrain's day (default: the table's last day)")
    parser.add_argument("--train-days", type=int, default=7, help="challenger training days (default 7)")
    parser.add_argument("--delay-days", type=int, default=7, help="label delay: days until a label is known (default 7)")
    parser.add_argument("--eval-days", type=int, default=7, help="days of the gate's window (default 7)")
    parser.add_argument("--valid-folds", type=int, default=0, help="validation folds for a grid with several candidates (default 0)")
    add_model_arguments(parser, grid="default")
    add_spec_argument(parser)
    parser.add_argument("--gate-margin", type=float, default=0.0,
                        help="promote if ΔAP > 0 and the interval's lower end > -MARGIN (default 0: the whole interval above 0)")
    parser.add_argument("--gate-confidence", type=float, default=0.9, help="bootstrap interval level (default 0.9)")
    parser.add_argument("--gate-resamples", type=int, default=500, help="card-day bootstrap resamples (default 500)")
    parser.add_argument("--no-promote", dest="promote", action="store_false", help="register and gate, never promote")
    parser.add_argument("--shadow", action="store_true",
                        help="a challenger that passes the gate goes behind the challenger alias (scored in shadow by "
                             "the predictors; `streamscore controller` promotes it) instead of production")
    parser.add_argument("--reason", default="scheduled", help="why this retrain runs, for the audit log (default scheduled)")
    from models.signing import add_trust_arguments, keys_or_exit

    add_trust_arguments(parser, signs=True)  # the challenger is signed; the champion verified before it is read
    args = parser.parse_args(argv)
    started = time.monotonic()
    keys = keys_or_exit(parser, args, signs=True)  # before training: a missing key must not cost a training run
    for name in ("train_days", "eval_days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.delay_days < 0 or args.valid_folds < 0:
        parser.error("--delay-days and --valid-folds must be >= 0")
    config = RetrainConfig(as_of=args.as_of, train_days=args.train_days, delay_days=args.delay_days,
                           eval_days=args.eval_days, valid_folds=args.valid_folds, grid=args.grid,
                           tree_method=args.tree_method, select_by=args.select_by, seed=args.seed, nthread=args.nthread,
                           rule=gate.GateRule(args.gate_margin, args.gate_confidence, args.gate_resamples, args.seed),
                           promote=args.promote, reason=args.reason, shadow=args.shadow)
    spec = feature_table_spec(args.features, args.spec)
    table = read_feature_table(args.features, spec.names, spec.spec_hash)
    summary = retrain(table, spec.names, spec.spec_hash, Registry.open(args.registry, keys=keys), config,
                      str(args.features))
    print(json.dumps(summary, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)))
    champion = summary["champion"]
    print(f"streamscore retrain: {len(table):,} rows from {args.features}; challenger {summary['version']}"
          f" AP {summary['challenger']['average_precision']:.3f}"
          f"{f' vs champion {champion_ap:.3f}' if (champion_ap := (champion or {}).get('average_precision')) is not None else ''}"
          f" on {summary['window']['start']}..{summary['window']['end']} ({summary['window']['rows']:,} rows);"
          f" {'promoted' if summary['promoted'] else 'in shadow' if summary['shadow'] else 'not promoted'}"
          f" ({summary['gate']})"
          f" ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run())
