"""The feature definition: which windows, which delay, which columns — and its hash.

A :class:`FeatureSpec` is the whole configuration of the 15 reference features
(``../shared/specs/FEATURES.md``). Every executor — the batch backfill, the streaming job
and the predictor — takes one, and artifacts record its :attr:`FeatureSpec.spec_hash` so a
model is only ever served with the features it was trained on.

>>> spec = FeatureSpec()
>>> spec.names[:4]
('TX_AMOUNT', 'TX_DURING_WEEKEND', 'TX_DURING_NIGHT', 'CUSTOMER_ID_NB_TX_1DAY_WINDOW')
>>> len(spec.names)
15
>>> FeatureSpec(delay_days=3).spec_hash != spec.spec_hash
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
    """

    customer_windows: tuple[int, ...] = (1, 7, 30)
    terminal_windows: tuple[int, ...] = (1, 7, 30)
    delay_days: int = 7

    def __post_init__(self) -> None:
        object.__setattr__(self, "customer_windows", _windows("customer_windows", self.customer_windows))
        object.__setattr__(self, "terminal_windows", _windows("terminal_windows", self.terminal_windows))
        delay = self.delay_days
        if isinstance(delay, bool) or not isinstance(delay, numbers.Integral) or delay < 0:
            raise ValueError(f"delay_days must be an integer number of days >= 0, got {delay!r}")
        object.__setattr__(self, "delay_days", int(delay))

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
    def names(self) -> tuple[str, ...]:
        """All model inputs in the reference column order."""
        return TIME_FEATURES + self.customer_names + self.terminal_names

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
        """The canonical description that :attr:`spec_hash` is computed from."""
        return {
            "definition_version": DEFINITION_VERSION,
            "customer_windows": list(self.customer_windows),
            "terminal_windows": list(self.terminal_windows),
            "delay_days": self.delay_days,
            "names": list(self.names),
            "semantics": dict(SEMANTICS),
        }

    @cached_property
    def spec_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_dict`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


#: The handbook's reference features: windows of 1, 7 and 30 days, 7-day label delay.
DEFAULT_SPEC = FeatureSpec()
