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


def decode_state(value: bytes, spec: FeatureSpec) -> StoredState:
    """The state in a store value, checked against ``spec`` (its hash must match)."""
    view = memoryview(value)
    pos = VERSION_DIGITS
    magic, pos = _take(view, pos, len(MAGIC) + 1)
    if bytes(magic[:4]) != MAGIC or bytes(magic[4:]) not in _KINDS:
        raise StateDecodeError(f"store value does not start with a {MAGIC.decode()} state header")
    kind = _KINDS[bytes(magic[4:])]
    head, pos = _take(view, pos, _HEAD.size)
    spec_hash, written_at_ms, lateness, max_time, n = _HEAD.unpack(head)
    if spec_hash.hex() != spec.spec_hash:
        raise StateDecodeError(f"store value was written for feature spec {spec_hash.hex()[:12]}, "
                               f"expected {spec.spec_hash[:12]}")
    raw, pos = _take(view, pos, 8 * n)
    times = array("q", bytes(raw))
    raw, pos = _take(view, pos, 2 * n)
    lengths = array("H", bytes(raw))
    total = sum(lengths)
    raw, pos = _take(view, pos, total)
    blob, ids, start = bytes(raw), [], 0
    for size in lengths:
        ids.append(blob[start:start + size].decode("utf-8"))
        start += size
    if kind == "customer":
        state = CustomerState(spec, lateness)
        raw, pos = _take(view, pos, 8 * n)
        state._cents = array("q", bytes(raw))
    else:
        state = TerminalState(spec, lateness)
        raw, pos = _take(view, pos, n)
        state._frauds = array("b", bytes(raw))
        count, pos = _take(view, pos, 4)
        for _ in range(_U32.unpack(count)[0]):
            (tid,), pos = _read_ids(view, pos, 1)
            t, pos = _take(view, pos, 8)
            state._pending[tid] = _I64.unpack(t)[0]
    if pos != len(view):
        raise StateDecodeError(f"store value has {len(view) - pos} trailing bytes")
    state._times, state._ids = times, ids
    state._max_time = None if max_time == -1 else max_time
    return StoredState(kind, state, written_at_ms, version_of(value))


__all__ = ["MAGIC", "StateDecodeError", "StoredState", "decode_state", "encode_state", "state_version",
           "version_of"]
