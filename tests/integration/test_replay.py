"""`streamscore loadtest replay` through the real stack: emulator, predictor, streaming job, shadow predictor.

The report's counts are checked against what was published (the input, one row of which the
job must dead-letter) and against an independent subscription on the scores topic.
"""

from __future__ import annotations

import json
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

from loadtest import compare
from loadtest.replay import run as replay_run
from streaming.datasets import write_table
from streaming.features.spec import DEFAULT_SPEC
from streaming.pubsub_local import pull_all
from streaming.simulator import simulate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAMES = list(DEFAULT_SPEC.names)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streaming.cli", *args], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_serving(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise AssertionError(f"predictor on {port} not SERVING:\n{log.read_text()[-2000:]}")


@pytest.fixture
def stack(pubsub_emulator, tmp_path):
    """A production model (and the same model as a file for the shadow), predictor, shadow, scoring job."""
    from models.registry import Registry

    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, size=(2000, len(NAMES)))
    y = (x[:, 0] + rng.normal(0, 0.5, 2000) > 2.0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
                        xgb.DMatrix(x, label=y, feature_names=NAMES), 10)
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(booster, {"feature_names": NAMES}, spec_hash=DEFAULT_SPEC.spec_hash))
    booster.save_model(tmp_path / "candidate.json")
    p = "rp" + uuid.uuid4().hex[:8]
    names = {k: f"{p}-{k}" for k in ("tx", "scores", "alerts", "dead", "monitoring")}
    subs = {f"{p}-job": names["tx"], f"{p}-scores-run": names["scores"], f"{p}-dead-run": names["dead"],
            f"{p}-scores-check": names["scores"]}
    pubsub_emulator.ensure([*names.values()], subs)
    port, shadow_port = _free_port(), _free_port()
    procs = [_spawn(["serve", "--registry", str(tmp_path / "registry"), "--host", "127.0.0.1", "--port", str(port),
                     "--metrics-port", "-1"], tmp_path / "serve.log"),
             _spawn(["serve", "--model-file", str(tmp_path / "candidate.json"), "--host", "127.0.0.1",
                     "--port", str(shadow_port), "--metrics-port", "-1"], tmp_path / "shadow.log")]
    try:
        _wait_serving(port, procs[0], tmp_path / "serve.log")
        _wait_serving(shadow_port, procs[1], tmp_path / "shadow.log")
        procs.append(_spawn(["stream", "--project", pubsub_emulator.project, "--emulator-host", pubsub_emulator.host_port,
                             "--transactions-subscription", f"{p}-job", "--labels-subscription", "",
                             "--scores-topic", names["scores"], "--alerts-topic", names["alerts"],
                             "--dead-letter-topic", names["dead"], "--monitoring-topic", names["monitoring"],
                             "--predictor", f"127.0.0.1:{port}"], tmp_path / "job.log"))
        yield {"prefix": p, "names": names, "shadow": f"127.0.0.1:{shadow_port}", "job": procs[-1],
               "job_log": tmp_path / "job.log"}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_short_replay_report_matches_what_was_published(pubsub_emulator, stack, tmp_path):
    df = simulate(customers=80, terminals=160, days=8, seed=5).iloc[:300].copy()
    assert len(df) == 300
    bad = str(df["TRANSACTION_ID"].iloc[150])
    df.loc[df.index[150], "TX_AMOUNT"] = float("nan")  # the job must dead-letter this one, naming its id
    write_table(df, tmp_path / "tx.parquet")
    p, names = stack["prefix"], stack["names"]
    out = tmp_path / "report.json"
    code = replay_run([
        "--input", str(tmp_path / "tx.parquet"), "--rate", "60", "--warmup", "10", "--timeout", "90",
        "--project", pubsub_emulator.project, "--emulator-host", pubsub_emulator.host_port,
        "--transactions-topic", names["tx"], "--scores-subscription", f"{p}-scores-run",
        "--dead-letter-subscription", f"{p}-dead-run", "--id-prefix", "it-", "--shadow-predictor", stack["shadow"],
        "--json", str(out), "--html", str(tmp_path / "report.html"), "--no-progress", "--max-seconds", "300"])
    assert stack["job"].poll() is None, stack["job_log"].read_text()[-3000:]
    assert code == 0
    report = json.loads(out.read_text())
    acc = report["accounting"]
    assert acc == {**acc, "sent": 300, "published": 300, "scored": 299, "dead_lettered": 1, "lost": 0, "late": 0,
                   "duplicates": 0, "foreign_scores": 0, "labels_sent": 0}

    # an independent look at the scores topic: exactly the published ids, once each, but the bad one
    check = pull_all(pubsub_emulator.subscriber_client(), pubsub_emulator.subscription_path(f"{p}-scores-check"),
                     299 + 10, timeout=30, settle=2)
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
