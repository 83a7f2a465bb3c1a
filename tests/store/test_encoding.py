"""The online store's state encoding: exact round trips, the spec hash check, a version that only grows."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.features.spec import DAY_NS, DEFAULT_SPEC, EXTENDED_SPEC
from streaming.features.state import CustomerState, TerminalState
from streaming.store.encoding import StateDecodeError, decode_state, encode_state, state_version, version_of


def _customer(spec, n=50, seed=0):
    rng = np.random.default_rng(seed)
    s = CustomerState(spec, DAY_NS)
    for i, t in enumerate(np.sort(rng.integers(0, 40 * DAY_NS, n))):
        s.add(f"tx-{i}", int(t), float(np.round(rng.gamma(2, 30), 2)))
    return s


def _terminal(spec, n=80, seed=1):
    rng = np.random.default_rng(seed)
    s = TerminalState(spec, DAY_NS)
    for i, t in enumerate(np.sort(rng.integers(0, 50 * DAY_NS, n))):
        s.add_transaction(f"tx-{i}", int(t))
        if rng.random() < 0.2:
            s.add_label(f"tx-{i}", int(t), 1)
    s.add_label("later-é", 50 * DAY_NS, 1)  # a label before its transaction: pending, non-ASCII id
    return s


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, EXTENDED_SPEC], ids=["default", "extended"])
def test_round_trip_gives_the_same_features(spec):
    customer, terminal = _customer(spec), _terminal(spec)
    for state in (customer, terminal):
        stored = decode_state(encode_state(state, written_at_ms=123), spec)
        assert stored.written_at_ms == 123
        assert stored.state.__getstate__() == state.__getstate__()
    c2 = decode_state(encode_state(customer, written_at_ms=0), spec).state
    t2 = decode_state(encode_state(terminal, written_at_ms=0), spec).state
    assert c2.add("new", 40 * DAY_NS, 12.34) == customer.add("new", 40 * DAY_NS, 12.34)
    assert t2.add_transaction("later-é", 50 * DAY_NS) == terminal.add_transaction("later-é", 50 * DAY_NS)
    assert t2.pending_labels == terminal.pending_labels == 0


def test_empty_state_round_trips():
    stored = decode_state(encode_state(CustomerState(), written_at_ms=0), DEFAULT_SPEC)
    assert len(stored.state) == 0 and stored.state.max_event_time_ns is None


def test_another_spec_or_damaged_bytes_are_refused():
    value = encode_state(_customer(DEFAULT_SPEC), written_at_ms=0)
    with pytest.raises(StateDecodeError, match="feature spec"):
        decode_state(value, EXTENDED_SPEC)
    with pytest.raises(StateDecodeError, match="truncated"):
        decode_state(value[:-3], DEFAULT_SPEC)
    with pytest.raises(StateDecodeError, match="trailing"):
        decode_state(value + b"x", DEFAULT_SPEC)
    with pytest.raises(StateDecodeError, match="header"):
        decode_state(value[:39] + b"xxxx" + value[43:], DEFAULT_SPEC)


def test_version_grows_with_every_change():
    s = TerminalState(DEFAULT_SPEC, DAY_NS)
    seen = [state_version(s)]

    def step():
        v = state_version(s)
        assert v > seen[-1], (v, seen[-1])
        assert len(v) == 39 and v.isdigit()
        seen.append(v)

    s.add_transaction("a", 10 * DAY_NS); step()
    s.add_transaction("b", 9 * DAY_NS); step()        # out of order: same latest time, one more held
    s.add_label("b", 9 * DAY_NS, 1); step()           # a fraud label
    s.add_label("c", 11 * DAY_NS, 1); step()          # a label waiting for its transaction
    s.add_transaction("c", 11 * DAY_NS); step()       # the pending label becomes a fraud flag
    s.add_transaction("d", 200 * DAY_NS); step()      # everything older is pruned, time moved on
    assert version_of(encode_state(s, written_at_ms=0)) == seen[-1]
