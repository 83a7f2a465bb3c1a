"""The scoring core: backends agree with XGBoost, inputs are checked, batching adds no wait."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import xgboost as xgb

from models.predictor.backends import NativeTreesBackend, XGBoostBackend, make_backend
from models.predictor.core import MicroBatcher, Model, Scorer, default_feature_names
from models.predictor.errors import InvalidArgument, ModelNotFound, NotReady, Overloaded, Status

from .conftest import needs_cc, synthetic

NAMES = default_feature_names()


def _probe_rows(n: int = 3000, seed: int = 7) -> np.ndarray:
    X, _ = synthetic(n, seed)
    X[::5, 3] = np.nan  # missing values follow each split's default direction
    X[1::7, 0] *= 1e4   # beyond every threshold
    X[2::11] = 0.0
    return X


# --------------------------------------------------------------------------- backends


@needs_cc
@pytest.mark.parametrize("params, rounds", [
    ({"objective": "binary:logistic", "max_depth": 4}, 20),
    ({"objective": "binary:logistic", "max_depth": 8, "eta": 0.1}, 60),
    ({"objective": "reg:squarederror", "max_depth": 5}, 15),
    ({"objective": "binary:logistic", "max_depth": 3, "base_score": 0.1}, 10),
])
def test_native_backend_matches_xgboost(params, rounds):
    X, y = synthetic(2000, seed=3)
    booster = xgb.train({"nthread": 1, **params}, xgb.DMatrix(X, y), rounds)
    probe = _probe_rows()
    native = NativeTreesBackend(booster).predict(probe)
    reference = XGBoostBackend(booster).predict(probe)
    assert native.shape == reference.shape == (len(probe),)
    assert np.max(np.abs(native - reference)) <= 1e-6
    backend = NativeTreesBackend(booster)
    single = np.array([backend.predict(probe[i:i + 1])[0] for i in range(20)])
    assert np.max(np.abs(single - reference[:20])) <= 1e-6
    for n in range(2, 7):  # a few rows are walked one row (and several trees) at a time, more rows by blocks
        assert np.max(np.abs(backend.predict(probe[:n]) - reference[:n])) <= 1e-6
    read_only = np.frombuffer(np.ascontiguousarray(probe[:3]).tobytes()).reshape(3, -1)  # e.g. KServe raw input
    assert np.max(np.abs(backend.predict(read_only) - reference[:3])) <= 1e-6
    assert backend.predict(probe[:0]).shape == (0,)


@needs_cc
def test_native_backend_matches_after_early_stopping():
    X, y = synthetic(2000, seed=4)
    train, valid = xgb.DMatrix(X[:1500], y[:1500]), xgb.DMatrix(X[1500:], y[1500:])
    booster = xgb.train({"objective": "binary:logistic", "eta": 0.5, "nthread": 1}, train, 200,
                        evals=[(valid, "valid")], early_stopping_rounds=3, verbose_eval=False)
    probe = _probe_rows(500)
    assert np.max(np.abs(NativeTreesBackend(booster).predict(probe) - XGBoostBackend(booster).predict(probe))) <= 1e-6


@needs_cc
def test_auto_backend_falls_back_to_xgboost_for_unsupported_models():
    X, y = synthetic(300)
    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "nthread": 1}, xgb.DMatrix(X, y + (X[:, 1] > 0)), 3)
    assert isinstance(make_backend(multi, "auto"), XGBoostBackend)
    with pytest.raises(Exception, match="objective"):
        make_backend(multi, "native")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_backend(multi, "gpu")


def test_xgboost_backend_predicts_with_one_thread(booster):
    backend = XGBoostBackend(booster.copy())
    config = json.loads(backend._booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == "1"


@needs_cc
def test_native_backend_scores_one_row_of_floats_like_a_matrix(booster):
    backend = NativeTreesBackend(booster)
    probe = _probe_rows(400)
    finite = probe[np.isfinite(probe).all(axis=1)]
    matrix = backend.predict(finite)
    one = np.array([backend.predict_values(row.tolist()) for row in finite])
    assert np.array_equal(one, matrix)  # the same walk: the same numbers
    assert np.max(np.abs(one - XGBoostBackend(booster).predict(finite))) <= 1e-6
    from protos.streamscore.v1 import scorer_pb2  # the servicer hands over a request's repeated field

    assert backend.predict_values(scorer_pb2.FeatureVector(values=finite[0]).values) == matrix[0]
    for bad in (float("nan"), float("inf"), float("-inf")):
        row = finite[0].tolist()
        row[7] = bad
        assert np.isnan(backend.predict_values(row))  # refused in C: the caller looks closer
    with pytest.raises(ValueError, match="expected 15 values"):
        backend.predict_values([0.0] * 3)


# --------------------------------------------------------------------------- scorer


def test_score_one_and_many_match_the_booster(make_scorer, booster):
    scorer = make_scorer("v7")
    X, _ = synthetic(50, seed=9)
    expected = booster.inplace_predict(X)
    score, version = scorer.score_one(X[0].tolist())
    assert version == "v7" and score == pytest.approx(float(expected[0]), abs=1e-6)
    scores, version = scorer.score_many(X)
    assert version == "v7" and np.allclose(scores, expected, atol=1e-6)


def test_score_now_scores_a_lone_row_as_score_one_does(make_scorer):
    batches = []
    scorer = make_scorer("v3", on_batch=batches.append)
    X, _ = synthetic(30, seed=4)
    for row in X:
        assert scorer.score_now(row.tolist()) == scorer.score_one(row.tolist())
    assert scorer.score_now(X[0].tolist(), "production") == scorer.score_now(X[0].tolist(), "")
    assert batches == [1] * 32  # each one a prediction of one row, as the batcher counts them


def test_score_now_leaves_other_requests_to_the_general_path(make_scorer, booster):
    scorer = make_scorer()
    row = synthetic(1, seed=4)[0][0].tolist()
    assert scorer.score_now(row) is not None
    assert scorer.score_now(row[:14]) is None  # wrong length: features_row says so
    assert scorer.score_now(row[:4] + [float("nan")] + row[5:]) is None  # not finite: features_row names it
    assert scorer.score_now(row, "fraud-v9") is None  # another model: resolve says so
    assert make_scorer(backend="xgboost").score_now(row) is None  # predicted off the loop, batched
    assert Scorer().score_now(row) is None  # no model yet
    scorer.batcher._busy = True  # rows are queued: they go first
    assert scorer.score_now(row) is None
    scorer.batcher._busy = False
    from models.online import OnlineLearner
    from models.predictor.online import OnlineModel

    scorer.swap_online(OnlineModel.from_learner(OnlineLearner(NAMES), "o1"))
    assert scorer.score_now(row) is None  # online scores come from the batch path
    scorer.swap_online(None)
    scorer.swap(Model.from_booster(booster, "v2", NAMES, backend="xgboost"))
    assert scorer.score_now(row) is None  # the swap took the lone-row path with it
    scorer.swap(Model.from_booster(booster, "v4", NAMES, backend="native"))
    assert scorer.score_now(row)[1] == "v4"


def test_named_features_are_matched_by_name(make_scorer):
    scorer = make_scorer()
    X, _ = synthetic(1, seed=2)
    order = np.random.default_rng(0).permutation(len(NAMES))
    named, _ = scorer.score_one(X[0][order].tolist(), [NAMES[i] for i in order])
    plain, _ = scorer.score_one(X[0].tolist())
    assert named == plain


@pytest.mark.parametrize("values, names, match", [
    ([1.0] * 3, (), r"features\.values must have 15 values \(TX_AMOUNT, .*\), got 3"),
    ([1.0] * 4 + [float("nan")] + [1.0] * 10, (), r"features\.values\[4\] \(CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW\) must be "
                                                   r"a finite number, got NaN"),
    ([1.0] * 14 + [float("-inf")], (), r"features\.values\[14\] .* got -Infinity"),
    ([1.0] * 15, NAMES[:14], r"features\.names must have one name per value \(15\), got 14"),
    ([1.0] * 15, ("BOGUS",) + NAMES[1:], r'features\.names\[0\] "BOGUS" is not a model feature'),
    ([1.0] * 15, (NAMES[1],) + NAMES[1:], r'features\.names\[1\] "TX_DURING_WEEKEND" is repeated'),
])
def test_bad_features_are_refused_naming_the_field(make_scorer, values, names, match):
    with pytest.raises(InvalidArgument, match=match) as info:
        make_scorer().score_one(values, names)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert info.value.field.startswith("features.")


def test_bad_matrices_are_refused(make_scorer):
    scorer = make_scorer()
    with pytest.raises(InvalidArgument, match=r"must have shape \[N, 15\]"):
        scorer.score_many(np.zeros((2, 14)))
    bad = np.zeros((3, 15))
    bad[2, 5] = np.inf
    with pytest.raises(InvalidArgument, match=r"row 2, column 5 \(CUSTOMER_ID_NB_TX_7DAY_WINDOW\) .* got Infinity"):
        scorer.score_many(bad)


def test_unknown_model_and_no_model(make_scorer):
    with pytest.raises(ModelNotFound, match='model_name "fraud-v9" is not served here: expected "production"'):
        make_scorer().resolve("fraud-v9")
    assert make_scorer(name="fraud").resolve("fraud").version == "v1"
    with pytest.raises(NotReady, match="no model is loaded yet"):
        Scorer().score_one([0.0] * 15)


def test_swap_refuses_a_model_with_other_features(booster):
    scorer = Scorer()
    with pytest.raises(ValueError, match="expects features"):
        scorer.swap(Model.from_booster(booster, "v1", NAMES[::-1]))


def test_scorer_conformance_does_not_mutate_and_is_deterministic(make_scorer):
    scorer = make_scorer()
    X, _ = synthetic(20, seed=5)
    before = X.copy()
    first, _ = scorer.score_many(X)
    second, _ = make_scorer().score_many(X[::-1])
    assert np.array_equal(X, before)
    assert np.array_equal(first, second[::-1])  # order-independent, deterministic


def test_core_has_no_grpc_import():
    code = ("import sys, models.predictor.core, models.predictor.backends, models.predictor.errors; "
            "sys.exit(1 if 'grpc' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- micro-batching


class CountingPredict:
    def __init__(self, block: threading.Event | None = None):
        self.calls: list[int] = []
        self.block = block

    def __call__(self, X):
        self.calls.append(len(X))
        if self.block is not None:
            self.block.wait(5)
        return X[:, 0] * 2, "v1"


def test_a_lone_request_is_predicted_at_once():
    for offload in (False, True):
        predict = CountingPredict()

        async def main():
            batcher = MicroBatcher(predict, offload=lambda: offload)
            future = batcher.submit(np.ones((1, 2)))
            result = await asyncio.wait_for(future, 1)  # no timer, no wait for company
            batcher.close()
            return result

        scores, version = asyncio.run(main())
        assert scores.tolist() == [2.0] and version == "v1" and predict.calls == [1]


def test_cheap_backends_predict_in_the_caller():
    predict = CountingPredict()

    async def main():
        batcher = MicroBatcher(predict)  # offload() false: native trees
        futures = [batcher.submit(np.full((1, 2), v)) for v in range(3)]
        assert all(f.done() for f in futures)  # no queue, no event-loop turn
        return [f.result()[0][0] for f in futures]

    assert asyncio.run(main()) == [0.0, 2.0, 4.0] and predict.calls == [1, 1, 1]


def test_requests_arriving_together_are_predicted_together():
    predict = CountingPredict()

    async def one(batcher, value):
        scores, _ = await batcher.submit(np.full((1, 2), value))
        return scores[0]

    async def main():
        batcher = MicroBatcher(predict, offload=lambda: True)
        results = await asyncio.gather(*(one(batcher, v) for v in range(10)))
        batcher.close()
        return results

    assert asyncio.run(main()) == [2.0 * v for v in range(10)]
    assert predict.calls == [10]


def test_requests_arriving_during_a_prediction_form_the_next_batch():
    release = threading.Event()
    predict = CountingPredict(block=release)

    async def main():
        batcher = MicroBatcher(predict, offload=lambda: True, max_batch_size=4)
        first = batcher.submit(np.ones((1, 2)))
        await asyncio.sleep(0.05)  # the first prediction is now running in the executor
        later = [batcher.submit(np.full((1, 2), v)) for v in range(6)]
        release.set()
        results = await asyncio.gather(first, *later)
        batcher.close()
        return results

    results = asyncio.run(main())
    assert predict.calls == [1, 4, 2]  # capped at max_batch_size
    assert [float(r[0][0]) for r in results[1:]] == [2.0 * v for v in range(6)]


def test_queue_bound_and_cancelled_requests():
    release = threading.Event()
    predict = CountingPredict(block=release)

    async def main():
        batcher = MicroBatcher(predict, offload=lambda: True, max_pending=3)
        running = batcher.submit(np.ones((1, 2)))
        await asyncio.sleep(0.05)  # predicting in the executor; what comes next waits
        kept = batcher.submit(np.ones((2, 2)))
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit(np.ones((2, 2)))
        gone = batcher.submit(np.ones((1, 2)))
        gone.cancel()
        release.set()
        await asyncio.gather(running, kept)
        batcher.close()
        return batcher.pending_rows

    assert asyncio.run(main()) == 0
    assert predict.calls == [1, 2]  # the cancelled row was never predicted


def test_a_failing_prediction_fails_its_batch_only():
    calls = []

    def predict(X):
        calls.append(len(X))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return X[:, 0], "v1"

    async def main():
        batcher = MicroBatcher(predict, offload=lambda: True)
        failed = await asyncio.gather(batcher.submit(np.ones((1, 2))), return_exceptions=True)
        ok = await batcher.submit(np.ones((1, 2)))
        batcher.close()
        return failed, ok

    failed, ok = asyncio.run(main())
    assert isinstance(failed[0], RuntimeError) and ok[1] == "v1"


def test_every_batch_is_scored_by_one_model(booster, other_booster):
    scorer = Scorer()
    scorer.swap(Model.from_booster(booster, "a", NAMES, backend="xgboost"))
    X, _ = synthetic(8, seed=1)

    async def main():
        futures = [scorer.submit(X[i:i + 1]) for i in range(4)]
        scorer.swap(Model.from_booster(other_booster, "b", NAMES, backend="xgboost"))  # before the batch runs
        futures += [scorer.submit(X[i:i + 1]) for i in range(4, 8)]
        return await asyncio.gather(*futures)

    results = asyncio.run(main())
    scorer.close()
    assert {version for _, version, _, _ in results} == {"b"}
    expected = other_booster.inplace_predict(X)
    assert np.allclose([s[0] for s, *_ in results], expected, atol=1e-6)
