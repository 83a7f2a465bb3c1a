"""Model lifecycle: hot swap under load without a failed request; bad versions are refused."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from models.predictor.core import Model, Scorer, default_feature_names
from models.predictor.errors import ModelRejected
from models.predictor.lifecycle import ModelWatcher, RegistrySource, load_model, warm_up
from models.registry import Registry
from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec

from .conftest import corrupt_version_file, needs_cc, synthetic

NAMES = default_feature_names()


@dataclass
class Entry:
    booster: object
    spec_hash: str
    corrupt: bool = False
    feature_names: tuple[str, ...] = NAMES


class FakeRegistry:
    """A ModelSource double: versions, a production alias, and a corrupt-file failure like the registry's."""

    def __init__(self):
        self.versions: dict[str, Entry] = {}
        self.production: str | None = None
        self.loads: list[str] = []

    def add(self, version: str, booster, **kwargs) -> None:
        self.versions[version] = Entry(booster, kwargs.pop("spec_hash", DEFAULT_SPEC.spec_hash), **kwargs)

    def production_version(self) -> str | None:
        return self.production

    def load(self, version: str):
        self.loads.append(version)
        entry = self.versions[version]
        if entry.corrupt:
            raise ValueError(f"checksum mismatch for {version}/model.ubj: expected sha256 1f2e…, got 9a8b…")
        return entry.booster, {"spec_hash": entry.spec_hash, "feature_names": list(entry.feature_names)}


@pytest.fixture
def registry(booster, other_booster) -> FakeRegistry:
    reg = FakeRegistry()
    reg.add("v1", booster)
    reg.add("v2", other_booster)
    reg.add("v3-corrupt", booster, corrupt=True)
    reg.add("v4-other-spec", booster, spec_hash=FeatureSpec(delay_days=3).spec_hash)
    reg.add("v5-other-features", booster, feature_names=NAMES[::-1])
    return reg


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _watcher(registry, **kwargs) -> tuple[ModelWatcher, Scorer, list[str]]:
    scorer = Scorer()
    swaps: list[str] = []
    watcher = ModelWatcher(scorer, registry, poll_interval=0.01, on_swap=lambda m: swaps.append(m.version), **kwargs)
    return watcher, scorer, swaps


# --------------------------------------------------------------------------- watcher


def test_promote_and_rollback_follow_the_alias(registry):
    watcher, scorer, swaps = _watcher(registry)

    async def main():
        outcomes = [await watcher.check()]
        registry.production = "v1"
        outcomes += [await watcher.check(), await watcher.check()]
        registry.production = "v2"
        outcomes.append(await watcher.check())
        registry.production = "v1"  # rollback: the previous model is kept, no reload
        outcomes.append(await watcher.check())
        return outcomes

    assert asyncio.run(main()) == ["absent", "loaded", "unchanged", "loaded", "loaded"]
    assert swaps == ["v1", "v2", "v1"] and scorer.model.version == "v1"
    assert registry.loads == ["v1", "v2"]


@pytest.mark.parametrize("version, reason", [
    ("v3-corrupt", "checksum mismatch"),
    ("v4-other-spec", "was built for feature spec"),
    ("v5-other-features", "expects features"),
])
def test_bad_versions_are_refused_while_the_old_one_serves(registry, version, reason):
    clock = FakeClock()
    watcher, scorer, swaps = _watcher(registry, clock=clock, retry_refused=60)

    async def main():
        registry.production = "v1"
        await watcher.check()
        registry.production = version
        first = await watcher.check()
        again = await watcher.check()  # not reloaded: versions are immutable
        clock.now = 61
        later = await watcher.check()  # retried after retry_refused seconds
        return first, again, later

    assert asyncio.run(main()) == ("refused", "refused", "refused")
    assert scorer.model.version == "v1" and swaps == ["v1"]
    assert reason in watcher.refused[version][0]
    assert registry.loads.count(version) == 2
    assert scorer.score_one([1.0] * 15)[1] == "v1"


def test_registry_errors_do_not_stop_serving(registry):
    watcher, scorer, _ = _watcher(registry)

    def broken():
        raise OSError("registry unreachable")

    async def main():
        registry.production = "v1"
        await watcher.check()
        registry.production_version = broken
        return await watcher.check()

    assert asyncio.run(main()) == "error" and scorer.model.version == "v1"


class NaNBackend:
    name, inline = "nan", True

    def predict(self, X):
        return np.full(len(X), np.nan)


class OffBackend:
    name, inline = "off", True

    def __init__(self, booster):
        self.booster = booster

    def predict(self, X):
        return self.booster.inplace_predict(X) + 1e-3


def test_warm_up_refuses_insane_or_disagreeing_backends(booster):
    with pytest.raises(ModelRejected, match="non-finite"):
        warm_up(Model("x", NaNBackend(), NAMES), booster)
    with pytest.raises(ModelRejected, match="differs from XGBoost"):
        warm_up(Model("x", OffBackend(booster), NAMES), booster)


@needs_cc
def test_auto_backend_falls_back_to_xgboost_when_native_disagrees(registry, booster, monkeypatch):
    from models.predictor import backends

    monkeypatch.setattr(backends, "NativeTreesBackend", lambda b: OffBackend(b))
    model = load_model(registry, "v1", feature_names=NAMES, spec_hash=DEFAULT_SPEC.spec_hash, backend="auto")
    assert model.backend.name == "xgboost"
    with pytest.raises(ModelRejected, match="differs from XGBoost"):
        load_model(registry, "v1", feature_names=NAMES, spec_hash=DEFAULT_SPEC.spec_hash, backend="native")


@needs_cc
def test_load_model_warms_up_the_native_backend(registry):
    model = load_model(registry, "v1", feature_names=NAMES, spec_hash=DEFAULT_SPEC.spec_hash)
    assert model.version == "v1" and model.backend.name == "native"
    assert model.spec_hash == DEFAULT_SPEC.spec_hash


# --------------------------------------------------------------------------- the real registry


def _register(registry: Registry, booster, note: str, spec_hash: str = DEFAULT_SPEC.spec_hash) -> str:
    return registry.register(booster, {"feature_names": list(NAMES), "note": note}, spec_hash=spec_hash)


def _point_production_at(registry: Registry, version: str) -> None:
    """Move the alias without promote's checks: a version that rotted after it was promoted."""
    def change(current):
        state = json.loads(current)
        state["previous"].append(state["version"])
        return json.dumps({**state, "version": version}).encode()

    registry.storage.update("aliases/production.json", change)


@pytest.fixture
def real_registry(tmp_path, booster, other_booster):
    registry = Registry.open(tmp_path)
    versions = {"v1": _register(registry, booster, "v1"), "v2": _register(registry, other_booster, "v2"),
                "corrupt": _register(registry, booster, "soon corrupt"),
                "other-spec": _register(registry, booster, "other spec", FeatureSpec(delay_days=3).spec_hash)}
    corrupt_version_file(tmp_path, versions["corrupt"], "model.ubj")
    return registry, versions


def test_registry_versions_are_verified_before_they_serve(real_registry, tmp_path):
    registry, v = real_registry
    scorer = Scorer()
    watcher = ModelWatcher(scorer, str(tmp_path), poll_interval=0.01)
    assert isinstance(watcher.source, RegistrySource)

    async def main():
        outcomes = [await watcher.check()]
        registry.promote(v["v1"])
        outcomes.append(await watcher.check())
        registry.promote(v["v2"])
        outcomes.append(await watcher.check())
        _point_production_at(registry, v["corrupt"])
        outcomes.append(await watcher.check())
        registry.promote(v["other-spec"])  # promote checks files, not the feature spec
        outcomes.append(await watcher.check())
        return outcomes

    assert asyncio.run(main()) == ["absent", "loaded", "loaded", "refused", "refused"]
    assert scorer.model.version == v["v2"]
    assert "does not match its recorded sha256" in watcher.refused[v["corrupt"]][0]
    assert "trained on features with spec hash" in watcher.refused[v["other-spec"]][0]
    assert scorer.model.spec_hash == DEFAULT_SPEC.spec_hash


# --------------------------------------------------------------------------- under load


def _score_request(row) -> scorer_pb2.ScoreRequest:
    return scorer_pb2.ScoreRequest(transaction_id="t", features=scorer_pb2.FeatureVector(values=row))


@pytest.mark.integration
def test_hot_swap_under_continuous_load_fails_no_request(serve, real_registry, tmp_path):
    registry, v = real_registry
    registry.promote(v["v1"])
    server = serve(registry=str(tmp_path), allow_unsigned=True, poll_interval=0.05)
    client = scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))
    X, _ = synthetic(64, seed=3)
    stop = threading.Event()
    failures: list[str] = []
    per_client: list[list[str]] = [[], []]  # versions in the order each unary client saw them
    seen = per_client[0]

    def unary_load(seen: list[str]):
        i = 0
        while not stop.is_set():
            try:
                seen.append(client.Score(_score_request(X[i % 64]), timeout=5).model_version)
            except grpc.RpcError as exc:
                failures.append(f"Score: {exc.code().name} {exc.details()}")
            i += 1

    def requests():
        i = 0
        while not stop.is_set():
            yield _score_request(X[i % 64])
            i += 1
            if i % 16 == 0:
                time.sleep(0.001)

    def stream_load():
        try:
            for response in client.ScoreStream(requests(), timeout=60):
                if response.HasField("error"):
                    failures.append(f"ScoreStream message: {response.error.message}")
        except grpc.RpcError as exc:
            failures.append(f"ScoreStream: {exc.code().name} {exc.details()}")

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 10
        while not seen or seen[-1] != version:
            assert time.monotonic() < deadline, f"never served {version}; last {seen[-1:]}"
            time.sleep(0.01)

    deadline = time.monotonic() + 10
    while not server.server.scorer.ready:  # clients start once the server is SERVING
        assert time.monotonic() < deadline
        time.sleep(0.01)
    threads = [threading.Thread(target=unary_load, args=(s,)) for s in per_client]
    threads.append(threading.Thread(target=stream_load))
    for thread in threads:
        thread.start()
    try:
        wait_for(v["v1"])
        registry.promote(v["v2"])
        wait_for(v["v2"])
        _point_production_at(registry, v["corrupt"])
        time.sleep(0.3)  # several polls: refused, v2 keeps serving
        registry.promote(v["other-spec"])
        time.sleep(0.3)
        assert seen[-1] == v["v2"]
        assert {v["corrupt"], v["other-spec"]} <= set(server.server.watcher.refused)
        for _ in range(3):  # roll back other-spec -> corrupt -> v2 -> v1
            registry.rollback()
        wait_for(v["v1"])
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    for seen in per_client:
        assert len(seen) > 20
        switches = [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]
        assert switches == [v["v1"], v["v2"], v["v1"]]  # each client saw each swap once: no flapping
