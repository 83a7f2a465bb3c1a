"""``streamscore up --drift-day``'s loop pieces that need no stack: the nightly table, the score lines, the story."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from models.registry import Registry
from streaming.demo import loop
from streaming.demo.up import run
from streaming.sim.simulator import simulate


@pytest.fixture(scope="module")
def drifting():
    return simulate(customers=30, terminals=60, days=6, seed=2, drift_day=3)


def _tx(df, i):
    row = df.iloc[i]
    return SimpleNamespace(transaction_id=str(row["TRANSACTION_ID"]),
                           event_time=row["TX_DATETIME"].tz_localize("UTC").to_pydatetime())


def test_the_replay_day_follows_the_published_transactions_and_the_job_logs_examples(drifting, tmp_path):
    recorder = loop.LoopRecorder(tmp_path, drifting, drift_day=3)
    assert str(recorder.drift_date) == "2018-04-04" and recorder.day is None
    recorder.on_transaction(_tx(drifting, len(drifting) - 1))
    assert recorder.day == str(drifting["TX_DATETIME"].iloc[-1].date())
    flags = loop.job_args(tmp_path)
    assert flags == ["--example-log", str(tmp_path / "example-log")]
    args = loop.controller_args(tmp_path / "reg", tmp_path, SimpleNamespace(project="p", host_port="h:1"), [], 0)
    assert args[args.index("--retrain-source") + 1] == flags[1]  # the controller retrains on what the job logged
    assert args[args.index("--retrain-retries") + 1] == str(loop.RETRIES)


def test_score_lines_carry_the_label_once_it_was_published_in_either_order(drifting, tmp_path):
    recorder = loop.LoopRecorder(tmp_path, drifting, drift_day=3)
    a, b = (str(t) for t in drifting["TRANSACTION_ID"].iloc[:2])
    body = {"event_time": "2018-04-01T00:10:00Z", "score": 0.2, "model_version": "v1"}
    recorder.on_score({**body, "transaction_id": a})  # scored, label later
    recorder.on_label(SimpleNamespace(transaction_id=a))
    recorder.on_label(SimpleNamespace(transaction_id=b))  # label published before the score arrives
    recorder.on_score({**body, "transaction_id": b})
    recorder.on_score({**body, "transaction_id": "warmup-1"})  # not traffic: not recorded
    recorder.close()
    lines = [json.loads(x) for x in (tmp_path / "loop" / "scores.jsonl").read_text().splitlines()]
    assert [(x["transaction_id"], "label" in x) for x in lines] == [(a, False), (a, True), (b, True)]
    assert all(x["customer_id"] for x in lines)
    from models.controller_inputs import ScoreLinesRows, combined_rows

    rows = combined_rows([ScoreLinesRows([tmp_path / "loop" / "scores.jsonl"])])
    assert len(rows) == 2 and rows["TX_FRAUD"].notna().all()  # the labelled line wins


def test_ap_per_phase_splits_at_the_drift_day_and_the_promotion(drifting, tmp_path):
    recorder = loop.LoopRecorder(tmp_path, drifting, drift_day=3)
    for i, row in enumerate(drifting.itertuples()):
        version = "v2" if row.TX_DATETIME >= pd.Timestamp("2018-04-06") else "v1"
        recorder.on_score({"transaction_id": str(row.TRANSACTION_ID), "event_time": row.TX_DATETIME.isoformat() + "Z",
                           "score": float(row.TX_FRAUD) * 0.9 + 0.05 * (i % 2), "model_version": version})
    phases = recorder.phases("v1", "v2")
    assert phases["before_drift"]["days"] == ["2018-04-01", "2018-04-03"]
    assert phases["after_drift_first_model"]["days"] == ["2018-04-04", "2018-04-05"]
    assert phases["after_promotion"]["days"] == ["2018-04-06", "2018-04-06"]
    assert sum(p["transactions"] for p in phases.values()) == len(drifting)
    assert phases["before_drift"]["average_precision"] == 1.0  # the scores separate the labels here
    assert recorder.phases("v1", None)["after_promotion"]["transactions"] == 0


def test_the_audit_feed_tells_the_story_since_the_start_and_fits_the_terminal(tmp_path):
    registry = Registry.open(tmp_path / "registry", keys=None)
    registry.record_event("register", actor="someone", reason="before the demo", version="v0")
    feed = loop.AuditFeed(registry, "2000-01-01T00:00:00+00:00")
    feed.since = registry.events()[-1]["at"] + "~"  # everything so far is older
    registry.record_event("retrain", actor="streamscore controller", version="v1", reason="retrain on 1 alarm(s)",
                          details={"alarm_count": 1})
    registry.record_event("gate", actor="streamscore retrain", version="v2", reason="promote: ΔAP +0.2 " * 10,
                          details={"difference": {"average_precision": 0.2}, "challenger": {"average_precision": 0.8},
                                   "champion": {"average_precision": 0.6}})
    registry.record_event("promote", actor="streamscore controller", version="v2", reason="after its shadow",
                          details={"shadow": {"events": 200, "alert_rate": 0.3}})
    lines = feed.poll("2018-04-12")
    assert [e["action"] for e in feed.story] == ["retrain", "gate", "promote"] and len(lines) == 3
    assert lines[0] == "[2018-04-12] controller: retrain v1: retrain on 1 alarm(s)"
    assert feed.story[1]["challenger_ap"] == 0.8 and feed.story[2]["shadow"]["events"] == 200
    assert feed.poll("2018-04-13") == [] and feed.promoted() == "v2"
    section = {"drift": {"kind": "new-pattern", "date": "2018-04-08"}, "drift_alarms": 1, "story": feed.story,
               "average_precision": {"before_drift": {"transactions": 5, "average_precision": 0.4},
                                     "after_promotion": {"transactions": 0, "average_precision": None}}}
    rendered = loop.render_loop(section)
    assert all(len(line) <= 79 for line in rendered) and "before drift 0.4" in rendered[-1]
    assert "after promotion" not in rendered[-1]


def test_drift_day_must_be_a_day_of_the_replay(capsys):
    with pytest.raises(SystemExit):
        run(["--drift-day", "30", "--days", "10"])
    assert "--drift-day must be a day of the replay" in capsys.readouterr().err
