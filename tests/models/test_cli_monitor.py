"""`streamscore monitor`: one monitoring event per window, an alarm from the day a feature shifts."""

import json

import pytest

from streaming import cli

pytestmark = pytest.mark.usefixtures("signing_key_env")  # train and retrain sign, monitor verifies

SHIFT_DAY = "2018-06-26"  # a window start (windows of 2 days from 06-08)


def test_monitor_raises_the_alarm_from_the_shift_day_only(make_feature_table, tmp_path, capsys):
    table = make_feature_table(days=30, per_day=300, seed=6)
    shifted = table["TX_DATETIME"] >= SHIFT_DAY
    table.loc[shifted, "TX_AMOUNT"] += 1.0  # a one-standard-deviation shift of the amounts
    path = tmp_path / "features.parquet"
    table.to_parquet(path)
    reg = tmp_path / "reg"
    assert cli.main(["train", "--features", str(path), "--train-start", "2018-06-01", "--grid", "default",
                     "--valid-folds", "0", "--registry", str(reg), "--promote", "--nthread", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["monitor", "--features", str(path), "--registry", str(reg), "--window-days", "2"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    alarms = sum(e["status"] == "alarm" for e in events)
    assert f", {len(events)} windows of 2 day(s) from 2018-06-08 over " in captured.err
    assert f"; {alarms} with a PSI alarm (> 0.25)" in captured.err and alarms > 0
    assert [e["at"] for e in events][:2] == ["2018-06-08", "2018-06-10"]  # from the day after training
    before = [e for e in events if e["at"] < SHIFT_DAY]
    after = [e for e in events if e["at"] >= SHIFT_DAY]
    assert before and after
    assert all(e["psi_status"]["TX_AMOUNT"] == "ok" for e in before), [(e["at"], e["psi"]["TX_AMOUNT"]) for e in events]
    assert all(e["psi_status"]["TX_AMOUNT"] == "alarm" and "TX_AMOUNT" in e["drifted"] for e in after)
    assert all(e["psi"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] < 0.1 for e in events)
    assert events[-1]["live"]["average_precision"] is not None and events[-1]["kind"] == "stability"
    # Thresholds are flags.
    assert cli.main(["monitor", "--features", str(path), "--registry", str(reg), "--psi-alarm", "100",
                     "--start", SHIFT_DAY]) == 0
    assert all(json.loads(line)["status"] != "alarm" for line in capsys.readouterr().out.splitlines())
