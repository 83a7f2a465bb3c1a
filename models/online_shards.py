"""Sharded online learning: N learners, each on a hash share of the examples, served as one model.

One Beam key is processed by one thread, which caps a learner near 35k labels/s for the linear
pipeline and near 1k/s for an adaptive random forest. With ``--learner-shards N`` every
labelled example goes to learner key :func:`shard_of` (a stable hash of its transaction id), so
N keys learn in parallel, each its own *member*; :func:`combine` makes the one snapshot the
predictor serves:

* members that are the linear pipeline (``StandardScaler | LogisticRegression``) are folded to
  ``sigmoid(x · w/σ + b − μ/σ · w)`` and their parameters averaged: the combined model is again
  that pipeline (identity scaler), so its prediction is ``sigmoid(mean of the members' logits)``
  and the predictor keeps its vectorised linear path;
* members that are the binned logistic regression (:mod:`models.online_binned`, the default)
  are combined by :class:`~models.online_binned.MeanLogit`, the sigmoid of their mean logit —
  the parameter average of linear models, for members whose bin edges differ — served by the
  predictor's vectorised :class:`~models.predictor.online.BinnedForm`;
* any other members (forests, under-sampled learners) are combined by :class:`MeanProbability`:
  the mean of the members' fraud probabilities, as a bagging ensemble predicts.

The combined learner keeps the members (``members``), so a restarted sharded job resumes each
shard from its own member.

>>> shard_of("tx-1", 4) == shard_of("tx-1", 4)
True
>>> sorted({shard_of(f"tx-{i}", 4) for i in range(100)})
[0, 1, 2, 3]
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from models.online import OnlineLearner


def shard_key(index: int, shards: int) -> str:
    """The learner key of shard ``index`` (``learner`` when there is one shard)."""
    return "learner" if shards == 1 else f"learner-{index}"


def combined_key(shards: int) -> str:
    """The registry learner key of the combined snapshot of ``shards`` members."""
    return "learner" if shards == 1 else f"shards-{shards}"


def shard_of(transaction_id: str, shards: int) -> int:
    """The shard of a transaction: CRC-32 of its id modulo ``shards`` (stable across processes)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(str(transaction_id).encode("utf-8")) % shards


class MeanProbability:
    """A River-style classifier predicting the mean fraud probability of its members; never learns."""

    def __init__(self, members: Sequence[object]):
        self.members = list(members)

    def predict_proba_one(self, x) -> dict:
        p = float(np.mean([m.predict_proba_one(x).get(True, 0.0) for m in self.members]))
        return {False: 1.0 - p, True: p}

    def learn_one(self, x, y) -> None:
        raise TypeError("a combined sharded model is served, not trained: each shard learns its own member")


def _folded(learner: OnlineLearner) -> tuple[np.ndarray, float] | None:
    from models.predictor.online import LinearForm

    form = LinearForm.of(learner, learner.feature_names)
    return None if form is None else (form._w, form._b)


def _linear_model(names: Sequence[str], weights: np.ndarray, intercept: float):
    from river import compose, linear_model, preprocessing

    scaler = preprocessing.StandardScaler()
    regression = linear_model.LogisticRegression()
    for name, w in zip(names, weights):
        scaler.means[name], scaler.vars[name], scaler.counts[name] = 0.0, 1.0, 1
        regression._weights[name] = float(w)
    regression.intercept = float(intercept)
    return compose.Pipeline(scaler, regression)


def combine(members: Sequence[OnlineLearner]) -> OnlineLearner:
    """One servable learner from the shards' members (see the module docs for how)."""
    if not members:
        raise ValueError("combine needs at least one member")
    names = members[0].feature_names
    for m in members:
        if m.feature_names != names:
            raise ValueError(f"members disagree on feature names: {list(m.feature_names)} vs {list(names)}")
    folded = [_folded(m) for m in members]
    combined = OnlineLearner(names, members[0].model_factory, max_history=members[0].max_history)
    from models.online_binned import BinnedLogistic, MeanLogit

    if all(type(m._model) is BinnedLogistic for m in members):
        combined._model = MeanLogit([m._model for m in members])
    elif all(f is not None for f in folded):
        combined._model = _linear_model(names, np.mean([w for w, _ in folded], axis=0),
                                        float(np.mean([b for _, b in folded])))
    else:
        combined._model = MeanProbability([m._model for m in members])
    combined.labels_seen = sum(m.labels_seen for m in members)
    combined.frauds_seen = sum(m.frauds_seen for m in members)
    for m in members:  # the prequential history of every member, for the metrics
        combined._scores.extend(m._scores)
        combined._labels.extend(m._labels)
    combined.members = tuple(members)
    return combined
