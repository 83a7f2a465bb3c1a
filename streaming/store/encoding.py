"""Compact, versioned bytes of one key's feature state; pure code (no Redis import).

One store value is::

    version (39 ASCII digits) | b"ssk1" | kind (b"C" customer, b"T" terminal)
    | spec_hash (32 raw bytes) | written_at_ms (int64) | allowed_lateness_ns (int64) | max_time_ns (int64)
    | n (uint32) | n times (int64) | n id lengths (uint16) | the n ids (UTF-8, concatenated)
    | n cents (int64, customer) | n fraud flags (int8, terminal)
    | pending labels: m (uint32), m x (uint16 length, UTF-8 id, int64 time) (terminal)

All integers little-endian (arrays in machine order: the supported x86-64/ARM64 are little-endian). The leading **version** is a pure function of the state that grows
with every change of it, fixed-width decimal so the store's Lua script compares it as a
string: ``max event time (19 digits) | transactions held (10) | known frauds + pending labels
(10)``. Adding a transaction raises the latest event time or (out of order) the count; a fraud
label raises the third part; pruning happens only when the latest event time moves on. So a
stale or retried write (an equal or smaller version) never replaces newer state.

>>> from streaming.features.state import CustomerState
>>> s = CustomerState()
>>> _ = s.add("a", 5, 10.0)
>>> value = encode_state(s, written_at_ms=1)
>>> version_of(value) == "0000000000000000005" + "0000000001" + "0000000000"
True
>>> back = decode_state(value, s.spec)
>>> (back.kind, len(back.state), back.written_at_ms)
('customer', 1, 1)
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from streaming.features.spec import FeatureSpec
from streaming.features.state import CustomerState, TerminalState

MAGIC = b"ssk1"
VERSION_DIGITS = 39
_HEAD = struct.Struct("<32sqqqI")  # spec hash, written_at_ms, lateness, max time, n
_U16 = struct.Struct("<H")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_KINDS = {b"C": "customer", b"T": "terminal"}


class StateDecodeError(ValueError):
    """A store value is not a state this code can read (wrong magic, spec hash, or truncated)."""


@dataclass(frozen=True)
class StoredState:
    """A decoded store value: the state, its kind and when the stream wrote it (wall clock, ms)."""

    kind: str
    state: CustomerState | TerminalState
    written_at_ms: int
    version: str


def state_version(state: CustomerState | TerminalState) -> str:
    """The ordering key of a state (see the module docs): 39 digits, larger means newer."""
    max_time = state.max_event_time_ns
    if max_time is None:
        max_time = 0
    if max_time < 0 or max_time >= 10 ** 19:
        raise ValueError(f"max_event_time_ns must be in [0, 1e19) to be versioned, got {max_time}")
    third = 0
    if isinstance(state, TerminalState):
        third = sum(state._frauds) + len(state._pending)
    return f"{max_time:019d}{len(state):010d}{third:010d}"


def version_of(value: bytes) -> str:
    """The version prefix of a store value."""
    return value[:VERSION_DIGITS].decode("ascii")


def _ids_bytes(ids) -> bytes:
    parts = []
    for tid in ids:
        raw = str(tid).encode("utf-8")
        parts.append(_U16.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _id_block(ids) -> bytes:
    """n uint16 lengths, then the n UTF-8 ids back to back (one slice each to decode)."""
    raws = [str(tid).encode("utf-8") for tid in ids]
    if any(len(r) > 0xFFFF for r in raws):
        raise ValueError("transaction ids must be at most 65535 bytes of UTF-8 to be stored")
    return array("H", map(len, raws)).tobytes() + b"".join(raws)


def encode_state(state: CustomerState | TerminalState, *, written_at_ms: int) -> bytes:
    """The store value of ``state`` (transaction ids are stored as strings)."""
    kind = b"C" if isinstance(state, CustomerState) else b"T"
    times = state._times
    n = len(times)
    max_time = state.max_event_time_ns
    parts = [state_version(state).encode("ascii"), MAGIC, kind,
             _HEAD.pack(bytes.fromhex(state.spec.spec_hash), written_at_ms, state.allowed_lateness_ns,
                        -1 if max_time is None else max_time, n),
             array("q", times).tobytes(), _id_block(state._ids)]
    if kind == b"C":
        parts.append(array("q", state._cents).tobytes())
    else:
        parts.append(array("b", state._frauds).tobytes())
        parts.append(_U32.pack(len(state._pending)))
        for tid, t in state._pending.items():
            parts.append(_ids_bytes((tid,)))
            parts.append(_I64.pack(t))
    return b"".join(parts)


def _take(view: memoryview, pos: int, size: int) -> tuple[memoryview, int]:
    end = pos + size
    if end > len(view):
        raise StateDecodeError(f"store value is truncated: needs {end} bytes, has {len(view)}")
    return view[pos:end], end


def _read_ids(view: memoryview, pos: int, n: int) -> tuple[list[str], int]:
    ids = []
    for _ in range(n):
        size, pos = _take(view, pos, 2)
        raw, pos = _take(view, pos, _U16.unpack(size)[0])
        ids.append(bytes(raw).decode("utf-8"))
    return ids, pos


def _truncated(needs: int, has: int) -> StateDecodeError:
    return StateDecodeError(f"store value is truncated: needs {needs} bytes, has {has}")


_HEAD_AT = VERSION_DIGITS + len(MAGIC) + 1
_ARRAYS_AT = _HEAD_AT + _HEAD.size


def decode_state(value: bytes, spec: FeatureSpec, *, for_transaction: str | None = None) -> StoredState:
    """The state in a store value, checked against ``spec`` (its hash must match).

    ``for_transaction`` (a transaction id) asks for a throw-away copy to featurise that one
    transaction (the predictor's raw path): when the id's UTF-8 bytes occur nowhere in the
    value's id block, the copy's ids are not decoded (one placeholder per transaction; decoding
    the ids is most of the cost of a decode), so its ``seen()`` is exact for that id (False) and
    adding it gives exactly the features of a full decode, but the copy must not be asked about
    other ids nor written back. When the bytes do occur, the ids are decoded as usual.
    """
    size = len(value)
    if size < _ARRAYS_AT:
        raise _truncated(_ARRAYS_AT, size)
    if value[VERSION_DIGITS:_HEAD_AT - 1] != MAGIC or value[_HEAD_AT - 1:_HEAD_AT] not in _KINDS:
        raise StateDecodeError(f"store value does not start with a {MAGIC.decode()} state header")
    kind = _KINDS[value[_HEAD_AT - 1:_HEAD_AT]]
    spec_hash, written_at_ms, lateness, max_time, n = _HEAD.unpack_from(value, _HEAD_AT)
    if spec_hash.hex() != spec.spec_hash:
        raise StateDecodeError(f"store value was written for feature spec {spec_hash.hex()[:12]}, "
                               f"expected {spec.spec_hash[:12]}")
    if lateness < 0:
        raise StateDecodeError(f"store value has a negative allowed lateness ({lateness})")
    view = memoryview(value)
    pos = _ARRAYS_AT + 10 * n  # n times (int64), n id lengths (uint16)
    if pos > size:
        raise _truncated(pos, size)
    times = array("q")
    times.frombytes(view[_ARRAYS_AT:_ARRAYS_AT + 8 * n])
    lengths = array("H")
    lengths.frombytes(view[_ARRAYS_AT + 8 * n:pos])
    total = sum(lengths)
    if pos + total > size:
        raise _truncated(pos + total, size)
    blob = value[pos:pos + total]
    pos += total
    if for_transaction is not None and for_transaction.encode("utf-8") not in blob:
        ids = [None] * n
    else:
        ids, start = [], 0
        for length in lengths:
            ids.append(blob[start:start + length].decode("utf-8"))
            start += length
    if kind == "customer":
        state = CustomerState.__new__(CustomerState)
        end = pos + 8 * n
        if end > size:
            raise _truncated(end, size)
        state._cents = cents = array("q")
        cents.frombytes(view[pos:end])
        pos = end
    else:
        state = TerminalState.__new__(TerminalState)
        end = pos + n
        if end + 4 > size:
            raise _truncated(end + 4, size)
        state._frauds = frauds = array("b")
        frauds.frombytes(view[pos:end])
        (count,) = _U32.unpack_from(value, end)
        pos = end + 4
        pending = {}
        if count:
            for _ in range(count):
                (tid,), pos = _read_ids(view, pos, 1)
                t, pos = _take(view, pos, 8)
                pending[tid] = _I64.unpack(t)[0]
        state._pending, state._waiting, state._aged_out, state._deadlines = pending, {}, [], {}
    if pos != size:
        raise StateDecodeError(f"store value has {size - pos} trailing bytes")
    # the fields of _KeyState.__init__ (validated when the stream built the state it encoded)
    state.spec, state.allowed_lateness_ns, state._id_set = spec, lateness, None
    state._times, state._ids = times, ids
    state._max_time = None if max_time == -1 else max_time
    return StoredState(kind, state, written_at_ms, value[:VERSION_DIGITS].decode("ascii"))


__all__ = ["MAGIC", "StateDecodeError", "StoredState", "decode_state", "encode_state", "state_version",
           "version_of"]
