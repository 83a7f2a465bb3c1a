"""Issue 15: nothing crashes the job — the per-DoFn guard, one schema per topic, labels that age out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import apache_beam as beam
import orjson
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from streaming.runner.testing import replay
from streaming.io.events import SCHEMA_LABEL, SCHEMA_TRANSACTION, DeadLetter, Label, Transaction, parse
from streaming.io.encoding import encode
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import CustomerStateFn, StreamFeatures
from streaming.features.state import CustomerState, TerminalState
from streaming.job.guard import element_dead_letter, guarded
from streaming.job.pipeline import ParsePubsubFn

T0 = datetime(2018, 4, 2, tzinfo=UTC)


def tx(i: int, *, customer="c1", terminal="t1", amount=10.0, days=0.0) -> Transaction:
    return Transaction(str(i), T0 + timedelta(days=days, seconds=i), customer, terminal, amount)


def test_a_stage_that_raises_dead_letters_the_element_and_keeps_its_state_whole():
    # amount 1e308 cannot come through the parser any more; built in code it still must not kill the job
    batches = [[tx(1), tx(2, amount=1e308)], [tx(3, amount=30.0)]]
    out = replay(batches, StreamFeatures(DEFAULT_SPEC))
    dead = out["dead_letter"]
    assert [(d.stage, d.transaction_id) for d in dead] == [("features", "2")]
    assert dead[0].error.startswith("features stage failed: ValueError: amount must be a finite number with |amount|")
    assert orjson.loads(dead[0].data)["amount"] == 1e308  # its bytes: the event as it was
    features = {f.transaction.transaction_id: dict(zip(DEFAULT_SPEC.names, f.features)) for f in out["features"]}
    assert sorted(features) == ["1", "3"]
    # the failed element left no trace in the customer's state: tx 3 sees only tx 1 (and itself)
    assert features["3"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2.0
    assert features["3"]["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0


def test_state_methods_validate_before_they_change_anything():
    state = CustomerState()
    state.add("a", 0, 10.0)
    before = state.__getstate__()
    with pytest.raises(ValueError):
        state.add("b", 1, float("inf"))
    assert state.__getstate__() == before and state.add("b", 1, 5.0) is not None
    terminal = TerminalState()
    terminal.add_transaction("a", 0)
    before = terminal.__getstate__()
    with pytest.raises(ValueError):
        terminal.add_label("x", 0, 2, payload="p")
    assert terminal.__getstate__() == before


class _BrokenFn(beam.DoFn):
    @guarded("broken")
    def process(self, element):
        yield f"half of {element}"  # emitted before the failure: must not leave the stage
        raise RuntimeError(f"boom on {element}")


def test_the_guard_buffers_outputs_so_a_failing_element_emits_only_its_dead_letter():
    fn = _BrokenFn()
    out = list(fn.process(PubsubMessage(b'{"transaction_id": "9"}', {"schema": "x"})))
    assert len(out) == 1 and out[0].tag == "dead_letter"
    dead: DeadLetter = out[0].value
    assert (dead.stage, dead.transaction_id, dead.attributes) == ("broken", "9", {"schema": "x"})
    assert dead.error.startswith("broken stage failed: RuntimeError: boom on PubsubMessage(")


@pytest.mark.parametrize("element", [tx(1), ("c1", tx(1)), ("t1", (tx(1), {"x": 1.0})), object(), ("a", "b", "c")])
def test_every_element_shape_gets_a_dead_letter(element):
    dead = element_dead_letter(element, "why", "stage")
    assert dead.error == "why" and dead.stage == "stage" and isinstance(dead.data, bytes)
    if element is not None and "Transaction" in repr(element):
        assert dead.transaction_id == "1" and isinstance(parse(dead.data, dead.attributes), Transaction)


def _parse_all(messages, expect=SCHEMA_TRANSACTION, producers=None):
    fn = ParsePubsubFn(expect, allowed_producers=producers)
    return [o for m in messages for o in fn.process(m)]


def test_one_schema_per_topic():
    label = Label("1", 1, T0, "c1", "t1", T0 + timedelta(days=1))
    data, attrs = encode(label)
    out = _parse_all([PubsubMessage(data, attrs)], SCHEMA_TRANSACTION)
    assert len(out) == 1 and out[0].tag == "dead_letter"
    assert out[0].value.error == ("attributes.schema must be streamscore.transaction.v1 on this topic (one schema "
                                  'per topic), got "streamscore.label.v1"')
    tdata, tattrs = encode(tx(1))
    out = _parse_all([PubsubMessage(tdata, tattrs)], SCHEMA_LABEL)
    assert out[0].tag == "dead_letter" and "must be streamscore.label.v1 on this topic" in out[0].value.error
    # without a schema attribute the topic's schema applies
    assert _parse_all([PubsubMessage(tdata, {})]) == [tx(1)]


def test_label_producers_are_checked_when_configured():
    data, attrs = encode(Label("1", 1, T0, "c1", "t1", T0 + timedelta(days=1)))
    ok = PubsubMessage(data, {**attrs, "producer": "chargebacks"})
    bad = PubsubMessage(data, {**attrs, "producer": "mallory"})
    none = PubsubMessage(data, attrs)
    out = _parse_all([ok, bad, none], SCHEMA_LABEL, frozenset({"chargebacks", "disputes"}))
    assert isinstance(out[0], Label)
    assert [o.value.error for o in out[1:]] == [
        'attributes.producer must be one of chargebacks, disputes, got "mallory"',
        "attributes.producer must be one of chargebacks, disputes, got nothing"]
    assert all(isinstance(o, Label) for o in _parse_all([bad, none], SCHEMA_LABEL))  # no check unless configured


def test_a_label_whose_transaction_never_comes_is_dead_lettered_when_it_ages_out():
    orphan = Label("ghost", 1, T0, "c9", "t1", T0 + timedelta(days=2))
    genuine_orphan = Label("ghost0", 0, T0, "c9", "t1", T0 + timedelta(days=2))
    matched = Label("2", 1, T0 + timedelta(seconds=2), "c1", "t1", T0 + timedelta(days=3))
    later = [tx(i, days=60) for i in range(10, 12)]
    out = replay([[tx(1)], [orphan, genuine_orphan, matched], [tx(2)], later],
                 StreamFeatures(DEFAULT_SPEC, 1.0), timestamp_of=lambda e: 1.5e9)
    dead = sorted(out["dead_letter"], key=lambda d: d.transaction_id)
    assert [(d.stage, d.transaction_id) for d in dead] == [("label", "ghost"), ("label", "ghost0")]
    assert dead[0].error.startswith("label for transaction_id ghost: its transaction never came to terminal t1 "
                                    "within ")
    assert isinstance(parse(dead[0].data, dead[0].attributes), Label)
    assert len(out["features"]) == 4  # the labels did not cost a transaction
