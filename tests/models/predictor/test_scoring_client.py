"""The streaming job's scoring client (``streaming.job.scoring.ScoringClient``) against a real predictor.

It lives beside the predictor tests for their in-process server fixtures. A bundle is scored
in one KServe ``ModelInfer`` call; a batch the predictor refuses is scored again over
``ScoreStream`` so each refused transaction gets its own reason; transport failures retry.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from streaming.job.scoring import PredictorUnavailable, RetryPolicy, ScoringClient

from .conftest import synthetic


def rows(n: int, seed: int = 0) -> list[tuple[str, list[float]]]:
    X, _ = synthetic(n, seed)
    return [(f"t{i}", list(map(float, x))) for i, x in enumerate(X)]


def test_a_batch_is_scored_in_one_call_equal_to_the_scoring_core(serve, make_scorer, monkeypatch):
    scorer = make_scorer("v7")
    server = serve(scorer)
    client = ScoringClient(server.target)
    streamed = []
    monkeypatch.setattr(client, "_stream", lambda items: streamed.append(items) or [])
    items = rows(64)
    got = client.score_many(items)
    assert streamed == []  # the batch went in one ModelInfer
    want = scorer.score_many(np.array([values for _, values in items]))[0]
    assert [s.transaction_id for s in got] == [tid for tid, _ in items]
    assert {s.model_version for s in got} == {"v7"} and all(s.error is None and s.online_score is None for s in got)
    np.testing.assert_allclose([s.score for s in got], want, rtol=0, atol=1e-12)


def test_a_refused_row_falls_back_to_the_stream_and_only_that_row_is_rejected(serve, make_scorer):
    server = serve(make_scorer("v7"))
    items = rows(5)
    items[2][1][0] = math.nan
    got = ScoringClient(server.target).score_many(items)
    assert [s.error is None for s in got] == [True, True, False, True, True]
    assert got[2].score is None and "features.values[0]" in got[2].error and "NaN" in got[2].error
    assert all(isinstance(s.score, float) and s.model_version == "v7" for i, s in enumerate(got) if i != 2)


def test_an_unreachable_predictor_is_retried_until_the_policy_gives_up():
    slept = []
    client = ScoringClient("127.0.0.1:1", deadline=0.5, retry=RetryPolicy(initial=0.1, max_attempts=3),
                           sleep=slept.append)
    with pytest.raises(PredictorUnavailable, match="127.0.0.1:1 unavailable"):
        client.score_many(rows(2))
    assert slept == [0.1, 0.2] and client.retries == 2


def test_refused_credentials_are_retried_not_blamed_on_the_events(serve, make_scorer):
    server = serve(make_scorer(), auth_token="secret")
    client = ScoringClient(server.target, token="wrong", retry=RetryPolicy(initial=0.01, max_attempts=3),
                           sleep=lambda s: None)
    with pytest.raises(PredictorUnavailable):  # a finite policy gives up; the job's default waits for ever
        client.score_many(rows(3))
    assert client.auth_failures == 3 and client.retries == 2
    ok = ScoringClient(server.target, token="secret").score_many(rows(3))
    assert all(s.error is None for s in ok)


def test_an_address_list_target_spreads_calls_over_every_predictor(serve, make_scorer):
    # The job's channel to a headless Service (``dns:///predictor:50051``, one address per pod)
    # balances per call like this static list of two; gRPC's default pick_first would send all to one.
    first, second = serve(make_scorer("a")), serve(make_scorer("b"))
    client = ScoringClient(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}")
    seen = [client.score_many(rows(1))[0].model_version for _ in range(200)]
    assert set(seen) == {"a", "b"}


def test_only_multi_address_targets_get_round_robin():
    from streaming.job.scoring import ROUND_ROBIN_SERVICE_CONFIG, channel_options

    def balanced(target):
        return ("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG) in channel_options(target)

    assert balanced("dns:///predictor.streamscore.svc.cluster.local:50051")
    assert balanced("ipv4:10.0.0.1:50051,10.0.0.2:50051")
    assert not balanced("predictor:50051") and not balanced("127.0.0.1:50051")


def test_a_rotated_token_file_is_read_again_after_a_refusal(serve, make_scorer, tmp_path):
    server = serve(make_scorer("v7"), auth_token="new-token")
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    client = ScoringClient(server.target, token_file=str(token_file), sleep=lambda s: token_file.write_text("new-token"))
    got = client.score_many(rows(4))
    assert [s.error for s in got] == [None] * 4 and {s.model_version for s in got} == {"v7"}
    assert client.auth_failures == 1 and client.token == "new-token"
    token_file.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        ScoringClient(server.target, token_file=str(token_file))
