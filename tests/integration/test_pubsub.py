"""Against the real Pub/Sub emulator: lifecycle, resources, and publish -> pull with nothing lost."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from streaming.io.datasets import write_table
from streaming.io.events import SCHEMA_LABEL, SCHEMA_TRANSACTION, Label, Transaction, format_time, parse
from streaming.io.publish import TopicPaths, make_publisher, publish_dataset, run, schedule_labels
from streaming.io.pubsub_local import (
    EmulatorError, EmulatorNotFound, PubSubEmulator, Topics, find_emulator, pull_all, subscription_path,
    topic_path,
)

pytestmark = pytest.mark.integration


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- lifecycle


def test_emulator_starts_answers_and_stops_with_its_whole_group():
    try:
        find_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(str(exc))
    emulator = PubSubEmulator()
    with emulator:
        pid = emulator.pid
        assert emulator.running and _group_members(pid)
        assert emulator.env() == {"PUBSUB_EMULATOR_HOST": emulator.host_port}
        assert emulator.host_port.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://{emulator.host_port}/", timeout=5) as response:
            assert response.read().strip() == b"Ok"
        data_dir = emulator.log_path.parent
        assert "Server started" in emulator.log_tail()
    assert not emulator.running and emulator.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert _group_members(pid) == []
    assert not data_dir.exists()  # the temporary dir is removed
    emulator.stop()  # idempotent


def test_start_failure_reports_the_log_tail(tmp_path):
    script = tmp_path / "fake-emulator"
    script.write_text("#!/bin/sh\necho 'java.net.BindException: boom' >&2\nexit 3\n")
    script.chmod(0o755)
    emulator = PubSubEmulator(binary=script, port=1, data_dir=tmp_path / "data", startup_timeout=10)
    with pytest.raises(EmulatorError, match=r"exited with code 3 before answering on 127\.0\.0\.1:1(.|\n)*BindException: boom"):
        emulator.start()
    assert not emulator.running


def test_start_timeout_kills_the_process_group(tmp_path):
    script = tmp_path / "silent-emulator"
    marker = f"300.{os.getpid()}{uuid.uuid4().int % 10**6}"  # a duration no other process uses
    script.write_text(f"#!/bin/sh\nsleep {marker} &\nsleep {marker}\n")  # never answers; has a child
    script.chmod(0o755)
    emulator = PubSubEmulator(binary=script, data_dir=tmp_path / "data", startup_timeout=0.5)
    with pytest.raises(EmulatorError, match=r"did not answer on http://127\.0\.0\.1:\d+/ within 0\.5 s"):
        emulator.start()
    log = (tmp_path / "data" / "emulator.log")
    assert log.exists()  # a given data dir is kept
    assert not emulator.running
    sleepers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if _cmdline(pid) == f"sleep\x00{marker}\x00"]
    assert sleepers == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_missing_binary_is_reported(tmp_path):
    with pytest.raises(EmulatorNotFound, match="does not exist or is not executable"):
        PubSubEmulator(binary=tmp_path / "nope").start()


# --------------------------------------------------------------------------- resources


def test_topics_and_subscriptions_are_idempotent(pubsub_emulator):
    topics = Topics(**{name: _unique(value) for name, value in vars(Topics()).items()})
    subs = {_unique("tx-sub"): topics.transactions, _unique("lb-sub"): topics.labels}
    first = pubsub_emulator.ensure(topics.all(), subs)
    second = pubsub_emulator.ensure(topics.all(), subs)
    assert first == second
    assert first[0] == [topic_path("local-project", t) for t in topics.all()]
    assert pubsub_emulator.create_topic(topics.scores) == topic_path("local-project", topics.scores)
    sub = next(iter(subs))
    assert pubsub_emulator.create_subscription(topics.transactions, sub) == subscription_path("local-project", sub)

    publisher = pubsub_emulator.publisher_client()
    subscriber = pubsub_emulator.subscriber_client()
    try:
        listed = {t.name for t in publisher.list_topics(request={"project": "projects/local-project"})}
        assert set(first[0]) <= listed
        found = subscriber.get_subscription(request={"subscription": first[1][0]})
        assert found.topic == first[0][0] and found.ack_deadline_seconds == 60
    finally:
        publisher.transport.close()
        subscriber.close()


# --------------------------------------------------------------------------- nothing lost


def _setup_streams(emulator) -> tuple[TopicPaths, str, str]:
    tx_topic, lb_topic = _unique("transactions"), _unique("labels")
    tx_sub, lb_sub = _unique("transactions-check"), _unique("labels-check")
    emulator.ensure([tx_topic, lb_topic], {tx_sub: tx_topic, lb_sub: lb_topic})
    return (TopicPaths(emulator.topic_path(tx_topic), emulator.topic_path(lb_topic)),
            emulator.subscription_path(tx_sub), emulator.subscription_path(lb_sub))


def _pull(emulator, path: str, expected: int) -> list:
    subscriber = emulator.subscriber_client()
    try:
        return pull_all(subscriber, path, expected, timeout=60, settle=1.0)
    finally:
        subscriber.close()


def _check_exact(received, df, schema: str, kind: type) -> dict[str, object]:
    """Every row exactly once, parsed, with correct attributes; returns events by id."""
    events = {}
    for message in received:
        event = parse(message.data, message.attributes, expect=schema)
        assert isinstance(event, kind), event
        assert message.attributes["schema"] == schema
        assert message.attributes["event_time"] == format_time(event.event_time)
        events.setdefault(event.transaction_id, []).append(event)
    duplicates = {tid: len(v) for tid, v in events.items() if len(v) > 1}
    assert duplicates == {}
    expected_ids = set(df["TRANSACTION_ID"].astype(str))
    assert set(events) == expected_ids, (len(set(events) - expected_ids), len(expected_ids - set(events)))
    return {tid: v[0] for tid, v in events.items()}


def test_publish_then_pull_back_everything_exactly_once(pubsub_emulator, make_frame):
    n = 2000
    df = make_frame(n, seed=11, fraud_rate=0.1)
    paths, tx_sub, lb_sub = _setup_streams(pubsub_emulator)
    publisher = make_publisher(pubsub_emulator.host_port)  # the CLI's batch and flow-control settings
    try:
        report = publish_dataset(df, publisher, paths, rate=1e9, seed=4)
    finally:
        publisher.stop()
        publisher.transport.close()
    assert (report.transactions, report.labels, report.retries) == (n, n, 0)

    transactions = _check_exact(_pull(pubsub_emulator, tx_sub, n), df, SCHEMA_TRANSACTION, Transaction)
    labels = _check_exact(_pull(pubsub_emulator, lb_sub, n), df, SCHEMA_LABEL, Label)

    reported = schedule_labels(df, seed=4)
    for row in df.itertuples(index=True):
        tid = str(row.TRANSACTION_ID)
        tx, label = transactions[tid], labels[tid]
        assert (tx.customer_id, tx.terminal_id, tx.amount) == (str(row.CUSTOMER_ID), str(row.TERMINAL_ID), row.TX_AMOUNT)
        assert tx.event_time.replace(tzinfo=None) == row.TX_DATETIME.to_pydatetime()
        assert label.label == row.TX_FRAUD and label.event_time == tx.event_time
        assert label.reported_at.replace(tzinfo=None) == reported[row.Index].astype("datetime64[us]").item()
    assert Counter(label.label for label in labels.values()) == Counter(df["TX_FRAUD"].tolist())


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_cli_publishes_a_file_end_to_end(pubsub_emulator, make_frame, tmp_path, capsys, suffix):
    df = make_frame(300, seed=12, fraud_rate=0.2)
    path = write_table(df, tmp_path / f"tx{suffix}")
    paths, tx_sub, lb_sub = _setup_streams(pubsub_emulator)
    argv = ["--input", str(path), "--rate", "100000", "--project", "local-project",
            "--emulator-host", pubsub_emulator.host_port, "--no-progress", "--limit", "250",
            "--transactions-topic", paths.transactions.rsplit("/", 1)[1],
            "--labels-topic", paths.labels.rsplit("/", 1)[1]]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("published 250 transactions and 250 labels to local-project in ")
    head = df.iloc[:250]
    _check_exact(_pull(pubsub_emulator, tx_sub, 250), head, SCHEMA_TRANSACTION, Transaction)
    _check_exact(_pull(pubsub_emulator, lb_sub, 250), head, SCHEMA_LABEL, Label)


def test_cli_reports_a_missing_topic(pubsub_emulator, make_frame, tmp_path, capsys):
    path = write_table(make_frame(5), tmp_path / "tx.parquet")
    missing = _unique("missing")
    argv = ["--input", str(path), "--rate", "1000", "--emulator-host", pubsub_emulator.host_port,
            "--no-progress", "--transactions-topic", missing, "--no-labels"]
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"streamscore publish: publishing to projects/local-project/topics/{missing} failed: NotFound")
    assert err.count("\n") == 1
    assert run([*argv, "--create-topics"]) == 0  # --create-topics makes it
