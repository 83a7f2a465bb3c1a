"""strict_json's fast paths give exactly the answer of the slow, duplicate-refusing parse.

Property (hypothesis): for any JSON document written by Python's ``json`` (spaced, reordered,
ASCII-escaped, nested) with or without duplicated keys, ``loads`` equals ``loads(count=False)``
(path 3 for everything orjson would not re-encode identically): the same value or the same error.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.io import strict_json
from streaming.io.strict_json import StrictJsonError, loads

keys = st.sampled_from(["a", "b", "x:y", "t", "\u00e9", ":", "amount"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(["", "00:00:31", "::", "a\\u003ab", "\u00e9:", "2018-04-01T00:00:31Z"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.lists(st.tuples(keys, inner), max_size=4)), max_leaves=12)


def _dump(value, ensure_ascii: bool, separators) -> str:
    """JSON text; a list of (key, value) pairs is an object that may repeat keys."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        items = ", ".join(f"{json.dumps(k, ensure_ascii=ensure_ascii)}{separators[1]}{_dump(v, ensure_ascii, separators)}"
                          for k, v in value)
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + separators[0].join(_dump(v, ensure_ascii, separators) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii)


def _answer(data: bytes, count: bool):
    try:
        return "ok", loads(data, count=count)
    except StrictJsonError as exc:
        return "error", exc.field, str(exc)


@settings(max_examples=400, deadline=None)
@given(top=st.lists(st.tuples(keys, values), max_size=6), ensure_ascii=st.booleans(),
       separators=st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : "), (",\n", ":\t")]))
def test_the_colon_count_gives_the_answer_of_the_duplicate_refusing_parse(top, ensure_ascii, separators):
    data = _dump(top, ensure_ascii, separators).encode()
    assert _answer(data, count=True) == _answer(data, count=False)


@pytest.mark.parametrize("data", [
    b'{"a": 1, "a": 2}', b'{"t": "00:00:00", "a": 1, "a": "x"}', b'{"a": {"b": 1, "b": 1}}',
    b'{"a": "\\u003a", "a": 1}', b'{"a": [{"k": 1}, {"k": 2, "k": 3}]}', b'{"x:y": 1, "x:y": 2}',
])
def test_duplicates_are_refused_on_every_path(data):
    for count in (True, False):
        with pytest.raises(StrictJsonError, match="must appear once: duplicate key"):
            loads(data, count=count)


def test_the_count_proves_spaced_and_reordered_json_without_the_slow_parse(monkeypatch):
    def slow(*args, **kwargs):
        raise AssertionError("took the slow path")

    monkeypatch.setattr(strict_json, "_loads_lax", slow)
    body = {"transaction_id": "1", "event_time": "2018-04-01T00:00:31Z", "amount": 12.5, "nested": {"k:": [1, ":"]}}
    spaced = json.dumps(dict(reversed(list(body.items())))).encode()
    assert orjson.dumps(orjson.loads(spaced)) != spaced  # not canonical: the first fast path does not apply
    assert loads(spaced) == body
    with pytest.raises(AssertionError, match="slow path"):  # an escaped colon cannot be counted
        loads(b'{"a": "\\u003a"}')


def test_depth_beyond_the_bound_is_refused_after_the_count():
    deep = b'{"note": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(StrictJsonError, match="note must nest at most 32 levels"):
        loads(deep)
    spaced = b'{ "note" : ' + b"[ " * 40 + b"] " * 40 + b"}"
    with pytest.raises(StrictJsonError, match="note must nest at most 32 levels"):
        loads(spaced)
