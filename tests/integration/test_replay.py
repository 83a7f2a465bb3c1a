"""`streamscore loadtest replay` through the real stack: emulator, predictor, streaming job, shadow predictor
(started by :class:`loadtest.replay_stack.LocalStack`, what ``--local-stack`` runs).

The report's counts are checked against what was published (the input, one row of which the
job must dead-letter) and against an independent subscription on the scores topic.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import xgboost as xgb

from loadtest import compare
from loadtest.replay import run as replay_run
from loadtest.replay_stack import DEAD_LETTER_SUBSCRIPTION, SCORES_SUBSCRIPTION, LocalStack
from streaming.io.datasets import write_table
from streaming.features.spec import DEFAULT_SPEC
from streaming.io.pubsub_local import EmulatorNotFound, find_emulator, pull_all
from streaming.sim.simulator import simulate

pytestmark = pytest.mark.integration
NAMES = list(DEFAULT_SPEC.names)


@pytest.fixture
def stack(tmp_path):
    """The replay's own local stack: emulator, predictor, scoring job, and the same model as a shadow candidate."""
    from models.registry import Registry
    from models.signing import generate

    try:
        find_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(f"Pub/Sub emulator unavailable: {exc}")
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, size=(2000, len(NAMES)))
    y = (x[:, 0] + rng.normal(0, 0.5, 2000) > 2.0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
                        xgb.DMatrix(x, label=y, feature_names=NAMES), 10)
    ring = generate("demo-1")
    ring.save(tmp_path / "registry-signing-key.json")  # where LocalStack (like `streamscore up`) looks for it
    registry = Registry.open(tmp_path / "registry", keys=ring)
    registry.promote(registry.register(booster, {"feature_names": NAMES}, spec_hash=DEFAULT_SPEC.spec_hash))
    booster.save_model(tmp_path / "candidate.json")
    with LocalStack(tmp_path / "registry", tmp_path / "stack", shadow_model_file=tmp_path / "candidate.json",
                    job_args=("--labels-subscription", "")) as running:
        running.emulator.ensure([], {"scores-check": "scores"})  # an independent look at the scores topic
        yield running


def test_short_replay_report_matches_what_was_published(stack, tmp_path):
    df = simulate(customers=80, terminals=160, days=8, seed=5).iloc[:300].copy()
    assert len(df) == 300
    bad = str(df["TRANSACTION_ID"].iloc[150])
    df.loc[df.index[150], "TX_AMOUNT"] = float("nan")  # the job must dead-letter this one, naming its id
    write_table(df, tmp_path / "tx.parquet")
    emulator, out = stack.emulator, tmp_path / "report.json"
    code = replay_run([  # as against any running stack: its emulator, the default topics, our subscriptions
        "--input", str(tmp_path / "tx.parquet"), "--rate", "60", "--warmup", "10", "--timeout", "90",
        "--project", emulator.project, "--emulator-host", emulator.host_port,
        "--scores-subscription", SCORES_SUBSCRIPTION, "--dead-letter-subscription", DEAD_LETTER_SUBSCRIPTION,
        "--id-prefix", "it-", "--shadow-predictor", stack.shadow_target,
        "--json", str(out), "--html", str(tmp_path / "report.html"), "--no-progress", "--max-seconds", "300"])
    stack.check()  # predictor, shadow and job still running
    assert code == 0
    report = json.loads(out.read_text())
    acc = report["accounting"]
    assert acc == {**acc, "sent": 300, "published": 300, "scored": 299, "dead_lettered": 1, "lost": 0, "late": 0,
                   "duplicates": 0, "foreign_scores": 0, "labels_sent": 0}

    # an independent look at the scores topic: exactly the published ids, once each, but the bad one
    check = pull_all(emulator.subscriber_client(), emulator.subscription_path("scores-check"), 299 + 10,
                     timeout=30, settle=2)
    ids = [orjson.loads(m.data)["transaction_id"] for m in check]
    run_ids = [i for i in ids if i.startswith("it-")]
    assert len(run_ids) == len(set(run_ids)) == acc["scored"]
    assert set(run_ids) == {f"it-{t}" for t in df["TRANSACTION_ID"].astype(str)} - {f"it-{bad}"}
    assert len(ids) - len(run_ids) == report["run"]["warmup"]["transactions"] == 10

    e2e, s = report["latency_ms"]["e2e"], report["series"]
    assert e2e["count"] == 299 and 0 < e2e["p50"] <= e2e["p99"] <= e2e["max"]
    assert report["latency_ms"]["publish"]["count"] == 300
    assert sum(s["published_tps"]) * s["bucket_s"] == pytest.approx(300)
    assert sum(s["scored_tps"]) * s["bucket_s"] == pytest.approx(299)
    assert s["backlog"][-1] == 0
    shadow = report["shadow"]  # the candidate is the same model: the scores agree exactly
    assert shadow["events"] == 299 and shadow["refused_by_candidate"] == 0
    assert shadow["max_abs_diff"] <= 1e-6 and shadow["alerts"]["agreement"] == 1.0
    assert (tmp_path / "report.html").read_text().count("<svg") == 4
    assert not any(r["regression"] for r in compare.compare(report, report))
