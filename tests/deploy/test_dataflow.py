"""The production job graph, built for DataflowRunner offline (no credentials, no network).

Each reference graph (``streaming.job.dataflow.REFERENCE_GRAPHS``) is built in a fresh interpreter
in which any DNS lookup or socket connection raises, so the test proves the build needs no
network and that the local runner's tuning is never imported on the Dataflow path. A renamed
transform fails :func:`test_transform_names_match_the_committed_graph` until the expected file
is regenerated on purpose (the command is in ``streaming/job/dataflow.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.job.dataflow import OFFLINE_ARGS, REFERENCE_GRAPHS, flex_argv

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = Path(__file__).with_name("expected_dataflow_steps.json")
REGENERATE = "PYTHONPATH=. python -m streaming.job.dataflow steps > tests/deploy/expected_dataflow_steps.json"

BUILD = r"""
import json, socket, sys

def offline(*args, **kwargs):
    raise OSError("network use during an offline Dataflow build")

socket.getaddrinfo = socket.create_connection = offline
socket.socket.connect = socket.socket.connect_ex = lambda self, *a: offline()

from streaming.job.dataflow import dry_run

built = dry_run(json.loads(sys.argv[1]))
print(json.dumps({
    "job": built.job,
    "steps": built.step_names(),
    "reads": {name: {"subscription": r.subscription, "topic": r.topic, "id": r.id_attribute,
                     "timestamp": r.timestamp_attribute, "attributes": r.with_attributes}
              for name, r in built.pubsub_reads().items()},
    "images": sorted(built.container_images()),
    "local_runner_imported": "streaming.runner.local" in sys.modules,
}))
"""


def build_offline(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", BUILD, json.dumps(args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def graphs() -> dict[str, dict]:
    return {name: build_offline([*OFFLINE_ARGS, *extra]) for name, extra in REFERENCE_GRAPHS.items()}


@pytest.mark.parametrize("name", sorted(REFERENCE_GRAPHS))
def test_the_job_is_streaming_on_streaming_engine_with_the_worker_image(graphs, name):
    job = graphs[name]["job"]
    assert job["type"] == "JOB_TYPE_STREAMING"
    env = job["environment"]
    assert env["version"]["job_type"] == "FNAPI_STREAMING"
    assert "enable_streaming_engine" in env["experiments"]
    image = next(a.split("=", 1)[1] for a in OFFLINE_ARGS if a.startswith("--sdk_container_image="))
    (pool,) = env["workerPools"]
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [image]
    assert graphs[name]["images"] == [image]  # every environment of the pipeline proto runs the project's image
    assert pool["autoscalingSettings"] == {"algorithm": "AUTOSCALING_ALGORITHM_BASIC", "maxNumWorkers": 20}


@pytest.mark.parametrize("name", sorted(REFERENCE_GRAPHS))
def test_the_dataflow_path_never_imports_the_local_runner_tuning(graphs, name):
    assert graphs[name]["local_runner_imported"] is False


@pytest.mark.parametrize("name", sorted(REFERENCE_GRAPHS))
def test_pubsub_is_read_from_subscriptions_with_attributes(graphs, name):
    reads = graphs[name]["reads"]
    assert sorted(reads) == ["StreamingJob/ReadEvents/ReadLabels/Read", "StreamingJob/ReadEvents/ReadTransactions/Read"]
    assert sorted(r["subscription"] for r in reads.values()) == [
        "projects/streamscore-prod/subscriptions/labels-stream",
        "projects/streamscore-prod/subscriptions/transactions-stream"]
    assert all(r["topic"] == "" and r["attributes"] and r["id"] == "" and r["timestamp"] == "" for r in reads.values())


@pytest.mark.parametrize("name", sorted(REFERENCE_GRAPHS))
def test_every_step_is_named_by_us_and_unique(graphs, name):
    steps = graphs[name]["steps"]
    assert len(steps) == len(set(steps))
    # Beam's automatic labels carry the source line of a lambda or callable; ours are class or verb names.
    assert not [s for s in steps if "<lambda>" in s or "<locals>" in s or ".py:" in s]
    top = sorted({s.split("/")[1] for s in steps if s.count("/") >= 1})
    want = ["KeyToLearner", "LearnerFn", "MergeDeadLetters", "MergeMonitoring", "ReadEvents", "ScoreFn",
            "ServedOnline", "StreamFeatures", "ToDeadLetterMessage", "WriteAlerts", "WriteDeadLetters",
            "WriteMonitoring", "WriteScores"]
    assert top == (want if name == "scoring" else
                   ["MergeDeadLetters", "ReadEvents", "StreamFeatures", "ToDeadLetterMessage", "WriteDeadLetters",
                    "WriteFeatures"])


def test_transform_names_match_the_committed_graph(graphs):
    expected = json.loads(EXPECTED.read_text())
    got = {name: graph["steps"] for name, graph in graphs.items()}
    for name in REFERENCE_GRAPHS:
        missing, added = sorted(set(expected[name]) - set(got[name])), sorted(set(got[name]) - set(expected[name]))
        assert not missing and not added, (
            f"the {name!r} Dataflow graph changed (renamed transforms break `--update` of a running job: see "
            f"deploy/README.md, update vs. drain): gone {missing}, new {added}. If deliberate, run: {REGENERATE}")
    assert sorted(expected) == sorted(REFERENCE_GRAPHS)


def test_id_label_and_timestamp_attribute_reach_the_reader():
    graph = build_offline([*OFFLINE_ARGS, "--id-label=transaction_id", "--timestamp-attribute=event_time"])
    assert {(r["id"], r["timestamp"]) for r in graph["reads"].values()} == {("transaction_id", "event_time")}


def test_at_least_once_mode_is_a_service_option():
    graph = build_offline([*OFFLINE_ARGS, "--dataflow_service_options=streaming_mode_at_least_once"])
    assert graph["job"]["environment"]["serviceOptions"] == ["streaming_mode_at_least_once"]


def test_template_parameters_become_job_flags_and_beam_options_pass_through():
    assert flex_argv(["--transactions_subscription=tx", "--labels_subscription=", "--predictor=dns:///p:50051",
                      "--max_num_workers=5", "--sdk_container_image=img", "--id_label=transaction_id"]) == [
        "--transactions-subscription=tx", "--labels-subscription=", "--predictor=dns:///p:50051",
        "--max_num_workers=5", "--sdk_container_image=img", "--id-label=transaction_id"]
    with pytest.raises(ValueError, match="--no_local_tuning is a switch: expected true or false, got 'maybe'"):
        flex_argv(["--no_local_tuning=maybe"])
