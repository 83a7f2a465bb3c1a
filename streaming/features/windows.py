"""The reference features as code: vectorised per-key functions and incremental per-key state.

Pure Python + numpy (no Beam, gRPC or XGBoost), so the batch backfill, the streaming job
and the predictor all run exactly this. Two forms of the same definition:

* **vectorised**, for one key's whole history at once (batch):
  :func:`customer_features`, :func:`terminal_features`, :func:`time_features`;
* **incremental**, one event at a time with bounded memory (streaming, predictor):
  :class:`CustomerState`, :class:`TerminalState`. For a key, each accepted event gets exactly
  the vectorised value computed over the events that arrived before it plus itself. So on
  complete, time-ordered data the two agree except that a transaction emitted before a
  same-time twin has arrived cannot count that twin (the batch value counts both).

Extra feature groups of a spec (``spec.extra``): the terminal fraud streak is part of both
terminal forms above (its columns follow the terminal ones); the derived features are one
function for both forms, :func:`derived_features`, a pure function of a transaction's other
values applied element-wise to whole columns (batch) or to one event's floats (streaming).

Times are int64 nanoseconds of UTC event time. Windows are in event time:

* customer window n: transactions of the customer with time in ``(t - n days, t]`` —
  including the current one and any other transaction at the very same time;
* terminal window n: transactions of the terminal with time in
  ``(t - (delay + n) days, t - delay days]``; risk = frauds / count, 0 when the count is 0.

Average amounts are exact: amounts are rounded to whole cents and summed as integers, so
the result does not depend on summation order (vectorised cumsum or incremental add) and
has no drift over long histories.

>>> import numpy as np
>>> day = DAY_NS
>>> f = customer_features(np.array([0, day // 2, day], dtype=np.int64), np.array([10.0, 20.0, 40.0]))
>>> f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist(), f["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].tolist()
([1.0, 2.0, 2.0], [10.0, 15.0, 30.0])
"""

from __future__ import annotations

import functools
import numbers
from array import array
from bisect import bisect_left, bisect_right

import numpy as np

from streaming.features.spec import DAY_NS, DEFAULT_SPEC, FeatureSpec

HOUR_NS = 3_600 * 1_000_000_000
#: Amounts are summed as integer cents; beyond this magnitude int64 window sums could overflow.
MAX_ABS_AMOUNT = 1e11
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


class LateEventError(ValueError):
    """An event is older than ``max event time seen - allowed lateness`` for its key.

    Its window may already have been pruned, so it cannot be featurised exactly; the
    streaming job sends it to the dead-letter output with this message.
    """


# ---------------------------------------------------------------------------------------
# vectorised, one key at a time
# ---------------------------------------------------------------------------------------

def _as_times(times_ns) -> np.ndarray:
    times = np.asarray(times_ns)
    if np.issubdtype(times.dtype, np.datetime64):
        times = times.astype("datetime64[ns]").view(np.int64)
    if times.ndim != 1 or not np.issubdtype(times.dtype, np.integer):
        raise ValueError(f"times_ns must be a 1-d array of int64 nanoseconds, got dtype {times.dtype} and shape {times.shape}")
    times = times.astype(np.int64, copy=False)
    if times.size > 1 and np.any(times[1:] < times[:-1]):
        raise ValueError("times_ns must be sorted in ascending event time")
    return times


def amount_cents(amounts) -> np.ndarray:
    """Amounts as int64 whole cents (round half to even), validating they are finite and bounded."""
    values = np.asarray(amounts, dtype=np.float64)
    if not np.all(np.abs(values) <= MAX_ABS_AMOUNT):  # also false for NaN
        bad = values[~(np.abs(values) <= MAX_ABS_AMOUNT)][0]
        raise ValueError(f"amounts must be finite numbers with |amount| <= {MAX_ABS_AMOUNT:g}, got {bad!r}")
    return np.rint(values * 100.0).astype(np.int64)


def _cents(amount: float) -> int:
    """Scalar twin of :func:`amount_cents` (same IEEE product, same half-to-even rounding)."""
    value = float(amount)
    if not abs(value) <= MAX_ABS_AMOUNT:
        raise ValueError(f"amount must be a finite number with |amount| <= {MAX_ABS_AMOUNT:g}, got {amount!r}")
    return round(value * 100.0)


def _prefix_sum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(values.size + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def time_features(times_ns) -> dict[str, np.ndarray]:
    """``TX_DURING_WEEKEND`` (Saturday/Sunday) and ``TX_DURING_NIGHT`` (hour 0..6), UTC, as float64 0/1.

    Unlike the per-key functions, ``times_ns`` need not be sorted.
    """
    times = np.asarray(times_ns)
    if np.issubdtype(times.dtype, np.datetime64):
        times = times.astype("datetime64[ns]").view(np.int64)
    times = times.astype(np.int64, copy=False)
    weekday = (times // DAY_NS + _EPOCH_WEEKDAY) % 7
    hour = (times // HOUR_NS) % 24
    return {
        "TX_DURING_WEEKEND": (weekday >= 5).astype(np.float64),
        "TX_DURING_NIGHT": (hour <= 6).astype(np.float64),
    }


def customer_features(times_ns, amounts, spec: FeatureSpec = DEFAULT_SPEC) -> dict[str, np.ndarray]:
    """Count and mean amount over ``(t - n days, t]`` for each transaction of ONE customer.

    ``times_ns`` must be sorted ascending (ties in any order: same-time transactions are
    in each other's windows). Returns float64 arrays under ``spec.customer_names``.
    """
    times = _as_times(times_ns)
    cents = amount_cents(amounts)
    if cents.shape != times.shape:
        raise ValueError(f"amounts must have one value per time, got {cents.shape} for {times.shape}")
    csum = _prefix_sum(cents)
    hi = np.searchsorted(times, times, side="right")
    out: dict[str, np.ndarray] = {}
    for n in spec.customer_windows:
        lo = np.searchsorted(times, times - n * DAY_NS, side="right")
        count = hi - lo
        out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = count.astype(np.float64)
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = (csum[hi] - csum[lo]).astype(np.float64) / (count * 100).astype(np.float64)
    return out


def terminal_features(times_ns, frauds, spec: FeatureSpec = DEFAULT_SPEC) -> dict[str, np.ndarray]:
    """Count and fraud rate over ``(t - (delay + n) days, t - delay days]`` for ONE terminal.

    ``frauds`` holds 1 for a transaction known to be fraud, else 0. Risk is 0 when the count
    is 0. Returns float64 arrays under ``spec.terminal_names``, then ``spec.terminal_extra_names``
    (the fraud streak over the longest window, when the spec has it).
    """
    times = _as_times(times_ns)
    fraud = np.asarray(frauds)
    if fraud.shape != times.shape:
        raise ValueError(f"frauds must have one value per time, got {fraud.shape} for {times.shape}")
    if fraud.size and not np.all((fraud == 0) | (fraud == 1)):
        raise ValueError(f"frauds must be 0 or 1, got {np.unique(fraud)[:5].tolist()}")
    fsum = _prefix_sum(fraud.astype(np.int64))
    end = times - spec.delay_days * DAY_NS
    hi = np.searchsorted(times, end, side="right")
    out: dict[str, np.ndarray] = {}
    for n in spec.terminal_windows:
        lo = np.searchsorted(times, end - n * DAY_NS, side="right")
        count = hi - lo
        nfraud = fsum[hi] - fsum[lo]
        risk = np.zeros(times.size, dtype=np.float64)
        np.divide(nfraud.astype(np.float64), count.astype(np.float64), out=risk, where=count > 0)
        out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = count.astype(np.float64)
        out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = risk
    if spec.terminal_extra_names:
        lo = np.searchsorted(times, end - spec.terminal_windows[-1] * DAY_NS, side="right")
        # index of the latest genuine transaction before each position (-1: none)
        genuine = np.where(fraud == 0, np.arange(times.size), -1)
        j = np.concatenate(([-1], np.maximum.accumulate(genuine)))[hi]
        # frauds at the very time of that genuine transaction do not count (order-free ties)
        after = np.where(j >= 0, np.searchsorted(times, times[np.maximum(j, 0)], side="right"), 0)
        start = np.maximum(after, lo)  # the streak: positions start..hi-1, all frauds
        streak = hi - start  # >= 0: j < hi, and hi is past every time <= t - delay
        first = times[np.minimum(start, times.size - 1)] if times.size else times
        days = np.zeros(times.size, dtype=np.float64)
        np.divide((times - first).astype(np.float64), float(DAY_NS), out=days, where=streak > 0)
        streak_name, days_name = spec.terminal_extra_names
        out[streak_name] = streak.astype(np.float64)
        out[days_name] = days
    return out


# ---------------------------------------------------------------------------------------
# derived features: one function for columns and for single events
# ---------------------------------------------------------------------------------------

def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` (IEEE float64), 0 where the denominator is not > 0."""
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _column(values, name: str) -> np.ndarray:
    return np.asarray(values[name], dtype=np.float64)


def _amount_ratios(values, spec: FeatureSpec) -> dict[str, np.ndarray]:
    amount = _column(values, "TX_AMOUNT")
    longest = spec.customer_windows[-1]
    avg = {n: _column(values, f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW") for n in spec.customer_windows}
    out = {f"CUSTOMER_ID_AMOUNT_RATIO_{n}DAY_WINDOW": _ratio(amount, avg[n]) for n in spec.customer_windows}
    for n in spec.customer_windows[:-1]:
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_TO_{longest}DAY_RATIO"] = _ratio(avg[n], avg[longest])
    return out


_DERIVED = {"amount_ratios": _amount_ratios}


def derived_features(values, spec: FeatureSpec = DEFAULT_SPEC) -> dict:
    """The derived features of ``spec`` (``spec.derived_names``) from its other values.

    ``values`` maps reference feature names to either one event's numbers (the result then
    holds Python floats) or equally long 1-d arrays, one entry per transaction (the result
    holds float64 arrays). Both go through the same numpy code, so an event's values equal
    its row of the columns bit for bit. Empty for a spec without derived groups.

    >>> from streaming.features.spec import EXTENDED_SPEC
    >>> one = {"TX_AMOUNT": 50.0, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": 50.0,
    ...        "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": 20.0, "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": 10.0}
    >>> derived_features(one, EXTENDED_SPEC)["CUSTOMER_ID_AMOUNT_RATIO_30DAY_WINDOW"]
    5.0
    >>> columns = {k: np.array([v, 0.0]) for k, v in one.items()}
    >>> derived_features(columns, EXTENDED_SPEC)["CUSTOMER_ID_AVG_AMOUNT_7DAY_TO_30DAY_RATIO"].tolist()
    [2.0, 0.0]
    """
    if not spec.derived_names:
        return {}
    scalar = np.ndim(values["TX_AMOUNT"]) == 0
    out: dict = {}
    for group in spec.extra:
        if group in _DERIVED:
            out.update(_DERIVED[group](values, spec))
    if scalar:
        return {name: float(value) for name, value in out.items()}
    return out


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
    >>> s.add_label("a", 0, 1)
    >>> s.add_transaction("b", 7 * DAY_NS)["TERMINAL_ID_RISK_1DAY_WINDOW"]
    1.0
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC, allowed_lateness_ns: int = DAY_NS):
        super().__init__(spec, allowed_lateness_ns)
        self._frauds = array("b")
        self._pending: dict = {}  # transaction_id -> event time of a fraud label without its transaction
        self._waiting: dict = {}  # transaction_id -> (event time, payload) of any label given a payload, not yet matched
        self._aged_out: list = []  # payloads of labels whose transaction never came (see take_aged_out)

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
        i = self._insert(transaction_id, t)
        self._frauds.insert(i, fraud)
        self._advance(t)
        return self._features_at(t)

    def add_label(self, transaction_id, time_ns: int, fraud: int, payload=None) -> None:
        """Record a label for a transaction of this terminal (``time_ns`` is the transaction's event time).

        With a ``payload`` (e.g. the label event), a label whose transaction has not come is
        remembered; if it is still unmatched when it falls behind the retention horizon, the
        payload is handed out once by :meth:`take_aged_out` (the job dead-letters it).
        Validates before it changes anything.
        """
        if fraud not in (0, 1):
            raise ValueError(f"fraud must be 0 or 1, got {fraud!r}")
        if not fraud and payload is None:
            return  # genuine is the default; nothing to record
        t = _time_ns(time_ns)
        if self._seen(transaction_id):
            if not fraud:
                return
            lo, hi = bisect_left(self._times, t), bisect_right(self._times, t)
            try:
                i = self._ids.index(transaction_id, lo, hi)
            except ValueError:  # label time differs from the transaction's: search everywhere
                i = self._ids.index(transaction_id)
            self._frauds[i] = 1
        elif self._max_time is None or t > self._cutoff_ns():
            if fraud:
                self._pending[transaction_id] = t
            if payload is not None:
                self._waiting[transaction_id] = (t, payload)
        # else: the transaction is older than anything kept, so its label can change no feature

    def take_aged_out(self) -> list:
        """Payloads of labels whose transaction never came before they aged out (each handed out once)."""
        out, self._aged_out = self._aged_out, []
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
        return k

    def _extra_state(self) -> tuple:
        return (self._frauds, self._pending, self._waiting, self._aged_out)

    def _set_extra_state(self, extra: tuple) -> None:
        self._frauds, self._pending = extra[:2]
        self._waiting, self._aged_out = extra[2:] if len(extra) > 2 else ({}, [])


__all__ = [
    "DAY_NS", "HOUR_NS", "LateEventError", "amount_cents", "time_features",
    "customer_features", "terminal_features", "derived_features", "CustomerState", "TerminalState",
]
