"""One transaction's own features and its event time in nanoseconds (no Beam import: the predictor uses it too)."""

from __future__ import annotations

from datetime import UTC, datetime

from streaming.io.events import Transaction

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WEEKEND = (5, 6)


def time_ns(value: datetime) -> int:
    """Exact integer nanoseconds since the epoch of an aware datetime."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def transaction_features(tx: Transaction) -> dict[str, float]:
    """TX_AMOUNT, TX_DURING_WEEKEND, TX_DURING_NIGHT of one transaction (UTC event time)."""
    t = tx.event_time.astimezone(UTC)
    return {"TX_AMOUNT": tx.amount, "TX_DURING_WEEKEND": float(t.weekday() in _WEEKEND),
            "TX_DURING_NIGHT": float(t.hour <= 6)}
