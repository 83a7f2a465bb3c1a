"""The streaming executor: Beam transforms that featurise each transaction as it arrives.

Two keyed stateful stages run the pure per-key state of :mod:`streaming.features.windows`:

1. keyed by customer — :class:`CustomerStateFn` adds the transaction to the customer's
   :class:`~streaming.features.state.CustomerState` and emits it with its customer features,
   re-keyed by terminal. Labels (the ``labels`` topic) pass through this stage unchanged, so
   labels and transactions reach the next stage along one path, in the order they came;
2. keyed by terminal — :class:`TerminalStateFn` receives those transactions and labels, keeps a
   :class:`~streaming.features.state.TerminalState`, and emits the complete feature vector.

Each transaction is emitted immediately (no waiting for a window to close), with features
computed from its own event time. There are no event-time windows, so replays of old data
featurise correctly whatever the runner's watermark does (on the local runner the Pub/Sub
watermark is the wall clock). State per key is pruned as the windows slide.

One event-time timer, on the terminal stage, bounds how long a label that came before its
transaction waits: its deadline is the label's element timestamp plus the terminal's retention
horizon (allowed lateness + delay + longest window, 44 days by default). When the watermark
passes it and the transaction still has not come, the label is dead-lettered (stage ``label``)
even if the terminal never sees another event. A label also ages out, as before, when the
terminal's own transactions move its horizon past the label's event time — whichever comes
first. The timer changes no feature of a transaction that comes in time.
A duplicate delivery of a transaction id, or a transaction later than the allowed
lateness, goes to the dead-letter output with the reason: nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from streaming.io.events import DeadLetter, Label, Transaction
from streaming.io.encoding import dead_letter_of_event
from streaming.features.spec import DAY_NS, DEFAULT_SPEC, FeatureSpec
from streaming.features.transaction import time_ns, transaction_features
from streaming.features.windows import LateEventError, derived_features
from streaming.features.state import CustomerState, TerminalState
from streaming.job.guard import guarded
from streaming.job.labelled import FeatureStore
from streaming.store.online import OnlineStoreWrites

DEAD_LETTER = "dead_letter"
EXAMPLES = "examples"
#: The latest timer a global-window key may set (Beam refuses timers past the window's end).
MAX_TIMER_MICROS = GlobalWindow().max_timestamp().micros
STAGE = "features"
LABEL_STAGE = "label"

log = logging.getLogger(__name__)


class FeaturedTransaction(NamedTuple):
    """A transaction with its feature vector, in ``spec.names`` order."""

    transaction: Transaction
    features: tuple[float, ...]


def key_by_customer(event: Transaction | Label) -> tuple[str, Transaction | Label]:
    """The customer stage's input: ``(customer_id, event)``."""
    return event.customer_id, event


def _dead(event: Transaction | Label, reason: str) -> DeadLetter:
    return dead_letter_of_event(event, reason, STAGE)


def _horizon_days(state: TerminalState) -> float:
    return (state.allowed_lateness_ns + state.spec.terminal_horizon_ns) / DAY_NS


def _never_came(state: TerminalState, label: Label) -> str:
    return (f"label for transaction_id {label.transaction_id}: its transaction never came to terminal "
            f"{label.terminal_id} within {_horizon_days(state):g} days (event time) of its event_time")


def _never_came_by_deadline(state: TerminalState, label: Label) -> str:
    return (f"label for transaction_id {label.transaction_id}: its transaction never came to terminal "
            f"{label.terminal_id} within {_horizon_days(state):g} days (watermark) of the label's arrival")


@beam.typehints.with_input_types(beam.typehints.KV[str, Any])
@beam.typehints.with_output_types(beam.typehints.KV[str, Any])
class CustomerStateFn(beam.DoFn):
    """(customer_id, Transaction) → (terminal_id, (Transaction, customer features))."""

    STATE = ReadModifyWriteStateSpec("customer", PickleCoder())

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_days: float = 1.0,
                 online_store: str | None = None):
        self.spec = spec
        self.allowed_lateness_days = allowed_lateness_days
        self.online = OnlineStoreWrites(self.__class__, "customer", online_store, spec, allowed_lateness_days)
        self._duplicates = Metrics.counter(self.__class__, "duplicates")
        self._late = Metrics.counter(self.__class__, "late")

    def start_bundle(self):
        self.online.start_bundle()

    def finish_bundle(self):
        self.online.finish_bundle()

    @guarded(STAGE)
    def process(self, element, state=beam.DoFn.StateParam(STATE)):
        customer_id, tx = element
        if isinstance(tx, Label):  # labels ride the same path so they keep their order
            yield tx.terminal_id, tx
            return
        current = state.read()
        if current is None:  # not `or`: a state holding only pending labels has len() == 0
            current = CustomerState(self.spec, int(self.allowed_lateness_days * DAY_NS))
        try:
            features = current.add(tx.transaction_id, time_ns(tx.event_time), tx.amount)
        except LateEventError as exc:
            self._late.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead(tx, f"customer {tx.customer_id}: {exc}"))
            return
        if features is None:
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead(
                tx, f"duplicate delivery: transaction_id {tx.transaction_id} was already featurised"))
            return
        state.write(current)
        self.online.updated(customer_id, current)
        yield tx.terminal_id, (tx, features)


@beam.typehints.with_input_types(beam.typehints.KV[str, Any])
class TerminalStateFn(beam.DoFn):
    """(terminal_id, (Transaction, customer features) | Label) → :class:`FeaturedTransaction`.

    With ``keep_examples_days``, the feature vector of each transaction is also kept (a
    :class:`~streaming.job.labelled.FeatureStore`) until its label arrives, and each label then
    yields an :class:`~streaming.job.labelled.Example` on the ``examples`` output — for online
    learning from exactly the features that were scored, without another stage. A label that
    overtakes its transaction waits in the store and its example leaves with the transaction.

    ``emit`` (optional) turns each FeaturedTransaction into what the stage outputs (e.g. the
    ``features`` topic message), saving the runner a stage.
    """

    STATE = ReadModifyWriteStateSpec("terminal", PickleCoder())
    SCORED = ReadModifyWriteStateSpec("scored", PickleCoder())
    #: Event time: fires when the watermark passes the earliest deadline of a waiting label (module docs).
    LABEL_AGE = TimerSpec("label_age", TimeDomain.WATERMARK)

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_days: float = 1.0,
                 keep_examples_days: float | None = None, emit: Callable[[FeaturedTransaction], Any] | None = None,
                 online_store: str | None = None):
        self.spec = spec
        self.allowed_lateness_days = allowed_lateness_days
        self.keep_examples_days = keep_examples_days
        self.emit = emit
        self.online = OnlineStoreWrites(self.__class__, "terminal", online_store, spec, allowed_lateness_days)
        self._labels = Metrics.counter(self.__class__, "labels")
        self._late = Metrics.counter(self.__class__, "late")
        self._examples = Metrics.counter(self.__class__, "examples")
        self._aged_out = Metrics.counter(self.__class__, "labels_aged_out")
        self._timer_failures = Metrics.counter(self.__class__, "timer_failures")

    def start_bundle(self):
        self.online.start_bundle()

    def finish_bundle(self):
        self.online.finish_bundle()

    def _store(self, scored) -> FeatureStore:
        store = scored.read()
        return FeatureStore(int(self.keep_examples_days * DAY_NS)) if store is None else store

    @guarded(STAGE)
    def process(self, element, state=beam.DoFn.StateParam(STATE), scored=beam.DoFn.StateParam(SCORED),
                timestamp=beam.DoFn.TimestampParam, label_age=beam.DoFn.TimerParam(LABEL_AGE)):
        return self._process(element, state, scored, timestamp, label_age)

    @on_timer(LABEL_AGE)
    def on_label_age(self, fired=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE),
                     scored=beam.DoFn.StateParam(SCORED), label_age=beam.DoFn.TimerParam(LABEL_AGE)):
        return self._on_label_age(fired, state, scored, label_age)

    def _horizon_micros(self) -> int:
        return (int(self.allowed_lateness_days * DAY_NS) + self.spec.terminal_horizon_ns) // 1000

    def _on_label_age(self, fired, state, scored, label_age):
        """Dead-letter the waiting labels whose deadline the watermark passed; set the timer for the next one.

        Guarded like ``process`` (a timer has no element: a failure is counted and logged, and the
        labels wait for the next event or firing), so a timer can never fail the pipeline."""
        try:
            current = state.read()
            if current is None:
                return []
            expired = current.expire_waiting(fired.micros)
            if not expired:
                self._rearm(current, label_age)
                return []
            store = self._store(scored) if scored is not None else None
            out = []
            for label in expired:
                if store is not None:
                    store.forget_label(label.transaction_id)
                self._aged_out.inc()
                out.append(beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_of_event(
                    label, _never_came_by_deadline(current, label), LABEL_STAGE)))
            state.write(current)
            if store is not None:
                scored.write(store)
            self._rearm(current, label_age)
            return out
        except Exception:
            self._timer_failures.inc()
            log.exception("terminal stage: the label age timer failed; its labels wait for the next event")
            return []

    @staticmethod
    def _rearm(current: TerminalState, label_age) -> None:
        deadline = current.next_deadline
        if deadline is not None:
            label_age.set(Timestamp(micros=deadline))

    def _process(self, element, state, scored, timestamp=None, label_age=None):
        terminal_id, value = element
        current = state.read()
        if current is None:  # not `or`: a state holding only pending labels has len() == 0
            current = TerminalState(self.spec, int(self.allowed_lateness_days * DAY_NS))
        if isinstance(value, Label):
            self._labels.inc()
            deadline = None
            if label_age is not None and timestamp is not None:
                deadline = min(timestamp.micros + self._horizon_micros(), MAX_TIMER_MICROS)
            before = current.next_deadline
            waits = current.add_label(value.transaction_id, time_ns(value.event_time), value.label, payload=value,
                                      deadline=deadline)
            if waits and deadline is not None and (before is None or deadline < before):
                label_age.set(Timestamp(micros=deadline))
            state.write(current)
            if value.label:  # a genuine label changes nothing
                self.online.updated(terminal_id, current)
            if self.keep_examples_days:
                store = self._store(scored)
                example = store.label(value.transaction_id, value.label, time_ns(value.event_time))
                scored.write(store)  # the vector was taken, or the label waits for its transaction
                if example is not None:
                    self._examples.inc()
                    yield beam.pvalue.TaggedOutput(EXAMPLES, example)
            return
        tx, customer = value
        tx_values = {**transaction_features(tx), **customer}  # what can fail on the element, before the state changes
        deadlines = current.waiting_deadlines
        try:
            terminal = current.add_transaction(tx.transaction_id, time_ns(tx.event_time))
        except LateEventError as exc:
            self._late.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead(tx, f"terminal {tx.terminal_id}: {exc}"))
            return
        if terminal is None:  # the customer stage already dedups; a terminal-only dup is still reported
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead(
                tx, f"duplicate delivery: transaction_id {tx.transaction_id} was already featurised"))
            return
        aged_out = current.take_aged_out()
        if deadlines and not current.waiting_deadlines and label_age is not None:
            label_age.clear()  # no label waits any more: no firing (on the local runner no scan of this key)
        state.write(current)
        for label in aged_out:
            self._aged_out.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_of_event(label, _never_came(current, label), LABEL_STAGE))
        self.online.updated(terminal_id, current)
        values = {**tx_values, **terminal}
        values.update(derived_features(values, self.spec))
        featured = FeaturedTransaction(tx, tuple(values[name] for name in self.spec.names))
        if self.keep_examples_days:
            store = self._store(scored)
            example = store.add(tx.transaction_id, time_ns(tx.event_time), featured.features)
            scored.write(store)
            if example is not None:  # its label came first
                self._examples.inc()
                yield beam.pvalue.TaggedOutput(EXAMPLES, example)
        yield featured if self.emit is None else self.emit(featured)


class TerminalFeaturesFn(TerminalStateFn):
    """:class:`TerminalStateFn` without ``keep_examples_days``: it declares only the terminal state.

    A runner sets up every declared state for every element, used or not (on the local runner
    each costs a lookup and a commit per key), so the features-only job does not declare the store.
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_days: float = 1.0,
                 emit: Callable[[FeaturedTransaction], Any] | None = None, online_store: str | None = None):
        super().__init__(spec, allowed_lateness_days, None, emit, online_store)

    LABEL_AGE = TimerSpec("label_age", TimeDomain.WATERMARK)  # the same timer; a spec has one callback

    @guarded(STAGE)
    def process(self, element, state=beam.DoFn.StateParam(TerminalStateFn.STATE), timestamp=beam.DoFn.TimestampParam,
                label_age=beam.DoFn.TimerParam(LABEL_AGE)):
        return self._process(element, state, None, timestamp, label_age)

    @on_timer(LABEL_AGE)
    def on_label_age(self, fired=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(TerminalStateFn.STATE),
                     label_age=beam.DoFn.TimerParam(LABEL_AGE)):
        return self._on_label_age(fired, state, None, label_age)


class StreamFeatures(beam.PTransform):
    """Transactions and labels in; ``{"features": FeaturedTransaction, "dead_letter": DeadLetter}`` out.

    The input is one PCollection of parsed :class:`Transaction` and :class:`Label` events, or,
    with ``keyed=True``, of ``(customer_id, event)`` pairs (:func:`key_by_customer`: the parser
    can key them itself, saving the runner a stage). With ``emit``, the ``"features"`` output
    holds ``emit(featured)`` instead of each :class:`FeaturedTransaction`.
    With ``keep_examples_days`` the output also has ``"examples"``: an
    :class:`~streaming.job.labelled.Example` for each label whose transaction was featurised
    at most that many days (event time) before the terminal's latest transaction.
    With ``online_store`` (a redis:// URL), both stages also write each key's updated state to
    that online store at the end of each bundle (:mod:`streaming.store.online`).
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_days: float = 1.0,
                 keep_examples_days: float | None = None, *, keyed: bool = False,
                 emit: Callable[[FeaturedTransaction], Any] | None = None, online_store: str | None = None):
        super().__init__()
        self.online_store = online_store
        self.spec = spec
        self.allowed_lateness_days = allowed_lateness_days
        self.keep_examples_days = keep_examples_days
        self.keyed = keyed
        self.emit = emit

    def expand(self, events):
        if not self.keyed:
            events = events | "KeyByCustomer" >> beam.Map(key_by_customer).with_output_types(beam.typehints.KV[str, Any])
        customer = (
            events
            | CustomerStateFn.__name__ >> beam.ParDo(
                CustomerStateFn(self.spec, self.allowed_lateness_days, self.online_store)).with_outputs(DEAD_LETTER, main="main")
        )
        terminal = (
            customer.main
            | TerminalStateFn.__name__ >> beam.ParDo(
                TerminalStateFn(self.spec, self.allowed_lateness_days, self.keep_examples_days, self.emit,
                                self.online_store)
                if self.keep_examples_days else TerminalFeaturesFn(self.spec, self.allowed_lateness_days, self.emit,
                                                                   self.online_store))
            .with_output_types(FeaturedTransaction if self.emit is None else Any)
            .with_outputs(DEAD_LETTER, EXAMPLES, main="main")
        )
        dead = (customer[DEAD_LETTER], terminal[DEAD_LETTER]) | "MergeDeadLetters" >> beam.Flatten()
        out = {"features": terminal.main, "dead_letter": dead}
        if self.keep_examples_days:
            out["examples"] = terminal[EXAMPLES]
        return out
