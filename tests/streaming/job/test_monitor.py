"""Live monitoring in the job (LiveMonitorFn): PSI per event-time window against the training
reference, the alarm only from the day amounts shift, live quality once labels arrive."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from models.monitoring import LiveQuality, Reference, Thresholds
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.job.example_log import MonitorBatch
from streaming.job.monitor import LiveMonitorFn, MonitorState, window_counts
from streaming.sim.simulator import simulate

NAMES = list(DEFAULT_SPEC.names)
DRIFT_DAY = 24
START = pd.Timestamp("2018-04-01")


def score(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x[:, 0] / 100 - 1)))  # a stand-in model of the amount


class FixedReference:
    def __init__(self, version, reference):
        self.found = (version, reference)

    def __call__(self):
        return self.found


@pytest.fixture(scope="module")
def drifted():
    table = featurize_frame(simulate(customers=150, terminals=300, days=30, seed=3, drift_day=DRIFT_DAY,
                                     drift_kind="amount-shift"))
    day = (table["TX_DATETIME"] - START).dt.days.to_numpy()
    train = table[day < 20]
    reference = Reference.fit(train, NAMES, score(train[NAMES].to_numpy()))
    return table, day, reference


def batches(table: pd.DataFrame, size: int = 100, labels: bool = True):
    for i in range(0, len(table), size):
        part = table.iloc[i:i + size]
        x = part[NAMES].to_numpy()
        t = part["TX_DATETIME"].to_numpy().astype("datetime64[ns]").astype(np.int64)
        s = score(x)
        k = len(t) if labels else 0  # the rows whose labels came in this batch
        yield MonitorBatch(t, x, s, t[:k], part["CUSTOMER_ID"].to_numpy().astype(object)[:k],
                           part["TX_FRAUD"].to_numpy()[:k], s[:k], x[:k])


def run(fn: LiveMonitorFn, stream) -> list[dict]:
    fn.setup()
    state = MonitorState(LiveQuality(window_days=fn.quality_days))
    return [orjson.loads(m.data) for batch in stream for m in fn._update(state, batch)]


def test_the_psi_alarm_is_raised_only_from_the_day_amounts_shift(drifted):
    table, day, reference = drifted
    fn = LiveMonitorFn(None, DEFAULT_SPEC, window_hours=48, grace_hours=1, thresholds=Thresholds(0.1, 0.2),
                       reference=FixedReference("v1", reference))
    events = run(fn, batches(table))
    starts = [pd.Timestamp(e["window_start"].rstrip("Z")) for e in events]
    assert starts == [START + pd.Timedelta(days=d) for d in range(0, 28, 2)]  # the last window waits for more traffic
    for start, event in zip(starts, events):
        assert event["kind"] == "stability" and event["model_version"] == "v1" and event["source"] == "stream"
        assert set(event["psi"]) == {*NAMES, "score"}
        assert event["rows"] == int(((table["TX_DATETIME"] >= start) & (table["TX_DATETIME"] < start + pd.Timedelta(days=2))).sum())
        shifted = (start - START).days >= DRIFT_DAY
        assert ("TX_AMOUNT" in event["drifted"]) == shifted, (start, event["psi"]["TX_AMOUNT"])
        assert ("score" in event["drifted"]) == shifted
        assert event["live"]["average_precision"] is not None and event["live"]["rows"] > 0


def test_each_window_reports_alert_rate_and_precision_per_segment(drifted):
    """Alert rate per segment over the window's scored rows and precision of the labelled alerts
    per segment over the quality window, recomputed here from the table with pandas."""
    from models.segments import SEGMENTS

    table, day, reference = drifted
    threshold = 0.6
    fn = LiveMonitorFn(None, DEFAULT_SPEC, window_hours=48, grace_hours=1, quality_days=7,
                       reference=FixedReference("v1", reference), alert_threshold=threshold)
    fn.setup()
    state, events, fed = MonitorState(LiveQuality(window_days=fn.quality_days)), [], []
    for i, batch in enumerate(batches(table, size=100)):
        for message in fn._update(state, batch):
            events.append(orjson.loads(message.data))
            fed.append(min((i + 1) * 100, len(table)))  # the rows (and labels) in when it was emitted
    frame = table.assign(score=score(table[NAMES].to_numpy()))
    frame["alert"] = frame["score"] >= threshold
    assigned = {family: assign(frame) for family, (_, assign) in SEGMENTS.items()}
    assert len(events) > 5
    for event, n_fed in zip(events, fed):
        start = pd.Timestamp(event["window_start"].rstrip("Z"))
        in_window = ((frame["TX_DATETIME"] >= start) & (frame["TX_DATETIME"] < start + pd.Timedelta(days=2))).to_numpy()
        seen = np.arange(len(frame)) < n_fed  # labels come with their rows here
        last_day = frame.loc[seen, "TX_DATETIME"].max().normalize()
        recent = seen & (frame["TX_DATETIME"] >= last_day - pd.Timedelta(days=6)).to_numpy()
        assert event["alert_threshold"] == threshold and set(event["segments"]) == {"amount", "card", "terminal"}
        for family, names in assigned.items():
            for name in set(names[in_window]):
                got = event["segments"][family][name]
                rows = in_window & (names == name)
                assert got["transactions"] == rows.sum()
                assert got["alert_rate"] == pytest.approx(frame["alert"].to_numpy()[rows].mean())
            for name, got in event["segments"][family].items():
                alerts = recent & (names == name) & frame["alert"].to_numpy()
                assert got["labelled_alerts"] == alerts.sum(), (event["window_start"], family, name)
                if alerts.sum():
                    assert got["precision"] == pytest.approx(frame["TX_FRAUD"].to_numpy()[alerts].mean())
                else:
                    assert got["precision"] is None


def test_the_counts_equal_the_references_own_shares(drifted):
    table, day, reference = drifted
    part = table[day < 20]
    x = part[NAMES].to_numpy()
    t = part["TX_DATETIME"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    counts = window_counts(reference, NAMES, t, x, score(x), window_ns=100_000 * 86_400 * 10**9)
    (wc,) = counts.values()  # one window holds them all
    for name in (*NAMES, "score"):
        assert np.allclose(wc.counts[name] / wc.rows, reference.bins[name].shares)


def test_rows_for_an_emitted_window_are_counted_late_not_mixed_in(drifted):
    table, day, reference = drifted
    fn = LiveMonitorFn(None, DEFAULT_SPEC, window_hours=24, grace_hours=0, reference=FixedReference("v1", reference))
    stream = [*batches(table[day == 1], labels=False), *batches(table[day == 2], labels=False),  # day 1 emitted
              *batches(table[day == 0].iloc[:10], labels=False),  # late: for a window before an emitted one
              *batches(table[day == 3], labels=False)]  # day 2 emitted
    events = run(fn, stream)
    assert [e["window_start"] for e in events] == ["2018-04-02T00:00:00Z", "2018-04-03T00:00:00Z"]
    assert [e["rows"] for e in events] == [int((day == 1).sum()), int((day == 2).sum())]
    assert [e["late_rows"] for e in events] == [0, 10]
    assert events[0]["live"]["average_precision"] is None  # no labels yet


def test_without_a_reference_nothing_is_emitted(drifted):
    table, _, _ = drifted
    assert run(LiveMonitorFn(None, DEFAULT_SPEC, reference=lambda: None), batches(table.iloc[:2000])) == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window_hours must be > 0"):
        LiveMonitorFn("reg", DEFAULT_SPEC, window_hours=0)
    with pytest.raises(ValueError, match="needs a registry"):
        LiveMonitorFn(None, DEFAULT_SPEC)
