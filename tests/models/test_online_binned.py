"""The binned logistic regression (the default online learner): what it learns, its served numpy form
(parity with its own predict_proba_one to 1e-9), its averaging, and sharded members of it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.online import DEFAULT_LEARNER, LEARNERS, OnlineLearner, binned_model, default_model
from models.online_binned import BinnedLogistic, MeanLogit
from models.online_shards import combine
from models.predictor.online import PARITY_TOLERANCE, BinnedForm, OnlineModel, RiverForm, warm_up_online
from streaming.features.spec import DEFAULT_SPEC

NAMES = DEFAULT_SPEC.names
AMOUNT = NAMES.index("TX_AMOUNT")
AVG7 = NAMES.index("CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW")


def transactions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spec-shaped rows where fraud is a step in the amount and a large amount / habit ratio:
    shapes a straight line on the raw inputs ranks poorly."""
    rng = np.random.default_rng(seed)
    X = np.abs(rng.normal(1.0, 1.0, size=(n, len(NAMES))))
    X[:, AMOUNT] = rng.gamma(2.0, 30.0, n)
    X[:, AVG7] = rng.gamma(2.0, 30.0, n)
    X[:, NAMES.index("TX_DURING_NIGHT")] = rng.random(n) < 0.2  # a binary input
    X[:, NAMES.index("TERMINAL_ID_RISK_30DAY_WINDOW")] = 0.0  # a constant input (variance 0)
    y = ((X[:, AMOUNT] > 150) | (X[:, AMOUNT] / (X[:, AVG7] + 1) > 4)).astype(int)
    flip = rng.random(n) < 0.01
    return X, np.where(flip, 1 - y, y)


def learned(factory, n: int = 6000, seed: int = 0, every: int = 1, offset: int = 0) -> OnlineLearner:
    X, y = transactions(n, seed)
    learner = OnlineLearner(NAMES, factory)
    for i in range(offset, n, every):
        learner.learn_one(X[i], int(y[i]))
    return learner


def small() -> BinnedLogistic:
    return BinnedLogistic(warmup=500)


def ap(scores, labels) -> float:
    from models.online import average_precision

    return average_precision(scores, labels)


def test_it_is_the_default_learner_and_pickles_by_name():
    assert DEFAULT_LEARNER == "binned" and LEARNERS["binned"] is binned_model
    learner = learned(binned_model, n=300)
    restored = OnlineLearner.restore(learner.snapshot())
    x = transactions(1, seed=5)[0][0]
    assert restored.predict_proba_one(x) == learner.predict_proba_one(x)
    assert type(restored._model) is BinnedLogistic


def test_bins_and_ratios_learn_steps_a_line_cannot():
    X, y = transactions(3000, seed=1)
    binned, linear = learned(small), learned(default_model)
    got = ap([binned.predict_proba_one(x) for x in X], y)
    line = ap([linear.predict_proba_one(x) for x in X], y)
    assert got > line + 0.1, (got, line)
    without = learned(lambda: BinnedLogistic(warmup=500, derived=False))
    assert got >= ap([without.predict_proba_one(x) for x in X], y) - 0.01


def test_the_numpy_form_equals_predict_proba_one():
    learner = learned(small)
    model = OnlineModel.from_learner(learner, "b1")
    assert isinstance(model.form, BinnedForm)
    X = transactions(2000, seed=2)[0]
    X[:5, AMOUNT] = learner._model._edges[AMOUNT][:5]  # values sitting exactly on bin edges
    X[5, AMOUNT] = 0.0
    np.testing.assert_allclose(model.predict(X), RiverForm(learner).predict(X), rtol=0, atol=PARITY_TOLERANCE)
    assert warm_up_online(model, X[:64]).form is model.form  # the predictor keeps the numpy form
    one = model.predict(X[:1])
    assert one.shape == (1,) and abs(one[0] - learner.predict_proba_one(X[0])) <= PARITY_TOLERANCE


def test_before_its_warmup_it_is_the_linear_part_and_untrained_it_scores_zero():
    untrained = OnlineLearner(NAMES, small)
    assert untrained.predict_proba_one(transactions(1)[0][0]) == 0.0
    early = learned(small, n=200)  # fewer than the warmup: no bin edges yet
    assert early._model._edges is None
    X = transactions(300, seed=3)[0]
    np.testing.assert_allclose(OnlineModel.from_learner(early, "e").predict(X), RiverForm(early).predict(X),
                               rtol=0, atol=PARITY_TOLERANCE)


def test_the_served_parameters_are_an_average_of_the_iterates():
    averaged = learned(lambda: BinnedLogistic(warmup=500, decay=1e-3))
    iterates = learned(lambda: BinnedLogistic(warmup=500, decay=None))
    # the same SGD path: only what is served differs
    assert averaged._model._w == iterates._model._w
    assert averaged._model.parameters()["weights"] != iterates._model.parameters()["weights"]
    assert iterates._model.parameters()["weights"] == iterates._model._w
    X, y = transactions(3000, seed=4)
    assert ap([averaged.predict_proba_one(x) for x in X], y) > 0.8


def test_learning_is_deterministic_and_predicting_changes_nothing():
    a, b = learned(small, n=2000), learned(small, n=2000)
    assert pickle.dumps(a._model) == pickle.dumps(b._model)
    before = pickle.dumps(a._model)
    OnlineModel.from_learner(a, "x").predict(transactions(100)[0])
    a.predict_proba_one(transactions(1)[0][0])
    assert pickle.dumps(a._model) == before


def test_sharded_members_combine_to_the_mean_of_their_logits():
    members = [learned(small, every=2, offset=k) for k in (0, 1)]
    combined = combine(members)
    assert type(combined._model) is MeanLogit
    X = transactions(500, seed=6)[0]
    expected = 1 / (1 + np.exp(-np.mean([[m._model.logit_one(dict(zip(NAMES, x))) for x in X] for m in members],
                                         axis=0)))
    np.testing.assert_allclose(RiverForm(combined).predict(X), expected, rtol=0, atol=1e-12)
    model = OnlineModel.from_learner(combined, "c")
    assert isinstance(model.form, BinnedForm)
    np.testing.assert_allclose(model.predict(X), expected, rtol=0, atol=PARITY_TOLERANCE)
    with pytest.raises(TypeError, match="served, not trained"):
        combined._model.learn_one({}, 1)


def test_bad_parameters_are_refused_with_their_names():
    with pytest.raises(ValueError, match="n_bins must be >= 2"):
        BinnedLogistic(n_bins=1)
    with pytest.raises(ValueError, match="decay must be in"):
        BinnedLogistic(decay=1.5)
