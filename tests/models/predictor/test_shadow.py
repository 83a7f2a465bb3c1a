"""Shadow scoring: the challenger is scored next to production on every path, logged and
exported, and never the decision; it follows the registry's challenger alias."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import grpc
import numpy as np
import pytest

from models.predictor.core import Model, Scorer, default_feature_names
from models.predictor.shadow import ShadowScorer, ShadowSettings
from models.registry import CHALLENGER, Registry
from protos.kserve.v2 import grpc_predict_v2_pb2 as kpb
from protos.kserve.v2 import grpc_predict_v2_pb2_grpc as kgrpc
from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc
from streaming.features.spec import DEFAULT_SPEC

from .conftest import synthetic

NAMES = default_feature_names()


def _models(booster, other_booster) -> tuple[Model, Model]:
    return (Model.from_booster(booster, "v1", NAMES, backend="xgboost"),
            Model.from_booster(other_booster, "v2", NAMES, backend="xgboost"))


def _log_lines(directory) -> list[dict]:
    return [json.loads(line) for path in sorted(directory.glob("shadow-*.jsonl*")) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- the shadow scorer alone


def test_shadow_scores_what_production_scored_later_in_one_batch(booster, other_booster, tmp_path):
    production, challenger = _models(booster, other_booster)
    shadow = ShadowScorer(len(NAMES), ShadowSettings(log_dir=tmp_path, flush_seconds=0.01), clock=lambda: 100.0)
    shadow.swap(challenger)
    X, _ = synthetic(20, seed=4)
    scores = production.predict(X)

    async def main():
        for i in range(len(X)):
            shadow.observe(X[i].tolist(), f"t-{i}", float(scores[i]), "v1")
        queued = len(shadow._pending)  # nothing scored inside the requests' own turn
        await asyncio.sleep(0.05)
        return queued

    assert asyncio.run(main()) == 20
    lines = _log_lines(tmp_path)
    assert [line["transaction_id"] for line in lines] == [f"t-{i}" for i in range(20)]
    np.testing.assert_allclose([line["shadow_score"] for line in lines], challenger.predict(X), rtol=0, atol=1e-12)
    assert [line["production_score"] for line in lines] == scores.tolist()
    assert {(line["shadow_version"], line["production_version"], line["at"]) for line in lines} == {("v2", "v1", 100.0)}
    stats = shadow.stats
    assert stats.events == {"v2": 20}
    assert stats.alerts["v2"] == int((challenger.predict(X) > 0.5).sum())
    assert stats.disagreements["v2"] == int(((challenger.predict(X) > 0.5) != (scores > 0.5)).sum())
    assert stats.histogram("shadow", "v2").counts[-1] + sum(stats.histogram("shadow", "v2").counts[:-1]) == 20


def test_no_shadow_work_without_a_challenger_or_when_it_is_production(booster, other_booster):
    production, challenger = _models(booster, other_booster)
    shadow = ShadowScorer(len(NAMES))
    shadow.observe([0.0] * len(NAMES), "t", 0.1, "v1")  # no challenger loaded
    shadow.swap(production)
    shadow.observe([0.0] * len(NAMES), "t", 0.1, "v1")  # the challenger is production itself
    assert shadow._pending == [] and shadow.stats.events == {}


def test_a_full_queue_drops_shadow_work_and_a_failing_challenger_is_counted(booster, other_booster):
    production, challenger = _models(booster, other_booster)
    shadow = ShadowScorer(len(NAMES), ShadowSettings(batch_rows=2, max_pending=2, flush_seconds=1.0))

    class Broken:
        name, inline = "broken", True

        def predict(self, X):
            raise RuntimeError("boom")

    async def main():
        shadow.swap(challenger)
        for i in range(5):  # the queue holds 2: three are dropped before the loop's next turn
            shadow.observe([0.0] * len(NAMES), f"t-{i}", 0.1, "v1")
        dropped = shadow.stats.dropped
        shadow.swap(Model("v3", Broken(), NAMES))
        await asyncio.sleep(0)  # the full batch is scored now: the challenger raises, nothing propagates
        return dropped

    assert asyncio.run(main()) == 3
    assert shadow.stats.failures == 1 and shadow.stats.events == {}


def test_settings_name_what_is_wrong():
    with pytest.raises(ValueError, match="alert_threshold must be in"):
        ShadowSettings(alert_threshold=1.5)
    with pytest.raises(ValueError, match="log_max_bytes must be >= 4096"):
        ShadowSettings(log_max_bytes=10)


def test_the_log_is_bounded(booster, other_booster, tmp_path):
    _, challenger = _models(booster, other_booster)
    shadow = ShadowScorer(len(NAMES), ShadowSettings(log_dir=tmp_path, log_max_bytes=4096, batch_rows=1))
    shadow.swap(challenger)
    for i in range(200):  # no event loop: each event is scored at once
        shadow.observe([1.0] * len(NAMES), f"t-{i}", 0.1, "v1")
    files = sorted(tmp_path.glob("shadow-*"))
    assert len(files) == 2 and all(f.stat().st_size <= 4096 for f in files)
    assert shadow.stats.events["v2"] == 200


# --------------------------------------------------------------------------- in the server


@pytest.fixture
def shadow_registry(tmp_path, booster, other_booster):
    registry = Registry.open(tmp_path / "registry")
    meta = {"feature_names": list(NAMES)}
    v1 = registry.register(booster, {**meta, "note": "production"}, spec_hash=DEFAULT_SPEC.spec_hash)
    v2 = registry.register(other_booster, {**meta, "note": "challenger"}, spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(v1)
    registry.promote(v2, CHALLENGER)
    return registry, v1, v2


def _wait(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["auto", "xgboost"])
def test_the_server_shadows_every_path_and_never_returns_the_shadow(serve, shadow_registry, tmp_path, booster,
                                                                    other_booster, backend):
    registry, v1, v2 = shadow_registry
    log_dir = tmp_path / "shadow-log"
    server = serve(registry=str(tmp_path / "registry"), allow_unsigned=True, poll_interval=0.05, backend=backend,
                   shadow_settings=ShadowSettings(log_dir=log_dir))
    scorer = server.server.scorer
    _wait(lambda: scorer.ready and scorer.shadow.model is not None, "both models")
    channel = grpc.insecure_channel(server.target)
    client, kserve = scorer_pb2_grpc.ScorerStub(channel), kgrpc.GRPCInferenceServiceStub(channel)
    X, _ = synthetic(12, seed=7)
    expected, shadow_expected = booster.inplace_predict(X), other_booster.inplace_predict(X)

    responses = [client.Score(scorer_pb2.ScoreRequest(transaction_id=f"u-{i}",
                                                      features=scorer_pb2.FeatureVector(values=X[i])))
                 for i in range(4)]
    order = list(reversed(NAMES))  # named features, in another order
    responses.append(client.Score(scorer_pb2.ScoreRequest(
        transaction_id="u-4", features=scorer_pb2.FeatureVector(values=X[4][::-1], names=order))))
    responses += list(client.ScoreStream(iter(
        [scorer_pb2.ScoreRequest(transaction_id=f"s-{i}", features=scorer_pb2.FeatureVector(values=X[i]))
         for i in range(5, 10)])))
    infer = kserve.ModelInfer(kpb.ModelInferRequest(model_name="production", id="k", inputs=[
        kpb.ModelInferRequest.InferInputTensor(name="features", datatype="FP64", shape=[2, len(NAMES)],
                                               contents=kpb.InferTensorContents(fp64_contents=X[10:12].ravel()))]))

    # The decision is production's: its score and its version, on every path.
    assert [r.model_version for r in responses] == [v1] * 10 and infer.model_version == v1
    np.testing.assert_allclose([r.score for r in responses], expected[:10], atol=1e-6)
    np.testing.assert_allclose(infer.outputs[0].contents.fp64_contents, expected[10:], atol=1e-6)
    _wait(lambda: scorer.shadow.stats.events.get(v2, 0) == 12, "12 shadow events")
    server.call(asyncio.sleep(0))  # the log is written by the flush, on the server's loop
    lines = {line["transaction_id"]: line for line in _log_lines(log_dir)}
    ids = [f"u-{i}" for i in range(5)] + [f"s-{i}" for i in range(5, 10)]
    for i, tid in enumerate(ids):
        assert lines[tid]["shadow_version"] == v2 and lines[tid]["production_version"] == v1
        assert lines[tid]["shadow_score"] == pytest.approx(float(shadow_expected[i]), abs=1e-6)
        assert lines[tid]["production_score"] == pytest.approx(float(expected[i]), abs=1e-6)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
    assert f'streamscore_predictor_shadow_events_total{{version="{v2}"}} 12.0' in metrics
    assert f'streamscore_predictor_shadow_model_info{{version="{v2}"}} 1.0' in metrics
    assert f'streamscore_predictor_shadow_score_count{{role="production",version="{v1}"}} 12.0' in metrics

    # The alias is cleared (promoted or retired): the shadow is unloaded, and scoring goes on.
    registry.clear(CHALLENGER)
    _wait(lambda: scorer.shadow.model is None, "the shadow unloaded")
    assert client.Score(scorer_pb2.ScoreRequest(features=scorer_pb2.FeatureVector(values=X[0]))).model_version == v1
    # A new challenger is hot-loaded into the shadow.
    registry.promote(v1, CHALLENGER)  # the production version itself: loaded, but nothing to shadow
    _wait(lambda: scorer.shadow.model is not None, "the shadow reloaded")
    client.Score(scorer_pb2.ScoreRequest(features=scorer_pb2.FeatureVector(values=X[0])))
    assert v1 not in scorer.shadow.stats.events


def test_no_shadow_flag_and_a_shadow_model_file(tmp_path, booster):
    from models.predictor.server import build_parser, settings_from_args

    model = tmp_path / "m.json"
    booster.save_model(str(model))
    args = build_parser().parse_args(["--model-file", str(model), "--shadow-model-file", str(model),
                                      "--shadow-log", str(tmp_path), "--shadow-alert-threshold", "0.3"])
    settings = settings_from_args(args)
    assert settings.shadow_model_file == model and settings.shadow_settings.alert_threshold == 0.3
    args = build_parser().parse_args(["--model-file", str(model), "--no-shadow", "--shadow-model-file", str(model)])
    with pytest.raises(ValueError, match="contradict"):
        settings_from_args(args)
    args = build_parser().parse_args(["--model-file", str(model), "--shadow-alert-threshold", "2"])
    with pytest.raises(ValueError, match="alert_threshold must be in"):
        settings_from_args(args)


@pytest.mark.integration
def test_the_controller_promotes_the_shadow_into_a_live_predictor_and_rolls_it_back(serve, shadow_registry, tmp_path):
    """The predictor's shadow log drives the controller; its alias moves are hot-reloaded by the predictor."""
    import pandas as pd

    from models.cli_controller import tick
    from models.controller import Bounds, ControllerConfig
    from models.controller_inputs import ExampleLogRows, ShadowLogReader

    registry, v1, v2 = shadow_registry
    log_dir, example_log = tmp_path / "shadow-log", tmp_path / "example-log"
    server = serve(registry=str(tmp_path / "registry"), allow_unsigned=True, poll_interval=0.05,
                   shadow_settings=ShadowSettings(log_dir=log_dir))
    scorer = server.server.scorer
    _wait(lambda: scorer.ready and scorer.shadow.model is not None, "both models")
    client = scorer_pb2_grpc.ScorerStub(grpc.insecure_channel(server.target))
    X, y = synthetic(300, seed=11)
    config = ControllerConfig(shadow_events=200, min_scored=100, min_labelled=100,
                              bounds=Bounds(min_average_precision=0.5))

    def score(i):
        return client.Score(scorer_pb2.ScoreRequest(transaction_id=f"t-{i}",
                                                    features=scorer_pb2.FeatureVector(values=X[i])))

    assert {score(i).model_version for i in range(150)} == {v1}
    _wait(lambda: scorer.shadow.stats.events.get(v2, 0) == 150, "150 shadow events")
    assert tick(registry, config, ShadowLogReader(log_dir), [])["action"] == "wait"
    assert {score(i).model_version for i in range(150, 300)} == {v1}
    _wait(lambda: scorer.shadow.stats.events.get(v2, 0) == 300, "300 shadow events")
    assert tick(registry, config, ShadowLogReader(log_dir), [])["action"] == "promote"
    _wait(lambda: scorer.model.version == v2 and scorer.shadow.model is None, "the promotion hot-reloaded")
    served = [score(i) for i in range(300)]
    assert {r.model_version for r in served} == {v2}

    # The labels of what v2 served arrive and v2's scores carry no information about them (the injected drop).
    day = example_log / "day=2018-07-01"
    day.mkdir(parents=True)
    pd.DataFrame({"TRANSACTION_ID": [f"t-{i}" for i in range(300)],
                  "TX_DATETIME": pd.Timestamp("2018-07-01") + pd.to_timedelta(np.arange(300), unit="min"),
                  "CUSTOMER_ID": [f"c-{i % 40}" for i in range(300)], "TX_FRAUD": y, "label_status": "confirmed",
                  "score": np.random.default_rng(0).permutation([r.score for r in served]),
                  "model_version": v2}).to_parquet(day / "part-0.parquet")
    outcome = tick(registry, config, ShadowLogReader(log_dir), [ExampleLogRows(example_log)])
    assert outcome["action"] == "rollback" and outcome["applied"]
    _wait(lambda: scorer.model.version == v1, "the rollback hot-reloaded")
    assert score(0).model_version == v1
    assert [e["action"] for e in registry.events(v2) if e["actor"] == "streamscore controller"] == ["promote", "rollback"]
