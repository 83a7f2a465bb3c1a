"""bench_predictor's raw-transaction modes (issue 12): payload files, and a short real run of --raw-only.

The short run uses real redis-server and our real server (no timing is checked: numbers only);
it proves the modes run end to end, every request of both inputs is answered without error, and
the Feast peer is skipped with a clear message when its venv is absent.
"""

from __future__ import annotations

import json

import pytest

from loadtest import bench_predictor as bp
from loadtest.grpc_loadgen import read_payloads, write_payloads
from protos.streamscore.v1 import scorer_pb2


def test_payload_files_round_trip_and_refuse_damage(tmp_path):
    messages = [scorer_pb2.ScoreRequest(transaction_id=f"t{i}", features=scorer_pb2.FeatureVector(values=[i, 1.5]))
                for i in range(5)]
    path = tmp_path / "p.bin"
    assert write_payloads(path, messages) == 5
    assert [scorer_pb2.ScoreRequest.FromString(b) for b in read_payloads(path)] == messages
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_payloads(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="no request"):
        read_payloads(path)


def test_raw_only_runs_both_inputs_on_the_store_server(redis_server, tmp_path, capsys):
    out = tmp_path / "raw.json"
    code = bp.run(["--raw-only", "--repeat", "1", "--duration", "0.4", "--warmup", "0.1", "--raw-days", "3",
                   "--raw-n", "60", "--rounds", "5", "--depth", "3", "--feast-venv", str(tmp_path / "no-feast"),
                   "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Feast peer skipped" in printed and "setup_feast_env.sh" in printed
    report = json.loads(out.read_text())
    names = {key.split(" | ")[0] for key in report["medians"]}
    assert names == {f"{kind}: {mode}" for kind in ("features", "raw")
                     for mode in ("unary sequential", "stream C=32", "stream C=32 x4")}
    for key, m in report["medians"].items():
        assert m["errors"] == 0 and m["throughput_rps"] > 0, key
    ip = report["raw_in_process"]
    assert ip["fetch_features_p50_us"] > 0 and ip["floor_pipeline_p50_us"] > 0
    assert report["raw"]["fetch_features_over_floor_p50"] == pytest.approx(
        ip["fetch_features_p50_us"] / ip["floor_pipeline_p50_us"], rel=1e-9)  # one repeat
    assert report["raw_store"]["bytes_per_card"]["keys"] > 0
    assert report["feast"] is None
