"""`streamscore monitor`: one monitoring event per window, an alarm from the day a feature shifts."""

import json

import pytest

from streaming import cli

pytestmark = pytest.mark.usefixtures("signing_key_env")  # train and retrain sign, monitor verifies

SHIFT_DAY = "2018-06-26"  # a window start (windows of 2 days from 06-08)


def shifted_table_and_model(make_feature_table, tmp_path, capsys):
    """A feature table whose amounts shift from SHIFT_DAY, and a registry whose production model
    was trained on its first week."""
    table = make_feature_table(days=30, per_day=300, seed=6)
    table.loc[table["TX_DATETIME"] >= SHIFT_DAY, "TX_AMOUNT"] += 1.0  # a one-standard-deviation shift of the amounts
    path = tmp_path / "features.parquet"
    table.to_parquet(path)
    reg = tmp_path / "reg"
    assert cli.main(["train", "--features", str(path), "--train-start", "2018-06-01", "--grid", "default",
                     "--valid-folds", "0", "--registry", str(reg), "--promote", "--nthread", "1"]) == 0
    capsys.readouterr()
    return table, path, reg


def test_monitor_raises_the_alarm_from_the_shift_day_only(make_feature_table, tmp_path, capsys):
    table, path, reg = shifted_table_and_model(make_feature_table, tmp_path, capsys)
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


def test_monitor_reports_segments_per_window_and_draws_them_over_time(make_feature_table, tmp_path, capsys,
                                                                      signing_key_env):
    """Each window's event carries alert rate and precision per segment (equal to models.segments on
    the window's rows and the model's scores); --report draws the windows over time."""
    import pandas as pd

    from models.evaluation import feature_table_spec
    from models.registry import Registry
    from models.segments import segment_report
    from models.signing import KeyRing

    table, path, reg = shifted_table_and_model(make_feature_table, tmp_path, capsys)
    report = tmp_path / "monitor.html"
    assert cli.main(["monitor", "--features", str(path), "--registry", str(reg), "--window-days", "2",
                     "--report", str(report)]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert f"report of {len(events)} windows written to {report}" in captured.err
    registry = Registry.open(str(reg), keys=KeyRing.load(signing_key_env))
    model = registry.load("production", expected_spec_hash=feature_table_spec(str(path)).spec_hash)
    last = events[-1]
    start = pd.Timestamp(last["at"])
    rows = table[(table["TX_DATETIME"] >= start) & (table["TX_DATETIME"] < start + pd.Timedelta(days=2))]
    expected = segment_report(rows, model.score_many(rows[list(model.feature_names)].to_numpy()))
    assert set(last["segments"]) == set(expected) and {"amount", "card", "terminal"} <= set(expected)
    for family, segments in expected.items():
        for name, row in segments.items():
            got = last["segments"][family][name]
            assert got["transactions"] == row["transactions"] and got["alert_rate"] == pytest.approx(row["alert_rate"])
            assert (got["precision"] is None) == (row["precision"] is None)
    page = report.read_text()
    assert page.count("<svg") >= 4  # PSI, live quality, alert rate and precision per segment
    assert "Population stability per window" in page and "TX_AMOUNT" in page
    assert "Alert rate per segment" in page and "amount: " in page
    assert page.count("<tr>") == len(events) + 1 and page.count("class='alarm'") == sum(
        e["status"] == "alarm" for e in events)


def example_log_of(table, directory):
    """A feature table written as the streaming job's labelled-example log (day partitions)."""
    from streaming.features.spec import DEFAULT_SPEC
    from streaming.job.example_log import CONFIRMED, LogRecord, LogRow, write_rows

    names = list(DEFAULT_SPEC.names)
    times = table["TX_DATETIME"].to_numpy().astype("datetime64[ns]").astype("int64")
    rows = [LogRow(LogRecord(str(tid), int(t), str(c), str(m), tuple(x), 0.5, "v0"), int(y), CONFIRMED)
            for tid, t, c, m, y, x in zip(table["TRANSACTION_ID"], times, table["CUSTOMER_ID"], table["TERMINAL_ID"],
                                          table["TX_FRAUD"], table[names].to_numpy())]
    for i in range(0, len(rows), 1000):  # one write per "bundle"
        write_rows(str(directory), rows[i:i + 1000], DEFAULT_SPEC)


def test_train_evaluate_and_monitor_read_the_example_log_directory(make_feature_table, tmp_path, capsys):
    table = make_feature_table(days=20, per_day=200, seed=7)
    example_log_of(table, tmp_path / "log")
    assert len(list((tmp_path / "log").glob("day=*"))) == 20
    reg = tmp_path / "reg"
    assert cli.main(["train", "--features", str(tmp_path / "log"), "--train-start", "2018-06-01", "--grid", "default",
                     "--valid-folds", "0", "--registry", str(reg), "--promote", "--nthread", "1"]) == 0
    assert f"{len(table):,} rows" in capsys.readouterr().err
    assert cli.main(["evaluate", "--features", str(tmp_path / "log"), "--model", "production", "--registry", str(reg)]) == 0
    capsys.readouterr()
    assert cli.main(["monitor", "--features", str(tmp_path / "log"), "--registry", str(reg), "--window-days", "2"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events and all(e["kind"] == "stability" for e in events)


@pytest.mark.integration
def test_follow_prints_the_jobs_stability_events_and_serves_them_as_gauges(pubsub_emulator, capsys):
    import re
    import urllib.request
    import uuid

    from models.monitoring import monitoring_event
    from streaming.job.learning import monitoring_message
    from streaming.job.monitor import stability_message

    topic, sub = f"mon-{uuid.uuid4().hex[:8]}", f"mon-follow-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.ensure([topic], {sub: topic})
    publisher = pubsub_emulator.publisher_client()
    path = pubsub_emulator.topic_path(topic)
    ok = monitoring_event({"TX_AMOUNT": 0.01, "score": 0.02}, model_version="v1", at="2018-04-02T00:00:00Z")
    alarm = {**monitoring_event({"TX_AMOUNT": 0.4, "score": 0.3}, model_version="v1",
                                live={"rows": 10, "frauds": 2, "average_precision": 0.5, "card_precision@100": 0.02}),
             "window_end": "2018-04-03T00:00:00Z"}
    served = monitoring_message("online_served", labels_joined=40, keep_days=7, days={}, overall={
        "online_served": {"average_precision": 0.61, "card_precision@100": 0.2, "transactions": 40}})
    for message in (stability_message(ok), monitoring_message("drift", detail="x"), served, stability_message(alarm)):
        publisher.publish(path, message.data, **message.attributes).result()
    assert cli.main(["monitor", "--follow", sub, "--project", pubsub_emulator.project,
                     "--emulator-host", pubsub_emulator.host_port, "--metrics-port", "0", "--max-events", "2"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["psi"]["TX_AMOUNT"] for line in captured.out.splitlines()] == [0.01, 0.4]
    assert "2 stability events from" in captured.err and "1 with a PSI alarm" in captured.err
    port = int(re.search(r"metrics on :(\d+)/metrics", captured.err).group(1))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'streamscore_monitoring_psi{variable="TX_AMOUNT"} 0.4' in metrics
    assert 'streamscore_monitoring_psi_alarm{variable="TX_AMOUNT"} 1.0' in metrics
    assert 'streamscore_monitoring_live_quality{metric="average_precision"} 0.5' in metrics
    assert "streamscore_monitoring_status 2.0" in metrics
    # the online model's served figures (online_served events) are gauges too, not printed lines
    assert ('streamscore_online_served_quality{metric="average_precision",model="online_served",period="kept_days"} 0.61'
            in metrics)


def test_follow_and_features_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["monitor"])
    with pytest.raises(SystemExit):
        cli.main(["monitor", "--features", "x.parquet", "--follow", "sub"])
    assert "give --features" in capsys.readouterr().err
