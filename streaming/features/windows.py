"""The reference features as code: vectorised per-key functions (the incremental per-key state,
built on them, is :mod:`streaming.features.state`).

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


__all__ = [
    "DAY_NS", "HOUR_NS", "LateEventError", "amount_cents", "time_features",
    "customer_features", "terminal_features", "derived_features",
]
