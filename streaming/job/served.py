"""The online model's figures *as served*, inside the streaming job: ``online_served`` monitoring events.

    ScoreFn ── (terminal, LogRecord) ─ ServedRecordOf ─┐
                                                       ├─ ServedJoinFn ─ ServedFiguresFn ─ monitoring topic
    labels ─── (terminal, Label) ──────────────────────┘

The learner only sees labelled examples; the score each transaction *got* (the production score
and, once a snapshot is served, ``online_score``, exactly what the ``scores`` topic carries) is
known only after the scoring stage. :class:`ServedJoinFn` (keyed by terminal, as the example
log is) keeps each scored transaction's served scores until its label arrives
(:class:`~streaming.job.example_log.JoinStore`, for ``--max-label-delay-days`` of event time)
and hands the joined rows, once per bundle, to :class:`ServedFiguresFn` (one key). That keeps
:class:`models.served.ServedFigures` over the last ``keep_days`` event days and, every
``every_rows`` joined labels or ``every_seconds`` after the first row not yet reported, emits an
``online_served`` event: per event day (the days that changed) and over the kept days, AP and
card precision@100 of ``online_served`` (the transactions an online snapshot scored),
``xgboost`` (every scored transaction) and ``xgboost_where_online`` (XGBoost on the same
transactions as the online model: the fair comparison). The learner's ``online_snapshot`` events
carry the prequential figures; :class:`models.served.ServedGauges` exports both to Prometheus.

Only confirmed rows count (a transaction whose label never came within the delay is dropped,
not assumed genuine). Rows are kept in memory for ``keep_days``: at the demo's rates that is a
few MB; at 10k transactions/s it would be ~10 GB, and the figures would need sampling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from models.served import ServedFigures
from streaming.features.spec import DAY_NS
from streaming.features.transaction import time_ns
from streaming.io.events import Label
from streaming.job.example_log import JoinStore, LogRecord, day_of
from streaming.job.learning import monitoring_message

SERVED_KEY = "served"


class ServedRecord(NamedTuple):
    """What a transaction was served: the production score and the online score (None before a snapshot)."""

    transaction_id: str
    time_ns: int
    customer_id: str
    score: float
    online_score: float | None
    online_model_version: str | None


def served_record(element: tuple[str, LogRecord]) -> tuple[str, ServedRecord]:
    """``(terminal, LogRecord)`` → ``(terminal, ServedRecord)`` (the features are not kept)."""
    terminal, r = element
    return terminal, ServedRecord(r.transaction_id, r.time_ns, r.customer_id, r.score, r.online_score,
                                  r.online_model_version)


@beam.typehints.with_input_types(beam.typehints.KV[str, Any])
class ServedJoinFn(beam.DoFn):
    """(terminal, ServedRecord | Label) → one ``(SERVED_KEY, rows)`` per bundle; a row is
    ``(event day, customer, label, score, online score or None)``."""

    STORE = ReadModifyWriteStateSpec("served", PickleCoder())

    def __init__(self, keep_days: float):
        if not keep_days > 0:
            raise ValueError(f"keep_days must be > 0, got {keep_days}")
        self.keep_days = keep_days
        self._joined = Metrics.counter(self.__class__, "served_rows_joined")
        self._unlabelled = Metrics.counter(self.__class__, "served_rows_unlabelled")
        self._unmatched = Metrics.counter(self.__class__, "labels_unmatched")

    def start_bundle(self):
        self._rows: list[tuple] = []
        self._latest = None

    def process(self, element, timestamp=beam.DoFn.TimestampParam, store=beam.DoFn.StateParam(STORE)):
        _, value = element
        if self._latest is None or timestamp > self._latest:
            self._latest = timestamp
        joined = store.read()
        if joined is None:  # not `or`: a store holding only pending labels has len() == 0
            joined = JoinStore(int(self.keep_days * DAY_NS), ServedRecord)
        if isinstance(value, Label):
            row = joined.label(value.transaction_id, value.label, time_ns(value.event_time))
        else:
            row = joined.add(value)
            self._unlabelled.inc(len(joined.take_expired()))
        if row is not None:
            r = row.record
            self._rows.append((day_of(r.time_ns), r.customer_id, row.label, r.score, r.online_score))
        self._unmatched.inc(joined.unmatched_labels)
        joined.unmatched_labels = 0
        store.write(joined)
        return ()

    def finish_bundle(self):
        rows, self._rows = self._rows, []
        if rows:
            self._joined.inc(len(rows))
            yield WindowedValue((SERVED_KEY, tuple(rows)), self._latest, [GlobalWindow()])


@dataclass
class ServedState:
    figures: ServedFigures = field(default_factory=ServedFigures)
    labels_joined: int = 0
    since_event: int = 0
    changed_days: set = field(default_factory=set)
    last_event_at: float = 0.0


class ServedFiguresFn(beam.DoFn):
    """(SERVED_KEY, rows) → ``online_served`` monitoring messages (see the module docs)."""

    STATE = ReadModifyWriteStateSpec("figures", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, *, every_rows: int = 500, every_seconds: float = 60.0, keep_days: int = 7,
                 clock: Callable[[], float] = time.time):
        if every_rows < 1 or not every_seconds > 0 or keep_days < 1:
            raise ValueError(f"every_rows must be >= 1, every_seconds > 0 and keep_days >= 1, got {every_rows}, "
                             f"{every_seconds} and {keep_days}")
        self.every_rows = every_rows
        self.every_seconds = every_seconds
        self.keep_days = keep_days
        self.clock = clock
        self._events = Metrics.counter(self.__class__, "served_events")

    def process(self, element, state=beam.DoFn.StateParam(STATE), flush=beam.DoFn.TimerParam(FLUSH)):
        _, rows = element
        current: ServedState = state.read() or ServedState(last_event_at=self.clock())
        for day, card, label, score, online in rows:
            current.figures.add_row(day, card, label, score, online)
            current.changed_days.add(day)
        first = current.since_event == 0
        current.labels_joined += len(rows)
        current.since_event += len(rows)
        if current.since_event >= self.every_rows or self.clock() - current.last_event_at >= self.every_seconds:
            yield self._event(current)
        elif first:  # the first rows not in an event: reported within the seconds
            flush.set(Timestamp.of(self.clock()) + Duration.of(self.every_seconds))
        state.write(current)

    @on_timer(FLUSH)
    def on_flush(self, state=beam.DoFn.StateParam(STATE)):
        current: ServedState | None = state.read()
        if current is not None and current.since_event > 0:
            yield self._event(current)
            state.write(current)

    def _event(self, current: ServedState):
        figures = current.figures
        figures.keep_last_days(self.keep_days)
        days = figures.per_day(sorted(d for d in current.changed_days if figures.has_day(d)))
        current.since_event, current.changed_days, current.last_event_at = 0, set(), self.clock()
        self._events.inc()
        return monitoring_message("online_served", labels_joined=current.labels_joined, keep_days=self.keep_days,
                                  days=days, overall=figures.overall())


class ServedOnline(beam.PTransform):
    """``(scored LogRecords by terminal, parsed labels)`` → ``online_served`` monitoring messages."""

    def __init__(self, keep_label_days: float, *, every_rows: int = 500, every_seconds: float = 60.0,
                 keep_days: int = 7):
        super().__init__()
        self.keep_label_days = keep_label_days
        self.every_rows = every_rows
        self.every_seconds = every_seconds
        self.keep_days = keep_days

    def expand(self, inputs):
        from streaming.job.example_log import key_label

        records, labels = inputs
        served = records | "ServedRecordOf" >> beam.Map(served_record).with_output_types(beam.typehints.KV[str, Any])
        keyed_labels = labels | "KeyServedLabelsByTerminal" >> beam.Map(key_label).with_output_types(
            beam.typehints.KV[str, Any])
        return (
            (served, keyed_labels)
            | "MergeServedInputs" >> beam.Flatten()
            | ServedJoinFn.__name__ >> beam.ParDo(ServedJoinFn(self.keep_label_days))
            | ServedFiguresFn.__name__ >> beam.ParDo(ServedFiguresFn(
                every_rows=self.every_rows, every_seconds=self.every_seconds, keep_days=self.keep_days))
        )
