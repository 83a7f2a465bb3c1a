"""Training reference bins, PSI against them, live quality, the monitoring event and its gauges."""

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from models import evaluation
from models.monitoring import (
    SCORE,
    Bins,
    LiveQuality,
    MonitoringGauges,
    Reference,
    Thresholds,
    monitoring_event,
    psi,
)


def test_psi_known_values():
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(2) + 0.25 * np.log(1.5))
    assert psi([0.2] * 5, [0.2] * 5) == 0.0
    # An empty live bin is floored, not infinite.
    assert np.isfinite(psi([0.5, 0.5], [1.0, 0.0]))
    with pytest.raises(ValueError, match="same length"):
        psi([0.5, 0.5], [1.0])


def test_bins_are_deciles_of_the_training_values():
    x = np.arange(1000, dtype=float)
    bins = Bins.fit(x, 10)
    assert len(bins.edges) == 9 and bins.shares == pytest.approx([0.1] * 10)
    # A 0/1 flag keeps each edge once: two bins.
    flag = Bins.fit(np.r_[np.zeros(700), np.ones(300)], 10)
    assert flag.edges == (0.0, 1.0)
    assert sum(flag.shares) == pytest.approx(1.0) and flag.shares[0] == pytest.approx(0.7)


def test_psi_of_the_same_distribution_is_near_zero_and_of_a_shifted_one_past_the_alarm():
    rng = np.random.default_rng(0)
    bins = Bins.fit(rng.normal(size=50_000))
    same = bins.stability(rng.normal(size=50_000))
    shifted = bins.stability(rng.normal(loc=0.75, size=50_000))  # three quarters of a standard deviation
    assert same < 0.005
    assert shifted > Thresholds().alarm
    assert Thresholds().status(same) == "ok" and Thresholds().status(shifted) == "alarm"
    assert Thresholds(warn=0.01, alarm=1.0).status(shifted) == "warn"


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="finite"):
        Bins.fit([1.0, np.nan])
    with pytest.raises(ValueError, match="n_bins"):
        Bins.fit([1.0, 2.0], n_bins=1)
    with pytest.raises(ValueError, match="warn <= alarm"):
        Thresholds(warn=0.3, alarm=0.2)
    with pytest.raises(ValueError, match="one score per training row"):
        Reference.fit(pd.DataFrame({"a": [1.0, 2.0]}), ["a"], [0.1])


def _frame(rng, n, loc=0.0):
    return pd.DataFrame({"a": rng.normal(loc=loc, size=n), "b": rng.integers(0, 2, n).astype(float)})


def test_reference_round_trips_and_reports_per_feature_and_score():
    rng = np.random.default_rng(1)
    train = _frame(rng, 20_000)
    ref = Reference.fit(train, ["a", "b"], rng.random(20_000))
    again = Reference.from_json(ref.to_json())
    assert again == ref
    live = _frame(rng, 20_000, loc=1.0)
    stability = again.stability(live, scores=rng.random(20_000) ** 3)
    assert set(stability) == {"a", "b", SCORE}
    assert stability["a"] > 0.25 and stability["b"] < 0.01 and stability[SCORE] > 0.25
    with pytest.raises(ValueError, match="lacks feature column"):
        ref.stability(live[["a"]])
    with pytest.raises(ValueError, match="reference.json"):
        Reference.from_json(b'{"rows": 1}')


def test_live_quality_matches_the_handbook_metrics_over_its_window():
    rng = np.random.default_rng(2)
    n = 3000
    times = pd.Timestamp("2018-08-01") + pd.to_timedelta(np.sort(rng.integers(0, 10 * 86_400, n)), unit="s")
    customers, labels = rng.integers(0, 200, n), (rng.random(n) < 0.05).astype(int)
    scores = labels * 0.3 + rng.random(n)
    live = LiveQuality(window_days=3, k=10)
    for chunk in np.array_split(np.arange(n), 7):
        live.update(times[chunk], customers[chunk], labels[chunk], scores[chunk])
    keep = times >= times.max().normalize() - pd.Timedelta(days=2)
    got = live.metrics()
    assert got["rows"] == keep.sum()
    assert got["average_precision"] == pytest.approx(evaluation.average_precision(labels[keep], scores[keep]))
    days = times[keep].to_numpy().astype("datetime64[D]")
    assert got["card_precision@10"] == pytest.approx(
        evaluation.card_precision_at_k(days, customers[keep], labels[keep], scores[keep], k=10).mean)
    assert LiveQuality().metrics()["average_precision"] is None


def test_monitoring_event_and_gauges():
    event = monitoring_event({"a": 0.01, "b": 0.15, SCORE: 0.4}, Thresholds(), model_version="v1",
                             live={"average_precision": 0.6, "card_precision@100": None})
    assert event["kind"] == "stability" and event["status"] == "alarm" and event["drifted"] == [SCORE]
    assert event["psi_status"] == {"a": "ok", "b": "warn", SCORE: "alarm"}
    gauges = MonitoringGauges()
    gauges.publish(event)
    text = generate_latest(gauges.registry).decode()
    assert 'streamscore_monitoring_psi{variable="score"} 0.4' in text
    assert 'streamscore_monitoring_psi_alarm{variable="score"} 1.0' in text
    assert 'streamscore_monitoring_psi_alarm{variable="a"} 0.0' in text
    assert 'streamscore_monitoring_live_quality{metric="average_precision"} 0.6' in text
