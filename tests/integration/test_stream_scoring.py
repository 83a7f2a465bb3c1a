"""The streaming scoring job end to end: the real emulator, the real predictor, the real job.

The stack runs as production should: the predictor serves TLS (a self-signed certificate made
here) and requires a bearer token, the job speaks to it with the CA and the token file, and
the registry is signed (the trainer's and the learner's Ed25519 keys; the predictor holds
only their public halves).

Accounting (scored + dead-lettered = published, by id), no training/serving skew (every
streamed score equals the batch-featurised row's score), recovery when the predictor is
killed mid-replay, and the online model advancing while the predictor serves it: scores
published once the learner's snapshot is served carry its version, and their online scores
are that snapshot's predictions on the very features that were scored.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import xgboost as xgb

from models.predictor.tls_testing import self_signed
from streaming.io.events import SCHEMA_TRANSACTION
from streaming.features.batch import featurize_frame
from streaming.features.spec import DEFAULT_SPEC
from streaming.io.publish import LabelDelay, TopicPaths, make_publisher, publish_dataset
from streaming.io.pubsub_local import pull_all
from streaming.sim.simulator import simulate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAMES = list(DEFAULT_SPEC.names)
#: The learner writes a snapshot at least this often (seconds) while it has unwritten labels.
SNAPSHOT_SECONDS = 10
#: Bound on waiting for the learning side: on the local runner labels reach the learner tens of
#: seconds after they are published (each source pulls 10 messages per bundle).
LEARNING_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A subprocess in its own process group, with its output in a log file; killed on stop()."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def alive(self) -> None:
        assert self.proc.poll() is None, f"{self.log.name} exited:\n{self.log.read_text()[-3000:]}"


#: Set by the ``stack`` fixture: the CA file and token the test's own probes use.
TLS: dict = {}


def channel(port: int):
    import grpc

    return grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(TLS["ca"].read_bytes()))


def wait_serving(port: int, timeout: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with channel(port) as secure:
        stub = health_pb2_grpc.HealthStub(secure)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"predictor on port {port} not SERVING after {timeout} s")


def served_online_version(port: int) -> str | None:
    """The online model version the predictor answers with now (None: it serves none)."""
    import grpc

    from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc

    with channel(port) as secure:
        request = scorer_pb2.ScoreRequest(transaction_id="probe", features=scorer_pb2.FeatureVector(
            values=[0.0] * len(NAMES)))
        response = scorer_pb2_grpc.ScorerStub(secure).Score(
            request, timeout=5, metadata=(("authorization", f"Bearer {TLS['token']}"),))
    return response.online_model_version if response.HasField("online_model_version") else None


def wait_for(condition, timeout: float, what: str, job: Proc):
    """Poll ``condition()`` until it is truthy (returned) or ``timeout`` s pass (the job's log tail in the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        job.alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; job log tail:\n{job.log.read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def history():
    """Simulated traffic, its batch features and a production model trained on them."""
    df = simulate(customers=60, terminals=120, days=24, seed=21)
    table = featurize_frame(df)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 4, "eta": 0.3, "nthread": 1,
              "seed": 0, "base_score": 0.5}
    booster = xgb.train(params, xgb.DMatrix(table[NAMES].to_numpy(), label=table["TX_FRAUD"].to_numpy(),
                                            feature_names=NAMES), 20)
    return df, table, booster


@pytest.fixture
def stack(pubsub_emulator, tmp_path, history):
    """Signed registry with a production model, a TLS + token predictor and the scoring job with online learning."""
    from models.registry import Registry
    from models.signing import KeyRing, generate

    _, _, booster = history
    trainer, learner = generate("trainer-1"), generate("learner-1")
    # The job signs with its own key and verifies the trainer's versions (its warm start reads production's).
    KeyRing((*learner.keys, *trainer.public().keys), "learner-1").save(tmp_path / "learner-key.json")
    (tmp_path / "verify.json").write_bytes(KeyRing((*trainer.public().keys, *learner.public().keys)).to_json())
    cert, key = self_signed(tmp_path)
    TLS.update(ca=cert, token=uuid.uuid4().hex)
    (tmp_path / "token").write_text(TLS["token"] + "\n")
    registry = Registry.open(tmp_path / "registry", keys=trainer)
    version = registry.register(booster, {"feature_names": NAMES}, spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(version)
    prefix = "sc" + uuid.uuid4().hex[:8]  # topic names must start with a letter
    names = {k: f"{prefix}-{k}" for k in ("tx", "labels", "scores", "alerts", "dead", "monitoring")}
    subs = {f"{names['tx']}-job": names["tx"], f"{names['labels']}-job": names["labels"],
            f"{names['scores']}-check": names["scores"], f"{names['dead']}-check": names["dead"],
            f"{names['monitoring']}-check": names["monitoring"]}
    pubsub_emulator.ensure([*names.values()], subs)
    port = free_port()
    serve_args = ["-m", "streaming.cli", "serve", "--registry", str(tmp_path / "registry"), "--port", str(port),
                  "--host", "127.0.0.1", "--metrics-port", "0", "--poll-interval", "0.5",
                  "--signing-key-file", str(tmp_path / "verify.json"), "--tls-cert", str(cert), "--tls-key", str(key),
                  "--auth-token-file", str(tmp_path / "token")]
    predictor = Proc(serve_args, tmp_path / "serve.log")
    wait_serving(port)
    job = Proc(["-m", "streaming.job.pipeline", "--project", pubsub_emulator.project, "--emulator-host", pubsub_emulator.host_port,
                "--transactions-subscription", f"{names['tx']}-job", "--labels-subscription", f"{names['labels']}-job",
                "--scores-topic", names["scores"], "--alerts-topic", names["alerts"], "--dead-letter-topic", names["dead"],
                "--monitoring-topic", names["monitoring"], "--predictor", f"127.0.0.1:{port}",
                "--registry", str(tmp_path / "registry"), "--snapshot-every-labels", "200",
                "--signing-key-file", str(tmp_path / "learner-key.json"), "--predictor-tls-ca", str(cert),
                "--predictor-token-file", str(tmp_path / "token"),
                "--snapshot-every-seconds", str(SNAPSHOT_SECONDS)], tmp_path / "job.log")
    time.sleep(3)
    job.alive()
    state = {"names": names, "registry": Registry.open(tmp_path / "registry", keys=KeyRing.load(tmp_path / "verify.json")),
             "port": port, "predictor": predictor, "job": job,
             "serve_args": serve_args, "version": version, "tmp": tmp_path}
    yield state
    job.stop()
    state["predictor"].stop()


def replay(emulator, stack, df, malformed=(), during=None):
    names = stack["names"]
    publisher = make_publisher(emulator.host_port, ordering=True)
    topics = TopicPaths(emulator.topic_path(names["tx"]), emulator.topic_path(names["labels"]))
    for raw in malformed:
        publisher.publish(topics.transactions, raw, schema=SCHEMA_TRANSACTION).result()
    sent = 0

    def on_publish(kind, event):
        nonlocal sent
        sent += 1
        if during is not None:
            during(sent)

    publish_dataset(df, publisher, topics, rate=300, label_delay=LabelDelay(fraud_days=(1.0, 1.0), genuine_days=1.0),
                    order_by_customer=True, on_publish=on_publish)
    subscriber = emulator.subscriber_client()
    scores = pull_all(subscriber, emulator.subscription_path(f"{names['scores']}-check"), len(df), timeout=300, settle=2)
    dead = pull_all(subscriber, emulator.subscription_path(f"{names['dead']}-check"), len(malformed), timeout=60, settle=2)
    return [orjson.loads(m.data) for m in scores], [orjson.loads(m.data) for m in dead], None


def check_accounting(df, scores, dead, malformed_ids, label="replay"):
    ids = [s["transaction_id"] for s in scores]
    published = {str(i) for i in df["TRANSACTION_ID"]}
    print(f"\n{label}: published {len(published)}, scores {len(ids)}, duplicates {len(ids) - len(set(ids))}, "
          f"lost {len(published - set(ids))}, dead-lettered {len(dead)}")
    assert len(ids) == len(set(ids)), "a transaction was scored twice"
    assert sorted(ids, key=int) == [str(i) for i in df["TRANSACTION_ID"]], "scored set != published set"
    assert sorted(d["transaction_id"] for d in dead) == sorted(malformed_ids)


def check_no_skew(table, booster, scores):
    by_id = table.set_index(table["TRANSACTION_ID"].astype(str))
    x = by_id.loc[[s["transaction_id"] for s in scores], NAMES].to_numpy()
    expected = booster.predict(xgb.DMatrix(x, feature_names=NAMES))
    got = np.array([s["score"] for s in scores])
    assert np.max(np.abs(got - expected)) <= 1e-6
    streamed = np.array([[s["features"][n] for n in NAMES] for s in scores])
    assert np.allclose(streamed, x, rtol=1e-9, atol=0)


def online_versions(registry) -> set[str]:
    return {v for v in registry.versions() if registry.metadata(v).get("format") == "river-pickle"}


def test_replay_is_accounted_for_unskewed_and_learns_online(pubsub_emulator, stack, history):
    from models.online import average_precision

    df, table, booster = history
    first, rest = df.iloc[:1500], df.iloc[1500:]
    registry, port, job = stack["registry"], stack["port"], stack["job"]
    malformed = [b"{", orjson.dumps({"transaction_id": "m-1", "event_time": "2018-04-01T00:00:00Z",
                                      "customer_id": "c", "terminal_id": "t", "amount": float("1e308") * 10})]
    scores, dead, _ = replay(pubsub_emulator, stack, first, malformed)
    job.alive()
    check_accounting(first, scores, dead, ["", "m-1"])
    check_no_skew(table, booster, scores)
    assert {s["model_version"] for s in scores} == {stack["version"]}

    # Learning trails scoring: a label reaches the learner after its transaction was scored. Wait
    # until the learner has written a snapshot (within SNAPSHOT_SECONDS of its first label) and
    # the predictor serves one.
    wait_for(lambda: registry.alias("online")["version"], LEARNING_TIMEOUT, "the learner writing an online snapshot",
             job)
    served = wait_for(lambda: served_online_version(port), 60, "the predictor serving an online snapshot", job)
    assert served in online_versions(registry)

    # Transactions scored from now on carry the online model the predictor serves.
    later, dead_later, _ = replay(pubsub_emulator, stack, rest)
    check_accounting(rest, later, dead_later, [])
    check_no_skew(table, booster, later)
    carried = {s.get("online_model_version") for s in later}
    assert None not in carried and carried <= online_versions(registry), carried
    learners = {v: registry.load_online(v, expected_spec_hash=DEFAULT_SPEC.spec_hash)[1] for v in carried}
    worst = max(abs(s["online_score"] - learners[s["online_model_version"]].predict_proba_one(
        [s["features"][n] for n in NAMES])) for s in later)
    assert worst <= 1e-9, f"served online scores differ from their snapshots' predictions by {worst:.3g}"

    # The second part's labels advance the online model again, and the predictor swaps to it.
    advanced = wait_for(lambda: (lambda v: v if v not in (None, served) else None)(registry.alias("online")["version"]),
                        LEARNING_TIMEOUT, f"the online alias advancing past {served}", job)
    wait_for(lambda: served_online_version(port) == advanced, 60, f"the predictor serving {advanced}", job)

    subscriber = pubsub_emulator.subscriber_client()
    monitoring = [orjson.loads(m.data) for m in pull_all(
        subscriber, pubsub_emulator.subscription_path(f"{stack['names']['monitoring']}-check"), 1, timeout=60, settle=3)]
    snapshots = [m for m in monitoring if m["kind"] == "online_snapshot"]
    assert snapshots and {m["version"] for m in snapshots} <= online_versions(registry)
    last = registry.metadata(advanced)
    truth = dict(zip(df["TRANSACTION_ID"].astype(str), df["TX_FRAUD"].astype(int)))
    # The online_served events: every day whose scored transactions were all joined with their
    # label reports the AP that the scores topic's online scores give on that day.
    served_events = [m for m in monitoring if m["kind"] == "online_served"]
    assert served_events, "no online_served monitoring event"
    reported = {}
    for event in sorted(served_events, key=lambda e: e["labels_joined"]):
        reported.update(event["days"])
    by_day: dict[str, list] = {}
    for s in scores + later:
        by_day.setdefault(s["event_time"][:10], []).append(s)
    complete = 0
    for day, figures in reported.items():
        day_scores = by_day[day]
        online = [s for s in day_scores if s.get("online_score") is not None]
        if figures["transactions"] != len(day_scores) or not online:
            continue
        labels = [truth[s["transaction_id"]] for s in online]
        if 0 < sum(labels) < len(labels):
            assert abs(figures["online_served"]["average_precision"]
                       - average_precision([s["online_score"] for s in online], labels)) < 1e-12
            complete += 1
    assert complete >= 1, f"no complete served day to check in {sorted(reported)}"
    served_ap = average_precision([s["online_score"] for s in later], [truth[s["transaction_id"]] for s in later])
    print(f"\nonline: {len(online_versions(registry))} snapshots; {last['labels_learned']} of {len(df)} labels "
          f"learned; prequential AP {last['prequential']['average_precision']:.3f}; AP of the served online scores "
          f"on the last {len(later)} transactions {served_ap:.3f} (versions {sorted(carried)})")


def test_predictor_killed_mid_replay_loses_nothing(pubsub_emulator, stack, history):
    df, table, booster = history
    df = df.iloc[:1200]
    restarted = {}

    def chaos(sent: int):
        if sent == 600:
            stack["predictor"].stop(signal.SIGKILL)
            restarted["at"] = time.monotonic()
        if sent == 1400 and "proc" not in restarted:
            stack["predictor"] = restarted["proc"] = Proc(stack["serve_args"], stack["tmp"] / "serve2.log")

    scores, dead, _ = replay(pubsub_emulator, stack, df, during=chaos)
    assert "proc" in restarted
    stack["job"].alive()
    assert "UNAVAILABLE; retrying" in stack["job"].log.read_text(), "the outage never reached the job"
    check_accounting(df, scores, dead, [], label="predictor SIGKILL + restart under TLS and a token")
    check_no_skew(table, booster, scores)


REFUSED = "refused the job's credentials (UNAUTHENTICATED"


def test_a_wrong_token_holds_events_until_it_is_fixed(pubsub_emulator, stack, history):
    """The job's token goes wrong mid-replay (a botched rotation): nothing is dead-lettered or lost,
    the events wait, and once the token file is right again every one is scored exactly once."""
    df, table, booster = history
    df = df.iloc[:600]
    token_file = stack["tmp"] / "token"

    def rotation(sent: int):
        if sent == 50:
            token_file.write_text("not-the-token\n")
        if sent == 1000:
            # Fix the token only once the job has met the wrong one: on a loaded machine the job can
            # lag the producer by more than the publishing of these 950 messages.
            deadline = time.monotonic() + 120
            while REFUSED not in stack["job"].log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            token_file.write_text(TLS["token"] + "\n")

    scores, dead, _ = replay(pubsub_emulator, stack, df, during=rotation)
    stack["job"].alive()
    assert REFUSED in stack["job"].log.read_text(), \
        "the wrong token never reached the job"
    check_accounting(df, scores, dead, [], label="wrong token, then fixed")
    check_no_skew(table, booster, scores)


def test_emulator_restarted_between_replays_the_job_carries_on(pubsub_emulator, stack, history):
    """The Pub/Sub emulator is stopped and started again on the same port (its topics, subscriptions
    and unacked messages are in memory: they go with it, so they are recreated). The job must
    survive the outage and score everything published after it, once."""
    df, table, booster = history
    first, rest = df.iloc[:400], df.iloc[400:800]
    scores, dead, _ = replay(pubsub_emulator, stack, first)
    check_accounting(first, scores, dead, [], label="before the emulator restart")
    pubsub_emulator.port = pubsub_emulator._port  # come back where the job's clients look
    pubsub_emulator.stop()
    time.sleep(5)  # the job's pulls fail meanwhile
    stack["job"].alive()
    pubsub_emulator.start()
    names = stack["names"]
    pubsub_emulator.ensure([*names.values()], {
        f"{names['tx']}-job": names["tx"], f"{names['labels']}-job": names["labels"],
        f"{names['scores']}-check": names["scores"], f"{names['dead']}-check": names["dead"],
        f"{names['monitoring']}-check": names["monitoring"]})
    later, dead_later, _ = replay(pubsub_emulator, stack, rest)
    stack["job"].alive()
    check_accounting(rest, later, dead_later, [], label="after the emulator restart")
    check_no_skew(table, booster, later)


class Drain:
    """Pulls and acks the ``scores`` and ``dead-letter`` check subscriptions in a background thread
    while a test publishes (so little sits in the emulator's memory when it is restarted), riding
    out the emulator's outage."""

    def __init__(self, emulator, names):
        import threading

        self.subscriptions = {"scores": emulator.subscription_path(f"{names['scores']}-check"),
                              "dead": emulator.subscription_path(f"{names['dead']}-check")}
        self.emulator = emulator
        self.got: dict[str, list[dict]] = {"scores": [], "dead": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        subscriber = self.emulator.subscriber_client()
        while not self._stop.is_set():
            for kind, path in self.subscriptions.items():
                try:
                    response = subscriber.pull(request={"subscription": path, "max_messages": 1000}, timeout=1.0,
                                               retry=None)
                except Exception:  # the emulator is down or the subscription not recreated yet
                    time.sleep(0.2)
                    continue
                if response.received_messages:
                    self.got[kind].extend(orjson.loads(m.message.data) for m in response.received_messages)
                    try:
                        subscriber.acknowledge(request={"subscription": path,
                                                        "ack_ids": [m.ack_id for m in response.received_messages]})
                    except Exception:  # unacked: they come back, and show up as duplicates (counted)
                        pass

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def _publish_at_least_once(publisher, topic, messages) -> int:
    """An at-least-once producer: publish every message, wait, and publish the failed ones again until
    none fails (an outage fails some, or holds them in the client's retries); returns the publish calls."""
    pending, calls = list(messages), 0
    for _ in range(100):
        futures = [(m, publisher.publish(topic, m[0], **m[1])) for m in pending]
        calls += len(futures)
        pending = []
        for m, future in futures:
            try:
                future.result(timeout=60)
            except Exception:
                pending.append(m)
        if not pending:
            return calls
        time.sleep(0.5)
    raise AssertionError("the emulator never accepted the messages again")


def test_emulator_restarted_mid_publish_and_producer_duplicates_are_accounted_for(pubsub_emulator, stack, history):
    """The emulator is restarted while transactions are being published and scored (its topics,
    subscriptions and unconsumed messages go with it). The producer, at least once, republishes
    everything it published before the restart (it cannot know what was consumed) and what failed
    during the outage; later it also republishes a batch twice over. Counted: published / scored
    / lost / duplicates in ``scores``, and how each duplicate was handled (a delivery of an
    already-featurised transaction is dead-lettered as a duplicate; a score published twice by a
    retried write bundle is an identical re-score)."""
    import threading

    from streaming.io.datasets import iter_transactions
    from streaming.io.encoding import encode

    df, _, booster = history
    df = df.iloc[:600]
    names, job = stack["names"], stack["job"]
    messages = [encode(tx) for tx in iter_transactions(df)]
    topic = pubsub_emulator.topic_path(names["tx"])
    drain = Drain(pubsub_emulator, names)
    publisher = make_publisher(pubsub_emulator.host_port)
    restarted = threading.Event()

    def restart():
        pubsub_emulator.port = pubsub_emulator._port  # come back where the job's clients look
        pubsub_emulator.stop()
        time.sleep(3)
        pubsub_emulator.start()
        pubsub_emulator.ensure([*names.values()], {
            f"{names['tx']}-job": names["tx"], f"{names['labels']}-job": names["labels"],
            f"{names['scores']}-check": names["scores"], f"{names['dead']}-check": names["dead"],
            f"{names['monitoring']}-check": names["monitoring"]})
        restarted.set()

    attempts = 0
    restart_at, republish, chunk = 250, (400, 450), 25
    for start in range(0, len(messages), chunk):  # ~300 messages/s, in chunks of 25
        if start == chunk:  # the job is consuming (its start-up is over) before the traffic goes on
            wait_for(lambda: len(drain.got["scores"]) >= chunk, 120, "the job scoring the first messages", job)
        if start == restart_at:
            threading.Thread(target=restart, daemon=True).start()  # publishing goes on into the outage
        if start == restart_at + 100:  # the producer learns of the restart: everything before it may be gone
            assert restarted.wait(60), "the emulator did not come back"
            attempts += _publish_at_least_once(publisher, topic, messages[:restart_at])
        attempts += _publish_at_least_once(publisher, topic, messages[start:start + chunk])
        time.sleep(chunk / 300)
    # producer duplicates of messages surely consumed by now
    attempts += _publish_at_least_once(publisher, topic, messages[republish[0]:republish[1]])
    published = {str(i) for i in df["TRANSACTION_ID"]}

    def settled():
        seen = {s["transaction_id"] for s in drain.got["scores"]} | {d["transaction_id"] for d in drain.got["dead"]}
        dup_dead = sum(1 for d in drain.got["dead"] if "duplicate delivery" in d["error"])
        return published <= seen and dup_dead >= republish[1] - republish[0]

    wait_for(settled, 120, "every published transaction scored or dead-lettered", job)
    time.sleep(3)  # late duplicates show up too
    drain.stop()
    job.alive()
    scores, dead = drain.got["scores"], drain.got["dead"]
    ids = [s["transaction_id"] for s in scores]
    scored = set(ids)
    dup_dead = [d for d in dead if "duplicate delivery" in d["error"]]
    other_dead = [d for d in dead if d not in dup_dead]
    rescored = len(ids) - len(scored)
    by_id: dict[str, list[dict]] = {}
    for s in scores:
        by_id.setdefault(s["transaction_id"], []).append(s)
    identical = all(all(s["score"] == group[0]["score"] and s["features"] == group[0]["features"] for s in group)
                    for group in by_id.values())
    lost = published - scored - {d["transaction_id"] for d in dup_dead}
    # featurised and scored before the restart, its score unconsumed when the emulator's memory went:
    # its redelivery was then dead-lettered as a duplicate (on real Pub/Sub a published score stays)
    score_gone_with_emulator = published - scored - lost
    print(f"\nemulator restarted mid-publish: published {len(published)} transactions in {attempts} publish calls "
          f"(+{restart_at} republished after the restart, +{republish[1] - republish[0]} duplicates); "
          f"scored {len(scored)}, lost {len(lost)}, duplicates in scores {rescored} (identical re-scores: {identical}), "
          f"deliveries dead-lettered as duplicates {len(dup_dead)}, other dead letters {len(other_dead)}, "
          f"transactions whose score went with the emulator's memory {len(score_gone_with_emulator)}")
    assert not lost, f"transactions neither scored nor dead-lettered: {sorted(lost)[:10]}"
    assert not other_dead, other_dead[:3]
    assert identical, "a transaction was scored twice with different results"
    assert len(dup_dead) >= republish[1] - republish[0]  # the surely-consumed batch, once more each
    # Republished messages arrive out of event-time order, so their features are those of what had
    # arrived before them, not the batch table's: each score must still be the model's on its features.
    streamed = np.array([[s["features"][n] for n in NAMES] for s in scores])
    expected = booster.predict(xgb.DMatrix(streamed, feature_names=NAMES))
    assert np.max(np.abs(np.array([s["score"] for s in scores]) - expected)) <= 1e-6
