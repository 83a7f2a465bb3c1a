"""The reference features as incremental per-key state: one event at a time, bounded memory.

:class:`CustomerState` and :class:`TerminalState` give each accepted event exactly the value the
vectorised functions of :mod:`streaming.features.windows` compute over the events that arrived
before it plus itself (the streaming job keeps them in Beam state; the predictor rebuilds them
from the online store).
"""

from __future__ import annotations

import functools
import numbers
from array import array
from bisect import bisect_left, bisect_right

from streaming.features.spec import DAY_NS, DEFAULT_SPEC, FeatureSpec
from streaming.features.windows import MAX_ABS_AMOUNT, LateEventError

__all__ = ["CustomerState", "TerminalState"]


def _cents(amount: float) -> int:
    """Scalar twin of :func:`streaming.features.windows.amount_cents` (same IEEE product, same half-to-even rounding)."""
    value = float(amount)
    if not abs(value) <= MAX_ABS_AMOUNT:
        raise ValueError(f"amount must be a finite number with |amount| <= {MAX_ABS_AMOUNT:g}, got {amount!r}")
    return round(value * 100.0)


# ---------------------------------------------------------------------------------------
# incremental, one event at a time
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _spec_from_fields(customer_windows, terminal_windows, delay_days, extra=()) -> FeatureSpec:
    return FeatureSpec(customer_windows, terminal_windows, delay_days, extra)


def _time_ns(value) -> int:
    if type(value) is int:  # the common case, without the (slow) abstract-class check below
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"time_ns must be an integer number of nanoseconds since the epoch (UTC), got {value!r}")
    return int(value)


def _spec_fields(spec: FeatureSpec) -> tuple:
    fields = (spec.customer_windows, spec.terminal_windows, spec.delay_days)
    return fields + (spec.extra,) if spec.extra else fields  # reference states pickle as before


class _KeyState:
    """Shared bookkeeping: events of one key sorted by time, dedup by id, pruning by age.

    ``_times`` (array of int64) and ``_ids`` (list) are parallel and sorted by time; the
    subclass keeps one more parallel array of values.
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_ns: int = DAY_NS):
        if (isinstance(allowed_lateness_ns, bool) or not isinstance(allowed_lateness_ns, numbers.Integral)
                or allowed_lateness_ns < 0):
            raise ValueError(f"allowed_lateness_ns must be an int >= 0, got {allowed_lateness_ns!r}")
        self.spec = spec
        self.allowed_lateness_ns = int(allowed_lateness_ns)
        self._max_time: int | None = None
        self._times = array("q")
        self._ids: list = []
        self._id_set: set | None = None  # rebuilt lazily; not pickled

    def __len__(self) -> int:
        """Number of transactions held."""
        return len(self._times)

    @property
    def max_event_time_ns(self) -> int | None:
        """Largest transaction event time seen for this key (None before the first)."""
        return self._max_time

    def _horizon_ns(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def seen(self, transaction_id) -> bool:
        """Whether ``transaction_id`` is among the transactions held."""
        return self._seen(transaction_id)

    def features_at(self, time_ns: int) -> dict[str, float]:
        """The features a transaction at ``time_ns`` gets from the transactions held now (it included, if
        it was added): what :meth:`CustomerState.add` / :meth:`TerminalState.add_transaction` returned for it
        unless events that arrived since fall in its window."""
        return self._features_at(_time_ns(time_ns))

    def _features_at(self, t: int) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _seen(self, transaction_id) -> bool:
        if self._id_set is None:
            self._id_set = set(self._ids)
        return transaction_id in self._id_set

    def _check_time(self, time_ns) -> int:
        t = _time_ns(time_ns)
        if self._max_time is not None and t < self._max_time - self.allowed_lateness_ns:
            raise LateEventError(
                f"event time {t} is more than the allowed lateness ({self.allowed_lateness_ns} ns) "
                f"behind the latest event time seen for this key ({self._max_time})")
        return t

    def _insert(self, transaction_id, t: int) -> int:
        i = bisect_right(self._times, t)
        self._times.insert(i, t)
        self._ids.insert(i, transaction_id)
        self._seen(transaction_id)
        self._id_set.add(transaction_id)
        return i

    def _prune(self) -> int:
        """Drop events no acceptable future event can see; returns how many were dropped."""
        cutoff = self._max_time - self.allowed_lateness_ns - self._horizon_ns()
        k = bisect_right(self._times, cutoff)
        if k:
            if self._id_set is not None:
                self._id_set.difference_update(self._ids[:k])
            del self._times[:k]
            del self._ids[:k]
        return k

    def _advance(self, t: int) -> int:
        if self._max_time is None or t > self._max_time:
            self._max_time = t
            return self._prune()
        return 0

    # pickling: compact, without the derived id set
    def __getstate__(self):
        return (_spec_fields(self.spec), self.allowed_lateness_ns, self._max_time, self._times, self._ids) + self._extra_state()

    def __setstate__(self, state):
        fields, self.allowed_lateness_ns, self._max_time, self._times, self._ids = state[:5]
        self.spec = _spec_from_fields(*fields)
        self._id_set = None
        self._set_extra_state(state[5:])

    def _extra_state(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_extra_state(self, extra: tuple) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class CustomerState(_KeyState):
    """One customer's recent transactions; :meth:`add` returns the customer features of an event.

    Parameters
    ----------
    spec
        The feature definition.
    allowed_lateness_ns
        How far (event time) behind the latest transaction of this customer a transaction
        may arrive and still be featurised exactly. Older ones raise :class:`LateEventError`.
        Memory holds only transactions newer than ``latest - longest window - lateness``.

    >>> s = CustomerState()
    >>> s.add("a", 0, 10.0)["CUSTOMER_ID_NB_TX_1DAY_WINDOW"]
    1.0
    >>> s.add("b", DAY_NS // 2, 20.0)["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"]
    15.0
    >>> s.add("b", DAY_NS // 2, 20.0) is None  # duplicate
    True
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_ns: int = DAY_NS):
        super().__init__(spec, allowed_lateness_ns)
        self._cents = array("q")

    def _horizon_ns(self) -> int:
        return self.spec.customer_horizon_ns

    def add(self, transaction_id, time_ns: int, amount: float) -> dict[str, float] | None:
        """Record a transaction and return its customer features; None if ``transaction_id`` was seen.

        Raises :class:`LateEventError` (and records nothing) if ``time_ns`` is more than the
        allowed lateness behind the latest time seen — checked first, so a late redelivery is
        reported as late rather than as a duplicate.
        """
        t = self._check_time(time_ns)
        if self._seen(transaction_id):
            return None
        cents = _cents(amount)
        i = self._insert(transaction_id, t)
        self._cents.insert(i, cents)
        self._advance(t)
        return self._features_at(t)

    def _features_at(self, t: int) -> dict[str, float]:
        times, cents = self._times, self._cents
        hi = bisect_right(times, t)
        out: dict[str, float] = {}
        for n in self.spec.customer_windows:
            lo = bisect_right(times, t - n * DAY_NS)
            count = hi - lo
            out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = float(count)
            out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = float(sum(cents[lo:hi])) / float(count * 100)
        return out

    def _prune(self) -> int:
        k = super()._prune()
        if k:
            del self._cents[:k]
        return k

    def _extra_state(self) -> tuple:
        return (self._cents,)

    def _set_extra_state(self, extra: tuple) -> None:
        (self._cents,) = extra


class TerminalState(_KeyState):
    """One terminal's recent transactions and fraud labels; :meth:`add_transaction` returns its features.

    A transaction counts as fraud iff a fraud label (``fraud=1``) for it has been received
    (labels are sticky: a later ``fraud=0`` does not undo one). A label may arrive before
    its transaction: it is kept pending until the transaction arrives or until it is older
    than the retention horizon (``latest - delay - longest window - lateness``).

    >>> s = TerminalState()
    >>> _ = s.add_transaction("a", 0)
    >>> s.add_label("a", 0, 1)  # its transaction is there: nothing waits
    False
    >>> s.add_transaction("b", 7 * DAY_NS)["TERMINAL_ID_RISK_1DAY_WINDOW"]
    1.0
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_ns: int = DAY_NS):
        super().__init__(spec, allowed_lateness_ns)
        self._frauds = array("b")
        self._pending: dict = {}  # transaction_id -> event time of a fraud label without its transaction
        self._waiting: dict = {}  # transaction_id -> (event time, payload) of any label given a payload, not yet matched
        self._aged_out: list = []  # payloads of labels whose transaction never came (see take_aged_out)
        self._deadlines: dict = {}  # transaction_id -> deadline of a waiting label given one (see expire_waiting)

    def _horizon_ns(self) -> int:
        return self.spec.terminal_horizon_ns

    @property
    def pending_labels(self) -> int:
        """Number of fraud labels waiting for their transaction."""
        return len(self._pending)

    def add_transaction(self, transaction_id, time_ns: int) -> dict[str, float] | None:
        """Record a transaction and return its terminal features; None if ``transaction_id`` was seen.

        Raises :class:`LateEventError` like :meth:`CustomerState.add`.
        """
        t = self._check_time(time_ns)
        if self._seen(transaction_id):
            return None
        fraud = 1 if self._pending.pop(transaction_id, None) is not None else 0
        if self._waiting:
            self._waiting.pop(transaction_id, None)
            self._deadlines.pop(transaction_id, None)
        i = self._insert(transaction_id, t)
        self._frauds.insert(i, fraud)
        self._advance(t)
        return self._features_at(t)

    def add_label(self, transaction_id, time_ns: int, fraud: int, payload=None, deadline: int | None = None) -> bool:
        """Record a label for a transaction of this terminal (``time_ns`` is the transaction's event time).

        With a ``payload`` (e.g. the label event), a label whose transaction has not come is
        remembered; if it is still unmatched when it falls behind the retention horizon, the
        payload is handed out once by :meth:`take_aged_out` (the job dead-letters it). With a
        ``deadline`` too (any integer clock, e.g. the job's watermark in µs), :meth:`expire_waiting`
        hands it out once that deadline has passed, even if the terminal sees no other event.
        Returns whether the label now waits for its transaction. Validates before it changes anything.
        """
        if fraud not in (0, 1):
            raise ValueError(f"fraud must be 0 or 1, got {fraud!r}")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, numbers.Integral)):
            raise ValueError(f"deadline must be an integer, got {deadline!r}")
        if not fraud and payload is None:
            return False  # genuine is the default; nothing to record
        t = _time_ns(time_ns)
        if self._seen(transaction_id):
            if not fraud:
                return False
            lo, hi = bisect_left(self._times, t), bisect_right(self._times, t)
            try:
                i = self._ids.index(transaction_id, lo, hi)
            except ValueError:  # label time differs from the transaction's: search everywhere
                i = self._ids.index(transaction_id)
            self._frauds[i] = 1
            return False
        if self._max_time is None or t > self._cutoff_ns():
            if fraud:
                self._pending[transaction_id] = t
            if payload is not None:
                self._waiting[transaction_id] = (t, payload)
                if deadline is not None:
                    self._deadlines[transaction_id] = int(deadline)
                return True
        # else: the transaction is older than anything kept, so its label can change no feature
        return False

    def take_aged_out(self) -> list:
        """Payloads of labels whose transaction never came before they aged out (each handed out once)."""
        out, self._aged_out = self._aged_out, []
        return out

    @property
    def waiting_deadlines(self) -> int:
        """Number of waiting labels with a deadline (see :meth:`expire_waiting`)."""
        return len(self._deadlines)

    @property
    def next_deadline(self) -> int | None:
        """The earliest deadline of a label still waiting for its transaction (None: none given)."""
        return min(self._deadlines.values()) if self._deadlines else None

    def expire_waiting(self, now: int) -> list:
        """Payloads of waiting labels whose deadline is ``<= now``, forgotten (each handed out once):
        a fraud label no longer counts for a transaction that comes after all."""
        due = [tid for tid, deadline in self._deadlines.items() if deadline <= now]
        out = []
        for tid in due:
            del self._deadlines[tid]
            self._pending.pop(tid, None)
            waiting = self._waiting.pop(tid, None)
            if waiting is not None:
                out.append(waiting[1])
        return out

    def _cutoff_ns(self) -> int:
        return self._max_time - self.allowed_lateness_ns - self._horizon_ns()

    def _features_at(self, t: int) -> dict[str, float]:
        times, frauds = self._times, self._frauds
        end = t - self.spec.delay_days * DAY_NS
        hi = bisect_right(times, end)
        out: dict[str, float] = {}
        for n in self.spec.terminal_windows:
            lo = bisect_right(times, end - n * DAY_NS)
            count = hi - lo
            out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = float(count)
            out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = float(sum(frauds[lo:hi])) / float(count) if count else 0.0
        if self.spec.terminal_extra_names:
            out.update(self._streak_at(t, end, hi))
        return out

    def _streak_at(self, t: int, end: int, hi: int) -> dict[str, float]:
        """The fraud streak over the longest window: frauds later than its latest genuine transaction."""
        times, frauds = self._times, self._frauds
        lo = bisect_right(times, end - self.spec.terminal_windows[-1] * DAY_NS)
        j = hi - 1
        while j >= lo and frauds[j]:
            j -= 1
        # frauds at the very time of that genuine transaction (in any arrival order) do not count
        start = bisect_right(times, times[j]) if j >= lo else lo
        streak = hi - start
        streak_name, days_name = self.spec.terminal_extra_names
        return {streak_name: float(streak),
                days_name: float(t - times[start]) / float(DAY_NS) if streak else 0.0}

    def _prune(self) -> int:
        k = super()._prune()
        if k:
            del self._frauds[:k]
        if self._pending:
            cutoff = self._cutoff_ns()
            self._pending = {tid: pt for tid, pt in self._pending.items() if pt > cutoff}
        if self._waiting:
            cutoff = self._cutoff_ns()
            old = [tid for tid, (pt, _) in self._waiting.items() if pt <= cutoff]
            for tid in old:
                self._aged_out.append(self._waiting.pop(tid)[1])
                self._deadlines.pop(tid, None)
        return k

    def _extra_state(self) -> tuple:
        if self._deadlines:
            return (self._frauds, self._pending, self._waiting, self._aged_out, self._deadlines)
        return (self._frauds, self._pending, self._waiting, self._aged_out)  # the shape states had before deadlines

    def _set_extra_state(self, extra: tuple) -> None:
        # Older shapes load: (frauds, pending), then + (waiting, aged out), now + (deadlines) when any.
        self._frauds, self._pending = extra[:2]
        self._waiting, self._aged_out = extra[2:4] if len(extra) > 2 else ({}, [])
        self._deadlines = extra[4] if len(extra) > 4 else {}
