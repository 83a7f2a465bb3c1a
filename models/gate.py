"""The promotion gate: may a challenger replace the champion?

Both models are scored on the same most recent labelled window (the same rows: a
:func:`~models.evaluation.split_train_test` test period, so cards already known to be
compromised are left out as in the handbook). The gate reports, for each model, the
handbook metrics (:func:`~models.evaluation.assess`) and for average precision a bootstrap
confidence interval over **card-days**: the window's (card, day) groups are resampled with
replacement ``n_boot`` times (seeded), each resample re-weights every transaction by how
often its card-day was drawn, and both models' AP and their difference are computed on the
same resample. Card-days, not transactions, are the unit because a card's transactions on one
day share its fraud state (scenario 3 compromises a card for days); resampling transactions
would pretend those are independent and give intervals that are too narrow.

**The rule** (:class:`GateRule`), with ``Δ = AP(challenger) − AP(champion)`` and ``[lo, hi]``
its ``confidence`` bootstrap interval:

* promote only if ``Δ > 0`` (the point estimate favours the challenger) **and**
  ``lo > −margin`` (the challenger is not worse beyond the interval);
* ``margin = 0`` (the default) means the whole interval of the difference lies above zero:
  the challenger is better with that confidence. A positive margin accepts a challenger that
  is as good as the champion up to ``margin`` of AP (a non-inferiority gate, for a refresh
  whose value is recency rather than a measured gain).

With no champion (an empty registry) the challenger is promoted if its AP beats the window's
fraud rate (the AP of a random score), so a broken first model is still refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from models.evaluation import TOP_K, assess, average_precision, event_days

CHUNK = 64  # bootstrap resamples computed together


@dataclasses.dataclass(frozen=True)
class GateRule:
    """``margin``: how much worse (in AP) the interval's lower end may be; ``confidence`` of the
    interval; ``n_boot`` resamples; ``seed`` of the resampling."""

    margin: float = 0.0
    confidence: float = 0.9
    n_boot: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.margin < 1.0):
            raise ValueError(f"gate margin must be in [0, 1) (an AP difference), got {self.margin!r}")
        if not (0.5 <= self.confidence < 1.0):
            raise ValueError(f"gate confidence must be in [0.5, 1), got {self.confidence!r}")
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 50:
            raise ValueError(f"gate n_boot must be an integer >= 50, got {self.n_boot!r}")


def card_day_groups(window: pd.DataFrame) -> np.ndarray:
    """For each row, the index of its (card, day) group (0..G-1)."""
    keys = pd.MultiIndex.from_arrays([window["CUSTOMER_ID"].to_numpy(), event_days(window)])
    return pd.factorize(keys)[0]


def bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, rows)`` weights: how often each row's group was drawn in each resample."""
    n_groups = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.stack([np.bincount(d, minlength=n_groups) for d in draws])
    return counts[:, groups].astype(np.float64)


def weighted_average_precision(y, scores, weights: np.ndarray) -> np.ndarray:
    """Average precision for each row of ``weights`` (a row weighted w counts as w copies of it),
    ties handled like :func:`~models.evaluation.average_precision`; NaN where a resample has no fraud."""
    w = np.atleast_2d(weights)
    if w.shape[0] > CHUNK:  # bound the memory: a few (CHUNK x rows) arrays at a time
        return np.concatenate([weighted_average_precision(y, scores, w[i:i + CHUNK]) for i in range(0, w.shape[0], CHUNK)])
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    wy = w[:, order] * y[order]
    tps = np.cumsum(wy, axis=1)[:, last_of_tie]
    alls = np.cumsum(w[:, order], axis=1)[:, last_of_tie]
    total = tps[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(alls > 0, tps / alls, 0.0)
        recall = tps / total
    gains = np.diff(np.concatenate([np.zeros((w.shape[0], 1)), recall], axis=1), axis=1)
    out = np.sum(gains * precision, axis=1)
    out[total[:, 0] <= 0] = np.nan
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The gate's decision and the evidence, as a JSON-ready dict via :meth:`to_dict`."""

    promote: bool
    reason: str
    challenger: dict
    champion: dict | None
    difference: dict | None
    rule: GateRule
    window: dict

    def to_dict(self) -> dict:
        return {"promote": self.promote, "reason": self.reason, "challenger": self.challenger,
                "champion": self.champion, "difference": self.difference, "rule": dataclasses.asdict(self.rule),
                "window": self.window}


def _interval(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(values, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def evaluate(window: pd.DataFrame, challenger_scores, champion_scores=None, rule: GateRule = GateRule(),
             k: int = TOP_K) -> Verdict:
    """Apply ``rule`` to the two models' scores on ``window`` (a frame with ``TX_DATETIME``,
    ``CUSTOMER_ID`` and ``TX_FRAUD``; ``champion_scores`` ``None`` when there is no champion)."""
    y = window["TX_FRAUD"].to_numpy()
    if len(window) == 0 or not 0 < y.sum() < len(y):
        raise ValueError(f"the gate's window needs frauds and genuine transactions, got {int(y.sum())} frauds "
                         f"among {len(window)} transactions")
    days = event_days(window)
    groups = card_day_groups(window)
    info = {"start": str(days.min()), "end": str(days.max()), "rows": len(window), "frauds": int(y.sum()),
            "card_days": int(groups.max()) + 1, "fraud_rate": float(y.mean())}
    weights = bootstrap_weights(groups, rule.n_boot, rule.seed)

    def describe(scores) -> tuple[dict, np.ndarray]:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != y.shape:
            raise ValueError(f"the gate needs one score per window row ({y.size}), got shape {scores.shape}")
        boot = weighted_average_precision(y, scores, weights)
        metrics = assess(window, scores, k=k)
        return {**metrics, "average_precision_interval": _interval(boot, rule.confidence)}, boot

    challenger, boot_ch = describe(challenger_scores)
    if champion_scores is None:
        promote = challenger["average_precision"] > info["fraud_rate"]
        reason = (f"no champion: challenger AP {challenger['average_precision']:.4f} "
                  f"{'beats' if promote else 'does not beat'} the fraud rate {info['fraud_rate']:.4f} (a random score)")
        return Verdict(promote, reason, challenger, None, None, rule, info)
    champion, boot_cp = describe(champion_scores)
    delta = challenger["average_precision"] - champion["average_precision"]
    lo, hi = _interval(boot_ch - boot_cp, rule.confidence)
    difference = {"average_precision": delta, "interval": [lo, hi],
                  f"card_precision@{k}": challenger[f"card_precision@{k}"] - champion[f"card_precision@{k}"]}
    better, not_worse = delta > 0, lo > -rule.margin
    promote = bool(better and not_worse)
    where = f"ΔAP {delta:+.4f}, {rule.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}]"
    if promote:
        reason = f"promote: {where} lies above -{rule.margin:g}"
    elif not better:
        reason = f"refuse: the challenger's AP is not higher ({where})"
    else:
        reason = f"refuse: the interval reaches below -{rule.margin:g}, the challenger may be worse ({where})"
    return Verdict(promote, reason, challenger, champion, difference, rule, info)


def ap_interval(window: pd.DataFrame, scores, rule: GateRule = GateRule()) -> dict:
    """One model's AP with its card-day bootstrap interval (for reports such as the retrain benchmark)."""
    y = window["TX_FRAUD"].to_numpy()
    boot = weighted_average_precision(y, scores, bootstrap_weights(card_day_groups(window), rule.n_boot, rule.seed))
    return {"average_precision": average_precision(y, scores), "interval": _interval(boot, rule.confidence)}


def summary(verdict: Mapping) -> str:
    """One line for logs and the command line."""
    return f"gate: {'PROMOTE' if verdict['promote'] else 'REFUSE'} — {verdict['reason']}"
