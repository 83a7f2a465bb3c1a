"""The event contract: every bad-input case gets an exact, field-naming error; nothing raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.io.events import DEFAULT_MAX_BYTES, SCHEMA_LABEL, SCHEMA_TRANSACTION, EventError, Label, Score, Transaction, format_time, from_proto, parse, parse_time
from streaming.io.encoding import dead_letter, encode, encode_dead_letter, to_proto

T0 = datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC)
TX_ATTRS = {"event_time": "2018-04-01T00:00:31Z", "schema": SCHEMA_TRANSACTION}


def tx_body(**changes) -> dict:
    body = {"transaction_id": "42", "event_time": "2018-04-01T00:00:31Z", "customer_id": "c1",
            "terminal_id": "t7", "amount": 12.5}
    for key, value in changes.items():
        if value is DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


def label_body(**changes) -> dict:
    body = {"transaction_id": "42", "label": 1, "event_time": "2018-04-01T00:00:31Z", "customer_id": "c1",
            "terminal_id": "t7", "reported_at": "2018-04-03T10:00:00Z"}
    body.update(changes)
    return body


DROP = object()


def error_of(body, attrs=None, **kwargs) -> str:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    result = parse(data, attrs, **kwargs)
    assert isinstance(result, EventError), result
    return str(result)


# --------------------------------------------------------------------------- good input


def test_valid_transaction_parses_to_typed_event():
    tx = parse(orjson.dumps(tx_body()), TX_ATTRS)
    assert tx == Transaction("42", T0, "c1", "t7", 12.5)
    assert tx.event_time.tzinfo is UTC


def test_integer_amount_and_offset_timezone_are_normalised():
    tx = parse(orjson.dumps(tx_body(amount=12, event_time="2018-04-01T02:00:31+02:00")))
    assert tx.amount == 12.0 and isinstance(tx.amount, float)
    assert tx.event_time == T0


def test_unknown_fields_are_kept_but_ignored():
    tx = parse(orjson.dumps(tx_body(channel="web", risk={"a": 1})))
    assert tx == Transaction("42", T0, "c1", "t7", 12.5)
    assert tx.extra == {"channel": "web", "risk": {"a": 1}}


def test_encode_parse_round_trip_for_transactions_and_labels():
    tx = Transaction("a-1", datetime(2018, 4, 1, 12, 0, 0, 250000, tzinfo=UTC), "c", "t", 0.0)
    data, attrs = encode(tx)
    assert attrs == {"event_time": "2018-04-01T12:00:00.250000Z", "schema": SCHEMA_TRANSACTION}
    assert parse(data, attrs) == tx
    label = Label("a-1", 0, tx.event_time, "c", "t", datetime(2018, 4, 8, tzinfo=UTC))
    data, attrs = encode(label)
    assert attrs["schema"] == SCHEMA_LABEL
    assert parse(data, attrs) == label
    assert parse(data, expect=SCHEMA_LABEL) == label  # no attributes: the topic's schema applies


def test_score_encoding_has_the_interface_fields():
    score = Score("1", T0, 0.25, "v3", {"TX_AMOUNT": 1.0}, online_score=0.5, online_model_version="o7")
    data, attrs = encode(score)
    assert orjson.loads(data) == {"transaction_id": "1", "event_time": "2018-04-01T00:00:31Z", "score": 0.25,
                                  "model_version": "v3", "online_score": 0.5, "online_model_version": "o7",
                                  "features": {"TX_AMOUNT": 1.0}}
    assert attrs["schema"] == "streamscore.score.v1"


def test_dead_letter_keeps_original_bytes_and_recovers_the_id():
    raw = orjson.dumps(tx_body(amount=-1))
    dead = dead_letter(raw, TX_ATTRS, parse(raw, TX_ATTRS), stage="parse")
    assert dead.transaction_id == "42" and dead.data == raw and dead.stage == "parse"
    data, attrs = encode_dead_letter(dead)
    body = orjson.loads(data)
    import base64

    assert base64.b64decode(body["data_base64"]) == raw
    assert body["error"] == "amount must be a finite number >= 0 and <= 1e+11, got -1.0"
    assert body["attributes"] == TX_ATTRS and attrs["stage"] == "parse"
    assert dead_letter(b"\xff", None, "x", "parse").transaction_id == ""


def test_protobuf_round_trip_and_validation():
    tx = Transaction("42", T0, "c1", "t7", 12.5)
    assert from_proto(to_proto(tx)) == tx
    label = Label("42", 1, T0, "c1", "t7", datetime(2018, 4, 3, tzinfo=UTC))
    assert from_proto(to_proto(label)) == label
    bad = to_proto(tx)
    bad.amount = float("nan")
    assert str(from_proto(bad)) == "amount must be a finite number >= 0 and <= 1e+11, got NaN"
    bad.ClearField("event_time")
    assert str(from_proto(bad)).startswith("event_time is required")


# --------------------------------------------------------------------------- bad input: exact messages


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "data must be a UTF-8 JSON object: malformed JSON (unexpected character, expected a string key: line 1 column 2 (char 1))"),
        (b"", "data must be a UTF-8 JSON object: malformed JSON (Input is a zero-length, empty document: line 1 column 1 (char 0))"),
        (b"[1, 2]", "data must be a JSON object (not an array), got [1,2]"),
        (b'"hello"', 'data must be a JSON object (not a string), got "hello"'),
        (b"\xff\xfe{}", "data must be UTF-8 JSON without a byte-order mark (BOM)"),
        # missing fields
        (tx_body(transaction_id=DROP), "transaction_id is required: expected a non-empty string"),
        (tx_body(event_time=DROP), 'event_time is required: expected an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z")'),
        (tx_body(customer_id=DROP), "customer_id is required: expected a non-empty string"),
        (tx_body(terminal_id=DROP), "terminal_id is required: expected a non-empty string"),
        (tx_body(amount=DROP), "amount is required: expected a finite number >= 0 and <= 1e+11"),
        # empty ids
        (tx_body(transaction_id=""), 'transaction_id must be a non-empty string, got ""'),
        (tx_body(customer_id="   "), 'customer_id must be a non-empty string, got "   "'),
        (tx_body(terminal_id="x" * 300), "terminal_id must be a string of at most 256 characters, got \"" + "x" * 56 + "..."),
        # wrong types
        (tx_body(transaction_id=42), "transaction_id must be a non-empty string (not a number), got 42"),
        (tx_body(customer_id=None), "customer_id must be a non-empty string (not null), got null"),
        (tx_body(terminal_id=["t"]), 'terminal_id must be a non-empty string (not an array), got ["t"]'),
        (tx_body(amount="abc"), 'amount must be a finite number >= 0 and <= 1e+11, got "abc"'),
        (tx_body(amount="12.5"), 'amount must be a finite number >= 0 and <= 1e+11, got "12.5"'),
        (tx_body(amount=True), "amount must be a finite number >= 0 and <= 1e+11, got true"),
        (tx_body(amount={"v": 1}), 'amount must be a finite number >= 0 and <= 1e+11, got {"v":1}'),
        # NaN / inf / negative amounts
        (tx_body(amount=-0.01), "amount must be a finite number >= 0 and <= 1e+11, got -0.01"),
        (b'{"transaction_id":"1","event_time":"2018-04-01T00:00:31Z","customer_id":"c","terminal_id":"t","amount":NaN}',
         "amount must be a finite number >= 0 and <= 1e+11, got NaN"),
        (b'{"transaction_id":"1","event_time":"2018-04-01T00:00:31Z","customer_id":"c","terminal_id":"t","amount":Infinity}',
         "amount must be a finite number >= 0 and <= 1e+11, got Infinity"),
        (b'{"transaction_id":"1","event_time":"2018-04-01T00:00:31Z","customer_id":"c","terminal_id":"t","amount":-Infinity}',
         "amount must be a finite number >= 0 and <= 1e+11, got -Infinity"),
        (b'{"transaction_id":"1","event_time":"2018-04-01T00:00:31Z","customer_id":"c","terminal_id":"t","amount":1e999}',
         "amount must be a finite number >= 0 and <= 1e+11, got Infinity"),
        # bad timestamps
        (tx_body(event_time="2018-04-01"), 'event_time must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), got "2018-04-01"'),
        (tx_body(event_time="2018-04-01T00:00:31"), 'event_time must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), got "2018-04-01T00:00:31"'),
        (tx_body(event_time="2018-13-01T00:00:31Z"), 'event_time must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), got "2018-13-01T00:00:31Z": not a valid date/time (month must be in 1..12)'),
        (tx_body(event_time="1969-12-31T23:59:59Z"), 'event_time must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), got "1969-12-31T23:59:59Z": outside the supported range 1970..2199'),
        (tx_body(event_time=1522540831), 'event_time must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), got 1522540831'),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_bad_transactions_get_exact_errors(body, message):
    assert error_of(body) == message


def test_error_names_the_field():
    result = parse(orjson.dumps(tx_body(amount=-5)))
    assert isinstance(result, EventError) and result.field == "amount"


def test_oversized_message_is_rejected_with_configurable_limit():
    big = orjson.dumps(tx_body(note="x" * DEFAULT_MAX_BYTES))
    assert error_of(big) == f"data must be at most 65536 bytes, got {len(big)} bytes"
    small = orjson.dumps(tx_body())
    assert error_of(small, max_bytes=50) == f"data must be at most 50 bytes, got {len(small)} bytes"
    assert isinstance(parse(big, max_bytes=len(big)), Transaction)


def test_unknown_fields_rejected_in_strict_mode():
    assert error_of(tx_body(zeta=1, alpha=2), unknown_fields="reject") == (
        "unknown field(s) alpha, zeta: expected only transaction_id, event_time, customer_id, terminal_id, amount")


def test_attribute_errors():
    assert error_of(tx_body(), {"schema": "nope"}) == (
        'attributes.schema must be one of streamscore.transaction.v1, streamscore.label.v1, got "nope"')
    assert error_of(tx_body(), {"event_time": "2018-04-01T00:00:32Z"}) == (
        "attributes.event_time must be an RFC 3339 timestamp equal to the event_time field "
        '(2018-04-01T00:00:31Z), got "2018-04-01T00:00:32Z"')
    assert error_of(tx_body(), {"event_time": "yesterday"}).startswith("attributes.event_time must be")
    assert error_of(tx_body(), ["not", "a", "mapping"]) == 'attributes must be a mapping of strings to strings, got ["not","a","mapping"]'
    assert str(parse("a str, not bytes")) == 'data must be bytes, got "a str, not bytes"'


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"label": 2}, "label must be 0 (genuine) or 1 (fraud), got 2"),
        ({"label": True}, "label must be 0 (genuine) or 1 (fraud), got true"),
        ({"label": "1"}, 'label must be 0 (genuine) or 1 (fraud), got "1"'),
        ({"label": 1.0}, "label must be 0 (genuine) or 1 (fraud), got 1.0"),
        ({"reported_at": "2018-03-31T00:00:00Z"},
         'reported_at must be a time not earlier than event_time 2018-04-01T00:00:31Z, got "2018-03-31T00:00:00Z"'),
        ({"reported_at": "soon"}, 'reported_at must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), got "soon"'),
    ],
)
def test_bad_labels_get_exact_errors(changes, message):
    assert error_of(label_body(**changes), {"schema": SCHEMA_LABEL}) == message


def test_missing_label_field():
    body = label_body()
    del body["label"]
    assert error_of(body, expect=SCHEMA_LABEL) == "label is required: expected 0 (genuine) or 1 (fraud)"


def test_time_helpers():
    assert parse_time("2018-04-01T00:00:31.123456789Z") == datetime(2018, 4, 1, 0, 0, 31, 123456, tzinfo=UTC)
    assert format_time(datetime(2018, 4, 1, tzinfo=UTC)) == "2018-04-01T00:00:00Z"
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("2018/04/01")


# --------------------------------------------------------------------------- never raises

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.sampled_from(["2018-04-01T00:00:31Z", "", "x", "2018-02-30T00:00:00Z"]))


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=512), attrs=st.none() | st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=3))
def test_arbitrary_bytes_never_raise(data, attrs):
    result = parse(data, attrs)
    assert isinstance(result, (Transaction, Label, EventError))
    if isinstance(result, EventError):
        assert result.field and str(result)


@settings(max_examples=400, deadline=None)
@given(body=st.fixed_dictionaries({}, optional={k: field_values for k in (
    "transaction_id", "event_time", "customer_id", "terminal_id", "amount", "label", "reported_at")}),
    schema=st.sampled_from([SCHEMA_TRANSACTION, SCHEMA_LABEL]))
def test_arbitrary_json_objects_never_raise(body, schema):
    data = json.dumps(body).encode()
    result = parse(data, {"schema": schema})
    assert isinstance(result, (Transaction, Label, EventError))
    if not isinstance(result, EventError):  # anything accepted round-trips
        again = parse(*encode(result))
        assert again == result


# --------------------------------------------------------------------------- issue 15: the strict event path

GOOD = orjson.dumps(tx_body())
ID_RULE = "printable characters (no control, format or unassigned characters, no leading or trailing space)"


def _with(raw_fragment: bytes, field: str = "amount") -> bytes:
    """A transaction whose ``field`` is the raw JSON ``raw_fragment`` (bypassing any encoder)."""
    body = {k: v for k, v in tx_body().items() if k != field}
    return orjson.dumps(body)[:-1] + b',"' + field.encode() + b'":' + raw_fragment + b"}"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (_with(b"1e308"), "amount", "amount must be a finite number >= 0 and <= 1e+11, got 1e+308"),
        (_with(b"100000000000.01"), "amount", "amount must be a finite number >= 0 and <= 1e+11, got 100000000000.01"),
        (_with(b"1" * 400), "amount", "amount must be a finite number >= 0 and <= 1e+11, got an integer of 400 digits"),
        (_with(b"1" * 5000), "amount", "amount must be a finite number >= 0 and <= 1e+11, got an integer of 5000 digits"),
        (_with(b'"\\ud800"', "customer_id"), "customer_id",
         "customer_id must be valid Unicode text, got a lone surrogate in '\\ud800'"),
        (_with(b'"\\udc00x"', "note"), "note", "note must be valid Unicode text, got a lone surrogate in '\\udc00x'"),
        (_with(b"[" * 300 + b"]" * 300, "note"), "note", "note must nest at most 32 levels of objects/arrays"),
        (_with(b"[" * 40 + b"]" * 40, "note"), "note", "note must nest at most 32 levels of objects/arrays"),
        (_with(b"NaN", "note"), "note", "note must be a finite JSON number, got NaN"),
        (b"\xef\xbb\xbf" + GOOD, "data", "data must be UTF-8 JSON without a byte-order mark (BOM)"),
        ("\ufeff".encode("utf-16") + GOOD.decode().encode("utf-16-le"), "data",
         "data must be UTF-8 JSON without a byte-order mark (BOM)"),
        (GOOD.decode().encode("utf-16-le"), "data", "data must be a UTF-8 JSON object: malformed JSON "
         "(unexpected character, expected a string key: line 1 column 2 (char 1))"),
        (b'{"a":"\xed\xa0\x80"}', "data", "data must be UTF-8 JSON: invalid UTF-8 at byte 6"),
        (b"[" * 2000 + b"]" * 2000, "data", "data must nest at most 32 levels of objects/arrays"),
        (b'{"amount": 1, ' + GOOD[1:], "amount", "amount must appear once: duplicate key in the JSON object"),
        (GOOD[:-1] + b', "customer_id": "c2"}', "customer_id",
         "customer_id must appear once: duplicate key in the JSON object"),
        (_with(b'"2018-04-01T00:00:31Z\\n"', "event_time"), "event_time",
         'event_time must be an RFC 3339 timestamp with a time zone (e.g. "2018-04-01T00:00:31Z"), '
         'got "2018-04-01T00:00:31Z\\n"'),
        *[(_with(raw, name), name, f"{name} must be {ID_RULE}, got {shown}")
          for raw, name, shown in ((b'"c\\u0000"', "customer_id", '"c\\u0000"'), (b'" c1"', "customer_id", '" c1"'),
                                   (b'"t\\u200b"', "terminal_id", '"t\u200b"'))],
    ],
    ids=lambda v: None,
)
def test_the_strict_event_path_names_the_field(data, field, message):
    result = parse(data, TX_ATTRS)
    assert isinstance(result, EventError), result
    assert (result.field, str(result)) == (field, message)
    # and dead-lettering it cannot raise: the original bytes travel verbatim
    out, attrs = encode_dead_letter(dead_letter(data, TX_ATTRS, result, "parse"))
    import base64

    assert base64.b64decode(orjson.loads(out)["data_base64"]) == data and attrs["stage"] == "parse"


def test_canonical_and_python_json_producers_are_both_accepted():
    assert parse(GOOD, TX_ATTRS) == parse(json.dumps(tx_body(), indent=2).encode(), TX_ATTRS) == parse(*encode(parse(GOOD)))
    spaced = parse(json.dumps(tx_body(note={"a": [1, 2**70, "é"]})).encode())
    assert isinstance(spaced, Transaction) and encode(spaced)  # re-encodable: 2**70 became a float, like orjson


def test_time_full_match_and_unicode_digits():
    for text in ("2018-04-01T00:00:31Z\n", "2018-04-01T00:00:31Z ", "٢٠١٨-04-01T00:00:31Z"):
        with pytest.raises(ValueError):
            parse_time(text)


def test_dead_letters_of_unencodable_content_never_raise():
    from streaming.io.events import DeadLetter
    from streaming.io.encoding import dead_letter_of_event

    weird = Transaction("1", T0, "c", "t", 1.0, extra={"bad": "\ud800", "deep": [[[[[]]]]] * 1})
    dead = dead_letter_of_event(weird, "duplicate \ud800", "features")
    assert dead.error.startswith("duplicate \\ud800 (its unknown fields could not be encoded")
    assert isinstance(parse(dead.data, dead.attributes), Transaction)
    data, _ = encode_dead_letter(DeadLetter("not bytes \ud800", ["no", "mapping"], "e\udfff", "s", "\ud800"))
    assert orjson.loads(data)["attributes"] == {"attributes": "['no', 'mapping']"}
