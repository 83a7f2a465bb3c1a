"""Training XGBoost on the feature table, with parameters chosen on validation folds only.

The model is ``binary:logistic`` on the ``hist`` tree method. Parameters come from a grid
(:data:`GRIDS`); every candidate is scored by prequential validation — folds of
``train_days`` training / ``delay_days`` label delay / ``test_days`` assessment that all end
before the test period (handbook chapter 5) — and the best mean validation score wins.
Test data is only touched after the choice is made.

* :func:`fit` / :func:`predict` — one booster on one training set;
* :func:`select_params` — the grid search; it receives only the validation folds' rows;
* :func:`run_protocol` — select on a :class:`~models.evaluation.Protocol`'s validation folds,
  then train and assess on each of its test folds (``streamscore evaluate --protocol``);
* :func:`train_model` — the same for one training window, the model that gets registered
  (``streamscore train``).

Candidates that differ only in ``n_estimators`` share one booster: a boosted model's first
n rounds are exactly the model trained with n rounds (also with subsampling, for a given
seed), so each is scored with ``iteration_range=(0, n)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from models.evaluation import (
    TOP_K,
    Protocol,
    Split,
    assess,
    feature_table_spec,
    read_feature_table,
    split_train_test,
    validation_starts,
)
from models.monitoring import REFERENCE_FILE, Reference

#: Parameters fixed for every model. ``base_score=0.5`` is XGBoost's default before 2.0, which
#: the handbook ran (newer versions start from the label mean; on 0.8 % fraud and 100 trees of
#: step 0.3 that lowers the chapter-3 AP from 0.64 to 0.56). ``max_bin=4096``: with the default
#: 256 quantile bins the amount tail is so coarse (no cut between ~195 and the maximum) that no
#: split can separate amounts above 220, the handbook's first fraud scenario; 4096 bins make
#: ``hist`` as good as the exact greedy splits the handbook used, on the validation folds.
BASE_PARAMS = {"objective": "binary:logistic", "tree_method": "hist", "max_bin": 4096,
               "base_score": 0.5, "eval_metric": "logloss"}

#: XGBoost's default model (``XGBClassifier()``): the chapter-3 baseline.
DEFAULT_GRID: dict[str, list] = {"max_depth": [6], "learning_rate": [0.3], "n_estimators": [100]}

#: The handbook's chapter-5 grid for XGBoost.
HANDBOOK_GRID: dict[str, list] = {"max_depth": [3, 6, 9], "n_estimators": [25, 50, 100], "learning_rate": [0.1, 0.3]}

#: A wider search, designed on the validation folds only: more, smaller steps (the number of
#: trees acts as early stopping chosen on validation), row and per-split column subsampling,
#: and optionally four subsampled trees per round (a small boosted forest) to cut variance
#: from the ~500 frauds of a 7-day training set.
IMPROVED_GRID: dict[str, list] = {
    "max_depth": [3, 4],
    "learning_rate": [0.1],
    "subsample": [0.7],
    "colsample_bynode": [0.8],
    "num_parallel_tree": [1, 4],
    "n_estimators": [100, 200, 300],
}

#: Designed on the validation folds with the extended features, where the handbook grid's
#: choice sat on its edge (its shallowest trees and smaller step): shallower trees, smaller
#: steps, more rounds (again the number of trees acts as early stopping chosen on validation).
WIDE_GRID: dict[str, list] = {"max_depth": [2, 3, 4], "learning_rate": [0.05, 0.1], "n_estimators": [100, 200, 400]}

GRIDS: dict[str, dict[str, list]] = {"default": DEFAULT_GRID, "handbook": HANDBOOK_GRID, "improved": IMPROVED_GRID,
                                     "wide": WIDE_GRID}
#: What ``--select-by`` accepts: one validation metric, or several separated by commas, compared
#: in that order (a later one only breaks ties of the earlier ones). ``card_precision@100,
#: average_precision`` chooses on the target metric and breaks its frequent ties by average
#: precision: card precision@100 counts whole cards (one card on one day is 1/700 of a fold's
#: value), so candidates often tie on it exactly.
SELECTION_METRICS = ("average_precision", "card_precision@100", "auc_roc", "card_precision@100,average_precision")
#: Mean validation scores closer than this count as equal when candidates are ranked (the same
#: number of cards caught can give means that differ in the last bits of a float).
TIE_TOLERANCE = 1e-9
TREE_METHODS = ("hist", "approx", "exact")


def apply_tree_method(grid: Mapping[str, Sequence], tree_method: str = "hist") -> dict[str, list]:
    """``grid`` with another tree method (``exact`` is what the handbook's XGBoost 1.x ran)."""
    if tree_method not in TREE_METHODS:
        raise ValueError(f"tree_method must be one of {', '.join(TREE_METHODS)}, got {tree_method!r}")
    grid = {k: list(v) for k, v in grid.items()}
    if tree_method != "hist":
        grid["tree_method"] = [tree_method]
    return grid


def expand_grid(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of a grid, in a fixed order (the last key varies fastest).

    >>> expand_grid({"max_depth": [3, 6], "n_estimators": [25, 50]})[1]
    {'max_depth': 3, 'n_estimators': 50}
    """
    if not grid:
        return [{}]
    keys = list(grid)
    for key in keys:
        if isinstance(grid[key], (str, bytes)) or not len(grid[key]):
            raise ValueError(f"grid entry {key!r} must be a non-empty list of values, got {grid[key]!r}")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def booster_params(params: Mapping, *, seed: int = 0, nthread: int = 2) -> tuple[dict, int]:
    """``(parameters for xgboost.train, number of boosting rounds)`` for a candidate."""
    params = dict(params)
    rounds = int(params.pop("n_estimators", 100))
    if rounds < 1:
        raise ValueError(f"n_estimators must be >= 1, got {rounds}")
    return {**BASE_PARAMS, **params, "seed": int(seed), "nthread": int(nthread)}, rounds


def _matrix(frame: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    return frame[list(feature_names)].to_numpy(dtype=np.float32)


def fit(train: pd.DataFrame, feature_names: Sequence[str], params: Mapping, *, seed: int = 0, nthread: int = 2):
    """Train one booster on ``train`` (its ``feature_names`` columns and ``TX_FRAUD``)."""
    import xgboost as xgb

    if train.empty:
        raise ValueError("the training set is empty: no transactions in the training period")
    y = train["TX_FRAUD"].to_numpy()
    if y.min() == y.max():
        raise ValueError(f"the training set needs frauds and genuine transactions, got only TX_FRAUD={y[0]}")
    xgb_params, rounds = booster_params(params, seed=seed, nthread=nthread)
    dtrain = xgb.DMatrix(_matrix(train, feature_names), label=y, feature_names=list(feature_names), nthread=nthread)
    return xgb.train(xgb_params, dtrain, num_boost_round=rounds)


def predict(booster, frame: pd.DataFrame, feature_names: Sequence[str], n_rounds: int | None = None) -> np.ndarray:
    """Fraud probabilities for the rows of ``frame``; ``n_rounds`` uses only the first boosting rounds."""
    import xgboost as xgb

    data = xgb.DMatrix(_matrix(frame, feature_names), feature_names=list(feature_names))
    rng = (0, int(n_rounds)) if n_rounds else (0, 0)
    return booster.predict(data, iteration_range=rng).astype(np.float64)


# --------------------------------------------------------------------------- selection


@dataclasses.dataclass(frozen=True)
class Fold:
    """The rows of one fold: its split, training frame and assessment frame."""

    split: Split
    train: pd.DataFrame
    test: pd.DataFrame


def _coverage(table: pd.DataFrame) -> str:
    if table.empty:
        return "the feature table is empty"
    return f"the feature table covers {table['TX_DATETIME'].min()} .. {table['TX_DATETIME'].max()}"


def covers_test_period(table: pd.DataFrame, split: Split) -> bool:
    """Whether the table has transactions on the last test day of ``split``."""
    return not table.empty and table["TX_DATETIME"].max() >= pd.Timestamp(split.end) - pd.Timedelta(days=1)


def make_folds(table: pd.DataFrame, splits: Sequence[Split]) -> list[Fold]:
    """The training and test rows of each split (a split without training rows is an error)."""
    folds = []
    for split in splits:
        train_pos, test_pos = split_train_test(table, split)
        if len(train_pos) == 0:
            raise ValueError(f"no transactions in the training period {split.to_dict()['train']} ({_coverage(table)})")
        folds.append(Fold(split, table.iloc[train_pos], table.iloc[test_pos]))
    return folds


@dataclasses.dataclass
class Selection:
    """The outcome of a grid search: the chosen candidate and every candidate's mean scores."""

    best: dict
    select_by: str
    results: list[dict]  # {"params": {...}, "mean": {metric: v}, "std": {metric: v}}

    @property
    def best_scores(self) -> dict[str, float]:
        return next(r["mean"] for r in self.results if r["params"] == self.best)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The validation metrics that ranked the candidates, in order of precedence."""
        return tuple(self.select_by.split(","))

    def ranked(self) -> list[dict]:
        """The candidates' results, best first (the order :func:`select_params` chose by)."""
        return [self.results[i] for i in rank_candidates([r["mean"] for r in self.results], self.metrics)]

    def to_dict(self) -> dict:
        return {"select_by": self.select_by, "best": self.best, "best_validation": self.best_scores,
                "candidates": self.results}


def _groups(candidates: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for cand in candidates:
        key = tuple(sorted((k, v) for k, v in cand.items() if k != "n_estimators"))
        groups.setdefault(key, []).append(cand)
    return groups


def parse_select_by(select_by: str, top_k: int = TOP_K) -> tuple[str, ...]:
    """The metrics of a ``select_by`` string, in order of precedence.

    >>> parse_select_by("card_precision@100,average_precision")
    ('card_precision@100', 'average_precision')
    """
    metric_names = ("auc_roc", "average_precision", f"card_precision@{top_k}")
    metrics = tuple(m.strip() for m in str(select_by).split(","))
    unknown = [m for m in metrics if m not in metric_names]
    if unknown or len(set(metrics)) != len(metrics):
        raise ValueError(f"select_by must be one of {', '.join(metric_names)}, or several of them separated by "
                         f"commas (each once), got {select_by!r}")
    return metrics


def rank_candidates(means: Sequence[Mapping[str, float]], metrics: Sequence[str],
                    tolerance: float = TIE_TOLERANCE) -> list[int]:
    """Indices of ``means`` best first: by the first metric, ties (within ``tolerance``) broken
    by the next, and so on; candidates tied on all of them keep their order.

    >>> rank_candidates([{"cp": 0.3, "ap": 0.6}, {"cp": 0.3, "ap": 0.7}, {"cp": 0.31, "ap": 0.5}], ["cp", "ap"])
    [2, 1, 0]
    """
    order = list(range(len(means)))
    # Stable sorts from the last metric to the first give the lexicographic order; each metric is
    # first snapped to the best value within the tolerance so near-equal means count as tied.
    for metric in reversed(list(metrics)):
        values = [float(m[metric]) for m in means]
        snapped = [max(v for v in values if abs(v - x) <= tolerance) for x in values]
        order.sort(key=lambda i: -snapped[i])
    return order


def select_params(folds: Sequence[Fold], grid: Mapping[str, Sequence], feature_names: Sequence[str], *,
                  select_by: str = "average_precision", seed: int = 0, nthread: int = 2,
                  top_k: int = TOP_K) -> Selection:
    """Score every candidate of ``grid`` on each validation fold and pick the best mean ``select_by``
    (one metric, or several separated by commas: see :func:`rank_candidates`).

    ``folds`` must hold only validation data; ties go to the earlier candidate in grid order.
    """
    metric_names = ("auc_roc", "average_precision", f"card_precision@{top_k}")
    selection_metrics = parse_select_by(select_by, top_k)
    if not folds:
        raise ValueError("model selection needs at least one validation fold")
    candidates = expand_grid(grid)
    scores: dict[int, list[dict]] = {i: [] for i in range(len(candidates))}
    index = {id(c): i for i, c in enumerate(candidates)}
    for fold in folds:
        for members in _groups(candidates).values():
            widest = max(members, key=lambda c: c.get("n_estimators", 100))
            booster = fit(fold.train, feature_names, widest, seed=seed, nthread=nthread)
            for cand in members:
                preds = predict(booster, fold.test, feature_names, n_rounds=cand.get("n_estimators", 100))
                scores[index[id(cand)]].append(assess(fold.test, preds, k=top_k))
    results = []
    for i, cand in enumerate(candidates):
        per_fold = pd.DataFrame(scores[i])
        results.append({"params": cand, "mean": {m: float(per_fold[m].mean()) for m in metric_names},
                        "std": {m: float(per_fold[m].std(ddof=0)) for m in metric_names},
                        "folds": per_fold.to_dict("records")})
    best = rank_candidates([r["mean"] for r in results], selection_metrics)[0]
    return Selection(best=candidates[best], select_by=",".join(selection_metrics), results=results)


# --------------------------------------------------------------------------- protocols


@dataclasses.dataclass
class FoldOutcome:
    """A trained fold: its split, metrics, feature importance and test scores (for the report)."""

    split: Split
    metrics: dict[str, float]
    importance: dict[str, float]
    test: pd.DataFrame  # key columns + "score"


def _outcome(booster, fold: Fold, feature_names: Sequence[str], top_k: int) -> FoldOutcome:
    scores = predict(booster, fold.test, feature_names)
    test = fold.test[["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TX_FRAUD"]].copy()
    test["score"] = scores
    metrics = assess(fold.test, scores, k=top_k) if len(test) and 0 < test["TX_FRAUD"].sum() < len(test) else {}
    importance = {k: float(v) for k, v in booster.get_score(importance_type="total_gain").items()}
    return FoldOutcome(fold.split, metrics, importance, test)


def _choose(table: pd.DataFrame, valid_splits: Sequence[Split], selection_end, grid, feature_names, *,
            select_by: str, seed: int, nthread: int, top_k: int) -> tuple[dict, Selection | None]:
    candidates = expand_grid(grid)
    if len(candidates) == 1:
        return candidates[0], None
    if not valid_splits:
        raise ValueError("a grid with several candidates needs validation folds to choose among them")
    # Model selection sees nothing from the first test day on: cut the table before building folds.
    visible = table[table["TX_DATETIME"] < pd.Timestamp(selection_end)]
    folds = make_folds(visible, valid_splits)
    selection = select_params(folds, grid, feature_names, select_by=select_by, seed=seed,
                              nthread=nthread, top_k=top_k)
    return selection.best, selection


@dataclasses.dataclass
class ProtocolResult:
    protocol: Protocol
    grid: str
    params: dict
    selection: Selection | None
    folds: list[FoldOutcome]

    @property
    def mean(self) -> dict[str, float]:
        frame = pd.DataFrame([f.metrics for f in self.folds])
        return {m: float(frame[m].mean()) for m in frame.columns}

    def to_dict(self) -> dict:
        return {"protocol": self.protocol.name, "grid": self.grid, **{k: round(v, 6) for k, v in self.mean.items()},
                "params": self.params,
                "select_by": self.selection.select_by if self.selection else None,
                "validation": self.selection.best_scores if self.selection else None,
                "folds": [{**f.split.to_dict(), **f.metrics, "n_test": len(f.test),
                           "n_test_frauds": int(f.test["TX_FRAUD"].sum())} for f in self.folds]}


def run_protocol(table: pd.DataFrame, protocol: Protocol, feature_names: Sequence[str], *,
                 grid: str | Mapping = "handbook", select_by: str = "average_precision",
                 seed: int = 0, nthread: int = 2) -> ProtocolResult:
    """Choose parameters on ``protocol``'s validation folds, then train and assess each test fold."""
    grid_name, grid = (grid, GRIDS[grid]) if isinstance(grid, str) else ("custom", grid)
    params, selection = _choose(table, protocol.valid_splits(), protocol.selection_end, grid, feature_names,
                                select_by=select_by, seed=seed, nthread=nthread, top_k=protocol.top_k)
    short = [s.to_dict()["test"] for s in protocol.test_splits() if not covers_test_period(table, s)]
    if short:
        raise ValueError(f"protocol {protocol.name}: test period(s) {short} end after the feature table "
                         f"({_coverage(table)}); featurize all the transactions up to the last test day")
    outcomes = []
    for fold in make_folds(table, protocol.test_splits()):
        booster = fit(fold.train, feature_names, params, seed=seed, nthread=nthread)
        outcome = _outcome(booster, fold, feature_names, protocol.top_k)
        if not outcome.metrics:
            raise ValueError(f"test fold {fold.split.to_dict()['test']} needs frauds and genuine transactions")
        outcomes.append(outcome)
    return ProtocolResult(protocol, grid_name, params, selection, outcomes)


@dataclasses.dataclass
class TrainResult:
    """A model ready to register: booster, how it was chosen, and how it did."""

    booster: object
    params: dict
    seed: int
    split: Split
    valid_splits: list[Split]
    selection: Selection | None
    test: FoldOutcome | None  # None when the table has no labelled test period yet
    feature_names: tuple[str, ...]
    top_k: int = TOP_K
    counts: dict = dataclasses.field(default_factory=dict)  # rows and frauds of the training and test sets
    reference: object = None  # models.monitoring.Reference: quantile bins of the training rows and scores

    def metadata(self) -> dict:
        xgb_params, rounds = booster_params(self.params, seed=self.seed)
        xgb_params.pop("nthread")
        return {
            "params": xgb_params, "num_boost_round": rounds, "seed": self.seed,
            "feature_names": list(self.feature_names),
            "data": {"split": self.split.to_dict(), **self.counts,
                     "validation_folds": [s.to_dict() for s in self.valid_splits]},
            "validation": self.selection.to_dict() if self.selection else None,
            "test_metrics": self.test.metrics if self.test else None,
            "top_k": self.top_k,
        }


def train_model(table: pd.DataFrame, feature_names: Sequence[str], train_start, *, train_days: int = 7,
                delay_days: int = 7, test_days: int = 7, valid_folds: int = 4, grid: str | Mapping = "improved",
                select_by: str = "average_precision", seed: int = 0, nthread: int = 2,
                top_k: int = TOP_K) -> TrainResult:
    """Select parameters on ``valid_folds`` folds ending before the test period, train on
    ``[train_start, train_start + train_days)`` and assess on the test period if labelled."""
    grid = GRIDS[grid] if isinstance(grid, str) else grid
    split = Split(train_start, train_days, delay_days, test_days)
    valid = [Split(s, train_days, delay_days, test_days)
             for s in validation_starts(split.train_start, valid_folds, delay_days, test_days)] if valid_folds else []
    params, selection = _choose(table, valid, split.test_start, grid, feature_names,
                                select_by=select_by, seed=seed, nthread=nthread, top_k=top_k)
    (fold,) = make_folds(table, [split])
    booster = fit(fold.train, feature_names, params, seed=seed, nthread=nthread)
    reference = Reference.fit(fold.train, feature_names, predict(booster, fold.train, feature_names))
    # Assessed only when the whole test period is in the table with both classes (else test_metrics is None).
    outcome = _outcome(booster, fold, feature_names, top_k) if covers_test_period(table, split) else None
    if outcome is not None and not outcome.metrics:
        outcome = None
    counts = {"train_rows": len(fold.train), "train_frauds": int(fold.train["TX_FRAUD"].sum()),
              "test_rows": len(fold.test), "test_frauds": int(fold.test["TX_FRAUD"].sum())}
    return TrainResult(booster, params, seed, split, valid, selection, outcome, tuple(feature_names), top_k, counts,
                       reference)


# --------------------------------------------------------------------------- command line


def add_model_arguments(parser: argparse.ArgumentParser, grid: str | None = "improved") -> None:
    parser.add_argument("--grid", choices=sorted(GRIDS), default=grid,
                        help="parameter grid searched on the validation folds (default "
                             + (grid or "the protocol's own: default for handbook-ch3, handbook for handbook-ch5") + ")")
    parser.add_argument("--select-by", choices=SELECTION_METRICS, default="average_precision", metavar="METRICS",
                        help="validation metric that picks the parameters: " + ", ".join(SELECTION_METRICS[:-1])
                             + f", or {SELECTION_METRICS[-1]} (ranks by card precision@100 and breaks its ties "
                             "by average precision); default average_precision")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--nthread", type=int, default=2, help="XGBoost threads (default 2)")
    parser.add_argument("--tree-method", choices=TREE_METHODS, default="hist",
                        help="XGBoost tree method (default hist; exact is what the handbook ran)")


def add_spec_argument(parser: argparse.ArgumentParser) -> None:
    from streaming.features.spec import SPECS

    parser.add_argument("--spec", choices=sorted(SPECS), default=None,
                        help="feature spec the table must have been computed with (default: the one it "
                             "records, rebuilt and hash-checked by this code; the reference spec if none)")


def run(argv: list[str] | None = None) -> int:
    """``streamscore train``: choose parameters on validation folds, train, test, register."""
    from models import registry as registry_mod
    from models.report import write_report
    from models.signing import add_trust_arguments, keys_or_exit

    parser = argparse.ArgumentParser(prog="streamscore train", description=run.__doc__)
    parser.add_argument("--features", required=True, help="feature table (.parquet) from `streamscore featurize`")
    parser.add_argument("--train-start", required=True, help="first training day, YYYY-MM-DD")
    parser.add_argument("--train-days", type=int, default=7, help="days of training data (default 7)")
    parser.add_argument("--delay-days", type=int, default=7, help="label delay between training and test (default 7)")
    parser.add_argument("--test-days", type=int, default=7, help="days of test data; also each validation fold's assessment length (default 7)")
    parser.add_argument("--valid-folds", type=int, default=4, help="prequential validation folds (default 4)")
    add_model_arguments(parser)
    add_spec_argument(parser)
    parser.add_argument("--registry", default="registry", help="registry directory or gs://bucket/prefix (default ./registry)")
    parser.add_argument("--promote", action="store_true", help="point the production alias at the new version")
    add_trust_arguments(parser, signs=True)
    parser.add_argument("--report", help="also write an HTML report of the test period here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.valid_folds < 0:
        parser.error(f"--valid-folds must be >= 0, got {args.valid_folds}")
    keys = keys_or_exit(parser, args, signs=True)  # before training: a missing key must not cost a training run

    spec = feature_table_spec(args.features, args.spec)
    table = read_feature_table(args.features, spec.names, spec.spec_hash)
    grid = apply_tree_method(GRIDS[args.grid], args.tree_method)
    result = train_model(table, spec.names, args.train_start, train_days=args.train_days, delay_days=args.delay_days,
                         test_days=args.test_days, valid_folds=args.valid_folds, grid=grid,
                         select_by=args.select_by, seed=args.seed, nthread=args.nthread)
    extra = {REFERENCE_FILE: result.reference.to_json()}
    if result.test is not None:
        html = write_report(None, [result.test], title=f"streamscore model trained from {result.split.train_start}",
                            selection=result.selection, params=result.params)
        extra["report.html"] = html.encode("utf-8")
        if args.report:
            with open(args.report, "w", encoding="utf-8") as fh:
                fh.write(html)
    registry = registry_mod.Registry.open(args.registry, keys=keys)
    meta = result.metadata()
    # the online learner's warm start reads the training window from this table: record where it is
    meta["data"]["features"] = str(args.features) if "://" in str(args.features) else str(Path(args.features).resolve())
    meta["data"]["grid"] = {"name": args.grid, "candidates": grid, "select_by": args.select_by}
    version = registry.register(result.booster, meta, spec_hash=spec.spec_hash, extra_files=extra)
    if args.promote:
        registry.promote(version)
    print(json.dumps({"version": version, "promoted": bool(args.promote), "params": result.params,
                      "validation": result.selection.best_scores if result.selection else None,
                      "test": result.test.metrics if result.test else None}, indent=2))
    split = result.split.to_dict()
    tested = (f"; test {split['test'][0]}..{split['test'][1]}: {metrics_text(result.test.metrics)}"
              if result.test else "")
    print(f"streamscore train: {len(table):,} rows from {args.features}, trained on {split['train'][0]}.."
          f"{split['train'][1]}{tested}; registered {version}{' and promoted it' if args.promote else ''}"
          f" in {args.registry}{f'; report {args.report}' if args.report else ''} ({time.monotonic() - started:.1f} s)",
          file=sys.stderr)
    return 0


def metrics_text(metrics: Mapping[str, float]) -> str:
    """``AP 0.540, CP@100 0.013, AUC 0.760`` for a people-facing line (the JSON keeps every digit)."""
    names = {"average_precision": "AP", "card_precision@100": "CP@100", "auc_roc": "AUC"}
    return ", ".join(f"{short} {metrics[key]:.3f}" for key, short in names.items() if metrics.get(key) is not None)


if __name__ == "__main__":
    sys.exit(run())
