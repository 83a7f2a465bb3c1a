"""Sharded online learners: the combined snapshot predicts the combination of its members."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.online import OnlineLearner, arf_rus_model, default_model
from models.online_shards import MeanProbability, combine, shard_of
from models.predictor.online import LinearForm, OnlineModel

NAMES = ("a", "b", "c")


def trained(factory, seed: int, n: int = 400) -> OnlineLearner:
    rng = np.random.default_rng(seed)
    learner = OnlineLearner(NAMES, factory)
    for _ in range(n):
        x = rng.normal(size=3) + [seed, 0.0, 2.0]
        learner.learn_one(x.tolist(), int(x[0] + 0.5 * x[1] > seed + 0.8))
    return learner


def rows(n: int = 50) -> np.ndarray:
    return np.random.default_rng(9).normal(size=(n, 3)) * 2


def test_linear_members_combine_to_the_mean_of_their_logits():
    members = [trained(default_model, s) for s in (0, 1, 2)]
    combined = combine(members)
    assert LinearForm.of(combined, NAMES) is not None  # still the vectorised path the predictor uses
    X = rows()
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    for x in X.tolist():
        expected = 1 / (1 + math.exp(-np.mean([logit(m.predict_proba_one(x)) for m in members])))
        assert combined.predict_proba_one(x) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # the predictor's numpy form agrees with River on the combined model
    served = OnlineModel.from_learner(combined, "c").predict(X)
    np.testing.assert_allclose(served, [combined.predict_proba_one(x) for x in X.tolist()], atol=1e-9)
    assert combined.labels_seen == sum(m.labels_seen for m in members)
    assert combined.frauds_seen == sum(m.frauds_seen for m in members)


def test_ensemble_members_combine_to_the_mean_of_their_probabilities():
    members = [trained(arf_rus_model, s, n=200) for s in (0, 1)]
    combined = combine(members)
    assert isinstance(combined._model, MeanProbability)
    for x in rows(20).tolist():
        expected = np.mean([m.predict_proba_one(x) for m in members])
        assert combined.predict_proba_one(x) == pytest.approx(expected, abs=1e-12)


def test_a_combined_snapshot_round_trips_with_its_members():
    members = [trained(default_model, s) for s in (0, 1)]
    restored = OnlineLearner.restore(combine(members).snapshot())
    assert len(restored.members) == 2
    x = rows(1)[0].tolist()
    assert restored.members[1].predict_proba_one(x) == members[1].predict_proba_one(x)


def test_combine_refuses_members_of_other_features():
    with pytest.raises(ValueError, match="feature names"):
        combine([OnlineLearner(("a",)), OnlineLearner(("b",))])


def test_shards_are_stable_and_balanced():
    counts = np.bincount([shard_of(f"tx-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 850
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_of("x", 0)
