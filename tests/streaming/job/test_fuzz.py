"""Issue 15's fuzz suite, event side: the parser and the job's parse + feature stages under hostile input.

Property: nothing raises, and every transaction-topic message is featurised or dead-lettered
(``featurised + dead-lettered == in``), each dead letter with a stage, a reason and its bytes.
Kept modest (few examples, many messages each): the whole project suite must stay fast.
"""

from __future__ import annotations

import base64
import json

import orjson
from apache_beam.io.gcp.pubsub import PubsubMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.malformed import LABEL, TX, _attrs, _stages, _tx
from streaming.runner.testing import replay
from streaming.io.events import EventError, Label, Transaction, parse
from streaming.io.encoding import dead_letter, encode, encode_dead_letter

FIELDS = ("transaction_id", "customer_id", "terminal_id", "amount", "event_time", "note")
NASTY = ["1e308", "1" * 400, "NaN", "-Infinity", "-0.0", "100000000000.01", '"\\ud800"', '"\\udfff"', '"a\\u0000"',
         '"\\u200b"', "[" * 300 + "]" * 300, "[" * 33 + "]" * 33, '"2018-04-02T00:00:05Z\\n"', "null", "{}", "[]",
         '"x"', "true", str(2**70), '"\\u0662\\u0660\\u0661\\u0668-04-02T00:00:05Z"', '""', '" c"']
fragment = st.one_of(st.sampled_from(NASTY), st.text(max_size=12).map(json.dumps),
                     st.floats(allow_nan=False).map(repr).filter(lambda r: "inf" not in r),
                     st.integers(-(2**80), 2**80).map(str))


@st.composite
def message(draw, i: int):
    kind = draw(st.sampled_from(["good", "field", "field", "bytes", "prefix", "dup-key", "label-schema"]))
    good = _tx(i)
    if kind == "good":
        data = good
    elif kind == "field":
        data = _tx(i, **{draw(st.sampled_from(FIELDS)): draw(fragment)})
    elif kind == "bytes":
        data = draw(st.binary(max_size=64))
    elif kind == "prefix":
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b" ", b"\xed\xa0\x80"])) + good
    elif kind == "dup-key":
        data = good[:-1] + b',"' + draw(st.sampled_from(FIELDS)).encode() + b'":' + draw(fragment).encode() + b"}"
    else:
        data = good
    attrs = _attrs(i % 60, LABEL if kind == "label-schema" else TX) if draw(st.booleans()) else {}
    return data, attrs


@st.composite
def messages(draw, max_size: int):
    n = draw(st.integers(1, max_size))
    out = [draw(message(i % 60)) for i in range(n)]
    for _ in range(draw(st.integers(0, 3))):  # redeliveries
        out.append(out[draw(st.integers(0, len(out) - 1))])
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=message(5))
def test_the_parser_never_raises_and_everything_it_accepts_reencodes(msg):
    data, attrs = msg
    result = parse(data, attrs)
    if isinstance(result, EventError):
        assert result.field and result.field.split(".")[-1] in str(result)  # the reason names the field
    else:
        assert isinstance(result, (Transaction, Label))
        assert parse(*encode(result)) == result  # accepted means re-encodable, exactly
    out, _ = encode_dead_letter(dead_letter(data, attrs, result if isinstance(result, EventError) else "x", "parse"))
    assert base64.b64decode(orjson.loads(out)["data_base64"]) == data


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=messages(max_size=40))
def test_the_jobs_stages_featurise_or_dead_letter_every_message(batch):
    elements = [(TX, PubsubMessage(data, attrs)) for data, attrs in batch]
    out = replay([elements], _stages()(), timestamp_of=lambda e: 1.5e9)  # raises if the pipeline dies
    features, dead = out["features"], out["dead_letter"]
    assert len(features) + len(dead) == len(elements)
    assert all(d.stage in ("parse", "features") and d.error for d in dead)
    sent = {m.data for _, m in elements}
    assert all(d.data in sent for d in dead if d.stage == "parse")  # the original bytes, verbatim
    assert all(isinstance(parse(d.data, d.attributes), Transaction) for d in dead if d.stage == "features")
    ids = [f.transaction.transaction_id for f in features]
    assert len(ids) == len(set(ids))  # a redelivery is never featurised twice
