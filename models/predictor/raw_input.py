"""Raw-transaction input: validate, fetch the card's and terminal's state, compute the features. No gRPC here.

:class:`RawTransactions` turns a ``streamscore.v1.Transaction`` message into the feature values
(in the spec's order) that the :class:`~models.predictor.core.Scorer` scores:

1. validated by the project's one event parser (:func:`streaming.io.events.from_proto`): a bad
   field is :class:`InvalidArgument` naming ``transaction.<field>``;
2. the card's and the terminal's stored state in one round trip
   (:class:`~streaming.store.redis_store.StoreReader`, an MGET; :meth:`RawTransactions.features_many`:
   one MGET for a whole ScoreStream batch); unreachable store:
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

    def parse(self, message):
        """The message's Transaction (the project's one event parser); InvalidArgument naming the field."""
        event = from_proto(message)
        if type(event) is EventError:
            raise InvalidArgument(f"transaction.{event.message}", field=f"transaction.{event.field}")
        return event

    def features(self, message) -> RawFeatures:
        """Parse, fetch (one MGET) and featurise one transaction message."""
        event = self.parse(message)
        try:
            customer, terminal = self.reader.fetch(event.customer_id, event.terminal_id, event.transaction_id)
        except StoreUnavailableError as exc:
            raise StoreUnavailable(f"{exc}; feature-vector requests are not affected", field="transaction") from None
        return self._compute(event, customer, terminal)

    def features_many(self, messages) -> list:
        """Several transaction messages with ONE MGET for all their keys (a ScoreStream batch): for
        each, in order, its RawFeatures or the PredictorError it gets (as :meth:`features` would).
        The features are those :meth:`features` gives each message alone (same states, same code)."""
        out: list = []
        events = []
        for message in messages:
            try:
                event = self.parse(message)
            except InvalidArgument as exc:
                out.append(exc)
                continue
            out.append(event)
            events.append(event)
        try:
            values = self.reader.fetch_many([(e.customer_id, e.terminal_id) for e in events])
        except StoreUnavailableError as exc:
            error = StoreUnavailable(f"{exc}; feature-vector requests are not affected", field="transaction")
            return [o if isinstance(o, InvalidArgument) else error for o in out]
        decode = self.reader.decode
        fetched = iter(values)
        for i, item in enumerate(out):
            if isinstance(item, InvalidArgument):
                continue
            c_value, t_value = next(fetched)
            tid = item.transaction_id
            try:
                out[i] = self._compute(item, decode(c_value, "customer", tid), decode(t_value, "terminal", tid))
            except StoreUnavailableError as exc:
                out[i] = StoreUnavailable(f"{exc}; feature-vector requests are not affected", field="transaction")
            except InvalidArgument as exc:
                out[i] = exc
        return out

    def _compute(self, event, customer, terminal) -> RawFeatures:
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
