"""`streamscore retrain` on a feature table whose fraud pattern changes: windows, gate, registry events."""

import datetime as dt
import json

import numpy as np
import pytest

from models import retrain
from models.monitoring import load_reference
from models.registry import Registry
from streaming import cli

pytestmark = pytest.mark.usefixtures("signing_key_env")  # train and retrain sign, monitor verifies

DRIFT_DAY = 21  # 2018-06-22: fraud depends on other features from that day on


def test_windows_respect_the_label_delay():
    labelled, split = retrain.RetrainConfig(train_days=7, delay_days=7, eval_days=5).windows(dt.date(2018, 8, 31))
    assert labelled == dt.date(2018, 8, 24)
    assert split.to_dict()["test"] == ["2018-08-20", "2018-08-24"]
    assert split.to_dict()["train"] == ["2018-08-13", "2018-08-19"]


@pytest.fixture
def features(make_feature_table, tmp_path):
    table = make_feature_table(days=42, per_day=400, drift_day=DRIFT_DAY, seed=3)
    path = tmp_path / "features.parquet"
    table.to_parquet(path)
    return table, path


def _retrain(path, reg, *extra):
    return ["retrain", "--features", str(path), "--registry", str(reg), "--nthread", "1",
            "--gate-resamples", "200", *extra]


def test_retrain_promotes_a_better_challenger_refuses_a_broken_one_and_audits_it(features, tmp_path, capsys):
    table, path = features
    reg = tmp_path / "reg"
    # 1. Before the drift, on an empty registry: the first model is promoted (it beats a random score).
    assert cli.main(_retrain(path, reg, "--as-of", "2018-06-21", "--reason", "bootstrap")) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert f"challenger {first['version']} AP " in captured.err and "; promoted (gate: PROMOTE" in captured.err
    registry = Registry.open(reg)
    assert first["promoted"] and registry.alias()["version"] == first["version"] and first["champion_model"] is None
    meta = registry.metadata(first["version"])
    assert meta["retrain"]["labelled_until"] == "2018-06-14"
    assert meta["data"]["split"]["train"] == ["2018-06-01", "2018-06-07"]  # nothing after the labelled day is read
    assert load_reference(registry, first["version"]).rows == meta["data"]["train_rows"]

    # 2. After the drift: the champion learnt the old pattern; a challenger on post-drift data beats it.
    assert cli.main(_retrain(path, reg, "--reason", "drift alarm")) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["promoted"] and registry.alias()["version"] == second["version"]
    assert second["champion_model"]["version"] == first["version"] and not second["champion_model"]["trained_on_window"]
    lo, hi = second["difference"]["interval"]
    assert 0 < lo <= second["difference"]["average_precision"] <= hi
    assert "challenger" in registry.metadata(second["version"])["retrain"]["segments"]

    # 3. A broken label feed (training labels shuffled): registered for the record, refused, production unchanged.
    broken = table.copy()
    train = (broken["TX_DATETIME"] >= "2018-06-22") & (broken["TX_DATETIME"] < "2018-06-29")
    broken.loc[train, "TX_FRAUD"] = np.random.default_rng(0).permutation(broken.loc[train, "TX_FRAUD"].to_numpy())
    broken_path = tmp_path / "broken.parquet"
    broken.to_parquet(broken_path)
    assert cli.main(_retrain(broken_path, reg, "--reason", "scheduled")) == 0
    third = json.loads(capsys.readouterr().out)
    assert not third["promoted"] and registry.alias()["version"] == second["version"]
    assert third["gate"].startswith("gate: REFUSE")

    # Every automatic action is an audit event: who, what, why, metrics.
    events = registry.events()
    assert [(e["action"], e["version"]) for e in events] == [
        ("register", first["version"]), ("gate", first["version"]), ("promote", first["version"]),
        ("register", second["version"]), ("gate", second["version"]), ("promote", second["version"]),
        ("register", third["version"]), ("gate", third["version"]), ("refuse", third["version"])]
    assert all(e["actor"] == "streamscore retrain" and e["reason"] for e in events)
    assert events[3]["reason"] == "retrain (drift alarm)"
    assert events[5]["details"]["from"] == first["version"]
    assert events[8]["details"]["difference"]["average_precision"] < 0


def test_no_promote_registers_and_gates_only(features, tmp_path, capsys):
    _, path = features
    reg = tmp_path / "reg"
    assert cli.main(_retrain(path, reg, "--no-promote")) == 0
    out = json.loads(capsys.readouterr().out)
    registry = Registry.open(reg)
    assert not out["promoted"] and registry.alias()["version"] is None
    assert registry.events()[-1]["action"] == "refuse" and "--no-promote" in registry.events()[-1]["reason"]


def test_a_table_too_short_for_the_windows_is_refused_with_the_reason(features, tmp_path, capsys):
    _, path = features
    assert cli.main(_retrain(path, tmp_path / "reg", "--as-of", "2018-06-15")) == 2
    assert "needs train_days + eval_days + delay_days days" in capsys.readouterr().err
