"""The River online learner and the drift monitor."""

import math

import numpy as np
import pytest

from models.online import DriftMonitor, OnlineLearner, average_precision

NAMES = ("a", "b", "c")


def stream(n: int, seed: int = 0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=3)
        y = int(x[0] + shift * x[1] + rng.normal(0, 0.3) > 1.0)
        yield x.tolist(), y


def test_average_precision_matches_hand_computed_cases():
    # ranks: 1 (tp, P=1), 0.8 (fp), 0.1 (tp, P=2/3) -> (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.1], [1, 0, 1]) == pytest.approx(5 / 6)
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie is one threshold
    assert average_precision([0.2, 0.9], [1, 1]) == 1.0
    assert math.isnan(average_precision([0.3], [0]))


def test_learns_and_reports_prequential_metrics():
    learner = OnlineLearner(NAMES)
    for x, y in stream(3000):
        learner.learn_one(x, y)
    m = learner.metrics()
    assert m["labels"] == 3000 and m["frauds"] > 100
    assert m["average_precision"] > 0.6
    high, low = learner.predict_proba_one([3.0, 0.0, 0.0]), learner.predict_proba_one([-3.0, 0.0, 0.0])
    assert high > 0.9 > 0.1 > low


def test_prediction_is_made_before_learning():
    learner = OnlineLearner(NAMES)
    before = learner.predict_proba_one([1.0, 1.0, 1.0])
    assert learner.learn_one([1.0, 1.0, 1.0], 1) == before


def test_snapshot_is_an_independent_copy_and_deterministic():
    a, b = OnlineLearner(NAMES), OnlineLearner(NAMES)
    for x, y in stream(500, seed=1):
        a.learn_one(x, y)
        b.learn_one(x, y)
    copy = OnlineLearner.restore(a.snapshot())
    probe = [0.5, -0.2, 0.1]
    assert copy.predict_proba_one(probe) == a.predict_proba_one(probe) == b.predict_proba_one(probe)
    a.learn_one(probe, 1)
    assert copy.predict_proba_one(probe) != a.predict_proba_one(probe)
    assert copy.labels_seen == 500


def test_bad_inputs():
    learner = OnlineLearner(NAMES)
    with pytest.raises(ValueError, match="features must have 3 values, got 2"):
        learner.learn_one([1.0, 2.0], 1)
    with pytest.raises(ValueError, match="label must be 0 or 1, got 2"):
        learner.learn_one([1.0, 2.0, 3.0], 2)
    with pytest.raises(TypeError, match="expected an OnlineLearner"):
        OnlineLearner.restore(__import__("pickle").dumps({"not": "a learner"}))


def test_named_features_are_accepted_in_any_order():
    learner = OnlineLearner(NAMES)
    assert learner.predict_proba_one({"c": 1.0, "a": 2.0, "b": 3.0}) == learner.predict_proba_one([2.0, 3.0, 1.0])


def test_drift_monitor_flags_a_change_in_error_not_a_steady_stream():
    rng = np.random.default_rng(0)
    steady = DriftMonitor()
    assert not any(steady.update(int(rng.random() < 0.1), 0.1) for _ in range(3000))
    drifting = DriftMonitor()
    flags = [drifting.update(0, 0.05) for _ in range(2000)] + [drifting.update(1, 0.05) for _ in range(500)]
    assert not any(flags[:2000]) and any(flags[2000:])
    assert drifting.drifts >= 1 and drifting.mean_error > 0.1
