"""The online model's figures as served, in the job's ``monitoring`` events (``online_served``).

The real ScoreFn (with a stand-in predictor client) emits the ``scores`` messages and the records
the served join reads; the labels join them by terminal. Every AP and card precision@100 the
events report is recomputed here from the ``scores`` messages alone, joined with the labels.
"""

from __future__ import annotations

from collections import defaultdict

import apache_beam as beam
import numpy as np
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from models.online import average_precision as independent_ap
from models.served import ServedGauges
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import StreamFeatures
from streaming.io.events import Label
from streaming.job.scoring import LOGGED, ScoreFn, Scored
from streaming.job.served import SERVED_KEY, ServedFiguresFn, ServedOnline
from streaming.runner.testing import Collect, replay, with_labels
from tests.streaming.features.test_stream import batches_of, synthetic

N = 600


class FakeClient:
    """Scores as a predictor would: XGBoost's, and an online score once a snapshot "is served"."""

    retries = auth_failures = 0

    def score_many(self, items):
        out = []
        for tid, features in items:
            i = int(tid)
            xgb = float(1 / (1 + np.exp(-np.tanh(sum(features) / 1e4) - (i % 7) / 7)))
            online = None if i < N // 3 else float((i * 7919 % 1000) / 1000 * 0.6 + 0.2 * (sum(features) > 2e3))
            out.append(Scored(tid, xgb, "x1", online, None if online is None else "o1"))
        return out


class FakeScoreFn(ScoreFn):
    def setup(self):
        self._client = FakeClient()


class ScoredStream(beam.PTransform):
    def __init__(self, **served):
        super().__init__()
        self.served = served

    def expand(self, events):
        featured = events | StreamFeatures(DEFAULT_SPEC, 1.0)
        scored = featured["features"] | beam.ParDo(FakeScoreFn("fake:0", DEFAULT_SPEC, log_records=True)).with_outputs(
            LOGGED, "dead_letter", "alerts", main="scores")
        labels = (events | "Labels" >> beam.Filter(lambda e: isinstance(e, Label))
                  | "Keyed" >> beam.Map(lambda e: (e.customer_id, e)))  # as the parser keys them
        monitoring = (scored[LOGGED], labels) | ServedOnline(8.0, **self.served)
        return {"scores": scored.scores, "monitoring": monitoring}


def card_precision_at_100(rows) -> float:
    """Per day: each card's highest score; of the 100 highest cards, the share with a fraud that day; mean."""
    by_day = defaultdict(dict)
    for day, card, label, score in rows:
        best, fraud = by_day[day].get(card, (-1.0, 0))
        by_day[day][card] = (max(best, score), fraud | label)
    shares = []
    for cards in by_day.values():
        top = sorted(cards.values(), key=lambda v: -v[0])[:100]
        shares.append(sum(f for _, f in top) / 100)
    return float(np.mean(shares))


@pytest.mark.integration
def test_the_served_figures_in_monitoring_events_equal_a_recomputation_from_the_scores_topic():
    txs, frauds = synthetic(N, seed=11)
    customer = {t.transaction_id: t.customer_id for t in txs}
    out = replay(batches_of(with_labels(txs, frauds)), ScoredStream(every_rows=1, keep_days=100))
    bodies = [orjson.loads(m.data) for m in out["scores"]]
    assert len(bodies) == N
    events = [orjson.loads(m.data) for m in out["monitoring"]]
    assert events and {e["kind"] for e in events} == {"online_served"}
    assert events[-1]["labels_joined"] == N  # every transaction's label was joined with what it was served
    latest = {}  # the figures of each day as last reported
    for e in events:
        latest.update(e["days"])
    by_day = defaultdict(list)
    for b in bodies:
        by_day[b["event_time"][:10]].append(b)
    assert sorted(latest) == sorted(by_day)
    checked = 0
    for day, day_bodies in by_day.items():
        figures = latest[day]
        assert figures["transactions"] == len(day_bodies)
        online = [b for b in day_bodies if b.get("online_score") is not None]
        assert figures.get("online_scored", 0) == len(online)
        labels = [frauds[b["transaction_id"]] for b in online]
        if online and 0 < sum(labels) < len(labels):
            assert figures["online_served"]["average_precision"] == pytest.approx(
                independent_ap([b["online_score"] for b in online], labels), abs=1e-12)
            assert figures["xgboost_where_online"]["average_precision"] == pytest.approx(
                independent_ap([b["score"] for b in online], labels), abs=1e-12)
            assert figures["online_served"]["card_precision@100"] == pytest.approx(card_precision_at_100(
                [(day, customer[b["transaction_id"]], frauds[b["transaction_id"]], b["online_score"])
                 for b in online]), abs=1e-12)
            checked += 1
        elif online:
            assert figures["online_served"]["average_precision"] is None  # one class only: no AP
    assert checked >= 20
    # over all the days kept: the same recomputation on every scored transaction with an online score
    online = [b for b in bodies if b.get("online_score") is not None]
    overall = events[-1]["overall"]
    assert overall["online_scored"] == len(online) == N - N // 3
    assert overall["online_served"]["average_precision"] == pytest.approx(
        independent_ap([b["online_score"] for b in online], [frauds[b["transaction_id"]] for b in online]), abs=1e-12)
    assert overall["xgboost"]["average_precision"] == pytest.approx(
        independent_ap([b["score"] for b in bodies], [frauds[b["transaction_id"]] for b in bodies]), abs=1e-12)

    # and the Prometheus gauges carry the last event's figures
    from prometheus_client import generate_latest

    gauges = ServedGauges()
    for e in events:
        gauges.publish(e)
    text = generate_latest(gauges.registry).decode()
    expected = overall["online_served"]["average_precision"]
    line = next(x for x in text.splitlines() if x.startswith("streamscore_online_served_quality{")
                and 'model="online_served"' in x and 'metric="average_precision"' in x and 'period="kept_days"' in x)
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(expected, abs=1e-12)
    assert f"streamscore_online_served_labels_joined {float(N)}" in text


def run_figures(stream: TestStream, **kwargs) -> list[dict]:
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    out = Collect("CollectServed")
    with beam.Pipeline(options=options) as p:
        p | stream | beam.ParDo(ServedFiguresFn(clock=lambda: 0.0, **kwargs)) | out
    return [orjson.loads(m.data) for m in out.results()]


def rows(day: str, n: int, start: int = 0):
    return tuple((day, f"c{i % 5}", int(i % 4 == 0), (i % 9) / 9, (i % 11) / 11) for i in range(start, start + n))


def test_rows_below_the_count_are_reported_when_the_seconds_pass_and_old_days_are_forgotten():
    stream = (TestStream().add_elements([TimestampedValue((SERVED_KEY, rows("2026-01-01", 8)), 1),
                                         TimestampedValue((SERVED_KEY, rows("2026-01-03", 8)), 2)])
              .advance_watermark_to(10).advance_processing_time(61)
              .add_elements([TimestampedValue((SERVED_KEY, rows("2026-01-04", 8)), 3)])
              .advance_watermark_to(20).advance_processing_time(61).advance_watermark_to_infinity())
    events = run_figures(stream, every_rows=1000, every_seconds=60, keep_days=2)
    assert [sorted(e["days"]) for e in events] == [["2026-01-01", "2026-01-03"], ["2026-01-04"]]
    assert [e["labels_joined"] for e in events] == [16, 24]
    assert events[0]["overall"]["transactions"] == 16  # both days, until a third one comes
    assert events[1]["overall"]["transactions"] == 16  # only the latest two days are kept


def test_bad_settings_are_refused_with_their_names():
    with pytest.raises(ValueError, match="every_rows must be >= 1"):
        ServedFiguresFn(every_rows=0)


def test_the_monitoring_gauges_publish_the_online_events_too():
    from prometheus_client import generate_latest

    from models.monitoring import MonitoringGauges

    gauges = MonitoringGauges()
    figures = {"average_precision": 0.7, "card_precision@100": 0.3, "transactions": 10}
    gauges.publish({"kind": "online_served", "labels_joined": 10, "overall": {"online_served": figures},
                    "days": {"2026-01-01": {"xgboost": {**figures, "average_precision": 0.8}}}})
    gauges.publish({"kind": "online_snapshot", "learner_key": "learner", "average_precision": 0.65})
    text = generate_latest(gauges.registry).decode()
    assert 'streamscore_online_served_quality{metric="average_precision",model="online_served",period="kept_days"} 0.7' in text
    assert 'streamscore_online_served_quality{metric="average_precision",model="xgboost",period="latest_day"} 0.8' in text
    assert 'streamscore_online_prequential_quality{learner_key="learner",metric="average_precision"} 0.65' in text


class State:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value


def test_a_label_that_overtakes_its_scored_transaction_waits_for_it():
    import datetime as dt

    from streaming.job.served import ServedJoinFn, ServedRecord

    fn = ServedJoinFn(keep_days=8.0)
    fn.start_bundle()
    state = State()
    t = dt.datetime(2026, 1, 2, 10, tzinfo=dt.UTC)
    label = Label("t1", 1, t, "c1", "term", t + dt.timedelta(days=1))
    list(fn.process(("term", label), timestamp=1.0, store=state))  # a store holding only this pending label
    record = ServedRecord("t1", int(t.timestamp() * 1e9), "c1", 0.4, 0.7, "o1")
    list(fn.process(("term", record), timestamp=2.0, store=state))
    (out,) = list(fn.finish_bundle())
    assert out.value == (SERVED_KEY, (("2026-01-02", "c1", 1, 0.4, 0.7),))
