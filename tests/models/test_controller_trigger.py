"""The controller's retrain trigger: a monitoring alarm (or a schedule) starts one retrain, with a cooldown; every decision audited."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from models.controller import Alarm, Incident, State, TriggerConfig, alarm_of, decide_retrain
from models.controller_inputs import MonitoringLines
from models.monitoring import monitoring_event
from models.registry import CHALLENGER, Registry
from models.signing import KeyRing
from streaming import cli

DRIFT = Alarm("drift", "v1", None, "ADWIN drift in the production model's error")


# --------------------------------------------------------------------------- the rule


def test_an_alarm_on_production_starts_a_retrain_and_the_cooldown_absorbs_the_next():
    state, config = State("v1", None, None), TriggerConfig(cooldown_seconds=600)
    first = decide_retrain(state, config, [DRIFT, DRIFT], now=1000.0, last_retrain=None)
    assert first.action == "retrain" and "2 alarm(s) (2 drift) on v1" in first.reason
    assert first.metrics["alarm_count"] == 2 and first.metrics["alarms"][0]["kind"] == "drift"
    again = decide_retrain(state, config, [DRIFT], now=1300.0, last_retrain=1000.0)
    assert again.action == "absorb" and "started 300 s ago, within the cooldown of 600 s" in again.reason
    assert decide_retrain(state, config, [DRIFT], now=1700.0, last_retrain=1000.0).action == "retrain"
    assert decide_retrain(state, config, [], now=1700.0, last_retrain=None).action == "wait"


def test_one_change_at_a_time_stale_alarms_and_the_off_switch():
    config = TriggerConfig(cooldown_seconds=0)
    shadowing = decide_retrain(State("v1", "v2", None), config, [DRIFT], now=0.0, last_retrain=None)
    assert shadowing.action == "absorb" and "v2 is in shadow" in shadowing.reason
    watching = decide_retrain(State("v1", None, "v1"), config, [DRIFT], now=0.0, last_retrain=None)
    assert watching.action == "absorb" and "under watch" in watching.reason
    stale = decide_retrain(State("v3", None, None), config, [DRIFT], now=0.0, last_retrain=None)
    assert stale.action == "absorb" and "stale" in stale.reason  # about v1, which is no longer production
    unnamed = Alarm("stability", None, "2018-04-09T00:00:00", "PSI past the alarm threshold on score")
    assert decide_retrain(State("v3", None, None), config, [unnamed], now=0.0, last_retrain=None).action == "retrain"
    off = TriggerConfig(on_alarm=False)
    assert decide_retrain(State("v1", None, None), off, [DRIFT], now=0.0, last_retrain=None).action == "wait"


def test_a_schedule_retrains_when_none_ran_for_its_period():
    config = TriggerConfig(on_alarm=False, schedule_seconds=3600)
    assert decide_retrain(State("v1", None, None), config, [], now=0.0, last_retrain=None).action == "retrain"
    assert decide_retrain(State("v1", None, None), config, [], now=3000.0, last_retrain=0.0).action == "wait"
    due = decide_retrain(State("v1", None, None), config, [], now=3600.0, last_retrain=0.0)
    assert due.action == "retrain" and "scheduled" in due.reason
    assert decide_retrain(State("v1", "v2", None), config, [], now=9e9, last_retrain=0.0).action == "wait"
    fresh = decide_retrain(State("v1", None, None), config, [], now=5000.0, last_retrain=None, production_since=4000.0)
    assert fresh.action == "wait"  # production was put in place 1000 s ago: not due
    with pytest.raises(ValueError, match="schedule_seconds must be a number > 0"):
        TriggerConfig(schedule_seconds=0)
    with pytest.raises(ValueError, match="cooldown_seconds must be a number >= 0"):
        TriggerConfig(cooldown_seconds=-1)


def test_a_refused_alarm_retrain_is_retried_a_cooldown_apart_until_one_passes_the_gate():
    config, state = TriggerConfig(cooldown_seconds=100, retries=2), State("v1", None, None)
    refused_once = Incident("2018-04-11T00:00:00+00:00", "v1", "ADWIN drift", attempts=1, resolved=False)
    assert decide_retrain(state, config, [], now=150.0, last_retrain=100.0, incident=refused_once).action == "wait"
    retry = decide_retrain(state, config, [], now=200.0, last_retrain=100.0, incident=refused_once)
    assert retry.action == "retrain" and retry.metrics["trigger"] == "retry" and "retry 1 of 2" in retry.reason
    spent = dataclasses.replace(refused_once, attempts=3)
    assert decide_retrain(state, config, [], now=900.0, last_retrain=100.0, incident=spent).action == "wait"
    passed = dataclasses.replace(refused_once, resolved=True)
    assert decide_retrain(state, config, [], now=900.0, last_retrain=100.0, incident=passed).action == "wait"
    replaced = dataclasses.replace(refused_once, version="v0")  # production moved on since: the incident is over
    assert decide_retrain(state, config, [], now=900.0, last_retrain=100.0, incident=replaced).action == "wait"
    assert decide_retrain(state, TriggerConfig(cooldown_seconds=100), [], now=900.0, last_retrain=100.0,
                          incident=refused_once).action == "wait"  # retries 0: no retry


def test_which_monitoring_events_are_alarms():
    drift = alarm_of({"kind": "drift", "detector": "ADWIN", "model_version": "v1", "mean_error": 0.21, "labels": 900})
    assert (drift.kind, drift.model_version) == ("drift", "v1") and "mean error 0.2100 after 900 labels" in drift.detail
    psi = monitoring_event({"amount": 0.6, "score": 0.05}, model_version="v1", at="2018-04-09T00:00:00")
    alarm = alarm_of(psi)
    assert (alarm.kind, alarm.at) == ("stability", "2018-04-09T00:00:00") and "amount" in alarm.detail
    assert alarm_of(monitoring_event({"amount": 0.15}, model_version="v1")) is None  # warn is not an alarm
    assert alarm_of({"kind": "online_snapshot", "version": "o1"}) is None
    with pytest.raises(ValueError, match="'status' must be ok, warn or alarm"):
        alarm_of({"kind": "stability", "status": "bad"})
    with pytest.raises(ValueError, match="with a 'kind'"):
        alarm_of({"nokind": 1})


def test_monitoring_lines_deliver_each_event_once_after_ack_and_wait_for_a_whole_line(tmp_path):
    path = tmp_path / "monitoring.jsonl"
    path.write_text('{"kind": "drift", "model_version": "v1"}\n{"kind": "stab')
    events = MonitoringLines([path])
    assert events.pull() == [{"kind": "drift", "model_version": "v1"}]
    assert len(events.pull()) == 1  # not acked: delivered again
    events.ack()
    assert events.pull() == []  # the half-written line waits
    with path.open("a") as f:
        f.write('ility", "status": "ok"}\n')
    assert events.pull() == [{"kind": "stability", "status": "ok"}]
    events.ack()
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match="is not JSON"):
        events.pull()


# --------------------------------------------------------------------------- the command, on a registry


@pytest.fixture
def drifted(make_feature_table, tmp_path, signing_key_env, capsys):
    """A feature table whose fraud pattern changes on day 21, and a production model trained before it."""
    table = make_feature_table(days=42, per_day=400, drift_day=21, seed=3)
    path, reg = tmp_path / "features.parquet", tmp_path / "reg"
    table.to_parquet(path)
    assert cli.main(["retrain", "--features", str(path), "--registry", str(reg), "--nthread", "1",
                     "--gate-resamples", "200", "--as-of", "2018-06-21"]) == 0
    first = json.loads(capsys.readouterr().out)["version"]
    return table, path, reg, Registry.open(reg, keys=KeyRing.load(signing_key_env)), first


def _controller(capsys, reg, *flags) -> dict:
    assert cli.main(["controller", "--registry", str(reg), "--once", *flags]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.splitlines()[-1])["trigger"]


def _alarm(path, version):
    with path.open("a") as f:
        f.write(json.dumps({"kind": "drift", "detector": "ADWIN", "model_version": version, "mean_error": 0.3,
                            "labels": 5000, "transaction_id": "t1"}) + "\n")


def test_a_drift_alarm_retrains_once_the_challenger_goes_to_shadow_and_later_alarms_are_absorbed(drifted, tmp_path,
                                                                                                  capsys):
    table, path, reg, registry, first = drifted
    alarms = tmp_path / "monitoring.jsonl"
    flags = ["--retrain-on-alarm", "--monitoring-from", str(alarms), "--retrain-source", str(path),
             "--retrain-nthread", "1", "--gate-resamples", "200", "--retrain-cooldown", "3600"]
    assert _controller(capsys, reg, *flags)["action"] == "wait"  # no alarm yet
    _alarm(alarms, first)
    step = _controller(capsys, reg, *flags)
    assert step["action"] == "retrain" and "1 alarm(s) (1 drift) on " + first in step["reason"]
    challenger = step["retrain"]["version"]
    assert step["retrain"]["shadow"] and step["retrain"]["difference"]["average_precision"] > 0
    assert registry.alias()["version"] == first and registry.alias(CHALLENGER)["version"] == challenger
    trigger = [e for e in registry.events() if e["action"] == "retrain"]
    assert len(trigger) == 1 and trigger[0]["actor"] == "streamscore controller"
    assert trigger[0]["details"]["alarms"][0]["model_version"] == first and trigger[0]["details"]["source"] == str(path)
    made = registry.events(challenger)
    assert [e["action"] for e in made] == ["register", "gate", "shadow"]
    gate_event = made[1]["details"]  # both models' figures, and which model the champion was
    assert gate_event["champion"]["average_precision"] < gate_event["challenger"]["average_precision"]
    assert gate_event["champion_model"]["version"] == first
    assert all("drift" in e["reason"] or e["action"] != "register" for e in made)

    # The drift keeps raising alarms while the challenger is judged: one retrain, the rest audited as absorbed.
    _alarm(alarms, first)
    absorbed = _controller(capsys, reg, *flags)
    assert absorbed["action"] == "absorb" and f"{challenger} is in shadow" in absorbed["reason"]
    registry.clear(CHALLENGER)  # retired, say: the cooldown still holds
    cooling = _controller(capsys, reg, *flags)
    assert cooling["action"] == "absorb" and "within the cooldown of 3600 s" in cooling["reason"]
    audited = [e for e in registry.events() if e["action"] == "alarm"]
    assert len(audited) == 2 and all(e["details"]["disposition"] == "absorbed" for e in audited)
    assert len([e for e in registry.events() if e["action"] == "retrain"]) == 1

    # A second retrain after the cooldown (0 here); an alarm about a replaced version is ignored as stale.
    registry.promote(challenger)
    stale = _controller(capsys, reg, *flags[:-1], "0")
    assert stale["action"] == "absorb" and "stale" in stale["reason"]


def test_a_challenger_trained_on_shuffled_labels_is_refused_retried_and_a_failed_retrain_is_audited(drifted, tmp_path, capsys):
    table, path, reg, registry, first = drifted
    shuffled = table.assign(TX_FRAUD=np.random.default_rng(0).permutation(table["TX_FRAUD"].to_numpy()))
    bad = tmp_path / "shuffled.parquet"
    shuffled.to_parquet(bad)
    # On a schedule: production was promoted just now, so a retrain is not due yet.
    assert _controller(capsys, reg, "--retrain-every", "3600", "--retrain-source", str(bad))["action"] == "wait"
    alarms = tmp_path / "monitoring.jsonl"
    _alarm(alarms, first)
    flags = ["--retrain-on-alarm", "--monitoring-from", str(alarms), "--retrain-source", str(bad),
             "--retrain-nthread", "1", "--gate-resamples", "200", "--retrain-retries", "1", "--retrain-cooldown", "0"]
    step = _controller(capsys, reg, *flags)
    assert step["action"] == "retrain" and step["metrics"]["trigger"] == "alarm"
    refused = step["retrain"]
    assert not refused["shadow"] and not refused["promoted"]
    assert registry.alias()["version"] == first and registry.alias(CHALLENGER)["version"] is None
    assert registry.events(refused["version"])[-1]["action"] == "refuse"
    # Refused: the alarm's retrain is retried once (a cooldown later: 0 s here), then no more.
    alarms.write_text("")
    retry = _controller(capsys, reg, *flags)
    assert retry["action"] == "retrain" and retry["metrics"]["trigger"] == "retry" and "retry 1 of 1" in retry["reason"]
    assert _controller(capsys, reg, *flags)["action"] == "wait"

    short = tmp_path / "short.parquet"
    table[table["TX_DATETIME"] < "2018-06-10"].to_parquet(short)
    _alarm(alarms, first)
    failed = _controller(capsys, reg, "--retrain-on-alarm", "--monitoring-from", str(alarms), "--retrain-cooldown", "0",
                         "--retrain-source", str(short), "--retrain-nthread", "1")
    assert failed["action"] == "retrain" and "needs train_days + eval_days + delay_days" in failed["retrain"]["error"]
    assert registry.events()[-1]["action"] == "retrain-failed"


def test_the_retrain_source_may_be_the_streams_labelled_example_log(drifted, tmp_path, capsys):
    """``--retrain-source DIR``: the job's ``stream --example-log`` layout (``day=YYYY-MM-DD/*.parquet``)."""
    table, path, reg, registry, first = drifted
    log = tmp_path / "example-log"
    for day, rows in table.groupby(table["TX_DATETIME"].dt.date):
        (log / f"day={day}").mkdir(parents=True)
        rows.assign(label_status="confirmed", score=0.0, model_version=first).to_parquet(
            log / f"day={day}" / "part-0.parquet")
    alarms = tmp_path / "monitoring.jsonl"
    _alarm(alarms, first)
    step = _controller(capsys, reg, "--retrain-on-alarm", "--monitoring-from", str(alarms), "--retrain-source", str(log),
                       "--retrain-nthread", "1", "--gate-resamples", "200")
    assert step["action"] == "retrain" and step["retrain"]["shadow"] and step["retrain"]["rows"] == len(table)
    assert registry.alias(CHALLENGER)["version"] == step["retrain"]["version"]


def test_trigger_flags_are_checked(drifted, capsys):
    _, path, reg, _, _ = drifted
    for flags, message in ((["--retrain-on-alarm", "--retrain-source", str(path)], "needs --monitoring-subscription"),
                           (["--retrain-on-alarm", "--monitoring-from", "x"], "need --retrain-source"),
                           (["--monitoring-from", "x"], "need --retrain-on-alarm"),
                           (["--retrain-every", "0", "--retrain-source", str(path)], "--retrain-every must be"),
                           (["--retrain-on-alarm", "--monitoring-subscription", "m", "--retrain-source", str(path)],
                            "give --project")):
        with pytest.raises(SystemExit):
            cli.main(["controller", "--registry", str(reg), "--once", *flags])
        assert message in capsys.readouterr().err


class _Events:
    """A fake monitoring source that records whether (and when) the pulled events were acknowledged."""

    def __init__(self, registry, events):
        self.registry, self.events, self.acked_after = registry, events, None

    def pull(self):
        return list(self.events)

    def ack(self):
        self.acked_after = [e["action"] for e in self.registry.events()]


def test_events_are_acknowledged_only_after_the_decision_is_audited_and_never_on_a_dry_run(tmp_path):
    from models.cli_controller import Trigger, trigger_step
    from models.retrain import RetrainConfig

    registry = Registry.open(tmp_path / "reg", keys=None)
    events = _Events(registry, [{"kind": "drift", "model_version": "v1"}, {"kind": "online_snapshot"},
                                {"kind": "stability", "status": "nonsense"}])
    trigger = Trigger(TriggerConfig(), events, str(tmp_path / "absent.parquet"), RetrainConfig())
    dry = trigger_step(registry, trigger, State("v1", "v2", None), dry_run=True)
    assert dry["action"] == "absorb" and events.acked_after is None and registry.events() == []
    step = trigger_step(registry, trigger, State("v1", "v2", None))
    assert (step["action"], step["events"], step["unreadable"]) == ("absorb", 3, 1)
    assert "'status' must be ok, warn or alarm" in step["metrics"]["unreadable"][0]
    assert events.acked_after == ["alarm"]  # the audit event was written before the ack
    failed = trigger_step(registry, trigger, State("v1", None, None))  # the source does not exist
    assert failed["action"] == "retrain" and "does not exist" in failed["retrain"]["error"]
    assert events.acked_after == ["alarm", "retrain", "retrain-failed"]
