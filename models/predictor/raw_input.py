"""Raw-transaction input: validate, fetch the card's and terminal's state, compute the features. No gRPC here.

:class:`RawTransactions` turns a ``streamscore.v1.Transaction`` message into the feature values
(in the spec's order) that the :class:`~models.predictor.core.Scorer` scores:

1. validated by the project's one event parser (:func:`streaming.io.events.from_proto`): a bad
   field is :class:`InvalidArgument` naming ``transaction.<field>``;
2. the card's and the terminal's stored state in one round trip
   (:class:`~streaming.store.redis_store.StoreReader`, an MGET); unreachable store:
   :class:`StoreUnavailable` (UNAVAILABLE), while feature-vector requests keep working;
3. the features over those states plus this transaction, by the stream's own code
   (:func:`streaming.store.raw.raw_features`); a card or terminal the store does not have
   scores as a new one and is counted (``on_unknown("customer" | "terminal")``).

The predictor never writes the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from models.predictor.errors import InvalidArgument, StoreUnavailable
from streaming.io.events import EventError, from_proto
from streaming.features.spec import SPECS, FeatureSpec
from streaming.features.windows import LateEventError
from streaming.store.raw import RawFeatures, raw_features
from streaming.store.redis_store import StoreConfig, StoreReader, StoreUnavailableError, ttl_ms


def spec_for_names(names) -> FeatureSpec:
    """The named spec (:data:`~streaming.features.spec.SPECS`) whose columns are ``names``."""
    for spec in SPECS.values():
        if tuple(spec.names) == tuple(names):
            return spec
    raise ValueError(f"no known feature spec has the columns {list(names)[:4]}...: raw-transaction input "
                     f"needs one of {', '.join(SPECS)}")


class RawTransactions:
    """Raw transaction messages → :class:`RawFeatures` (``values`` in the spec's order)."""

    def __init__(self, reader: StoreReader, *, on_unknown: Callable[[str], None] | None = None,
                 clock: Callable[[], int] = time.time_ns):
        self.reader = reader
        self.spec = reader.spec
        self._on_unknown = on_unknown
        self._clock = clock

    @classmethod
    def open(cls, url: str, feature_names, **kw) -> RawTransactions:
        spec = spec_for_names(feature_names)
        return cls(StoreReader(StoreConfig(url, spec.spec_hash, ttl_ms(spec, 7.0)), spec), **kw)

    def features(self, message) -> RawFeatures:
        event = from_proto(message)
        if isinstance(event, EventError):
            raise InvalidArgument(f"transaction.{event.message}", field=f"transaction.{event.field}")
        try:
            customer, terminal = self.reader.fetch(event.customer_id, event.terminal_id)
        except StoreUnavailableError as exc:
            raise StoreUnavailable(f"{exc}; feature-vector requests are not affected", field="transaction") from None
        try:
            raw = raw_features(event, customer, terminal, self.spec)
        except LateEventError as exc:
            raise InvalidArgument(f"transaction.event_time is too old for the stored state of its card or terminal: "
                                  f"{exc}", field="transaction.event_time") from None
        if self._on_unknown is not None:
            if not raw.customer_known:
                self._on_unknown("customer")
            if not raw.terminal_known:
                self._on_unknown("terminal")
        return raw

    def state_age_ms(self, raw: RawFeatures) -> int | None:
        """Milliseconds since the stream wrote the older of the two states (None: neither was stored)."""
        if raw.written_at_ms is None:
            return None
        return max(0, self._clock() // 1_000_000 - raw.written_at_ms)
