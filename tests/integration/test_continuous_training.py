"""The continuous-training loop end to end: real emulator, signed registry, predictor and streaming job.

A small simulated drift (``simulate(drift_day=6, drift_kind="new-pattern")``) is replayed in
three parts through the job, which scores every transaction with the predictor. Between the
parts ``streamscore controller`` (its real command, one ``--once`` tick at a time) reads the
job's ``monitoring`` topic through the emulator and the predictor's shadow log:

1. an alarm on the monitoring topic (a PSI ``stability`` alarm, as the job's monitoring stage
   publishes it) starts a retrain on a table with **shuffled labels**: the gate refuses it;
2. the next alarm's retrain, on the real labels after the drift, passes the gate and goes to
   shadow; the predictor hot-loads it and scores the second part in shadow;
3. the controller promotes it after enough shadow events; the predictor serves it in the third part;
4. the injected quality drop — the labels of the promoted model's scores flipped — breaks the
   watch's AP bound: the controller rolls back, and the predictor serves the first model again.

Every step is checked in the registry's audit log, and the stream loses nothing meanwhile:
every published transaction is scored exactly once and the malformed ones are dead-lettered.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import orjson
import pytest
import xgboost as xgb

from models.monitoring import monitoring_event
from models.registry import CHALLENGER, Registry
from models.signing import generate
from streaming import cli
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.io.events import SCHEMA_TRANSACTION
from streaming.io.publish import TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import pull_all
from streaming.sim.simulator import simulate
from tests.integration.test_stream_scoring import Proc, free_port

pytestmark = pytest.mark.integration

NAMES = list(DEFAULT_SPEC.names)
MALFORMED = (b"{not json", b'{"transaction_id": "bad-amount", "event_time": "2018-04-01T00:00:00Z", '
                           b'"customer_id": "c", "terminal_id": "t", "amount": -1}')
RETRAIN = ["--retrain-train-days", "6", "--retrain-eval-days", "3", "--retrain-delay-days", "1",
           "--retrain-cooldown", "0", "--gate-resamples", "200", "--retrain-nthread", "1"]


def _probe_version(port: int) -> str:
    """The production version the predictor answers with now."""
    import grpc

    from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = scorer_pb2.ScoreRequest(transaction_id="probe",
                                          features=scorer_pb2.FeatureVector(values=[0.0] * len(NAMES)))
        return scorer_pb2_grpc.ScorerStub(channel).Score(request, timeout=5).model_version


def _shadowing(port: int, directory, version: str) -> bool:
    """Whether the predictor scores ``version`` in shadow: a probe, then its line in the shadow log."""
    _probe_version(port)
    for path in directory.glob("shadow-*.jsonl"):
        if any(json.loads(line)["shadow_version"] == version for line in path.read_text().splitlines()):
            return True
    return False


def _wait(condition, what: str, procs, timeout: float = 60.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            proc.alive()
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.3)


@pytest.fixture
def loop_stack(pubsub_emulator, tmp_path):
    from streaming.demo.processes import wait_serving

    df = simulate(customers=80, terminals=160, days=20, seed=7, drift_day=6)
    history = featurize_frame(simulate(customers=80, terminals=160, days=30, seed=8))
    trainer = generate("trainer-1")
    trainer.save(tmp_path / "trainer-key.json")
    trainer.public().save(tmp_path / "verify.json", public_only=True)
    registry = Registry.open(tmp_path / "registry", keys=trainer)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 4, "eta": 0.3, "nthread": 1,
              "seed": 0, "base_score": 0.5}
    booster = xgb.train(params, xgb.DMatrix(history[NAMES].to_numpy(), label=history["TX_FRAUD"].to_numpy(),
                                            feature_names=NAMES), 30)
    first = registry.register(booster, {"feature_names": NAMES, "data": {"split": {"train": ["2018-03-01",
                                                                                             "2018-03-30"]}}},
                              spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(first)
    prefix = "ct" + uuid.uuid4().hex[:8]
    names = {k: f"{prefix}-{k}" for k in ("tx", "scores", "alerts", "dead", "monitoring")}
    subs = {f"{names['tx']}-job": names["tx"], f"{names['scores']}-check": names["scores"],
            f"{names['dead']}-check": names["dead"], f"{names['monitoring']}-controller": names["monitoring"]}
    pubsub_emulator.ensure([*names.values()], subs)
    port = free_port()
    predictor = Proc(["-m", "streaming.cli", "serve", "--registry", str(tmp_path / "registry"), "--port", str(port),
                      "--host", "127.0.0.1", "--metrics-port", "0", "--poll-interval", "0.5",
                      "--signing-key-file", str(tmp_path / "verify.json"), "--shadow-log", str(tmp_path / "shadow")],
                     tmp_path / "serve.log")
    wait_serving(port, predictor.proc)
    job = Proc(["-m", "streaming.job.pipeline", "--project", pubsub_emulator.project,
                "--emulator-host", pubsub_emulator.host_port, "--transactions-subscription", f"{names['tx']}-job",
                "--labels-subscription", "", "--scores-topic", names["scores"], "--alerts-topic", names["alerts"],
                "--dead-letter-topic", names["dead"], "--monitoring-topic", names["monitoring"],
                "--predictor", f"127.0.0.1:{port}"], tmp_path / "job.log")
    yield {"df": df, "table": featurize_frame(df), "registry": registry, "first": first, "names": names,
           "port": port, "procs": (predictor, job), "tmp": tmp_path}
    job.stop()
    predictor.stop()


def _replay(emulator, stack, part, malformed=()) -> list[dict]:
    """Publish ``part``'s transactions (and ``malformed`` messages); the scores of all of them."""
    names = stack["names"]
    publisher = make_publisher(emulator.host_port, ordering=True)
    topics = TopicPaths(emulator.topic_path(names["tx"]), None)
    for raw in malformed:
        publisher.publish(topics.transactions, raw, schema=SCHEMA_TRANSACTION).result()
    publish_dataset(part, publisher, topics, rate=400, order_by_customer=True)
    subscriber = emulator.subscriber_client()
    scores = pull_all(subscriber, emulator.subscription_path(f"{names['scores']}-check"), len(part), timeout=240,
                      settle=1)
    for proc in stack["procs"]:
        proc.alive()
    return [orjson.loads(m.data) for m in scores]


def _alarm(emulator, stack, version: str) -> None:
    """A PSI alarm on the job's monitoring topic, in the shape the job's monitoring stage publishes."""
    event = monitoring_event({"TX_AMOUNT": 0.61, "score": 0.08}, model_version=version, at="2018-04-14T00:00:00Z")
    publisher = make_publisher(emulator.host_port)
    publisher.publish(emulator.topic_path(stack["names"]["monitoring"]), json.dumps(event).encode(),
                      kind="stability").result()


def _score_lines(path, df, scores, flip: bool) -> None:
    """The score messages as JSON lines for ``controller --scores-from``, each with its label (flipped: the injected drop)."""
    truth = dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"].astype(int)))
    cards = dict(zip(df["TRANSACTION_ID"].astype(str), df["CUSTOMER_ID"].astype(str)))
    with path.open("w") as f:
        for s in scores:
            label = truth[s["transaction_id"]]
            f.write(json.dumps({**{k: s[k] for k in ("transaction_id", "event_time", "score", "model_version")},
                                "customer_id": cards[s["transaction_id"]], "label": 1 - label if flip else label}) + "\n")


def _tick(capsys, stack, *flags) -> dict:
    assert cli.main(["controller", "--registry", str(stack["tmp"] / "registry"), "--once",
                     "--signing-key-file", str(stack["tmp"] / "trainer-key.json"), *flags]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def test_the_loop_refuses_a_worse_challenger_promotes_a_better_one_and_rolls_back_a_quality_drop(
        pubsub_emulator, loop_stack, capsys):
    stack, registry, first = loop_stack, loop_stack["registry"], loop_stack["first"]
    df, table, tmp = stack["df"], stack["table"], stack["tmp"]
    day = (df["TX_DATETIME"] - df["TX_DATETIME"].min().normalize()).dt.days.to_numpy()
    subscription = f"{stack['names']['monitoring']}-controller"
    trigger = ["--retrain-on-alarm", "--monitoring-subscription", subscription, "--project", pubsub_emulator.project,
               "--emulator-host", pubsub_emulator.host_port, *RETRAIN]

    scores = _replay(pubsub_emulator, stack, df[day < 16], MALFORMED)
    assert {s["model_version"] for s in scores} == {first}
    seen = table[table["TX_DATETIME"] < df["TX_DATETIME"].min().normalize() + np.timedelta64(16, "D")]
    shuffled = seen.assign(TX_FRAUD=np.random.default_rng(0).permutation(seen["TX_FRAUD"].to_numpy()))
    seen.to_parquet(tmp / "features.parquet")
    shuffled.to_parquet(tmp / "shuffled.parquet")

    # 1. An alarm; the retrain trains on shuffled labels: refused by the gate, audited.
    _alarm(pubsub_emulator, stack, first)
    step = _tick(capsys, stack, *trigger, "--retrain-source", str(tmp / "shuffled.parquet"))["trigger"]
    assert step["action"] == "retrain" and step["events"] == 1 and step["metrics"]["alarms"][0]["kind"] == "stability"
    worse = step["retrain"]
    assert not worse["shadow"] and not worse["promoted"] and worse["difference"]["average_precision"] < 0
    assert registry.events(worse["version"])[-1]["action"] == "refuse"
    assert registry.alias(CHALLENGER)["version"] is None and registry.alias()["version"] == first

    # 2. The next alarm's retrain on the real labels after the drift: better, so it goes to shadow.
    _alarm(pubsub_emulator, stack, first)
    step = _tick(capsys, stack, *trigger, "--retrain-source", str(tmp / "features.parquet"))["trigger"]
    better = step["retrain"]
    assert step["action"] == "retrain" and better["shadow"], step
    assert better["difference"]["average_precision"] > 0
    challenger = better["version"]
    assert registry.alias(CHALLENGER)["version"] == challenger
    assert [e["action"] for e in registry.events(challenger)] == ["register", "gate", "shadow"]

    # The predictor hot-loads the challenger and scores the next part in shadow; production still decides.
    _wait(lambda: _shadowing(stack["port"], tmp / "shadow", challenger), "the challenger loaded in shadow",
          stack["procs"])
    scores += (part := _replay(pubsub_emulator, stack, df[(day >= 16) & (day < 18)]))
    assert {s["model_version"] for s in part} == {first}

    # 3. Promoted after its shadow events; the predictor then serves it.
    promoted = _tick(capsys, stack, "--shadow-log", str(tmp / "shadow"), "--shadow-events", "100")
    assert (promoted["action"], promoted["version"], promoted["applied"]) == ("promote", challenger, True)
    assert promoted["metrics"]["shadow"]["events"] >= 100
    assert registry.alias()["version"] == challenger
    _wait(lambda: _probe_version(stack["port"]) == challenger, "the promoted model served", stack["procs"])
    scores += (part := _replay(pubsub_emulator, stack, df[day >= 18]))
    assert {s["model_version"] for s in part} == {challenger}

    # 4. Watched on its scores as served: with their true labels it keeps its AP bound (a dry run: it would be
    # confirmed); the injected quality drop — the same scores with their labels flipped — breaks it: rollback.
    watch = ["--min-ap", "0.6", "--min-scored", "50", "--min-labelled", "50"]
    _score_lines(tmp / "true.jsonl", df, part, flip=False)
    kept = _tick(capsys, stack, "--scores-from", str(tmp / "true.jsonl"), *watch, "--dry-run")
    assert kept["action"] == "confirm" and kept["metrics"]["live"]["labelled"] == len(part)
    _score_lines(tmp / "flipped.jsonl", df, part, flip=True)
    rolled = _tick(capsys, stack, "--scores-from", str(tmp / "flipped.jsonl"), *watch)
    assert (rolled["action"], rolled["applied"]) == ("rollback", True) and "below the bound 0.6" in rolled["reason"]
    assert registry.alias()["version"] == first
    event = registry.events(challenger)[-1]
    assert (event["action"], event["actor"], event["details"]["to"]) == ("rollback", "streamscore controller", first)
    _wait(lambda: _probe_version(stack["port"]) == first, "the first model served again", stack["procs"])

    # Nothing lost meanwhile: every transaction scored exactly once, the malformed ones dead-lettered.
    ids = [s["transaction_id"] for s in scores]
    assert len(ids) == len(set(ids)) == len(df)
    assert set(ids) == set(df["TRANSACTION_ID"].astype(str))
    subscriber = pubsub_emulator.subscriber_client()
    dead = pull_all(subscriber, pubsub_emulator.subscription_path(f"{stack['names']['dead']}-check"), len(MALFORMED),
                    timeout=60, settle=1)
    assert len(dead) == len(MALFORMED)
    # The audit trail of the whole loop, in order.
    actions = [(e["actor"].removeprefix("streamscore "), e["action"]) for e in registry.events()]
    assert actions == [("controller", "retrain"), ("retrain", "register"), ("retrain", "gate"), ("retrain", "refuse"),
                       ("controller", "retrain"), ("retrain", "register"), ("retrain", "gate"), ("retrain", "shadow"),
                       ("controller", "promote"), ("controller", "rollback")]
