"""The feature definition: which windows, which delay, which columns — and its hash.

A :class:`FeatureSpec` is the whole configuration of the 15 reference features
(``../shared/specs/FEATURES.md``), plus optional groups of extra features
(:data:`EXTRA_GROUPS`), which come after the 15 reference columns:

* ``terminal_fraud_streak`` — per-terminal state, computed with the terminal features by
  :func:`~streaming.features.windows.terminal_features` and
  :class:`~streaming.features.state.TerminalState`;
* ``amount_ratios`` — *derived*: pure functions of the reference values of the same
  transaction, computed by :func:`~streaming.features.windows.derived_features`.

Every executor — the batch backfill, the streaming job and the predictor — takes one, and
artifacts record its :attr:`FeatureSpec.spec_hash` so a model is only ever served with the
features it was trained on. :data:`DEFAULT_SPEC` is the reference set (its hash is the one
it had before extra groups existed); :data:`EXTENDED_SPEC` adds both groups.

>>> spec = FeatureSpec()
>>> spec.names[:4]
('TX_AMOUNT', 'TX_DURING_WEEKEND', 'TX_DURING_NIGHT', 'CUSTOMER_ID_NB_TX_1DAY_WINDOW')
>>> len(spec.names)
15
>>> FeatureSpec(delay_days=3).spec_hash != spec.spec_hash
True
>>> EXTENDED_SPEC.names[15:18]
('TERMINAL_ID_FRAUD_STREAK_30DAY_WINDOW', 'TERMINAL_ID_FRAUD_STREAK_DAYS_30DAY_WINDOW', \
'CUSTOMER_ID_AMOUNT_RATIO_1DAY_WINDOW')
>>> len(EXTENDED_SPEC.names)
22
>>> FeatureSpec.from_dict(EXTENDED_SPEC.to_dict()) == EXTENDED_SPEC
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from functools import cached_property

#: Bump whenever the *meaning* of a feature changes without its parameters changing
#: (e.g. a different tie rule or rounding); it is part of :attr:`FeatureSpec.spec_hash`.
DEFINITION_VERSION = "streamscore.features/1"

#: Semantics that are fixed in code rather than parameters; hashed with the parameters so
#: that changing any of them changes the hash.
SEMANTICS = {
    "time": "event time, UTC, nanoseconds",
    "customer_window": "(t - n days, t], includes the current transaction and same-time twins",
    "terminal_window": "(t - (delay + n) days, t - delay days]",
    "terminal_risk": "frauds / count over the terminal window, 0 when the count is 0; "
                     "a transaction is a fraud iff a fraud label for it is known",
    "average_amount": "exact mean of amounts rounded to the cent (integer cents)",
    "weekend": "Saturday or Sunday",
    "night": "hour 0..6",
}

DAY_NS = 86_400 * 1_000_000_000

TIME_FEATURES = ("TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT")

#: Optional groups of extra features: name -> their definition (hashed with the spec when
#: the group is used). Their columns follow the reference ones, in this order of groups.
EXTRA_GROUPS = {
    # per-terminal state; N is the longest terminal window
    "terminal_fraud_streak": (
        "over the terminal window (t - (delay + N) days, t - delay days]: "
        "TERMINAL_ID_FRAUD_STREAK_{N}DAY_WINDOW = number of frauds later than the latest genuine "
        "transaction in the window (all of its frauds if it has no genuine one; 0 if it is empty); "
        "TERMINAL_ID_FRAUD_STREAK_DAYS_{N}DAY_WINDOW = (t - time of the earliest of those frauds) "
        "as float64 nanoseconds / float64 nanoseconds per day, 0 when the streak is 0"),
    # derived: a pure function of the transaction's reference values; n runs over the
    # customer windows and N is the longest one
    "amount_ratios": (
        "CUSTOMER_ID_AMOUNT_RATIO_{n}DAY_WINDOW = TX_AMOUNT / CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW "
        "for each n; CUSTOMER_ID_AVG_AMOUNT_{n}DAY_TO_{N}DAY_RATIO = CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW "
        "/ CUSTOMER_ID_AVG_AMOUNT_{N}DAY_WINDOW for each n < N; IEEE float64 division, "
        "0 when the denominator is not > 0"),
}


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer number of days, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer number of days, got {value!r}")
    return int(value)


def _windows(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of positive integers (days), got {value!r}")
    days = tuple(_positive_int(f"{name} entries", v) for v in value)
    if not days:
        raise ValueError(f"{name} must name at least one window, got {value!r}")
    if any(a >= b for a, b in zip(days, days[1:])):
        raise ValueError(f"{name} must be strictly increasing (no repeats), got {value!r}")
    return days


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Parameters of the reference features (all in days of event time).

    Parameters
    ----------
    customer_windows
        Window lengths n for ``CUSTOMER_ID_{NB_TX,AVG_AMOUNT}_{n}DAY_WINDOW``, strictly increasing.
    terminal_windows
        Window lengths n for ``TERMINAL_ID_{NB_TX,RISK}_{n}DAY_WINDOW``, strictly increasing.
    delay_days
        How far back the terminal windows end (labels are only known about this late); >= 0.
    extra
        Names of :data:`EXTRA_GROUPS` to add after the reference columns (stored in the
        order of :data:`EXTRA_GROUPS`; default none: exactly the reference features, with
        their reference hash).
    """

    customer_windows: tuple[int, ...] = (1, 7, 30)
    terminal_windows: tuple[int, ...] = (1, 7, 30)
    delay_days: int = 7
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "customer_windows", _windows("customer_windows", self.customer_windows))
        object.__setattr__(self, "terminal_windows", _windows("terminal_windows", self.terminal_windows))
        delay = self.delay_days
        if isinstance(delay, bool) or not isinstance(delay, numbers.Integral) or delay < 0:
            raise ValueError(f"delay_days must be an integer number of days >= 0, got {delay!r}")
        object.__setattr__(self, "delay_days", int(delay))
        object.__setattr__(self, "extra", _extra(self.extra))

    # -- column names, in the reference order -------------------------------------------

    @cached_property
    def customer_names(self) -> tuple[str, ...]:
        """``CUSTOMER_ID_NB_TX_{n}DAY_WINDOW, CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW`` for each n."""
        return tuple(name for n in self.customer_windows
                     for name in (f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"))

    @cached_property
    def terminal_names(self) -> tuple[str, ...]:
        """``TERMINAL_ID_NB_TX_{n}DAY_WINDOW, TERMINAL_ID_RISK_{n}DAY_WINDOW`` for each n."""
        return tuple(name for n in self.terminal_windows
                     for name in (f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW", f"TERMINAL_ID_RISK_{n}DAY_WINDOW"))

    @cached_property
    def reference_names(self) -> tuple[str, ...]:
        """The reference features (time, customer, terminal) in the reference column order."""
        return TIME_FEATURES + self.customer_names + self.terminal_names

    @cached_property
    def terminal_extra_names(self) -> tuple[str, ...]:
        """Columns of the extra groups kept by the terminal state (empty for the reference spec)."""
        if "terminal_fraud_streak" not in self.extra:
            return ()
        n = self.terminal_windows[-1]
        return (f"TERMINAL_ID_FRAUD_STREAK_{n}DAY_WINDOW", f"TERMINAL_ID_FRAUD_STREAK_DAYS_{n}DAY_WINDOW")

    @cached_property
    def derived_names(self) -> tuple[str, ...]:
        """Columns of the derived extra groups (empty for the reference spec)."""
        if "amount_ratios" not in self.extra:
            return ()
        longest = self.customer_windows[-1]
        return (tuple(f"CUSTOMER_ID_AMOUNT_RATIO_{n}DAY_WINDOW" for n in self.customer_windows)
                + tuple(f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_TO_{longest}DAY_RATIO" for n in self.customer_windows[:-1]))

    @cached_property
    def names(self) -> tuple[str, ...]:
        """All model inputs: the reference columns in the reference order, then the extra ones."""
        return self.reference_names + self.terminal_extra_names + self.derived_names

    # -- retention needed by incremental state ------------------------------------------

    @property
    def customer_horizon_ns(self) -> int:
        """How far back from an event its customer features look (the longest window)."""
        return self.customer_windows[-1] * DAY_NS

    @property
    def terminal_horizon_ns(self) -> int:
        """How far back from an event its terminal features look (delay + longest window)."""
        return (self.delay_days + self.terminal_windows[-1]) * DAY_NS

    # -- identity -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The canonical description that :attr:`spec_hash` is computed from.

        The extra groups and their definitions appear only when some are used, so the
        reference spec keeps the hash it had before extra features existed.
        """
        out = {
            "definition_version": DEFINITION_VERSION,
            "customer_windows": list(self.customer_windows),
            "terminal_windows": list(self.terminal_windows),
            "delay_days": self.delay_days,
            "names": list(self.names),
            "semantics": dict(SEMANTICS),
        }
        if self.extra:
            out["extra"] = list(self.extra)
            out["extra_semantics"] = {group: EXTRA_GROUPS[group] for group in self.extra}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        """The spec described by :meth:`to_dict` output (e.g. a feature table's metadata).

        Only the parameters are read: the result carries *this* code's definition, so compare
        its :attr:`spec_hash` with the recorded one to know whether the code still computes
        the same features.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a feature spec description must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("customer_windows", "terminal_windows", "delay_days") if k not in data]
        if missing:
            raise ValueError(f"feature spec description lacks {', '.join(missing)}")
        return cls(tuple(data["customer_windows"]), tuple(data["terminal_windows"]), data["delay_days"],
                   tuple(data.get("extra", ())))

    @cached_property
    def spec_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_dict`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _extra(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"extra must be a sequence of extra feature group names, got {value!r}")
    groups = tuple(value)
    unknown = [g for g in groups if g not in EXTRA_GROUPS]
    if unknown:
        raise ValueError(f"extra names unknown group(s) {unknown}; expected some of {', '.join(EXTRA_GROUPS)}")
    if len(set(groups)) != len(groups):
        raise ValueError(f"extra must not repeat a group, got {value!r}")
    return tuple(g for g in EXTRA_GROUPS if g in groups)


#: The handbook's reference features: windows of 1, 7 and 30 days, 7-day label delay.
DEFAULT_SPEC = FeatureSpec()

#: The reference features plus the terminal's current run of known frauds (a compromised
#: terminal's transactions are all frauds; a one-off fraud is followed by genuine ones) and
#: each amount relative to the card's usual amounts (compromised cards spend several times more).
EXTENDED_SPEC = FeatureSpec(extra=("terminal_fraud_streak", "amount_ratios"))

#: Specs selectable by name (``streamscore featurize --spec``, ``streamscore evaluate --spec``).
SPECS = {"default": DEFAULT_SPEC, "extended": EXTENDED_SPEC}
