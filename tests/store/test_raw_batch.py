"""Raw-transaction batches (ScoreStream): one MGET for many messages, the same features as one at a time.

Real redis-server. :meth:`RawTransactions.features_many` must give each message exactly what
:meth:`RawTransactions.features` gives it alone (bad fields, unknown keys, seen transactions
included) with a single MGET; the ScoreStream servicer must share MGETs between the messages
read while its writer was busy, and answer each exactly as ``Score`` does.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from models.predictor.errors import InvalidArgument, PredictorError, StoreUnavailable
from models.predictor.raw_input import RawTransactions
from protos.streamscore.v1 import events_pb2, scorer_pb2
from tests.models.predictor.conftest import train_booster
from streaming.features.spec import DAY_NS, DEFAULT_SPEC
from streaming.features.state import CustomerState, TerminalState
from streaming.store.encoding import encode_state
from streaming.store.redis_store import StoreConfig, StoreReader, StoreWriter

T0 = 1_523_000_000 * 10**9  # 2018-04-06


def _seconds(t_ns):
    return events_pb2.Transaction().event_time.__class__(seconds=t_ns // 10**9)


def _tx(i, customer, terminal, t_ns, amount=10.0):
    return events_pb2.Transaction(transaction_id=f"q{i}", customer_id=customer, terminal_id=terminal,
                                  amount=amount, event_time=_seconds(t_ns))


class CountingReader(StoreReader):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.mgets = 0
        self.keys = 0

    def fetch(self, *a, **kw):
        self.mgets += 1
        self.keys += 2
        return super().fetch(*a, **kw)

    def fetch_many(self, pairs):
        self.mgets += 1
        self.keys += 2 * len(pairs)
        return super().fetch_many(pairs)


@pytest.fixture
def store(redis_server):
    config = StoreConfig.for_spec(redis_server.url, DEFAULT_SPEC, 7.0)
    writer = StoreWriter(config)
    values = {}
    for k in range(3):
        c, m = CustomerState(DEFAULT_SPEC, 7 * DAY_NS), TerminalState(DEFAULT_SPEC, 7 * DAY_NS)
        for i in range(20 + 5 * k):
            t = T0 + i * DAY_NS // 4
            c.add(f"h{k}-{i}", t, 5.0 + i)
            m.add_transaction(f"h{k}-{i}", t)
            if i % 4 == 0:
                m.add_label(f"h{k}-{i}", t, 1)
        values[config.customer_key(f"c{k}")] = encode_state(c, written_at_ms=1)
        values[config.terminal_key(f"t{k}")] = encode_state(m, written_at_ms=1)
    writer.write(values)
    return config


def _messages():
    late = T0 + 10 * DAY_NS
    return [_tx(0, "c0", "t0", late), _tx(1, "c1", "t2", late + 5, 99.5),
            events_pb2.Transaction(transaction_id="bad", customer_id="c0", terminal_id="t0", amount=-1.0,
                                   event_time=_seconds(late)),
            _tx(3, "c-new", "t1", late), _tx(4, "c2", "t-new", late),
            _tx(5, "c0", "t0", T0 + 19 * DAY_NS // 4, 5.0 + 19),  # h0-19's time and amount, a new id
            events_pb2.Transaction(transaction_id="h0-19", customer_id="c0", terminal_id="t0", amount=24.0,
                                   event_time=_seconds(T0 + 19 * DAY_NS // 4)),  # already featurised
            _tx(7, "c1", "t1", T0 - 5 * DAY_NS)]  # older than the lateness allows


def test_a_batch_gives_each_message_its_own_features_with_one_mget(store):
    reader = CountingReader(store, DEFAULT_SPEC)
    unknown: list = []
    raw = RawTransactions(reader, on_unknown=unknown.append)
    messages = _messages()
    alone = []
    for m in messages:
        try:
            alone.append(raw.features(m))
        except PredictorError as exc:
            alone.append(exc)
    assert reader.mgets == len(messages) - 1  # the bad one is refused before any fetch
    counted = list(unknown)
    reader.mgets = 0
    unknown.clear()
    batch = raw.features_many(messages)
    assert reader.mgets == 1
    assert unknown == counted == ["customer", "terminal"]
    for one, many in zip(alone, batch, strict=True):
        if isinstance(one, PredictorError):
            assert type(many) is type(one) and many.field == one.field and str(many) == str(one)
        else:
            assert many == one
    assert [type(b).__name__ for b in batch].count("InvalidArgument") == 2
    assert batch[2].field == "transaction.amount" and batch[7].field == "transaction.event_time"
    # same time and amount: the new id is added (one more in its windows), the featurised one is not
    assert batch[6].already_seen and not batch[5].already_seen
    nb_1day = DEFAULT_SPEC.names.index("CUSTOMER_ID_NB_TX_1DAY_WINDOW")
    assert batch[5].values[nb_1day] == batch[6].values[nb_1day] + 1


def test_a_batch_with_the_store_down_is_unavailable_but_bad_fields_still_named(store, redis_server):
    raw = RawTransactions(StoreReader(store, DEFAULT_SPEC, timeout=0.2))
    redis_server.stop()
    batch = raw.features_many(_messages()[:3])
    assert [type(b) for b in batch] == [StoreUnavailable, StoreUnavailable, InvalidArgument]
    assert "unreachable" in str(batch[0])


class _SlowWriteContext:
    """ScoreStream's context: all messages readable at once, each response write takes a while."""

    def __init__(self, requests):
        self.requests, self.written = list(requests), []

    async def read(self):
        await asyncio.sleep(0)
        return self.requests.pop(0) if self.requests else grpc.aio.EOF

    async def write(self, response):
        await asyncio.sleep(0.002)
        self.written.append(response)

    def time_remaining(self):
        return None


def test_score_stream_shares_mgets_and_answers_as_score(store):
    from models.predictor.core import Model, Scorer
    from models.predictor.service import ScorerService

    scorer = Scorer()
    scorer.swap(Model.from_booster(train_booster(), "v1", scorer.feature_names))

    reader = CountingReader(store, DEFAULT_SPEC)
    service = ScorerService(scorer, raw=RawTransactions(reader))
    messages = _messages() * 8
    requests = [scorer_pb2.ScoreRequest(transaction_id=m.transaction_id, transaction=m) for m in messages]

    class Aborted(Exception):
        pass

    class Unary:
        def time_remaining(self):
            return None

        async def abort(self, code, details="", *rest):
            raise Aborted(details)

    async def main():
        want = []
        for r in requests:
            try:
                want.append(await service.Score(r, Unary()))
            except Exception as exc:  # noqa: BLE001
                want.append(exc)
        reader.mgets = 0
        context = _SlowWriteContext(requests)
        await service.ScoreStream(None, context)
        alone = reader.mgets
        reader.mgets = 0
        contexts = [_SlowWriteContext(requests[k::2]) for k in range(2)]  # two calls at once share batches too
        await asyncio.gather(*(service.ScoreStream(None, c) for c in contexts))
        return want, context.written, alone, [c.written for c in contexts]

    want, got, alone, both = asyncio.run(main())
    assert len(got) == len(requests)
    assert alone < len(requests) / 4  # messages read while a write was in flight shared an MGET
    assert reader.mgets < len(requests) / 4 and [len(b) for b in both] == [len(requests[0::2]), len(requests[1::2])]
    assert [(r.transaction_id, r.score, r.error.message) for r in both[0]] == \
        [(r.transaction_id, r.score, r.error.message) for r in got[0::2]]
    for w, g in zip(want, got):
        if isinstance(w, Exception):
            assert g.HasField("error") and g.error.message == str(w)
        else:
            assert not g.HasField("error")
            assert (g.transaction_id, g.score, list(g.features.values), g.customer_known, g.terminal_known) == \
                (w.transaction_id, w.score, list(w.features.values), w.customer_known, w.terminal_known)
