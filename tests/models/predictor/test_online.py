"""The online (River) model in the predictor: parity with River, loading, hot swap, refusals, responses."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import numpy as np
import pytest

from models.online import OnlineLearner
from models.predictor.core import Model, Scorer, default_feature_names
from models.predictor.errors import ModelRejected
from models.predictor.lifecycle import ModelWatcher, RegistrySource, warm_up_rows
from models.predictor.online import (PARITY_TOLERANCE, LinearForm, OnlineModel, RiverForm, load_online_model,
                                     warm_up_online)
from models.registry import Registry
from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec

from .conftest import corrupt_version_file, synthetic

NAMES = default_feature_names()
SPEC = DEFAULT_SPEC.spec_hash
OTHER_SPEC = FeatureSpec(delay_days=3).spec_hash


def trained(n: int, seed: int = 0, model_factory=None) -> OnlineLearner:
    """An OnlineLearner after ``n`` labelled synthetic rows (the shapes of the 15 features)."""
    learner = OnlineLearner(NAMES) if model_factory is None else OnlineLearner(NAMES, model_factory)
    X, y = synthetic(max(n, 1), seed=seed)
    for row, label in zip(X[:n], y[:n]):
        learner.learn_one(row.tolist(), int(label))
    return learner


def probe_rows(seed: int = 5) -> np.ndarray:
    X, _ = synthetic(300, seed=seed)
    X[::7] *= 50.0  # far outside what was learned: logits beyond River's sigmoid clamp (+-30)
    X[1::9] = 0.0
    return np.vstack([X, warm_up_rows(len(NAMES))])


def river_scores(learner: OnlineLearner, X: np.ndarray) -> np.ndarray:
    return np.array([learner.predict_proba_one(row.tolist()) for row in X])


# --------------------------------------------------------------------------- the numpy form


@pytest.mark.parametrize("labels", [0, 1, 3, 200, 2000])
def test_numpy_form_equals_river_predict_proba_one(labels):
    learner = trained(labels, seed=labels)
    model = OnlineModel.from_learner(learner, "o1")
    assert isinstance(model.form, LinearForm)
    X = probe_rows()
    expected = river_scores(learner, X)
    got = model.predict(X)
    assert np.max(np.abs(got - expected)) <= PARITY_TOLERANCE
    if labels >= 200:  # the clamp region and ordinary probabilities are both exercised
        assert ((expected == 0.0) | (expected == 1.0)).any() and ((expected > 0.01) & (expected < 0.99)).any()


def test_numpy_form_handles_constant_features_and_unscaled_pipelines():
    from river import compose, linear_model, preprocessing

    learner = OnlineLearner(NAMES)
    X, y = synthetic(500, seed=2)
    X[:, 4] = 7.0  # zero variance: River scales it to 0
    for row, label in zip(X, y):
        learner.learn_one(row.tolist(), int(label))
    model = OnlineModel.from_learner(learner, "o1")
    assert isinstance(model.form, LinearForm)
    assert np.max(np.abs(model.predict(probe_rows()) - river_scores(learner, probe_rows()))) <= PARITY_TOLERANCE

    unscaled = trained(300, model_factory=lambda: compose.Pipeline(
        preprocessing.StandardScaler(with_std=False), linear_model.LogisticRegression(l2=0.01)))
    model = OnlineModel.from_learner(unscaled, "o2")
    assert isinstance(model.form, LinearForm)
    assert np.max(np.abs(model.predict(probe_rows()) - river_scores(unscaled, probe_rows()))) <= PARITY_TOLERANCE


def test_other_river_models_are_predicted_by_river():
    from river import compose, linear_model, preprocessing, tree

    for factory in (tree.HoeffdingTreeClassifier,
                    lambda: compose.Pipeline(preprocessing.MinMaxScaler(), linear_model.LogisticRegression())):
        learner = trained(300, model_factory=factory)
        model = OnlineModel.from_learner(learner, "o1")
        assert isinstance(model.form, RiverForm)
        X = probe_rows()
        assert np.array_equal(model.predict(X), river_scores(learner, X))


def test_predicting_does_not_change_the_learner():
    learner = trained(300)
    before = learner.snapshot()
    for fast in (True, False):
        OnlineModel.from_learner(learner, "o1", fast=fast).predict(probe_rows())
    assert learner.snapshot() == before


# --------------------------------------------------------------------------- warm-up and loading


class ConstantClassifier:
    """A River-like classifier that predicts ``value`` for every row."""

    def __init__(self, value: float):
        self.value = value

    def learn_one(self, x, y):
        pass

    def predict_proba_one(self, x):
        return {False: 1 - self.value, True: self.value}


@pytest.mark.parametrize("value, reason", [(float("nan"), "non-finite"), (1.5, r"outside \[0, 1\]")])
def test_warm_up_refuses_insane_online_models(value, reason):
    learner = OnlineLearner(NAMES, lambda: ConstantClassifier(value))
    with pytest.raises(ModelRejected, match=reason):
        warm_up_online(OnlineModel.from_learner(learner, "o1"), warm_up_rows(len(NAMES)))


def test_a_numpy_form_that_disagrees_with_river_is_replaced_by_river(monkeypatch):
    learner = trained(300)
    model = OnlineModel.from_learner(learner, "o1")
    original = LinearForm.predict
    monkeypatch.setattr(LinearForm, "predict", lambda self, X: original(self, X) * (1 - 1e-6))
    served = warm_up_online(model, warm_up_rows(len(NAMES)))
    assert isinstance(served.form, RiverForm) and served.version == "o1"


class FakeOnlineRegistry:
    """An online-model source double: snapshots by version, an online alias, registry-like failures."""

    def __init__(self):
        self.snapshots: dict[str, tuple[bytes, str, bool]] = {}
        self.online: str | None = None
        self.loads: list[str] = []

    def add(self, version: str, learner: OnlineLearner, spec_hash: str = SPEC, corrupt: bool = False) -> None:
        self.snapshots[version] = (learner.snapshot(), spec_hash, corrupt)

    def online_version(self):
        return self.online

    def load_online(self, version):
        self.loads.append(version)
        data, spec_hash, corrupt = self.snapshots[version]
        if corrupt:
            raise ValueError(f"version {version}: model.pkl does not match its recorded sha256")
        learner = OnlineLearner.restore(data)
        return learner, {"feature_spec_hash": spec_hash, "feature_names": list(learner.feature_names)}


def test_load_online_model_refuses_with_a_reason():
    source = FakeOnlineRegistry()
    source.add("good", trained(50))
    source.add("corrupt", trained(50), corrupt=True)
    source.add("other-spec", trained(50), spec_hash=OTHER_SPEC)
    source.add("other-names", OnlineLearner(NAMES[::-1]))
    kwargs = {"feature_names": NAMES, "spec_hash": SPEC, "rows": warm_up_rows(len(NAMES))}
    assert load_online_model(source, "good", **kwargs).version == "good"
    for version, reason in [("corrupt", "could not be loaded"), ("other-spec", "trained on feature spec"),
                            ("other-names", "expects features")]:
        with pytest.raises(ModelRejected, match=reason):
            load_online_model(source, version, **kwargs)


# --------------------------------------------------------------------------- the scorer and the watcher


def _scorer(booster, backend: str = "xgboost") -> Scorer:
    scorer = Scorer()
    scorer.swap(Model.from_booster(booster, "p1", NAMES, backend=backend))
    return scorer


def test_scorer_results_carry_online_scores_per_row_of_every_batch(booster):
    scorer = _scorer(booster)  # XGBoost: rows submitted together are predicted together
    learner = trained(500)
    X, _ = synthetic(12, seed=9)

    async def main():
        first = await scorer.submit(X[:1])
        scorer.swap_online(OnlineModel.from_learner(learner, "o7"))
        results = await asyncio.gather(*(scorer.submit(X[i:i + 1]) for i in range(12)), scorer.submit(X[3:6]))
        return first, results

    first, results = asyncio.run(main())
    scorer.close()
    assert first[2] is None and first[3] is None  # no online model yet: no online scores
    expected = river_scores(learner, X)
    for i, (scores, version, online, online_version) in enumerate(results[:12]):
        assert version == "p1" and online_version == "o7" and online.shape == (1,)
        assert abs(online[0] - expected[i]) <= PARITY_TOLERANCE
        assert abs(scores[0] - booster.inplace_predict(X[i:i + 1])[0]) <= 1e-6
    assert np.max(np.abs(results[12][2] - expected[3:6])) <= PARITY_TOLERANCE


def test_a_failing_online_model_never_costs_a_production_score(booster):
    class Broken:
        name = "broken"

        def predict(self, X):
            raise RuntimeError("boom")

    scorer = _scorer(booster)
    scorer.swap_online(OnlineModel("o1", None, Broken(), NAMES))
    X, _ = synthetic(3, seed=1)
    scores, version, online, online_version = scorer._predict_batch(X)
    assert version == "p1" and online is None and online_version is None and len(scores) == 3
    assert scorer.online_failures == 1


def test_swap_online_refuses_other_features(booster):
    scorer = _scorer(booster)
    with pytest.raises(ValueError, match="expects features"):
        scorer.swap_online(OnlineModel.from_learner(OnlineLearner(NAMES[::-1]), "o1"))


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


def test_the_online_watcher_follows_the_alias_and_refuses_bad_snapshots(booster):
    source = FakeOnlineRegistry()
    first, second = trained(100, seed=1), trained(400, seed=2)
    source.add("o1", first)
    source.add("o2", second)
    source.add("o3-corrupt", trained(50), corrupt=True)
    source.add("o4-other-spec", trained(50), spec_hash=OTHER_SPEC)
    scorer, clock, swaps = _scorer(booster), FakeClock(), []
    watcher = ModelWatcher(scorer, source, alias="online", clock=clock, on_swap=lambda m: swaps.append(m.version))
    X, _ = synthetic(4, seed=3)

    async def main():
        outcomes = [await watcher.check()]  # no online model yet: normal
        assert scorer.online_model is None and (await scorer.submit(X))[2] is None
        source.online = "o1"
        outcomes += [await watcher.check(), await watcher.check()]
        served = [await scorer.submit(X)]
        source.online = "o2"  # a newer snapshot: hot swap
        outcomes.append(await watcher.check())
        served.append(await scorer.submit(X))
        for bad in ("o3-corrupt", "o4-other-spec"):
            source.online = bad
            outcomes += [await watcher.check(), await watcher.check()]
            served.append(await scorer.submit(X))
        return outcomes, served

    outcomes, served = asyncio.run(main())
    scorer.close()
    assert outcomes == ["absent", "loaded", "unchanged", "loaded", "refused", "refused", "refused", "refused"]
    assert swaps == ["o1", "o2"] and scorer.online_model.version == "o2"
    assert source.loads.count("o3-corrupt") == 1  # refused versions are not reloaded at every poll
    assert "sha256" in watcher.refused["o3-corrupt"][0]
    assert "trained on feature spec" in watcher.refused["o4-other-spec"][0]
    assert scorer.model.version == "p1"  # the production model is not this watcher's business
    for result, learner, version in [(served[0], first, "o1"), (served[1], second, "o2"),
                                     (served[2], second, "o2"), (served[3], second, "o2")]:
        assert result[3] == version
        assert np.max(np.abs(result[2] - river_scores(learner, X))) <= PARITY_TOLERANCE


def test_an_online_watcher_needs_a_source_with_online_models(booster):
    from models.predictor.lifecycle import FileSource

    with pytest.raises(ValueError, match="has no online models"):
        ModelWatcher(_scorer(booster), FileSource("model.ubj"), alias="online")
    with pytest.raises(ValueError, match="alias must be one of"):
        ModelWatcher(_scorer(booster), FileSource("model.ubj"), alias="staging")


def _register_online(registry: Registry, learner: OnlineLearner, spec_hash: str = SPEC) -> str:
    return registry.register_online(learner.snapshot(), {"feature_names": list(NAMES)}, spec_hash=spec_hash)


def test_real_registry_snapshots_are_verified_before_they_serve(tmp_path, booster):
    registry = Registry.open(tmp_path)
    scorer = _scorer(booster)
    watcher = ModelWatcher(scorer, str(tmp_path), alias="online")
    assert isinstance(watcher.source, RegistrySource)

    async def main():
        outcomes = [await watcher.check()]
        good = _register_online(registry, trained(300))
        outcomes.append(await watcher.check())
        corrupt = _register_online(registry, trained(100))
        corrupt_version_file(tmp_path, corrupt, "model.pkl")
        outcomes.append(await watcher.check())
        other = _register_online(registry, trained(100), spec_hash=OTHER_SPEC)
        outcomes.append(await watcher.check())
        return outcomes, good, corrupt, other

    outcomes, good, corrupt, other = asyncio.run(main())
    scorer.close()
    assert outcomes == ["absent", "loaded", "refused", "refused"]
    assert scorer.online_model.version == good and scorer.online_model.form.name == "numpy"
    assert "does not match its recorded sha256" in watcher.refused[corrupt][0]
    assert "spec hash" in watcher.refused[other][0]


# --------------------------------------------------------------------------- over gRPC


def _request(row, tx="t") -> scorer_pb2.ScoreRequest:
    return scorer_pb2.ScoreRequest(transaction_id=tx, features=scorer_pb2.FeatureVector(values=list(row)))


def _wait_for_online(client, row, version: str | None, timeout: float = 15.0) -> scorer_pb2.ScoreResponse:
    deadline = time.monotonic() + timeout
    while True:
        response = client.Score(_request(row), timeout=5)
        if response.HasField("online_model_version") and response.online_model_version == version:
            return response
        assert time.monotonic() < deadline, f"the predictor never served online version {version}"
        time.sleep(0.02)


@pytest.fixture
def registry_with_production(tmp_path, booster):
    registry = Registry.open(tmp_path)
    version = registry.register(booster, {"feature_names": list(NAMES)}, spec_hash=SPEC)
    registry.promote(version)
    return registry, version


@pytest.mark.integration
def test_responses_carry_the_online_model_once_its_alias_appears(serve, registry_with_production, tmp_path):
    registry, production = registry_with_production
    server = serve(registry=str(tmp_path), allow_unsigned=True, poll_interval=0.05)
    client = scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))
    X, _ = synthetic(6, seed=4)
    deadline = time.monotonic() + 10
    while not server.server.scorer.ready:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    plain = client.Score(_request(X[0]), timeout=5)
    assert plain.model_version == production
    assert not plain.HasField("online_score") and not plain.HasField("online_model_version")

    learner = trained(400, seed=1)
    first = _register_online(registry, learner)
    response = _wait_for_online(client, X[0], first)
    assert abs(response.online_score - learner.predict_proba_one(X[0].tolist())) <= PARITY_TOLERANCE
    streamed = list(client.ScoreStream(iter([_request(row, f"s{i}") for i, row in enumerate(X)]), timeout=10))
    assert [r.transaction_id for r in streamed] == [f"s{i}" for i in range(len(X))]
    for row, r in zip(X, streamed):
        assert r.model_version == production and r.online_model_version == first
        assert abs(r.online_score - learner.predict_proba_one(row.tolist())) <= PARITY_TOLERANCE

    newer = trained(1500, seed=2)
    second = _register_online(registry, newer)  # the learner's next snapshot: hot swap
    response = _wait_for_online(client, X[1], second)
    assert abs(response.online_score - newer.predict_proba_one(X[1].tolist())) <= PARITY_TOLERANCE


@pytest.mark.integration
def test_bad_snapshots_are_refused_over_grpc_while_the_old_one_serves(serve, registry_with_production, tmp_path):
    registry, _ = registry_with_production
    server = serve(registry=str(tmp_path), allow_unsigned=True, poll_interval=3600)  # polls driven by the test: no race with corruption
    watcher = server.server.online_watcher
    client = scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))
    X, _ = synthetic(3, seed=6)
    learner = trained(300)
    good = _register_online(registry, learner)
    assert server.call(watcher.check()) == "loaded"
    corrupt = _register_online(registry, trained(50))
    corrupt_version_file(tmp_path, corrupt, "model.pkl")
    assert server.call(watcher.check()) == "refused"
    _register_online(registry, trained(50), spec_hash=OTHER_SPEC)
    assert server.call(watcher.check()) == "refused"
    for row in X:
        response = client.Score(_request(row), timeout=5)
        assert response.online_model_version == good
        assert abs(response.online_score - learner.predict_proba_one(row.tolist())) <= PARITY_TOLERANCE
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5).read().decode()
    assert f'streamscore_predictor_online_model_info{{form="numpy",version="{good}"}} 1.0' in text
    assert 'streamscore_predictor_online_reloads_total{result="loaded"} 1.0' in text
    assert 'streamscore_predictor_online_reloads_total{result="refused"} 2.0' in text
    assert 'streamscore_predictor_reloads_total{result="loaded"} 1.0' in text  # production: its own series


@pytest.mark.integration
def test_a_signed_predictor_refuses_forged_snapshots_without_unpickling_them(serve, booster, tmp_path):
    import pickle

    from models.signing import generate

    class Exploit:
        def __reduce__(self):
            return open, (str(tmp_path / "pwned"), "w")

    ring = generate("learner")
    signed = Registry.open(tmp_path / "reg", keys=ring)
    signed.promote(signed.register(booster, {"feature_names": list(NAMES)}, spec_hash=SPEC))
    server = serve(registry=str(tmp_path / "reg"), signing_keys=ring.public(), poll_interval=3600)
    watcher = server.server.online_watcher
    good = _register_online(signed, trained(300))
    assert server.call(watcher.check()) == "loaded"
    attacker = Registry.open(tmp_path / "reg")  # write access to the registry, no key
    attacker.register_online(pickle.dumps(Exploit()), {"feature_names": list(NAMES)}, spec_hash=SPEC)
    assert server.call(watcher.check()) == "refused"
    assert not (tmp_path / "pwned").exists()
    client = scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))
    assert client.Score(_request(synthetic(1, seed=1)[0][0]), timeout=5).online_model_version == good


@pytest.mark.integration
def test_no_online_serves_production_scores_only(serve, registry_with_production, tmp_path):
    registry, production = registry_with_production
    _register_online(registry, trained(300))
    server = serve(registry=str(tmp_path), allow_unsigned=True, poll_interval=0.05, online=False)
    assert server.server.online_watcher is None
    client = scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))
    deadline = time.monotonic() + 10
    while not server.server.scorer.ready:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # several polls
    response = client.Score(_request(synthetic(1)[0][0]), timeout=5)
    assert response.model_version == production and not response.HasField("online_score")


def test_serve_flag_turns_online_scoring_off(tmp_path):
    from models.predictor.server import build_parser, settings_from_args

    parser = build_parser()
    assert settings_from_args(parser.parse_args(["--registry", str(tmp_path), "--allow-unsigned"])).online is True
    assert settings_from_args(parser.parse_args(["--registry", str(tmp_path), "--no-online", "--allow-unsigned"])).online is False


def test_serve_online_store_flag(tmp_path):
    from models.predictor.server import build_parser, settings_from_args

    parser = build_parser()
    args = parser.parse_args(["--registry", str(tmp_path), "--allow-unsigned", "--online-store", "redis://127.0.0.1:1/0"])
    assert settings_from_args(args).online_store == "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="--online-store must start with"):
        settings_from_args(parser.parse_args(["--registry", str(tmp_path), "--allow-unsigned", "--online-store", "127.0.0.1:1"]))
