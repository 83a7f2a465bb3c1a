"""Unit tests of the producer: label schedule, pacing (fake clock), ordering, retries, arguments."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pandas as pd
import pytest
from google.api_core import exceptions

from streaming.io import publish
from streaming.io.datasets import DatasetError, write_table
from streaming.io.events import SCHEMA_LABEL, SCHEMA_TRANSACTION, Label, Transaction, parse
from streaming.io.publish import LabelDelay, PublishError, TopicPaths, publish_dataset, run, schedule_labels

DAY = np.timedelta64(1, "D").astype("timedelta64[ns]")
PATHS = TopicPaths.for_project("p")


class FakeClock:
    """A clock that only moves when slept on (or when told to)."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


class FakePublisher:
    """Records ``(clock time, topic, data, attrs)``; ``fail`` maps data -> errors to raise first."""

    def __init__(self, clock=None, fail=None, cost: float = 0.0):
        self.clock, self.fail, self.cost = clock, dict(fail or {}), cost
        self.calls: list[tuple[float, str, bytes, dict]] = []
        self.keys: list[str] = []  # ordering key of each call ("" when none)
        self.resumed: list[tuple[str, str]] = []
        self.stopped = False

    def publish(self, topic, data, ordering_key="", **attrs):
        if self.clock is not None:
            self.clock.now += self.cost
        self.calls.append((self.clock() if self.clock else 0.0, topic, data, attrs))
        self.keys.append(ordering_key)
        future = Future()
        errors = self.fail.get(data)
        if errors:
            future.set_exception(errors.pop(0))
        else:
            future.set_result(str(len(self.calls)))
        return future

    def resume_publish(self, topic, ordering_key):
        self.resumed.append((topic, ordering_key))

    def stop(self):
        self.stopped = True

    class transport:  # noqa: N801 - mimics client.transport.close()
        @staticmethod
        def close():
            pass

    def events(self):
        return [parse(data, attrs) for _, _, data, attrs in self.calls]


def frame(seconds, fraud=None) -> pd.DataFrame:
    n = len(seconds)
    df = pd.DataFrame({
        "TRANSACTION_ID": np.arange(n),
        "TX_DATETIME": np.datetime64("2018-04-01T00:00:00", "ns") + np.asarray(seconds).astype("timedelta64[s]"),
        "CUSTOMER_ID": np.arange(n) % 3,
        "TERMINAL_ID": np.arange(n) % 5,
        "TX_AMOUNT": np.linspace(1.0, 100.0, n),
    })
    if fraud is not None:
        df["TX_FRAUD"] = np.asarray(fraud, dtype="int64")
        df["TX_FRAUD_SCENARIO"] = df["TX_FRAUD"]
    return df


# --------------------------------------------------------------------------- label schedule


def test_schedule_labels_bounds(make_frame):
    df = make_frame(5000, seed=3, fraud_rate=0.3)
    reported = schedule_labels(df, LabelDelay((1.0, 7.0), 7.0), seed=1)
    assert reported.dtype == np.dtype("datetime64[ns]") and len(reported) == len(df)
    delay = reported - df["TX_DATETIME"].to_numpy()
    fraud = df["TX_FRAUD"].to_numpy() == 1
    assert ((delay[fraud] >= 1 * DAY) & (delay[fraud] < 7 * DAY)).all()
    assert (delay[~fraud] == 7 * DAY).all()
    assert (reported.astype("int64") % 10**9 == 0).all()  # whole seconds
    spread = delay[fraud].astype("int64") / DAY.astype("int64")
    assert spread.min() < 1.2 and spread.max() > 6.8  # uniform over the whole range


def test_schedule_labels_is_deterministic(make_frame):
    df = make_frame(500, seed=2, fraud_rate=0.5)
    a, b = schedule_labels(df, seed=7), schedule_labels(df, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, schedule_labels(df, seed=8))


def test_schedule_labels_custom_delay(make_frame):
    df = make_frame(200, fraud_rate=0.5)
    delay = schedule_labels(df, LabelDelay((2.0, 2.0), 0.0)) - df["TX_DATETIME"].to_numpy()
    fraud = df["TX_FRAUD"].to_numpy() == 1
    assert (delay[fraud] == 2 * DAY).all() and (delay[~fraud] == 0).all()


def test_schedule_labels_needs_tx_fraud(make_frame):
    with pytest.raises(DatasetError, match="no TX_FRAUD column"):
        schedule_labels(make_frame(10, fraud=False))


@pytest.mark.parametrize("kwargs, message", [
    ({"fraud_days": (7.0, 1.0)}, "fraud delay must be MIN,MAX days with 0 <= MIN <= MAX, got 7,1"),
    ({"fraud_days": (-1.0, 1.0)}, "fraud delay must be MIN,MAX days with 0 <= MIN <= MAX, got -1,1"),
    ({"genuine_days": float("nan")}, "genuine delay must be a number of days >= 0, got nan"),
])
def test_label_delay_rejects_bad_ranges(kwargs, message):
    with pytest.raises(ValueError) as info:
        LabelDelay(**kwargs)
    assert str(info.value) == message


# --------------------------------------------------------------------------- pacing


def test_speedup_paces_by_event_time():
    clock = FakeClock()
    publisher = FakePublisher(clock)
    report = publish_dataset(frame([100, 110, 130, 130, 200]), publisher, PATHS, speedup=10.0,
                             clock=clock, sleep=clock.sleep)
    assert [round(t, 9) for t, *_ in publisher.calls] == [0.0, 1.0, 3.0, 3.0, 10.0]
    assert report.transactions == 5 and report.labels == 0
    assert report.elapsed == pytest.approx(10.0)


def test_speedup_places_labels_at_reported_time():
    clock = FakeClock()
    publisher = FakePublisher(clock)
    df = frame([0, 3600], fraud=[0, 0])  # genuine: confirmed 7 days later
    publish_dataset(df, publisher, PATHS, speedup=3600.0, clock=clock, sleep=clock.sleep)
    times = [round(t, 9) for t, *_ in publisher.calls]
    assert times == [0.0, 1.0, 7 * 24.0, 7 * 24.0 + 1.0]
    assert [topic for _, topic, *_ in publisher.calls] == [PATHS.transactions] * 2 + [PATHS.labels] * 2


def test_rate_counts_every_message():
    clock = FakeClock()
    publisher = FakePublisher(clock)
    report = publish_dataset(frame([0, 86_400 * 30], fraud=[1, 0]), publisher, PATHS, rate=2.0,
                             clock=clock, sleep=clock.sleep)
    assert [t for t, *_ in publisher.calls] == [0.0, 0.5, 1.0, 1.5]  # event-time gaps don't matter
    assert (report.transactions, report.labels, report.elapsed) == (2, 2, 1.5)
    assert report.rate == pytest.approx(4 / 1.5)


def test_no_sleep_when_behind_schedule():
    clock = FakeClock()
    publisher = FakePublisher(clock, cost=1.0)  # each publish takes 1 s, rate asks for 10/s
    publish_dataset(frame([0, 1, 2, 3]), publisher, PATHS, rate=10.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [] and len(publisher.calls) == 4


def test_exactly_one_of_speedup_and_rate():
    for kwargs in ({}, {"speedup": 1.0, "rate": 1.0}):
        with pytest.raises(ValueError, match="exactly one of speedup and rate"):
            publish_dataset(frame([0]), FakePublisher(), PATHS, **kwargs)
    with pytest.raises(ValueError, match="rate must be a finite number > 0, got 0"):
        publish_dataset(frame([0]), FakePublisher(), PATHS, rate=0)


# --------------------------------------------------------------------------- ordering and content


def test_one_stream_ordered_by_publish_time_then_kind():
    # tx0 is a fraud reported exactly 1 day later, when tx1 happens: the transaction goes first.
    df = frame([0, 86_400, 86_400 * 2], fraud=[1, 0, 1])
    publisher = FakePublisher()
    publish_dataset(df, publisher, PATHS, rate=1e9, label_delay=LabelDelay((1.0, 1.0), 7.0))
    events = publisher.events()
    kinds = [(type(e).__name__, e.transaction_id) for e in events]
    assert kinds == [("Transaction", "0"), ("Transaction", "1"), ("Label", "0"),
                     ("Transaction", "2"), ("Label", "2"), ("Label", "1")]


def test_published_messages_follow_the_event_contract(make_frame):
    df = make_frame(300, seed=5, fraud_rate=0.2)
    publisher = FakePublisher()
    report = publish_dataset(df, publisher, PATHS, rate=1e9, seed=3)
    assert (report.transactions, report.labels) == (300, 300)
    reported = schedule_labels(df, seed=3)
    keys = []
    for (_, topic, data, attrs), event in zip(publisher.calls, publisher.events()):
        assert not isinstance(event, str) and isinstance(event, (Transaction, Label)), event
        if isinstance(event, Transaction):
            assert topic == PATHS.transactions and attrs["schema"] == SCHEMA_TRANSACTION
            keys.append((event.event_time, 0))
        else:
            assert topic == PATHS.labels and attrs["schema"] == SCHEMA_LABEL
            row = int(event.transaction_id)
            assert event.label == df["TX_FRAUD"][row]
            assert pd.Timestamp(event.reported_at).tz_localize(None) == reported[row]
            keys.append((event.reported_at, 1))
        assert attrs["event_time"] == data.split(b'"event_time":"')[1].split(b'"')[0].decode()
    assert keys == sorted(keys)
    ids = [(type(e).__name__, e.transaction_id) for e in publisher.events()]
    assert len(set(ids)) == 600


def test_unsorted_input_is_published_in_time_order():
    df = frame([30, 10, 20]).assign(TRANSACTION_ID=[7, 8, 9])
    publisher = FakePublisher()
    publish_dataset(df, publisher, PATHS, rate=1e9)
    assert [e.transaction_id for e in publisher.events()] == ["8", "9", "7"]


def test_labels_off_or_absent():
    publisher = FakePublisher()
    report = publish_dataset(frame([0, 1], fraud=[1, 0]), publisher, PATHS, rate=1e9, labels=False)
    assert (report.transactions, report.labels) == (2, 0)
    report = publish_dataset(frame([0, 1]), FakePublisher(), PATHS, rate=1e9)  # no TX_FRAUD
    assert (report.transactions, report.labels) == (2, 0)
    report = publish_dataset(frame([0, 1], fraud=[1, 0]), FakePublisher(), TopicPaths("projects/p/topics/t"),
                             rate=1e9)
    assert (report.transactions, report.labels) == (2, 0)


# --------------------------------------------------------------------------- retries


def _first_data(df):
    publisher = FakePublisher()
    publish_dataset(df, publisher, PATHS, rate=1e9, labels=False)
    return publisher.calls[0][2]


def test_failed_publish_is_retried_with_backoff():
    df = frame([0, 1, 2])
    data = _first_data(df)
    clock = FakeClock()
    publisher = FakePublisher(fail={data: [exceptions.ServiceUnavailable("down"), exceptions.InternalServerError("x")]})
    report = publish_dataset(df, publisher, PATHS, rate=1e9, clock=clock, sleep=clock.sleep)
    assert (report.transactions, report.retries) == (3, 2)
    assert [s for s in clock.sleeps if s > 1e-6] == [0.5, 1.0]  # (the rest is pacing at 1e9 msg/s)
    assert [c[2] for c in publisher.calls].count(data) == 3


def test_ordering_key_is_the_customer_and_a_failed_key_is_resumed_before_retry():
    df = frame([0, 1, 2], fraud=[0, 1, 0])
    data = _first_data(df)
    publisher = FakePublisher(fail={data: [exceptions.ServiceUnavailable("down")]})
    report = publish_dataset(df, publisher, PATHS, rate=1e9, sleep=lambda s: None, order_by_customer=True)
    assert report.retries == 1
    customers = [e.customer_id for e in publisher.events()]
    assert publisher.keys == customers and all(publisher.keys)
    assert publisher.resumed == [(PATHS.transactions, customers[0])]
    unordered = FakePublisher()
    publish_dataset(df, unordered, PATHS, rate=1e9)
    assert set(unordered.keys) == {""} and unordered.resumed == []


def test_on_publish_sees_every_message_in_order():
    df = frame([0, 1, 2], fraud=[0, 1, 0])
    seen = []
    publisher = FakePublisher()
    publish_dataset(df, publisher, PATHS, rate=1e9, on_publish=lambda kind, event: seen.append((kind, event)))
    assert [event for _, event in seen] == publisher.events()
    assert [kind for kind, _ in seen] == [0, 0, 0, 1, 1, 1]


def test_retries_are_bounded():
    df = frame([0])
    data = _first_data(df)
    publisher = FakePublisher(fail={data: [exceptions.ServiceUnavailable("down")] * 10})
    with pytest.raises(PublishError, match="failed after 3 attempts: ServiceUnavailable"):
        publish_dataset(df, publisher, PATHS, rate=1e9, sleep=lambda s: None, max_attempts=3)


def test_permanent_error_is_not_retried():
    df = frame([0])
    publisher = FakePublisher(fail={_first_data(df): [exceptions.NotFound("Topic not found")]})
    with pytest.raises(PublishError, match=r"publishing to projects/p/topics/transactions failed: NotFound"):
        publish_dataset(df, publisher, PATHS, rate=1e9)
    assert len(publisher.calls) == 1


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --input"),
    (["--input", "x"], "one of the arguments --speedup --rate is required"),
    (["--input", "x", "--speedup", "1", "--rate", "2"], "argument --rate: not allowed with argument --speedup"),
    (["--input", "x", "--speedup", "0"], "argument --speedup: must be a finite number > 0, got '0'"),
    (["--input", "x", "--rate", "abc"], "argument --rate: must be a finite number > 0, got 'abc'"),
    (["--input", "x", "--rate", "inf"], "argument --rate: must be a finite number > 0, got 'inf'"),
    (["--input", "x", "--rate", "1", "--limit", "0"], "argument --limit: must be a whole number >= 1, got '0'"),
    (["--input", "x", "--rate", "1", "--fraud-delay-days", "7,1"],
     "argument --fraud-delay-days: must be MIN,MAX days with 0 <= MIN <= MAX (or one number), got '7,1'"),
    (["--input", "x", "--rate", "1", "--genuine-delay-days", "-1"],
     "argument --genuine-delay-days: must be a number of days >= 0, got '-1'"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"streamscore publish: {message}\n"


def test_bad_input_exits_1_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.parquet"
    assert run(["--input", str(missing), "--rate", "10"]) == 1
    assert capsys.readouterr().err == f"streamscore publish: input file '{missing}' does not exist\n"
    bad = tmp_path / "tx.csv"
    bad.write_text("a,b\n")
    assert run(["--input", str(bad), "--rate", "10"]) == 1
    assert capsys.readouterr().err == f"streamscore publish: input file '{bad}': expected a .parquet or .jsonl file, got '.csv'\n"


def test_unreachable_emulator_exits_1(tmp_path, capsys):
    path = write_table(frame([0, 1], fraud=[0, 1]), tmp_path / "tx.parquet")
    assert run(["--input", str(path), "--rate", "10", "--emulator-host", "127.0.0.1:1"]) == 1
    assert capsys.readouterr().err == "streamscore publish: no Pub/Sub emulator answers at 127.0.0.1:1\n"


def test_run_publishes_and_prints_one_line(tmp_path, capsys, monkeypatch):
    path = write_table(frame([0, 10, 20, 30], fraud=[0, 1, 0, 0]), tmp_path / "tx.jsonl")
    publisher = FakePublisher()
    monkeypatch.setattr(publish, "make_publisher", lambda host, ordering=False: publisher)
    assert run(["--input", str(path), "--rate", "1e9", "--limit", "3", "--project", "demo", "--no-progress",
                "--transactions-topic", "tx", "--labels-topic", "lb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("published 3 transactions and 3 labels to demo in ") and out.endswith(" msg/s)\n")
    assert {topic for _, topic, *_ in publisher.calls} == {"projects/demo/topics/tx", "projects/demo/topics/lb"}
    assert publisher.stopped


def test_run_without_tx_fraud_notes_and_publishes_transactions(tmp_path, capsys, monkeypatch):
    path = write_table(frame([0, 10]), tmp_path / "tx.parquet")
    monkeypatch.setattr(publish, "make_publisher", lambda host, ordering=False: FakePublisher())
    assert run(["--input", str(path), "--speedup", "1e6", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"streamscore publish: note: '{path}' has no TX_FRAUD column; publishing transactions only\n"
    assert captured.out.startswith("published 2 transactions and 0 labels to local-project in ")
