"""A raw transaction's features from the online store's states: the same feature code as the stream.

Pure code (no Redis, no gRPC): given a parsed :class:`~streaming.io.events.Transaction` and the
stored states of its card and terminal (or None: a new card / terminal), add the transaction
to a decoded copy of each state and compute the features exactly as the streaming job does
(:class:`~streaming.features.state.CustomerState`, ``TerminalState``,
:func:`~streaming.features.windows.derived_features`). The store is never written: the copy
is thrown away, the transaction reaches the stream as an ordinary event.

A transaction the stream has already featurised (its id is in the state) is not added again:
its features are those of its event time over the state as it is now, which equals what the
stream computed unless later events fell into its windows since (a same-time twin, an
out-of-order arrival, a fraud label of a terminal transaction older than the delay).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from streaming.io.events import Transaction
from streaming.features.spec import DAY_NS, FeatureSpec
from streaming.features.transaction import time_ns, transaction_features
from streaming.features.windows import derived_features
from streaming.features.state import CustomerState, TerminalState
from streaming.store.encoding import StoredState


@dataclass(frozen=True)
class RawFeatures:
    """The feature vector of one raw transaction and what it was computed from."""

    values: tuple[float, ...]   # in spec.names order
    customer_known: bool         # the store had the card's state
    terminal_known: bool         # the store had the terminal's state
    already_seen: bool           # the stream had featurised this transaction id already
    written_at_ms: int | None    # when the older of the two states was written by the stream (None: neither)


_PICKERS: dict = {}


def _picker(spec: FeatureSpec):
    """spec.names' values of a feature dict, as a tuple (one C call)."""
    pick = _PICKERS.get(spec.spec_hash)
    if pick is None:
        names = tuple(spec.names)
        pick = _PICKERS[spec.spec_hash] = itemgetter(*names) if len(names) > 1 else (lambda d: (d[names[0]],))
    return pick


def raw_features(tx: Transaction, customer: StoredState | None, terminal: StoredState | None,
                 spec: FeatureSpec) -> RawFeatures:
    """Features of ``tx`` over the stored states (LateEventError if it is older than a state's lateness allows)."""
    t = time_ns(tx.event_time)
    c_state = customer.state if customer is not None else CustomerState(spec, DAY_NS)
    m_state = terminal.state if terminal is not None else TerminalState(spec, DAY_NS)
    seen = c_state.seen(tx.transaction_id)
    c = c_state.add(tx.transaction_id, t, tx.amount)
    if c is None:
        c = c_state.features_at(t)
    m = m_state.add_transaction(tx.transaction_id, t)
    if m is None:
        m = m_state.features_at(t)
    values = transaction_features(tx)
    values.update(c)
    values.update(m)
    if spec.derived_names:
        values.update(derived_features(values, spec))
    if customer is None:
        written = None if terminal is None else terminal.written_at_ms
    else:
        written = customer.written_at_ms if terminal is None else min(customer.written_at_ms, terminal.written_at_ms)
    return RawFeatures(_picker(spec)(values), customer is not None, terminal is not None, seen, written)
