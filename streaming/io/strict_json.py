"""Strict JSON for the event contract: UTF-8 only, one value per key, bounded depth, re-encodable.

orjson alone is not strict enough for the wire: it lets a later duplicate key win silently and
loads 1024 nesting levels while it dumps only 254, so a message it loads can make a later
``orjson.dumps`` (dead-lettering, re-publishing) raise. Python's ``json`` module is too lax:
it guesses UTF-16/32 from bytes, accepts a UTF-8 byte-order mark, lone surrogates
(``"\\ud800"``, which Beam's key coder refuses), ``NaN``/``Infinity`` and numbers too large for
a double. :func:`loads` takes the strict intersection and refuses everything else with a
:class:`StrictJsonError` naming the field (a dotted path) and what was expected.

>>> loads(b'{"a": 1}')
{'a': 1}
>>> loads(b'{"a": 1, "a": 2}')
Traceback (most recent call last):
...
streaming.io.strict_json.StrictJsonError: a must appear once: duplicate key in the JSON object

Fast paths. orjson parses first: it already refuses what is not UTF-8, lone surrogates,
``NaN``/``Infinity`` and numbers beyond a double, so after it only duplicate keys and the depth
remain to be checked.

1. ``orjson.dumps(value) == data`` proves there were no duplicate keys (a duplicate would make
   the re-encoding shorter) — every message our own producers write takes it.
2. Otherwise (spaces, another key order, escapes: JSON written by another library) a count
   proves it: every member of every object has exactly one ``:`` outside strings, so the
   members in the document are ``data.count(b":")`` minus the colons inside strings. The
   colons inside the strings that were kept (keys and values of the parsed value) are at most
   those of the document (a dropped duplicate's strings are not counted), so if
   ``data.count(b":") - colons in the parsed strings == members parsed``, the document held no
   more members than were parsed: no key was repeated. An escaped colon (``\\u003a``) would
   break the count, so a document holding ``\\u003`` takes the slow path.
3. Anything the count cannot prove (a duplicate, an escaped colon, nesting deeper than
   :data:`MAX_DEPTH`), or orjson refused, is parsed again with ``json`` and an
   ``object_pairs_hook`` that refuses duplicates, which names the error.

``python -m loadtest.bench_parse`` measures the paths (``--no-count`` for path 3 instead of 2).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

#: Deepest nesting of objects/arrays accepted (the message body itself is depth 1). Far below
#: orjson's encoder limit of 254, so anything accepted can always be encoded again.
MAX_DEPTH = 32
#: Largest integer kept exactly: orjson encodes integers only within 64 bits.
MAX_INT = 2**63 - 1
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class StrictJsonError(ValueError):
    """Why bytes are not strict JSON: ``field`` is the dotted path (``data`` for the whole document)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class NonFinite(str):
    """What the lax parse gives for ``NaN``, ``Infinity`` or a number beyond a double: its source text."""

    def describe(self) -> str:
        text = str(self)
        if text.lstrip("-").isdigit() and len(text) > 20:
            return f"an integer of {len(text.lstrip('-'))} digits"
        if text in ("NaN", "Infinity", "-Infinity"):
            return text
        return "Infinity" if not text.startswith("-") else "-Infinity"


def _path(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _parse_int(text: str):
    as_float = float(text) if len(text) > 18 else 0.0
    if not math.isfinite(as_float):  # e.g. 400 digits (and int() refuses > 4300 digits): keep the text
        return NonFinite(text)
    value = int(text)
    return value if abs(value) <= MAX_INT else as_float  # as orjson does beyond 64 bits


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise StrictJsonError(key, f"{key} must appear once: duplicate key in the JSON object")
        out[key] = value
    return out


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _check(value: Any, path: str, depth: int, lax: bool) -> None:
    """Depth everywhere; after the lax parse also lone surrogates and non-finite numbers."""
    if isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:  # named by its top-level field: the full path would be 32 indices long
            top = path.split(".", 1)[0] or "data"
            raise StrictJsonError(top, f"{top} must nest at most {MAX_DEPTH} levels of objects/arrays")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            child_path = _path(path, key)
            if lax and isinstance(key, str) and _has_surrogate(key):
                raise StrictJsonError(path or "data", f"{path or 'data'} must have keys of valid Unicode: "
                                                      f"a key holds a lone surrogate {ascii(key)[:40]}")
            _check(child, child_path, depth + 1, lax)
    elif lax and isinstance(value, NonFinite):
        raise StrictJsonError(path, f"{path} must be a finite JSON number, got {value.describe()}")
    elif lax and isinstance(value, str) and _has_surrogate(value):
        raise StrictJsonError(path, f"{path} must be valid Unicode text, got a lone surrogate in {ascii(value)[:40]}")


def _counted(value: Any, depth: int) -> tuple[int, int] | None:
    """(members of every object, ``:`` in every string) of an orjson-parsed value; None when deeper than allowed."""
    if depth > MAX_DEPTH:
        return None
    members = colons = 0
    if type(value) is dict:
        members = len(value)
        for key in value:
            colons += key.count(":")
        children = value.values()
    else:  # a list
        children = value
    for child in children:
        kind = type(child)
        if kind is str:
            colons += child.count(":")
        elif kind is dict or kind is list:
            inner = _counted(child, depth + 1)
            if inner is None:
                return None
            members += inner[0]
            colons += inner[1]
    return members, colons


def _no_duplicates(value: Any, data: bytes) -> bool:
    """Whether the count of path 2 (module docs) proves ``data`` had no repeated key (and depth is within bounds)."""
    if b"\\u003" in data:
        return False
    if type(value) is not dict and type(value) is not list:
        return data.count(b":") == (value.count(":") if type(value) is str else 0)
    counted = _counted(value, 1)
    return counted is not None and data.count(b":") - counted[1] == counted[0]


def loads(data: bytes, *, lax_fields: frozenset[str] = frozenset(), count: bool = True) -> Any:
    """Strictly decode one JSON document (see the module docs); raises :class:`StrictJsonError`.

    A top-level key in ``lax_fields`` may hold a :class:`NonFinite` (the caller validates it
    and names it in its own words, e.g. ``amount must be ... got an integer of 400 digits``).
    ``count=False`` skips fast path 2 (for the benchmark's comparison; the answer is the same).
    """
    data = bytes(data)
    if data.startswith(_BOMS):
        raise StrictJsonError("data", "data must be UTF-8 JSON without a byte-order mark (BOM)")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return _loads_lax(data, exc, lax_fields)
    try:
        canonical = orjson.dumps(value) == data
    except (TypeError, orjson.JSONEncodeError):  # deeper than orjson can encode
        canonical = False
    if not canonical:
        if count and _no_duplicates(value, data):
            return value
        return _loads_lax(data, None, lax_fields)
    _check(value, "", 1, lax=False)
    return value


def _loads_lax(data: bytes, orjson_error: Exception | None, lax_fields: frozenset[str]) -> Any:
    """The ``json`` module, made strict: names duplicates, surrogates, NaN and huge numbers."""
    try:
        text = data.decode("utf-8")  # strict: no guessing, encoded surrogates refused
    except UnicodeDecodeError as exc:
        raise StrictJsonError("data", f"data must be UTF-8 JSON: invalid UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=NonFinite)
    except StrictJsonError:
        raise
    except RecursionError:
        raise StrictJsonError("data", f"data must nest at most {MAX_DEPTH} levels of objects/arrays") from None
    except ValueError as exc:
        reason = orjson_error if orjson_error is not None else exc
        raise StrictJsonError("data", f"data must be a UTF-8 JSON object: malformed JSON ({reason})") from None
    if isinstance(value, dict) and lax_fields:  # the caller names a non-finite number in these itself
        _check({k: v for k, v in value.items() if not (k in lax_fields and isinstance(v, NonFinite))}, "", 1, lax=True)
    else:
        _check(value, "", 1, lax=True)
    return value
