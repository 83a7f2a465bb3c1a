"""How a fraud model is judged: threshold-free metrics, card precision@k, and the event-time splits.

Everything here is plain numpy/pandas and follows the handbook's definitions
(*Reproducible Machine Learning for Credit Card Fraud Detection*, chapters 3.4, 4 and 5):

* :func:`roc_auc` and :func:`average_precision` — the transaction-level metrics, with ties
  handled exactly as scikit-learn's ``roc_auc_score`` / ``average_precision_score``;
* :func:`card_precision_at_k` — per test day, rank cards by their highest score that day and
  take the precision of the top k; cards caught on an earlier day leave later days; mean over days;
* :func:`split_train_test` — training days, then a label-delay gap, then test days from
  which cards already known to be compromised are left out;
* :class:`Protocol` — the fold start dates of the handbook's chapter-3 and chapter-5 assessments.

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
0.8333
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: Columns every feature table carries besides the model inputs.
KEY_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD")
TOP_K = 100


# --------------------------------------------------------------------------- metrics


def _binary_inputs(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true and scores must be 1-d arrays of the same length, got shapes {y.shape} and {s.shape}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError(f"y_true must hold only 0 and 1, got values {np.unique(y)[:5].tolist()}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers, got NaN or infinity")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"the metric needs both classes, got {n_pos} frauds among {y.size} transactions")
    return y, s


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct score, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, s_sorted[last_of_tie]


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: the probability that a random fraud outscores a random genuine
    transaction, ties counting one half (identical to scikit-learn's ``roc_auc_score``)."""
    y, s = _binary_inputs(y_true, scores)
    tps, fps, _ = _threshold_counts(y, s)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(y_true, scores) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds,
    highest first — scikit-learn's ``average_precision_score`` (no interpolation), after the
    input checks above (both classes present, finite scores, one-dimensional)."""
    from sklearn.metrics import average_precision_score

    y, s = _binary_inputs(y_true, scores)
    return float(average_precision_score(y, s))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at each distinct score, starting from (0, 0)."""
    y, s = _binary_inputs(y_true, scores)
    tps, fps, thresholds = _threshold_counts(y, s)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thresholds]


def precision_recall_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` at each distinct score, highest threshold first."""
    y, s = _binary_inputs(y_true, scores)
    tps, fps, thresholds = _threshold_counts(y, s)
    return tps / (tps + fps), tps / tps[-1], thresholds


@dataclasses.dataclass(frozen=True)
class CardPrecision:
    """Card precision@k of a test period: one value per day and their mean."""

    k: int
    days: tuple[dt.date, ...]
    per_day: tuple[float, ...]
    #: compromised cards still in play that day (the most the top k could catch)
    fraud_cards_per_day: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_day)) if self.per_day else float("nan")


def card_precision_at_k(days, customers, y_true, scores, k: int = TOP_K,
                        remove_detected: bool = True) -> CardPrecision:
    """The handbook's card precision@k (``card_precision_top_k``).

    For each day in ascending order: each card (customer) gets its highest score that day and
    is compromised if any of its transactions that day is a fraud; the k highest-scored cards
    are the day's alerts and the precision is ``compromised cards among them / k`` (so a day
    with fewer than k cards cannot reach 1). With ``remove_detected`` the compromised cards
    found in a day's top k are left out of every later day. The result is the mean over days.
    Equal scores are ranked by ascending customer id, so the result is deterministic.

    >>> cp = card_precision_at_k(["d1"] * 3 + ["d2"] * 2, [1, 1, 2, 1, 3], [0, 1, 0, 1, 0],
    ...                          [0.2, 0.9, 0.5, 0.8, 0.1], k=1)
    >>> cp.per_day, cp.mean   # card 1 caught on d1, so on d2 only card 3 remains
    ((1.0, 0.0), 0.5)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    frame = pd.DataFrame({"day": np.asarray(days), "customer": np.asarray(customers),
                          "fraud": np.asarray(y_true, dtype=np.int64),
                          "score": np.asarray(scores, dtype=np.float64)})
    per_card = frame.groupby(["day", "customer"], sort=True).agg(score=("score", "max"), fraud=("fraud", "max"))
    detected: set = set()
    out_days, precisions, fraud_cards = [], [], []
    for day, cards in per_card.groupby(level="day", sort=True):
        cards = cards.droplevel("day")
        if detected:
            cards = cards[~cards.index.isin(list(detected))]
        fraud_cards.append(int(cards["fraud"].sum()))
        order = np.lexsort((cards.index.to_numpy(), -cards["score"].to_numpy()))[:k]
        top = cards.iloc[order]
        caught = top.index[top["fraud"].to_numpy() == 1]
        precisions.append(len(caught) / k)
        out_days.append(pd.Timestamp(day).date() if isinstance(day, (np.datetime64, pd.Timestamp, dt.date)) else day)
        if remove_detected:
            detected.update(caught.tolist())
    return CardPrecision(k=int(k), days=tuple(out_days), per_day=tuple(precisions), fraud_cards_per_day=tuple(fraud_cards))


def assess(test: pd.DataFrame, scores, k: int = TOP_K) -> dict[str, float]:
    """AUC ROC, average precision and card precision@k of ``scores`` on a test set
    (a frame with ``TX_DATETIME``, ``CUSTOMER_ID`` and ``TX_FRAUD``)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = test["TX_FRAUD"].to_numpy()
    cp = card_precision_at_k(event_days(test), test["CUSTOMER_ID"].to_numpy(), y, scores, k=k)
    return {"auc_roc": roc_auc(y, scores), "average_precision": average_precision(y, scores),
            f"card_precision@{k}": cp.mean}


# --------------------------------------------------------------------------- splits


def event_days(df: pd.DataFrame) -> np.ndarray:
    """The calendar day (UTC) of each transaction's event time, as ``datetime64[D]``."""
    return df["TX_DATETIME"].to_numpy().astype("datetime64[D]")


def _as_day(value) -> np.datetime64:
    try:
        day = np.datetime64(pd.Timestamp(value).date(), "D")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"expected a date like 2018-07-25, got {value!r}") from exc
    return day


def _check_days(**days: int) -> None:
    for name, value in days.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "delay_days" else 1):
            low = ">= 0" if name == "delay_days" else ">= 1"
            raise ValueError(f"{name} must be an integer number of days {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Split:
    """One fold: ``train_days`` days from ``train_start``, ``delay_days`` of label delay, ``test_days`` of test."""

    train_start: dt.date
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_start", pd.Timestamp(_as_day(self.train_start)).date())
        _check_days(train_days=self.train_days, delay_days=self.delay_days, test_days=self.test_days)

    @property
    def test_start(self) -> dt.date:
        return self.train_start + dt.timedelta(days=self.train_days + self.delay_days)

    @property
    def end(self) -> dt.date:
        """The first day after the test period."""
        return self.test_start + dt.timedelta(days=self.test_days)

    def to_dict(self) -> dict:
        last = dt.timedelta(days=1)
        return {"train": [str(self.train_start), str(self.train_start + dt.timedelta(days=self.train_days) - last)],
                "test": [str(self.test_start), str(self.end - last)],
                "train_days": self.train_days, "delay_days": self.delay_days, "test_days": self.test_days}


def split_train_test(df: pd.DataFrame, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training and test sets of ``split`` (the handbook's ``get_train_test_set``).

    Training set: the transactions of the ``train_days`` days from ``train_start``.
    Test set: for each test day ``d`` (``delay_days`` after the training period), that day's
    transactions except those of cards already known to be compromised — cards with a fraud
    in the training set or on any day up to ``d - delay_days - 1`` (a fraud's label is known
    ``delay_days`` full days after the day it happened, as in the handbook's code).
    Both position arrays are ascending; ``df`` needs ``TX_DATETIME``, ``CUSTOMER_ID``, ``TX_FRAUD``.
    """
    day = event_days(df)
    start = np.datetime64(split.train_start, "D")
    customers = df["CUSTOMER_ID"].to_numpy()
    fraud = df["TX_FRAUD"].to_numpy() == 1
    train = np.flatnonzero((day >= start) & (day < start + split.train_days))
    known = set(customers[train][fraud[train]].tolist())
    test_parts = []
    for i in range(split.test_days):
        test_day = start + split.train_days + split.delay_days + i
        newly_known = (day == test_day - split.delay_days - 1) & fraud
        known.update(customers[newly_known].tolist())
        rows = np.flatnonzero(day == test_day)
        test_parts.append(rows[~pd.Index(customers[rows]).isin(list(known))])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, dtype=np.int64)
    return train, test


# --------------------------------------------------------------------------- protocols


def prequential_starts(last_start, n_folds: int = 4, assessment_days: int = 7) -> tuple[dt.date, ...]:
    """Training start dates of ``n_folds`` folds ending with ``last_start``, each ``assessment_days``
    earlier than the next (the handbook's ``prequentialSplit``), in ascending order."""
    _check_days(n_folds=n_folds, assessment_days=assessment_days)
    last = pd.Timestamp(_as_day(last_start)).date()
    return tuple(last - dt.timedelta(days=j * assessment_days) for j in reversed(range(n_folds)))


def validation_starts(first_test_start, n_folds: int = 4, delay_days: int = 7,
                      assessment_days: int = 7) -> tuple[dt.date, ...]:
    """Training starts of the validation folds for test folds whose first training start is
    ``first_test_start``: the latest validation fold starts ``delay_days + assessment_days``
    earlier, so its assessment period is the test fold's training period and every validation
    fold ends before any test period begins (handbook chapter 5)."""
    _check_days(delay_days=delay_days)
    latest = pd.Timestamp(_as_day(first_test_start)).date() - dt.timedelta(days=delay_days + assessment_days)
    return prequential_starts(latest, n_folds, assessment_days)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A model assessment: test folds, and the validation folds that parameters are chosen on."""

    name: str
    test_starts: tuple[dt.date, ...]
    valid_starts: tuple[dt.date, ...] = ()
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    top_k: int = TOP_K

    def test_splits(self) -> list[Split]:
        return [Split(s, self.train_days, self.delay_days, self.test_days) for s in self.test_starts]

    def valid_splits(self) -> list[Split]:
        return [Split(s, self.train_days, self.delay_days, self.test_days) for s in self.valid_starts]

    @property
    def selection_end(self) -> dt.date:
        """First day that model selection must not see (the first test period's start)."""
        return min(s.test_start for s in self.test_splits())

    def to_dict(self) -> dict:
        return {"name": self.name, "test_starts": [str(d) for d in self.test_starts],
                "valid_starts": [str(d) for d in self.valid_starts], "train_days": self.train_days,
                "delay_days": self.delay_days, "test_days": self.test_days, "top_k": self.top_k}


_CH5_TEST = prequential_starts("2018-08-15", 4, 7)  # 07-25, 08-01, 08-08, 08-15

PROTOCOLS: dict[str, Protocol] = {
    # Chapter 3.4 baseline: one fold, default parameters, no selection.
    "handbook-ch3": Protocol("handbook-ch3", test_starts=(dt.date(2018, 7, 25),)),
    # Chapter 5 model selection: parameters chosen on four validation folds, assessed on four test folds.
    "handbook-ch5": Protocol("handbook-ch5", test_starts=_CH5_TEST,
                             valid_starts=validation_starts(_CH5_TEST[0], 4, 7, 7)),
}

#: The handbook's published results that the protocols reproduce (XGBoost on the 15 features).
HANDBOOK_RESULTS = {
    "handbook-ch3": {"auc_roc": 0.862, "average_precision": 0.639, "card_precision@100": 0.273},
    "handbook-ch5": {"auc_roc": 0.869, "average_precision": 0.687, "card_precision@100": 0.303},
}


# --------------------------------------------------------------------------- feature tables


#: Where ``streamscore featurize`` records the feature spec hash in the Parquet metadata.
SPEC_HASH_KEY = b"streamscore.feature_spec_hash"
#: ... and the spec itself (``FeatureSpec.to_dict()`` as JSON).
SPEC_KEY = b"streamscore.feature_spec"


def feature_table_spec(path: str | Path, name: str | None = None):
    """The :class:`~streaming.features.spec.FeatureSpec` to read the feature table at ``path`` with.

    With ``name`` (``default`` or ``extended``) that named spec; :func:`read_feature_table`
    then refuses a table that records another. Without, the spec the table records — rebuilt
    from its parameters by this code, and refused unless its hash is the recorded one (the
    table was computed by a different feature definition) — or the reference spec when the
    table records none (e.g. one joined from the reference files).
    """
    import json

    from streaming.features.spec import DEFAULT_SPEC, SPECS, FeatureSpec

    if name is not None:
        if name not in SPECS:
            raise ValueError(f"unknown feature spec {name!r}; expected one of {', '.join(sorted(SPECS))}")
        return SPECS[name]
    metadata = _parquet_metadata(path)
    recorded_hash, recorded = metadata.get(SPEC_HASH_KEY), metadata.get(SPEC_KEY)
    if recorded is None:
        return DEFAULT_SPEC
    try:
        spec = FeatureSpec.from_dict(json.loads(recorded))
    except (ValueError, TypeError) as exc:  # also json.JSONDecodeError
        raise ValueError(f"feature table {str(path)!r} records a feature spec this code cannot read: {exc}") from exc
    if recorded_hash is not None and recorded_hash.decode() != spec.spec_hash:
        raise ValueError(f"feature table {str(path)!r} was computed with feature spec {recorded_hash.decode()[:12]}…, "
                         f"but this code computes those features as spec {spec.spec_hash[:12]}…; "
                         f"re-run `streamscore featurize` with the current code")
    return spec


def example_log_files(path: str | Path) -> list[Path]:
    """The Parquet files of a labelled-example log directory (``stream --example-log DIR``:
    ``DIR/day=YYYY-MM-DD/*.parquet``, or Parquet files directly in DIR), in order."""
    path = Path(path)
    files = sorted(path.glob("day=*/*.parquet")) or sorted(path.glob("*.parquet"))
    if not files:
        raise ValueError(f"feature table {str(path)!r} is a directory with no day=YYYY-MM-DD/*.parquet "
                         "(nor *.parquet) files: expected a `streamscore featurize` table or a "
                         "`stream --example-log` directory")
    return files


def _parquet_metadata(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():  # an example log: every file must record the same spec
        found = {}
        for f in example_log_files(path):
            metadata = _parquet_metadata(f)
            found.setdefault(metadata.get(SPEC_HASH_KEY), (f, metadata))
        if len(found) > 1:
            (a, _), (b, _) = list(found.values())[:2]
            raise ValueError(f"example log {str(path)!r} mixes feature specs: {a} and {b} record different "
                             "spec hashes; train on one spec's rows (a directory per spec)")
        return next(iter(found.values()))[1]
    if not path.exists():
        raise FileNotFoundError(f"feature table {str(path)!r} does not exist")
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"feature table {str(path)!r}: expected a .parquet file, got {path.suffix or 'no extension'!r}")
    try:
        import pyarrow.parquet as pq
        return dict(pq.read_schema(path).metadata or {})
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"feature table {str(path)!r} could not be read: {exc}") from exc


def read_feature_table(path: str | Path, feature_names: Sequence[str], spec_hash: str | None = None) -> pd.DataFrame:
    """Read a ``streamscore featurize`` output: the key columns plus ``feature_names``,
    sorted by event time then id, with ``TX_DATETIME`` as naive UTC ``datetime64[ns]``.

    A directory is read as the streaming job's labelled-example log (``stream --example-log``,
    :func:`example_log_files`): every file, each ``TRANSACTION_ID`` once.

    If the file records a feature spec hash and ``spec_hash`` is given, they must agree
    (a table without the record, e.g. one joined from the reference files, is accepted).
    """
    path = Path(path)
    if path.is_dir():  # the labelled-example log: its files, each transaction once
        frames = [read_feature_table(f, feature_names, spec_hash) for f in example_log_files(path)]
        df = pd.concat(frames, ignore_index=True).drop_duplicates("TRANSACTION_ID", keep="first")
        return normalise_feature_table(df, feature_names)
    if not path.exists():
        raise FileNotFoundError(f"feature table {str(path)!r} does not exist")
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"feature table {str(path)!r}: expected a .parquet file, got {path.suffix or 'no extension'!r}")
    wanted = list(KEY_COLUMNS) + list(feature_names)
    try:
        import pyarrow.parquet as pq
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"feature table {str(path)!r} could not be read: {exc}") from exc
    present = set(schema.names)
    recorded = (schema.metadata or {}).get(SPEC_HASH_KEY)
    if spec_hash is not None and recorded is not None and recorded.decode() != spec_hash:
        raise ValueError(f"feature table {str(path)!r} was computed with feature spec {recorded.decode()[:12]}…, "
                         f"but this code trains on spec {spec_hash[:12]}…; re-run `streamscore featurize` with the current code")
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(f"feature table {str(path)!r}: missing column(s) {', '.join(missing)}; "
                         f"expected {', '.join(KEY_COLUMNS)} and the features {', '.join(feature_names)}")
    df = pd.read_parquet(path, columns=wanted)
    return normalise_feature_table(df, feature_names)


def normalise_feature_table(df: pd.DataFrame, feature_names: Sequence[str]) -> pd.DataFrame:
    """Types and order of a feature table (also for frames built in memory)."""
    out = df[list(KEY_COLUMNS) + list(feature_names)].copy()
    ts = pd.to_datetime(out["TX_DATETIME"], utc=True)
    out["TX_DATETIME"] = ts.dt.tz_localize(None).astype("datetime64[ns]")
    labels = out["TX_FRAUD"]
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise ValueError("TX_FRAUD must be 0 or 1 on every row of the feature table")
    out["TX_FRAUD"] = labels.astype(np.int64)
    for name in feature_names:
        out[name] = out[name].astype(np.float64)
    order = np.lexsort((out["TRANSACTION_ID"].to_numpy(), out["TX_DATETIME"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)
