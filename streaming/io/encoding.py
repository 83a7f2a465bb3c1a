"""The wire format of events: JSON bodies and attributes for Pub/Sub, the dead-letter record, protobuf.

The inverse of :func:`streaming.io.events.parse` (which validates what comes in). A dead-letter
record never re-encodes user content it cannot encode: it carries the original bytes (base64)
and a bounded, always-encodable text of the error and attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from streaming.io.events import (
    DEFAULT_MAX_BYTES, DeadLetter, EVENT_TIME_ATTRIBUTE, EventError, Label, MAX_ID_LENGTH, SCHEMA_ATTRIBUTE, SCHEMA_DEAD_LETTER, SCHEMA_LABEL, SCHEMA_SCORE, SCHEMA_TRANSACTION, Score, Transaction, format_time, transaction_id_of,
)


# --------------------------------------------------------------------------- encoding


def _body(event: Transaction | Label | Score) -> tuple[dict[str, Any], str]:
    if isinstance(event, Transaction):
        body = {"transaction_id": event.transaction_id, "event_time": format_time(event.event_time),
                "customer_id": event.customer_id, "terminal_id": event.terminal_id, "amount": event.amount}
        return {**event.extra, **body}, SCHEMA_TRANSACTION
    if isinstance(event, Label):
        body = {"transaction_id": event.transaction_id, "label": event.label,
                "event_time": format_time(event.event_time), "customer_id": event.customer_id,
                "terminal_id": event.terminal_id, "reported_at": format_time(event.reported_at)}
        return {**event.extra, **body}, SCHEMA_LABEL
    body = {"transaction_id": event.transaction_id, "event_time": format_time(event.event_time),
            "score": event.score, "model_version": event.model_version}
    if event.online_score is not None:
        body["online_score"] = event.online_score
        body["online_model_version"] = event.online_model_version
    body["features"] = dict(event.features)
    return body, SCHEMA_SCORE


def encode(event: Transaction | Label | Score) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub form of an event: (JSON bytes, attributes)."""
    body, schema = _body(event)
    attrs = {EVENT_TIME_ATTRIBUTE: format_time(event.event_time), SCHEMA_ATTRIBUTE: schema}
    return orjson.dumps(body), attrs


def _safe_text(value: Any, limit: int = 2000) -> str:
    """``value`` as text orjson can always encode: lone surrogates escaped, length capped."""
    text = value if isinstance(value, str) else repr(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return _safe_text(data, limit=DEFAULT_MAX_BYTES).encode("utf-8")  # not bytes: keep what it was, readable


def _as_attributes(attributes: Any) -> dict[str, str]:
    if attributes is None:
        return {}
    try:
        items = dict(attributes).items()
    except (TypeError, ValueError):
        return {"attributes": _safe_text(attributes)}
    return {_safe_text(k, 256): _safe_text(v, 1024) for k, v in items}


def encode_dead_letter(dead: DeadLetter) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub form of a dead letter; the original bytes travel base64-encoded. Never raises.

    Only the original bytes carry user content verbatim (as base64); the error, stage, id and
    attributes are text made safe to encode (lone surrogates escaped, lengths capped).
    """
    import base64

    stage = _safe_text(dead.stage, 64)
    body = {
        "error": _safe_text(dead.error),
        "stage": stage,
        "transaction_id": _safe_text(dead.transaction_id, MAX_ID_LENGTH),
        "attributes": _as_attributes(dead.attributes),
        "data_base64": base64.b64encode(_as_bytes(dead.data)).decode("ascii"),
    }
    return orjson.dumps(body), {SCHEMA_ATTRIBUTE: SCHEMA_DEAD_LETTER, "stage": stage}


def dead_letter(data: bytes, attributes: Mapping[str, str] | None, error: EventError | str, stage: str) -> DeadLetter:
    """A :class:`DeadLetter` for a message that failed at ``stage``. Never raises."""
    raw = _as_bytes(data)
    return DeadLetter(data=raw, attributes=_as_attributes(attributes), error=_safe_text(str(error)),
                      stage=stage, transaction_id=_safe_text(transaction_id_of(raw), MAX_ID_LENGTH))


def dead_letter_of_event(event: Transaction | Label, error: EventError | str, stage: str) -> DeadLetter:
    """A :class:`DeadLetter` for a parsed event a later stage refused: its wire form. Never raises.

    A parsed event always encodes (the parser bounds depth and refuses lone surrogates); if
    one still does not (an event built in code), its unknown fields are dropped, and failing
    that its ``repr`` is kept, so the message is never lost to an encoding error.
    """
    try:
        data, attrs = encode(event)
    except Exception:
        try:
            data, attrs = encode(replace(event, extra={}))
            error = f"{error} (its unknown fields could not be encoded and were dropped)"
        except Exception:
            data, attrs = _safe_text(event, DEFAULT_MAX_BYTES).encode("utf-8"), {}
    return dead_letter(data, attrs, error, stage)


# --------------------------------------------------------------------------- protobuf


def to_proto(event: Transaction | Label):
    """The ``streamscore.v1`` protobuf message for a transaction or label."""
    from protos.streamscore.v1 import events_pb2

    if isinstance(event, Transaction):
        msg = events_pb2.Transaction(transaction_id=event.transaction_id, customer_id=event.customer_id,
                                     terminal_id=event.terminal_id, amount=event.amount)
        msg.event_time.FromDatetime(event.event_time)
        return msg
    msg = events_pb2.Label(transaction_id=event.transaction_id, label=event.label,
                           customer_id=event.customer_id, terminal_id=event.terminal_id)
    msg.event_time.FromDatetime(event.event_time)
    msg.reported_at.FromDatetime(event.reported_at)
    return msg
