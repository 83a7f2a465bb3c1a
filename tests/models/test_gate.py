"""The promotion gate: card-day bootstrap, weighted AP, and the rule on real XGBoost models."""

import numpy as np
import pandas as pd
import pytest

from models import gate, training
from models.evaluation import Split, average_precision
from models.training import make_folds
from streaming.features.spec import DEFAULT_SPEC

NAMES = list(DEFAULT_SPEC.names)
PARAMS = {"max_depth": 3, "learning_rate": 0.3, "n_estimators": 30}


def test_weighted_average_precision_equals_ap_on_replicated_rows():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    assert gate.weighted_average_precision(y, s, np.ones(300))[0] == pytest.approx(average_precision(y, s))
    w = rng.integers(0, 4, 300)
    expected = average_precision(np.repeat(y, w), np.repeat(s, w))
    assert gate.weighted_average_precision(y, s, w[None, :].astype(float))[0] == pytest.approx(expected)
    assert np.isnan(gate.weighted_average_precision(y, s, (1 - y)[None, :].astype(float))[0])


def test_bootstrap_resamples_whole_card_days():
    window = pd.DataFrame({"CUSTOMER_ID": [1, 1, 1, 2, 2, 3],
                           "TX_DATETIME": pd.to_datetime(["2018-08-01 01:00", "2018-08-01 20:00", "2018-08-02 00:00",
                                                          "2018-08-01 00:00", "2018-08-01 00:00", "2018-08-03 00:00"])})
    groups = gate.card_day_groups(window)
    assert groups.tolist() == [0, 0, 1, 2, 2, 3]
    weights = gate.bootstrap_weights(groups, 200, seed=3)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 4]).all()
    assert weights[:, [0, 2, 3, 5]].sum(axis=1).tolist() == [4.0] * 200  # G groups drawn per resample
    np.testing.assert_array_equal(weights, gate.bootstrap_weights(groups, 200, seed=3))


def _fold(make_feature_table):
    table = make_feature_table(days=28, per_day=500, seed=4)
    (f,) = make_folds(table, [Split("2018-06-01", 14, 0, 7)])
    return f


def _models(f):
    good = training.fit(f.train, NAMES, PARAMS, seed=0, nthread=1)
    shuffled = f.train.assign(TX_FRAUD=np.random.default_rng(1).permutation(f.train["TX_FRAUD"].to_numpy()))
    bad = training.fit(shuffled, NAMES, PARAMS, seed=0, nthread=1)
    return training.predict(good, f.test, NAMES), training.predict(bad, f.test, NAMES)


def test_a_better_challenger_is_promoted_and_one_on_shuffled_labels_refused(make_feature_table):
    f = _fold(make_feature_table)
    good, shuffled = _models(f)
    rule = gate.GateRule(n_boot=200, seed=0)
    promoted = gate.evaluate(f.test, good, shuffled, rule)
    assert promoted.promote and promoted.reason.startswith("promote")
    lo, hi = promoted.difference["interval"]
    assert 0 < lo <= promoted.difference["average_precision"] <= hi
    refused = gate.evaluate(f.test, shuffled, good, rule)
    assert not refused.promote and "not higher" in refused.reason
    # The same model against itself: no gain, refused.
    assert not gate.evaluate(f.test, good, good, rule).promote
    # Both models' metrics are the handbook ones, with an AP interval around the point estimate.
    ch = promoted.to_dict()["challenger"]
    assert {"auc_roc", "average_precision", "card_precision@100", "average_precision_interval"} <= set(ch)
    assert ch["average_precision_interval"][0] <= ch["average_precision"] <= ch["average_precision_interval"][1]


def test_the_margin_decides_a_close_call(make_feature_table):
    f = _fold(make_feature_table)
    good, _ = _models(f)
    rng = np.random.default_rng(5)
    slightly_noisier = good + rng.normal(scale=0.02, size=good.size)
    strict = gate.evaluate(f.test, good, slightly_noisier, gate.GateRule(n_boot=200))
    lenient = gate.evaluate(f.test, good, slightly_noisier, gate.GateRule(n_boot=200, margin=0.2))
    assert strict.difference["average_precision"] > 0  # a small gain ...
    assert strict.difference["interval"][0] < 0 and not strict.promote  # ... within the noise: refused
    assert lenient.promote  # non-inferior within 0.2 AP: promoted


def test_the_verdict_is_deterministic_with_a_seed(make_feature_table):
    f = _fold(make_feature_table)
    good, shuffled = _models(f)
    a = gate.evaluate(f.test, good, shuffled, gate.GateRule(n_boot=100, seed=7)).to_dict()
    b = gate.evaluate(f.test, good, shuffled, gate.GateRule(n_boot=100, seed=7)).to_dict()
    c = gate.evaluate(f.test, good, shuffled, gate.GateRule(n_boot=100, seed=8)).to_dict()
    assert a == b and a["difference"]["interval"] != c["difference"]["interval"]


def test_without_a_champion_a_model_must_beat_a_random_score(make_feature_table):
    f = _fold(make_feature_table)
    good, _ = _models(f)
    assert gate.evaluate(f.test, good, rule=gate.GateRule(n_boot=50)).promote
    inverted = gate.evaluate(f.test, -good, rule=gate.GateRule(n_boot=50))
    assert not inverted.promote and "fraud rate" in inverted.reason


def test_bad_input_names_what_was_expected(make_feature_table):
    f = _fold(make_feature_table)
    with pytest.raises(ValueError, match="one score per window row"):
        gate.evaluate(f.test, np.zeros(3), rule=gate.GateRule(n_boot=50))
    with pytest.raises(ValueError, match="frauds and genuine"):
        gate.evaluate(f.test.assign(TX_FRAUD=0), np.zeros(len(f.test)))
    with pytest.raises(ValueError, match="margin"):
        gate.GateRule(margin=-0.1)
    with pytest.raises(ValueError, match="n_boot"):
        gate.GateRule(n_boot=10)


def test_weighted_average_precision_in_chunks_equals_all_at_once(monkeypatch):
    rng = np.random.default_rng(9)
    y = (rng.random(200) < 0.3).astype(int)
    s = rng.random(200)
    w = rng.integers(0, 3, size=(10, 200)).astype(float)
    whole = gate.weighted_average_precision(y, s, w)
    monkeypatch.setattr(gate, "CHUNK", 3)
    np.testing.assert_array_equal(gate.weighted_average_precision(y, s, w), whole)
