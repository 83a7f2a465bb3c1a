"""The promotion controller: shadow → promote → watch → confirm or roll back, each step audited."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.controller import Bounds, ControllerConfig, LiveEvidence, ShadowEvidence, State, decide, live_evidence
from models.controller_inputs import ExampleLogRows, ScoreLinesRows, ShadowLogReader, combined_rows
from models.evaluation import average_precision
from models.predictor.core import Model
from models.predictor.shadow import ShadowScorer, ShadowSettings
from models.registry import CHALLENGER, Registry
from models.signing import KeyRing
from streaming import cli
from streaming.features.spec import DEFAULT_SPEC

NAMES = DEFAULT_SPEC.names
BOUNDS = Bounds(min_average_precision=0.3, max_alert_rate=0.2)
CONFIG = ControllerConfig(shadow_events=100, bounds=BOUNDS, min_scored=50, min_labelled=50)


def _live(version="v2", scored=500, alerts=5, labelled=500, frauds=10, ap=0.6, cp=0.2) -> LiveEvidence:
    return LiveEvidence(version, scored, alerts, labelled, frauds, ap, cp)


# --------------------------------------------------------------------------- the decisions


def test_shadow_then_promote_after_n_events():
    state = State("v1", "v2", None)
    assert decide(state, CONFIG).action == "wait"  # no shadow evidence yet
    assert decide(state, CONFIG, ShadowEvidence("v2", 99, 1)).action == "wait"
    assert decide(state, CONFIG, ShadowEvidence("v9", 1000, 1)).action == "wait"  # another version's events
    decision = decide(state, CONFIG, ShadowEvidence("v2", 100, 3))
    assert (decision.action, decision.version) == ("promote", "v2")
    assert {k: decision.metrics["shadow"][k] for k in ("events", "alerts", "alert_rate")} == \
        {"events": 100, "alerts": 3, "alert_rate": 0.03}
    assert "100 events in shadow" in decision.reason


def test_with_labelled_shadow_events_the_challenger_must_not_be_worse_on_them():
    config = ControllerConfig(shadow_events=100, shadow_min_labelled=50, shadow_ap_margin=0.05)
    state = State("v1", "v2", None)
    assert decide(state, config, ShadowEvidence("v2", 200, 3, labelled=20)).action == "wait"
    assert decide(state, config, ShadowEvidence("v2", 200, 3, 80, shadow_ap=0.58, production_ap=0.6)).action == "promote"
    worse = decide(state, config, ShadowEvidence("v2", 200, 3, 80, shadow_ap=0.5, production_ap=0.6))
    assert worse.action == "retire" and "AP 0.5000 on 80 labelled shadow events, production 0.6000" in worse.reason


def test_a_challenger_alerting_out_of_bounds_in_shadow_is_retired_not_promoted():
    decision = decide(State("v1", "v2", None), CONFIG, ShadowEvidence("v2", 100, 40))
    assert decision.action == "retire" and "alert rate 0.4000 above the bound 0.2" in decision.reason
    assert decide(State("v1", "v1", None), CONFIG).action == "retire"  # the challenger is production


def test_the_watch_rolls_back_on_a_quality_drop_or_an_alert_flood_and_confirms_otherwise():
    state = State("v2", None, "v2")
    assert decide(state, CONFIG).action == "wait"
    assert decide(state, CONFIG, live=_live(labelled=10, scored=10)).action == "wait"
    dropped = decide(state, CONFIG, live=_live(ap=0.1))
    assert dropped.action == "rollback" and "AP 0.1000 below the bound 0.3" in dropped.reason
    assert dropped.metrics["live"]["average_precision"] == 0.1
    # The alert rate is judged on scored events, before any label has arrived.
    flood = decide(state, CONFIG, live=_live(scored=100, alerts=50, labelled=0, ap=None, cp=None))
    assert flood.action == "rollback" and "alert rate 0.5000 above" in flood.reason
    assert decide(state, CONFIG, live=_live()).action == "confirm"
    assert decide(state, CONFIG, live=_live(labelled=10)).action == "wait"  # quality not judged yet
    cp_bound = ControllerConfig(min_labelled=50, min_scored=50, bounds=Bounds(min_card_precision=0.5))
    assert decide(state, cp_bound, live=_live()).action == "rollback"


def test_a_watch_comes_before_the_next_challenger():
    decision = decide(State("v2", "v3", "v2"), CONFIG, ShadowEvidence("v3", 1000, 1), _live(labelled=10))
    assert (decision.action, decision.version) == ("wait", "v2")


def test_bad_configuration_names_the_field():
    with pytest.raises(ValueError, match="min_average_precision must be a number in"):
        Bounds(min_average_precision=2)
    with pytest.raises(ValueError, match="min_alert_rate .* must be <= max_alert_rate"):
        Bounds(min_alert_rate=0.5, max_alert_rate=0.1)
    with pytest.raises(ValueError, match="shadow_events must be an integer >= 1"):
        ControllerConfig(shadow_events=0)


def test_live_evidence_is_the_versions_rows_quality():
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.uniform(size=n) < 0.1).astype(float)
    scores = np.clip(0.6 * y + rng.uniform(0, 0.5, n), 0, 1)
    rows = pd.DataFrame({"TRANSACTION_ID": [f"t{i}" for i in range(n)],
                         "TX_DATETIME": pd.Timestamp("2018-07-01") + pd.to_timedelta(np.arange(n) * 600, unit="s"),
                         "CUSTOMER_ID": [f"c{i % 50}" for i in range(n)], "score": scores,
                         "model_version": ["v2"] * (n - 20) + ["v1"] * 20, "TX_FRAUD": y})
    rows.loc[5, "TX_FRAUD"] = np.nan  # not labelled yet: scored, not judged
    live = live_evidence(rows, "v2", ControllerConfig())
    mine = rows.iloc[:n - 20].dropna()
    assert (live.scored, live.labelled) == (n - 20, n - 21)
    assert live.alerts == int((rows["score"].iloc[:n - 20] > 0.5).sum())
    assert live.average_precision == pytest.approx(average_precision(mine["TX_FRAUD"].to_numpy(), mine["score"].to_numpy()))


# --------------------------------------------------------------------------- the inputs


def test_score_lines_and_the_example_log_combine_labelled_first(tmp_path):
    lines = tmp_path / "scores.jsonl"
    lines.write_text("\n".join(json.dumps({"transaction_id": f"t{i}", "event_time": "2018-07-01T10:00:00Z",
                                           "score": 0.1 * i, "model_version": "v2"}) for i in range(3)) + "\n")
    day = tmp_path / "log" / "day=2018-07-01"
    day.mkdir(parents=True)
    pd.DataFrame({"TRANSACTION_ID": ["t1"], "TX_DATETIME": [pd.Timestamp("2018-07-01 10:00")], "CUSTOMER_ID": ["c1"],
                  "TX_FRAUD": [1], "label_status": ["confirmed"], "score": [0.1], "model_version": ["v2"]}
                 ).to_parquet(day / "part-0.parquet")
    rows = combined_rows([ScoreLinesRows([lines]), ExampleLogRows(tmp_path / "log")])
    assert sorted(rows["TRANSACTION_ID"]) == ["t0", "t1", "t2"]
    assert rows.set_index("TRANSACTION_ID")["TX_FRAUD"].isna().to_dict() == {"t0": True, "t1": False, "t2": True}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"transaction_id": "x"}\n')
    with pytest.raises(ValueError, match="each line needs transaction_id, event_time, score and model_version"):
        ScoreLinesRows([bad]).rows()
    with pytest.raises(FileNotFoundError, match="serve --shadow-log DIR"):
        ShadowLogReader(tmp_path / "absent").evidence("v2", 0.5)


# --------------------------------------------------------------------------- the loop on a registry


@pytest.fixture
def registry_with_challenger(make_feature_table, tmp_path, signing_key_env, capsys):
    """A production model trained before a drift, a challenger after it in shadow (``retrain --shadow``)."""
    table = make_feature_table(days=42, per_day=400, drift_day=21, seed=3)
    path, reg = tmp_path / "features.parquet", tmp_path / "reg"
    table.to_parquet(path)
    common = ["retrain", "--features", str(path), "--registry", str(reg), "--nthread", "1", "--gate-resamples", "200"]
    assert cli.main([*common, "--as-of", "2018-06-21"]) == 0
    first = json.loads(capsys.readouterr().out)["version"]
    assert cli.main([*common, "--shadow", "--reason", "drift alarm"]) == 0
    second = json.loads(capsys.readouterr().out)
    registry = Registry.open(reg, keys=KeyRing.load(signing_key_env))
    assert second["shadow"] and not second["promoted"]
    assert registry.alias()["version"] == first and registry.alias(CHALLENGER)["version"] == second["version"]
    assert [e["action"] for e in registry.events(second["version"])] == ["register", "gate", "shadow"]
    return table, reg, registry, first, second["version"]


def _shadow_log(registry, table, challenger, production, directory, n):
    """What a predictor serving ``production`` with ``challenger`` in shadow writes for ``n`` events."""
    rows = table.tail(n)
    X = rows[list(NAMES)].to_numpy()
    prod = Model.from_booster(registry.load(production, expected_spec_hash=DEFAULT_SPEC.spec_hash).booster,
                              production, NAMES, backend="xgboost")
    shadow = ShadowScorer(len(NAMES), ShadowSettings(log_dir=directory, batch_rows=64))
    shadow.swap(Model.from_booster(registry.load(challenger, expected_spec_hash=DEFAULT_SPEC.spec_hash).booster,
                                   challenger, NAMES, backend="xgboost"))
    for tid, x, s in zip(rows["TRANSACTION_ID"].astype(str), X, prod.predict(X)):
        shadow.observe(x, tid, float(s), production)
    shadow.flush()
    shadow.close()


def _example_log(directory, table, version, scores):
    rows = table.tail(len(scores))
    day = directory / f"day={rows['TX_DATETIME'].iloc[0].date()}"
    day.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"TRANSACTION_ID": rows["TRANSACTION_ID"].astype(str).to_numpy(),
                  "TX_DATETIME": rows["TX_DATETIME"].to_numpy(), "CUSTOMER_ID": rows["CUSTOMER_ID"].astype(str).to_numpy(),
                  "TX_FRAUD": rows["TX_FRAUD"].to_numpy(), "label_status": "confirmed", "score": scores,
                  "model_version": version}).to_parquet(day / f"part-{version}-{rows.index[0]}.parquet")


def _controller(capsys, reg, *flags) -> dict:
    assert cli.main(["controller", "--registry", str(reg), "--once", *flags]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def test_shadow_events_then_promotion_then_an_injected_quality_drop_rolls_back(registry_with_challenger, tmp_path,
                                                                               capsys):
    table, reg, registry, first, challenger = registry_with_challenger
    shadow_dir, labels = tmp_path / "shadow", tmp_path / "example-log"
    flags = ["--shadow-log", str(shadow_dir), "--shadow-events", "600", "--labels-from", str(labels),
             "--min-ap", "0.3", "--max-alert-rate", "0.5", "--min-scored", "300", "--min-labelled", "300"]
    _shadow_log(registry, table, challenger, first, shadow_dir, 400)
    labels.mkdir()
    waited = _controller(capsys, reg, *flags)
    assert (waited["action"], waited["applied"]) == ("wait", False) and "400/600 events" in waited["reason"]
    _shadow_log(registry, table, challenger, first, shadow_dir, 400)  # a second replica's file
    promoted = _controller(capsys, reg, *flags)
    assert (promoted["action"], promoted["version"], promoted["applied"]) == ("promote", challenger, True)
    assert registry.alias()["version"] == challenger and registry.alias(CHALLENGER)["version"] is None
    event = registry.events(challenger)[-1]
    assert (event["action"], event["actor"]) == ("promote", "streamscore controller")
    assert event["details"]["shadow"]["events"] == 800 and event["details"]["from"] == first

    # Watching: labels arrive, but not enough of them yet.
    rng = np.random.default_rng(1)
    _example_log(labels, table.iloc[:-1000], challenger, rng.uniform(0, 0.4, 100))
    assert _controller(capsys, reg, *flags)["action"] == "wait"
    # The injected quality drop: the promoted model's live scores carry no information about the labels.
    _example_log(labels, table, challenger, rng.uniform(0, 0.4, 900))
    rolled = _controller(capsys, reg, *flags)
    assert (rolled["action"], rolled["applied"]) == ("rollback", True) and "below the bound 0.3" in rolled["reason"]
    assert registry.alias()["version"] == first
    event = registry.events(challenger)[-1]
    assert (event["action"], event["actor"]) == ("rollback", "streamscore controller")
    assert event["details"]["from"] == challenger and event["details"]["to"] == first
    assert event["details"]["live"]["labelled"] == 1000 and event["details"]["live"]["average_precision"] < 0.3
    assert event["details"]["bounds"]["min_average_precision"] == 0.3
    # The watch is over: nothing more to do.
    assert _controller(capsys, reg, *flags)["action"] == "wait"


def test_a_promoted_model_that_keeps_its_bounds_is_confirmed(registry_with_challenger, tmp_path, capsys):
    table, reg, registry, first, challenger = registry_with_challenger
    shadow_dir, labels = tmp_path / "shadow", tmp_path / "example-log"
    flags = ["--shadow-log", str(shadow_dir), "--shadow-events", "100", "--labels-from", str(labels),
             "--min-ap", "0.3", "--min-scored", "300", "--min-labelled", "300"]
    _shadow_log(registry, table, challenger, first, shadow_dir, 200)
    labels.mkdir()
    assert _controller(capsys, reg, *flags)["action"] == "promote"
    booster = registry.load(challenger, expected_spec_hash=DEFAULT_SPEC.spec_hash).booster
    rows = table.tail(1000)
    _example_log(labels, table, challenger, booster.inplace_predict(rows[list(NAMES)].to_numpy()))
    confirmed = _controller(capsys, reg, *flags)
    assert confirmed["action"] == "confirm" and confirmed["metrics"]["live"]["average_precision"] > 0.3
    assert registry.alias()["version"] == challenger
    assert [e["action"] for e in registry.events(challenger)][-2:] == ["promote", "confirm"]
    assert _controller(capsys, reg, *flags)["action"] == "wait"  # confirmed: no longer watched


def test_labelled_shadow_events_compare_both_models_on_the_same_traffic(registry_with_challenger, tmp_path, capsys):
    table, reg, registry, first, challenger = registry_with_challenger
    shadow_dir, labels = tmp_path / "shadow", tmp_path / "example-log"
    _shadow_log(registry, table, challenger, first, shadow_dir, 1000)
    labels.mkdir()
    flags = ["--shadow-log", str(shadow_dir), "--shadow-events", "500", "--labels-from", str(labels),
             "--shadow-min-labelled", "500"]
    waiting = _controller(capsys, reg, *flags)
    assert waiting["action"] == "wait" and "0/500 labelled shadow events" in waiting["reason"]
    # The labels of the shadowed (post-drift) transactions arrive: the challenger, trained after the drift,
    # is better than production on them, and is promoted with both APs as evidence.
    _example_log(labels, table, first, np.zeros(1000))
    promoted = _controller(capsys, reg, *flags)
    shadow = promoted["metrics"]["shadow"]
    assert promoted["action"] == "promote" and shadow["labelled"] == 1000
    assert shadow["average_precision"] > shadow["production_average_precision"]


def test_a_challenger_worse_on_the_labelled_shadow_events_is_retired(registry_with_challenger, tmp_path, capsys):
    table, reg, registry, first, challenger = registry_with_challenger
    shadow_dir, labels = tmp_path / "shadow", tmp_path / "example-log"
    _shadow_log(registry, table, first, challenger, shadow_dir, 1000)  # roles swapped: the old model in shadow
    registry.promote(challenger)
    registry.promote(first, CHALLENGER)
    labels.mkdir()
    _example_log(labels, table, challenger, np.zeros(1000))
    retired = _controller(capsys, reg, "--shadow-log", str(shadow_dir), "--shadow-events", "500", "--labels-from",
                          str(labels), "--shadow-min-labelled", "500")
    assert retired["action"] == "retire" and "not promoted" in retired["reason"]
    assert registry.alias()["version"] == challenger and registry.alias(CHALLENGER)["version"] is None
    assert registry.events(first)[-1]["action"] == "retire"


def test_dry_run_changes_nothing_and_flags_are_checked(registry_with_challenger, tmp_path, capsys):
    table, reg, registry, first, challenger = registry_with_challenger
    _shadow_log(registry, table, challenger, first, tmp_path / "shadow", 200)
    outcome = _controller(capsys, reg, "--shadow-log", str(tmp_path / "shadow"), "--shadow-events", "100", "--dry-run")
    assert (outcome["action"], outcome["applied"]) == ("promote", False) and registry.alias()["version"] == first
    with pytest.raises(SystemExit):
        cli.main(["controller", "--registry", str(reg), "--shadow-log", "x", "--max-alert-rate", "1.5"])
    assert "expected a number in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["controller", "--registry", str(reg)])
    assert "give --shadow-log" in capsys.readouterr().err
