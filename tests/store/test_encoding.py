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


def test_a_decoded_state_has_every_field_a_new_one_has():
    """decode_state builds states without __init__ (speed): a field added to the state classes must be set too."""
    for state in (_customer(DEFAULT_SPEC), _terminal(DEFAULT_SPEC)):
        back = decode_state(encode_state(state, written_at_ms=0), DEFAULT_SPEC).state
        fresh = type(state)(DEFAULT_SPEC, DAY_NS)
        assert set(vars(back)) == set(vars(fresh))
        assert back.spec is DEFAULT_SPEC and back.allowed_lateness_ns == DAY_NS


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, EXTENDED_SPEC], ids=["default", "extended"])
@pytest.mark.parametrize("case", [
    "new",      # not in the state: the ids are not decoded
    "held",     # in the state: the full decode, the stream's features of that transaction
    "inside",   # its bytes occur in the id block, yet it is not an id: the full decode
    "pending",  # a pending label's id (not in the id block): its transaction takes the label
])
def test_a_copy_for_one_transaction_gives_the_features_of_a_full_decode(spec, case):
    for state, add in ((_customer(spec), "add"), (_terminal(spec), "add_transaction")):
        value = encode_state(state, written_at_ms=5)
        full = decode_state(value, spec).state
        latest = full.max_event_time_ns
        tid, t = {"new": ("new-tx", latest + DAY_NS), "held": (full._ids[-1], full._times[-1]),
                  "inside": ("x-", latest), "pending": ("later-é", latest + 1)}[case]
        copy = decode_state(value, spec, for_transaction=tid)
        assert copy.written_at_ms == 5 and copy.version == version_of(value)
        copy = copy.state
        assert copy.seen(tid) == full.seen(tid) == (case == "held")
        args = (tid, t, 12.34) if add == "add" else (tid, t)
        got, want = getattr(copy, add)(*args), getattr(full, add)(*args)
        if case == "held":  # already seen: its features at its time
            assert got is None and want is None
            got, want = copy.features_at(t), full.features_at(t)
        assert got == want and want is not None
        assert (copy._ids == full._ids) == (case in ("held", "inside"))  # decoded iff the bytes occur


def test_damaged_lateness_is_refused():
    value = bytearray(encode_state(_customer(DEFAULT_SPEC), written_at_ms=0))
    lateness_at = 39 + 5 + 32 + 8
    value[lateness_at:lateness_at + 8] = (-1).to_bytes(8, "little", signed=True)
    with pytest.raises(StateDecodeError, match="lateness"):
        decode_state(bytes(value), DEFAULT_SPEC)
