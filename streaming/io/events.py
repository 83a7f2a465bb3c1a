"""The event contract: typed events and the one parser (the wire format: :mod:`streaming.io.encoding`).

Every message on the ``transactions`` and ``labels`` topics is UTF-8 JSON (orjson) with
attributes ``event_time`` (RFC 3339) and ``schema`` (:data:`SCHEMA_TRANSACTION`,
:data:`SCHEMA_LABEL`, ...). :func:`parse` turns ``bytes`` + attributes into a typed event or
an :class:`EventError` naming the field, what was expected and what came. It never raises
for bad input: the caller routes the error to the dead-letter output.

>>> from streaming.io.encoding import encode
>>> tx = Transaction("42", parse_time("2018-04-01T00:00:31Z"), "c1", "t7", 12.5)
>>> data, attrs = encode(tx)
>>> attrs
{'event_time': '2018-04-01T00:00:31Z', 'schema': 'streamscore.transaction.v1'}
>>> parse(data, attrs) == tx
True
>>> print(parse(b'{"transaction_id": "1", "event_time": "2018-04-01T00:00:31Z"}', attrs))
customer_id is required: expected a non-empty string
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from streaming.io import strict_json
from streaming.features.windows import MAX_ABS_AMOUNT

SCHEMA_TRANSACTION = "streamscore.transaction.v1"
SCHEMA_LABEL = "streamscore.label.v1"
SCHEMA_SCORE = "streamscore.score.v1"
SCHEMA_DEAD_LETTER = "streamscore.dead-letter.v1"
SCHEMA_ATTRIBUTE = "schema"
EVENT_TIME_ATTRIBUTE = "event_time"

#: Default limit on one message's data, in bytes (Pub/Sub itself allows 10 MB).
DEFAULT_MAX_BYTES = 64 * 1024
MAX_ID_LENGTH = 256
#: What an identifier may hold (checked with ``str.isprintable``: letters, digits, punctuation,
#: symbols and inner spaces of any script; never controls, format characters or surrogates).
ID_CHARACTERS = "printable characters"
#: Event times outside this range are rejected as implausible.
MIN_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)

UnknownFields = Literal["keep", "reject"]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Transaction:
    """A card transaction. ``event_time`` is timezone-aware UTC; ``extra`` keeps unknown fields."""

    transaction_id: str
    event_time: datetime
    customer_id: str
    terminal_id: str
    amount: float
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Label:
    """A fraud report (``label=1``) or a confirmed-genuine outcome (``label=0``)."""

    transaction_id: str
    label: int
    event_time: datetime
    customer_id: str
    terminal_id: str
    reported_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Score:
    """The score of one transaction, as published to the ``scores`` topic."""

    transaction_id: str
    event_time: datetime
    score: float
    model_version: str
    features: Mapping[str, float] = field(default_factory=dict)
    online_score: float | None = None
    online_model_version: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, with the original bytes and the reason."""

    data: bytes
    attributes: Mapping[str, str]
    error: str
    stage: str
    transaction_id: str = ""


@dataclass(frozen=True, slots=True)
class EventError:
    """Why a message was rejected. ``str()`` is the one-line reason sent to the dead-letter topic."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message


Event = Transaction | Label


# --------------------------------------------------------------------------- time

_RFC3339 = re.compile(  # used with fullmatch: a "$" would accept a trailing newline
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


_NOT_RFC3339 = "not an RFC 3339 timestamp with a time zone"


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (a time zone is required) into an aware UTC datetime.

    Raises ``ValueError`` with a reason; sub-microsecond digits are truncated.
    """
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(_NOT_RFC3339)
    frac = m.group(7) or ""
    zone = m.group(8).upper()
    normal = f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}:{m.group(5)}:{m.group(6)}"
    normal += frac[:7] + ("+00:00" if zone == "Z" else zone)
    try:
        value = datetime.fromisoformat(normal)
    except ValueError as exc:  # e.g. month 13, second 61
        raise ValueError(f"not a valid date/time ({exc})") from None
    value = value.astimezone(UTC)
    if not MIN_EVENT_TIME <= value < MAX_EVENT_TIME:
        raise ValueError(f"outside the supported range {MIN_EVENT_TIME.year}..{MAX_EVENT_TIME.year - 1}")
    return value


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; microseconds only when non-zero."""
    value = value.astimezone(UTC)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# --------------------------------------------------------------------------- parsing


class _Invalid(Exception):
    """Internal: carries an EventError out of nested validation."""

    def __init__(self, error: EventError):
        self.error = error


def _describe(value: Any) -> str:
    """A short, JSON-like rendering of an offending value for error messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _fail(name: str, expected: str, value: Any) -> _Invalid:
    return _Invalid(EventError(name, f"{name} must be {expected}, got {_describe(value)}"))


def _required(body: Mapping[str, Any], name: str, expected: str) -> Any:
    if name not in body:
        raise _Invalid(EventError(name, f"{name} is required: expected {expected}"))
    return body[name]


def _id(body: Mapping[str, Any], name: str) -> str:
    expected = "a non-empty string"
    value = _required(body, name, expected)
    if not isinstance(value, str):
        raise _fail(name, f"{expected} (not {_type_name(value)})", value)
    if not value.strip():
        raise _fail(name, expected, value)
    if len(value) > MAX_ID_LENGTH:
        raise _fail(name, f"a string of at most {MAX_ID_LENGTH} characters", value)
    if not value.isprintable() or value != value.strip():
        raise _fail(name, f"{ID_CHARACTERS} (no control, format or unassigned characters, no leading or "
                          "trailing space)", value)
    return value


def _time(body: Mapping[str, Any], name: str) -> datetime:
    expected = 'an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z")'
    value = _required(body, name, expected)
    if not isinstance(value, str):
        raise _fail(name, expected, value)
    try:
        return parse_time(value)
    except ValueError as exc:
        reason = "" if str(exc) == _NOT_RFC3339 else f": {exc}"
        raise _Invalid(EventError(name, f"{name} must be {expected}, got {_describe(value)}{reason}")) from None


def _amount(body: Mapping[str, Any], name: str) -> float:
    expected = f"a finite number >= 0 and <= {MAX_ABS_AMOUNT:g}"
    value = _required(body, name, expected)
    if isinstance(value, strict_json.NonFinite):  # NaN, Infinity, 1e999, a 400-digit integer
        raise _Invalid(EventError(name, f"{name} must be {expected}, got {value.describe()}"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, expected, value)
    value = float(value)
    if not 0 <= value <= MAX_ABS_AMOUNT:  # also false for NaN
        raise _fail(name, expected, value)
    return value + 0.0  # normalise -0.0


def _label_value(body: Mapping[str, Any], name: str) -> int:
    expected = "0 (genuine) or 1 (fraud)"
    value = _required(body, name, expected)
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise _fail(name, expected, value)
    return int(value)


_NUMBER_FIELDS = frozenset({"amount"})  # fields whose non-finite or huge value the validator names itself
_TRANSACTION_FIELDS = ("transaction_id", "event_time", "customer_id", "terminal_id", "amount")
_LABEL_FIELDS = ("transaction_id", "label", "event_time", "customer_id", "terminal_id", "reported_at")


def _extra(body: Mapping[str, Any], known: tuple[str, ...], unknown_fields: UnknownFields) -> dict:
    extra = {k: v for k, v in body.items() if k not in known}
    if extra and unknown_fields == "reject":
        names = ", ".join(sorted(extra))
        raise _Invalid(EventError(sorted(extra)[0], f"unknown field(s) {names}: expected only {', '.join(known)}"))
    return extra


def _transaction(body: Mapping[str, Any], unknown_fields: UnknownFields) -> Transaction:
    return Transaction(
        transaction_id=_id(body, "transaction_id"),
        event_time=_time(body, "event_time"),
        customer_id=_id(body, "customer_id"),
        terminal_id=_id(body, "terminal_id"),
        amount=_amount(body, "amount"),
        extra=_extra(body, _TRANSACTION_FIELDS, unknown_fields),
    )


def _label(body: Mapping[str, Any], unknown_fields: UnknownFields) -> Label:
    label = Label(
        transaction_id=_id(body, "transaction_id"),
        label=_label_value(body, "label"),
        event_time=_time(body, "event_time"),
        customer_id=_id(body, "customer_id"),
        terminal_id=_id(body, "terminal_id"),
        reported_at=_time(body, "reported_at"),
        extra=_extra(body, _LABEL_FIELDS, unknown_fields),
    )
    if label.reported_at < label.event_time:
        raise _fail("reported_at", f"a time not earlier than event_time {format_time(label.event_time)}",
                    body["reported_at"])
    return label


_BUILDERS = {SCHEMA_TRANSACTION: _transaction, SCHEMA_LABEL: _label}


def _decode_json(data: bytes) -> Any:
    try:
        return strict_json.loads(data, lax_fields=_NUMBER_FIELDS)
    except strict_json.StrictJsonError as exc:
        raise _Invalid(EventError(exc.field, exc.message)) from None


def _check_attributes(attributes: Mapping[str, str] | None, event: Event, body: Mapping[str, Any]) -> None:
    if not attributes or EVENT_TIME_ATTRIBUTE not in attributes:
        return
    raw = attributes[EVENT_TIME_ATTRIBUTE]
    if isinstance(raw, str) and raw == body.get("event_time"):  # the same text: the same (valid) time
        return
    try:
        ok = isinstance(raw, str) and parse_time(raw) == event.event_time
    except ValueError:
        ok = False
    if not ok:
        expected = f"an RFC 3339 timestamp equal to the event_time field ({format_time(event.event_time)})"
        raise _Invalid(EventError("attributes.event_time", f"attributes.event_time must be {expected}, got {_describe(raw)}"))


def parse(
    data: bytes,
    attributes: Mapping[str, str] | None = None,
    *,
    expect: str = SCHEMA_TRANSACTION,
    max_bytes: int = DEFAULT_MAX_BYTES,
    unknown_fields: UnknownFields = "keep",
) -> Event | EventError:
    """Parse and validate one message into a :class:`Transaction` or :class:`Label`.

    The schema comes from the ``schema`` attribute when present, else ``expect`` (the schema
    the topic carries). Unknown fields are kept in ``extra`` (``unknown_fields="reject"``
    refuses them). Returns an :class:`EventError` for any bad input; never raises for it.
    """
    try:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _fail("data", "bytes", data)
        if len(data) > max_bytes:
            raise _Invalid(EventError("data", f"data must be at most {max_bytes} bytes, got {len(data)} bytes"))
        if attributes is not None and not isinstance(attributes, Mapping):
            raise _fail("attributes", "a mapping of strings to strings", attributes)
        schema = (attributes or {}).get(SCHEMA_ATTRIBUTE, expect)
        builder = _BUILDERS.get(schema)
        if builder is None:
            raise _fail("attributes.schema", "one of " + ", ".join(_BUILDERS), schema)
        body = _decode_json(bytes(data))
        if not isinstance(body, dict):
            raise _fail("data", f"a JSON object (not {_type_name(body)})", body)
        event = builder(body, unknown_fields)
        _check_attributes(attributes, event, body)
        return event
    except _Invalid as invalid:
        return invalid.error
    except Exception as exc:  # a bug in validation must still not lose the message
        return EventError("data", f"data could not be validated: {type(exc).__name__}: {exc}")


PRODUCER_ATTRIBUTE = "producer"


def check_topic(attributes: Mapping[str, str] | None, expect: str,
                allowed_producers: frozenset[str] | None = None) -> EventError | None:
    """Whether a message may arrive on a topic that carries ``expect``: None if so, else the reason.

    One schema per topic: a ``schema`` attribute other than ``expect`` is refused (a label
    published on the transactions topic must not train the model). With ``allowed_producers``
    the ``producer`` attribute must name one of them — a cheap check against a careless
    producer; against a hostile one only the topic's IAM (who may publish) protects.
    """
    attributes = attributes if isinstance(attributes, Mapping) else {}
    schema = attributes.get(SCHEMA_ATTRIBUTE, expect)
    if schema != expect:
        return EventError("attributes.schema", f"attributes.schema must be {expect} on this topic (one schema per "
                                            f"topic), got {_describe(schema)}")
    if allowed_producers is not None:
        producer = attributes.get(PRODUCER_ATTRIBUTE)
        if producer not in allowed_producers:
            allowed = ", ".join(sorted(allowed_producers)) or "(none)"
            return EventError("attributes.producer", f"attributes.producer must be one of {allowed}, got "
                                                  f"{'nothing' if producer is None else _describe(producer)}")
    return None


def transaction_id_of(data: bytes) -> str:
    """Best effort: the ``transaction_id`` of a (possibly invalid) message, else ``""``."""
    try:
        body = orjson.loads(data)
        value = body.get("transaction_id") if isinstance(body, dict) else None
        return value if isinstance(value, str) else ""
    except Exception:
        return ""


# --------------------------------------------------------------------------- protobuf


def from_proto(msg) -> Event | EventError:
    """Validate a ``streamscore.v1`` Transaction or Label message with the same rules as :func:`parse`."""
    from protos.streamscore.v1 import events_pb2

    try:
        if isinstance(msg, events_pb2.Transaction):
            body = {"transaction_id": msg.transaction_id, "customer_id": msg.customer_id,
                    "terminal_id": msg.terminal_id, "amount": msg.amount}
            if msg.HasField("event_time"):
                body["event_time"] = format_time(msg.event_time.ToDatetime(tzinfo=UTC))
            return _transaction(body, "reject")
        if isinstance(msg, events_pb2.Label):
            body = {"transaction_id": msg.transaction_id, "label": msg.label, "customer_id": msg.customer_id,
                    "terminal_id": msg.terminal_id}
            for name in ("event_time", "reported_at"):
                if msg.HasField(name):
                    body[name] = format_time(getattr(msg, name).ToDatetime(tzinfo=UTC))
            return _label(body, "reject")
        return EventError("message", f"message must be a streamscore.v1 Transaction or Label, got {type(msg).__name__}")
    except _Invalid as invalid:
        return invalid.error
    except (ValueError, OverflowError) as exc:  # timestamps outside datetime's range
        return EventError("event_time", f"event_time must be a valid timestamp: {exc}")
