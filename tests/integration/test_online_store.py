"""Issue 12's proof: the stream writes the online store, the predictor scores raw transactions from it.

Real redis-server, real Beam local runner (TestStream), real gRPC predictor. A time-ordered
dataset (the reference data's entity-sampled slice when ../shared/data/fraud-handbook is
present, else a simulated one) is replayed through the streaming features with the store on;
transactions held back from the replay (each of its own card and terminal) are then scored
with ``Score(transaction=...)``: their features equal the batch featurizer's over the replayed
history plus themselves (counts exact, averages 1e-9) and their score equals ``Score(features=...)``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import apache_beam as beam
import grpc
import numpy as np
import pandas as pd
import pytest

from protos.streamscore.v1 import events_pb2, scorer_pb2, scorer_pb2_grpc
from streaming.runner.testing import replay, with_labels
from streaming.io.datasets import iter_transactions, read_table, reference_dir
from streaming.io.events import Transaction
from streaming.io.encoding import to_proto
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import StreamFeatures

from tests.models.predictor.conftest import make_scorer, booster, serve  # noqa: F401 - fixtures

NAMES = DEFAULT_SPEC.names
T0 = datetime(2018, 4, 2, tzinfo=UTC)


def _simulated(n=1500, customers=40, terminals=25, seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 60 * 86_400, n))
    return pd.DataFrame({
        "TRANSACTION_ID": np.arange(n, dtype="int64"),
        "TX_DATETIME": (np.datetime64("2018-04-02T00:00:00", "ns") + seconds.astype("timedelta64[s]")),
        "CUSTOMER_ID": rng.integers(0, customers, n), "TERMINAL_ID": rng.integers(0, terminals, n),
        "TX_AMOUNT": np.round(rng.gamma(2.0, 30.0, n), 2), "TX_FRAUD": (rng.random(n) < 0.15).astype("int64")})


def _reference_slice() -> pd.DataFrame | None:
    folder = reference_dir()
    if not (folder / "transactions.parquet").exists():
        return None
    df = read_table(folder / "transactions.parquet")
    df = df[df["TX_DATETIME"] < pd.Timestamp("2018-05-21")]
    rng = np.random.default_rng(12)
    customers = rng.choice(df["CUSTOMER_ID"].unique(), 15, replace=False)
    terminals = rng.choice(df["TERMINAL_ID"].unique(), 15, replace=False)
    return df[df["CUSTOMER_ID"].isin(customers) | df["TERMINAL_ID"].isin(terminals)].reset_index(drop=True)


def _hold_back(df: pd.DataFrame, k: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last transactions with a card and terminal of their own among those held back; the rest replayed."""
    held, cards, terminals = [], set(), set()
    for i in range(len(df) - 1, max(-1, len(df) - 400), -1):
        row = df.iloc[i]
        if row["CUSTOMER_ID"] in cards or row["TERMINAL_ID"] in terminals:
            continue
        held.append(i)
        cards.add(row["CUSTOMER_ID"])
        terminals.add(row["TERMINAL_ID"])
        if len(held) == k:
            break
    cut = min(held)  # everything before the earliest held-back one is replayed, the rest is dropped
    return df.iloc[:cut], df.loc[sorted(held)]


@pytest.fixture(scope="module")
def dataset():
    df = _reference_slice()
    return ("reference" if df is not None else "simulated"), (df if df is not None else _simulated())


def _stub(server):
    return scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))


def _raw_request(tx: Transaction) -> scorer_pb2.ScoreRequest:
    return scorer_pb2.ScoreRequest(transaction_id=tx.transaction_id, transaction=to_proto(tx))


@pytest.mark.integration
def test_raw_transactions_score_like_the_batch_features(redis_server, dataset, serve, make_scorer):
    _, df = dataset
    replayed, held = _hold_back(df)
    assert len(held) >= 8
    txs = list(iter_transactions(replayed))
    frauds = dict(zip(replayed["TRANSACTION_ID"].astype(str), replayed["TX_FRAUD"]))
    out = replay([b for b in (lambda ev: [ev[i:i + 200] for i in range(0, len(ev), 200)])(with_labels(txs, frauds))],
                 StreamFeatures(DEFAULT_SPEC, 7.0, online_store=redis_server.url))
    assert out["dead_letter"] == [] and len(out["features"]) == len(replayed)

    batch = featurize_frame(pd.concat([replayed, held], ignore_index=True))
    batch = batch.set_index(batch["TRANSACTION_ID"].astype(str))
    server = serve(make_scorer(), online_store=redis_server.url)
    client = _stub(server)
    held_txs = list(iter_transactions(held))
    streamed = list(client.ScoreStream(iter([_raw_request(tx) for tx in held_txs])))
    for tx, from_stream in zip(held_txs, streamed):
        got = client.Score(_raw_request(tx))
        want = batch.loc[tx.transaction_id, list(NAMES)].to_numpy(dtype=float)
        values = np.array(got.features.values)
        counts = [i for i, n in enumerate(NAMES) if "AVG" not in n]
        averages = [i for i, n in enumerate(NAMES) if "AVG" in n]
        assert values[counts].tolist() == want[counts].tolist(), (tx.transaction_id, values, want)
        np.testing.assert_allclose(values[averages], want[averages], rtol=1e-9, atol=0)
        assert got.customer_known == (replayed["CUSTOMER_ID"].astype(str) == tx.customer_id).any()
        assert got.terminal_known == (replayed["TERMINAL_ID"].astype(str) == tx.terminal_id).any()
        assert got.state_age_ms >= 0 and (got.customer_known or got.terminal_known)
        by_features = client.Score(scorer_pb2.ScoreRequest(features=scorer_pb2.FeatureVector(values=values.tolist())))
        assert got.score == by_features.score and got.model_version == by_features.model_version
        assert not from_stream.HasField("error") and from_stream.score == got.score
        assert list(from_stream.features.values) == list(got.features.values)
    # the predictor never writes the store: scoring twice gives the same features
    again = client.Score(_raw_request(held_txs[0]))
    assert list(again.features.values) == list(client.Score(_raw_request(held_txs[0])).features.values)


def _tx(**overrides) -> events_pb2.Transaction:
    fields = {"transaction_id": "x1", "customer_id": "c-new", "terminal_id": "t-new", "amount": 12.5}
    fields.update(overrides)
    msg = events_pb2.Transaction(**{k: v for k, v in fields.items() if k != "event_time"})
    if "event_time" not in overrides:
        msg.event_time.FromDatetime(T0)
    return msg


@pytest.mark.parametrize("overrides, needle", [
    ({"transaction_id": ""}, "transaction.transaction_id"),
    ({"customer_id": ""}, "transaction.customer_id"),
    ({"terminal_id": "   "}, "transaction.terminal_id"),
    ({"amount": -1.0}, "transaction.amount"),
    ({"amount": float("nan")}, "transaction.amount"),
    ({"event_time": None}, "transaction.event_time"),
    ({"customer_id": "c" * 300}, "transaction.customer_id"),
])
def test_each_bad_raw_field_is_named_and_the_server_keeps_serving(redis_server, serve, make_scorer, overrides, needle):
    server = serve(make_scorer(), online_store=redis_server.url)
    client = _stub(server)
    with pytest.raises(grpc.RpcError) as info:
        client.Score(scorer_pb2.ScoreRequest(transaction=_tx(**overrides)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details()
    streamed = list(client.ScoreStream(iter([scorer_pb2.ScoreRequest(transaction_id="bad", transaction=_tx(**overrides)),
                                             scorer_pb2.ScoreRequest(transaction_id="ok", transaction=_tx())])))
    assert streamed[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and needle in streamed[0].error.message
    assert not streamed[1].HasField("error") and 0 <= streamed[1].score <= 1


def test_unknown_card_and_terminal_score_as_new_and_are_counted(redis_server, serve, make_scorer):
    server = serve(make_scorer(), online_store=redis_server.url)
    got = _stub(server).Score(scorer_pb2.ScoreRequest(transaction=_tx()))
    assert not got.customer_known and not got.terminal_known and not got.HasField("state_age_ms")
    features = dict(zip(NAMES, got.features.values))
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1.0 and features["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 12.5
    assert features["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0.0
    counter = server.server.telemetry.online_store_unknown
    assert counter.labels("customer")._value.get() == 1 and counter.labels("terminal")._value.get() == 1


def test_store_down_is_unavailable_while_feature_vectors_keep_working(redis_server, serve, make_scorer):
    server = serve(make_scorer(), online_store=redis_server.url)
    client = _stub(server)
    redis_server.stop()
    with pytest.raises(grpc.RpcError) as info:
        client.Score(scorer_pb2.ScoreRequest(transaction=_tx()))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "online store" in info.value.details()
    ok = client.Score(scorer_pb2.ScoreRequest(features=scorer_pb2.FeatureVector(values=[1.0] * 15)))
    assert 0 <= ok.score <= 1
    redis_server.start()
    assert not client.Score(scorer_pb2.ScoreRequest(transaction=_tx())).customer_known


def _final_states(url, df):
    """{key: version} of every card and terminal of ``df`` in the store at ``url``."""
    from streaming.store.redis_store import StoreConfig, ttl_ms

    config = StoreConfig(url, DEFAULT_SPEC.spec_hash, ttl_ms(DEFAULT_SPEC, 7.0))
    client = config.client()
    keys = ([config.customer_key(str(c)) for c in sorted(df["CUSTOMER_ID"].unique())]
            + [config.terminal_key(str(t)) for t in sorted(df["TERMINAL_ID"].unique())])
    return {k: (None if v is None else v[:39]) for k, v in zip(keys, client.mget(keys))}


@pytest.mark.integration
def test_redis_down_during_the_stream_loses_no_event_and_converges(redis_server):
    from streaming.store.redis_store import _WRITERS

    df = _simulated(600, 12, 8, seed=9)
    txs = list(iter_transactions(df))
    events = with_labels(txs, dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"])))
    batches = [events[i:i + 100] for i in range(0, len(events), 100)]
    # reference run: the store up all along (db 1 of the same server)
    url_up = redis_server.url[:-1] + "1"
    ok = replay(batches, StreamFeatures(DEFAULT_SPEC, 7.0, online_store=url_up))
    want = _final_states(url_up, df)
    assert all(v is not None for v in want.values())
    # the store down for the whole replay: every event is still featurised, none dead-lettered
    redis_server.stop()
    down = replay(batches, StreamFeatures(DEFAULT_SPEC, 7.0, online_store=redis_server.url))
    assert down["dead_letter"] == [] and len(down["features"]) == len(ok["features"]) == len(df)
    writers = [w for (config, _), w in _WRITERS.items() if config.url == redis_server.url]
    assert writers and all(w.stats.failures >= 1 and w.stats.waiting > 0 for w in writers)
    redis_server.start()  # back (empty): the writers' retries bring every key to its latest state
    assert all(w.flush(20.0) for w in writers)
    assert _final_states(redis_server.url, df) == want


#: The Redis server the chaos step of the next replay stops and starts, and when (element counts).
_CHAOS: dict = {}


def _chaos_step(event):
    """Pass ``event`` on; on the ``stop_at``-th element stop the store, on the ``start_at``-th start it
    again (empty: it has no persistence) — under traffic, in the pipeline's own worker thread."""
    _CHAOS["seen"] += 1
    if _CHAOS["seen"] == _CHAOS["stop_at"]:
        _CHAOS["server"].stop()
    elif _CHAOS["seen"] == _CHAOS["start_at"]:
        _CHAOS["server"].start()
    return event


class _WithChaos(StreamFeatures):
    def expand(self, events):
        return super().expand(events | "Chaos" >> beam.Map(_chaos_step))


@pytest.mark.integration
def test_redis_restarted_under_traffic_loses_no_event_and_converges(redis_server):
    """The store goes down a third of the way through a replay and comes back (empty) at two thirds:
    every event is featurised exactly as with the store up, none dead-lettered, and once the
    writers' retries have run every key holds its latest state: writes that failed during the
    outage are retried, and what the empty server lost is rewritten by each key's later events (all
    20 keys here have events after the restart; a key quiet since before it stays absent from a
    Redis without persistence until its next event — the predictor then scores it as unknown, counted)."""
    from streaming.store.redis_store import _WRITERS

    df = _simulated(600, 12, 8, seed=11)
    txs = list(iter_transactions(df))
    events = with_labels(txs, dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"])))
    batches = [events[i:i + 50] for i in range(0, len(events), 50)]
    url_up = redis_server.url[:-1] + "2"  # reference: db 2, up all along (it restarts too, but is written at once)
    ok = replay(batches, StreamFeatures(DEFAULT_SPEC, 7.0, online_store=url_up))
    want = _final_states(url_up, df)
    assert all(v is not None for v in want.values())
    _CHAOS.update(server=redis_server, seen=0, stop_at=len(events) // 3, start_at=2 * len(events) // 3)
    out = replay(batches, _WithChaos(DEFAULT_SPEC, 7.0, online_store=redis_server.url))
    assert _CHAOS["seen"] == len(events) and redis_server.running
    assert out["dead_letter"] == []
    features = lambda result: sorted((f.transaction.transaction_id, f.features) for f in result["features"])  # noqa: E731
    assert features(out) == features(ok)  # the store's outage changed no feature and lost no event
    writers = [w for (config, _), w in _WRITERS.items() if config.url == redis_server.url]
    assert writers and any(w.stats.failures >= 1 for w in writers), "the outage never reached the writers"
    assert all(w.flush(20.0) for w in writers)
    got = _final_states(redis_server.url, df)
    print(f"\nredis restarted under traffic: {len(events)} events, {len(out['features'])} featurised, "
          f"0 dead-lettered; writer failures {sum(w.stats.failures for w in writers)}; "
          f"keys converged {sum(got[k] == want[k] for k in want)}/{len(want)}")
    assert got == want


@pytest.mark.integration
def test_out_of_order_and_retried_writes_never_move_state_backwards(redis_server):
    from streaming.store.encoding import encode_state
    from streaming.store.redis_store import StoreConfig, StoreWriter, ttl_ms

    df = _simulated(300, 5, 4, seed=4)
    txs = list(iter_transactions(df))
    events = with_labels(txs, dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"])))
    replay([events[i:i + 50] for i in range(0, len(events), 50)],
           StreamFeatures(DEFAULT_SPEC, 7.0, online_store=redis_server.url))
    final = _final_states(redis_server.url, df)
    # a delayed retry of every earlier state of a card (as a restarted bundle would send it) changes nothing
    from streaming.features.state import CustomerState
    config = StoreConfig(redis_server.url, DEFAULT_SPEC.spec_hash, ttl_ms(DEFAULT_SPEC, 7.0))
    writer = StoreWriter(config)
    card = txs[0].customer_id
    state = CustomerState(DEFAULT_SPEC, 7 * 86_400 * 10**9)
    from streaming.features.transaction import time_ns
    olds = []
    for tx in txs:
        if tx.customer_id == card:
            state.add(tx.transaction_id, time_ns(tx.event_time), tx.amount)
            olds.append(encode_state(state, written_at_ms=0))
    for value in reversed(olds):  # newest first, then ever older: all but the equal one are stale
        writer.write({config.customer_key(card): value})
    stats = writer.take_stats()
    assert stats.written == 0 and stats.stale == len(olds)
    assert _final_states(redis_server.url, df) == final


def test_score_command_prints_one_json_line_per_transaction(redis_server, serve, make_scorer, tmp_path, capsys):
    import orjson

    from models.predictor.score_cli import run

    server = serve(make_scorer(), online_store=redis_server.url)
    good = {"transaction_id": "a1", "event_time": "2018-09-30T12:00:00Z", "customer_id": "c", "terminal_id": "t",
            "amount": 25.0}
    assert run(["--target", server.target, "--transaction", orjson.dumps(good).decode()]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["transaction_id"] == "a1" and 0 <= out["score"] <= 1 and out["customer_known"] is False
    assert out["features"]["TX_AMOUNT"] == 25.0 and out["client_latency_ms"] > 0
    path = tmp_path / "txs.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps({**good, "amount": -3}) + b"\n")
    assert run(["--target", server.target, "--input", str(path)]) == 1
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["score"] == out["score"] and lines[1]["field"] == "amount" and lines[1]["line"] == 2


@pytest.mark.integration
def test_raw_transactions_are_shadowed_with_the_features_they_were_scored_with(redis_server, serve, make_scorer,
                                                                               tmp_path):
    import time

    from models.predictor.core import Model
    from models.predictor.shadow import ShadowSettings
    from tests.models.predictor.conftest import train_booster

    challenger = train_booster(seed=5, rounds=7)
    model_file = tmp_path / "challenger.json"
    challenger.save_model(str(model_file))
    server = serve(make_scorer(), online_store=redis_server.url, shadow_model_file=model_file, poll_interval=0.05,
                   shadow_settings=ShadowSettings(flush_seconds=0.0))
    shadow = server.server.scorer.shadow
    deadline = time.monotonic() + 10
    while shadow.model is None:
        assert time.monotonic() < deadline, "the shadow model file was never loaded"
        time.sleep(0.02)
    client = _stub(server)
    unary = client.Score(scorer_pb2.ScoreRequest(transaction_id="r1", transaction=_tx(transaction_id="r1")))
    streamed = list(client.ScoreStream(iter([scorer_pb2.ScoreRequest(transaction_id="r2",
                                                                     transaction=_tx(transaction_id="r2", amount=99.0))])))
    assert unary.model_version == streamed[0].model_version == "v1"  # production's decision, not the shadow's
    while shadow.stats.events.get(shadow.model.version, 0) < 2:
        assert time.monotonic() < deadline, f"shadow events: {shadow.stats.events}"
        time.sleep(0.02)
    expected = Model.from_booster(challenger, "c", NAMES, backend="xgboost").predict(
        np.array([list(unary.features.values), list(streamed[0].features.values)]))
    histogram = shadow.stats.histogram("shadow", shadow.model.version)
    assert histogram.sum == pytest.approx(float(expected.sum()), abs=1e-6)
