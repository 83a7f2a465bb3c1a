"""deploy/dataflow/metadata.json declares exactly the job's flags, each with help and a regex that fits its default.

The job's flags are read from ``streamscore stream --help`` itself (a subprocess), so a flag added
to the job without a template parameter (or the reverse) fails here. The only flags left out are
:data:`streaming.job.dataflow.LOCAL_ONLY_FLAGS` (emulator, local-runner tuning) and
:data:`streaming.job.dataflow.LAUNCHER_FLAGS` (passed by the launcher itself).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.job.dataflow import LAUNCHER_FLAGS, LOCAL_ONLY_FLAGS, job_flags

ROOT = Path(__file__).resolve().parents[2]
METADATA = json.loads((ROOT / "deploy/dataflow/metadata.json").read_text())
PARAMETERS = {p["name"]: p for p in METADATA["parameters"]}


def help_flags() -> set[str]:
    done = subprocess.run([sys.executable, "-m", "streaming.cli", "stream", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout)) - {"--help", "--runner", "--region"}


def test_metadata_parameters_are_the_jobs_flags_both_ways():
    flags = help_flags() - LOCAL_ONLY_FLAGS - LAUNCHER_FLAGS
    declared = {"--" + name.replace("_", "-") for name in PARAMETERS}
    assert sorted(flags - declared) == [], "flags of `streamscore stream` missing from deploy/dataflow/metadata.json"
    assert sorted(declared - flags) == [], "metadata.json parameters the job does not have"
    assert LOCAL_ONLY_FLAGS | LAUNCHER_FLAGS <= help_flags()  # the allow-list names real flags only


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_each_parameter_has_help_and_a_regex_that_accepts_its_default(name):
    param, action = PARAMETERS[name], job_flags()["--" + name.replace("_", "-")]
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name) and param["label"] and len(param["helpText"]) > 20
    assert param["isOptional"] is True  # every flag has a default in the job
    (regex,) = param["regexes"]
    assert regex.startswith("^") and regex.endswith("$")
    if action.default not in (None, False):
        assert re.fullmatch(regex, str(action.default)), f"{name}: default {action.default!r} fails {regex}"
    assert not re.fullmatch(regex, "bad value\n"), f"{name}: {regex} accepts a value with spaces or a newline"


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("predictor", ["dns:///predictor.streamscore.svc.cluster.local:50051", "10.0.0.7:50051",
                   "ipv4:10.0.0.1:50051,10.0.0.2:50051"], ["predictor", "http://predictor:50051"]),
    ("registry", ["gs://streamscore-registry/registry"], ["registry/", "s3://bucket/x"]),
    ("transactions_subscription", ["transactions-stream", "projects/streamscore-prod/subscriptions/tx-stream"],
     ["projects/p/topics/transactions", "x"]),
    ("labels_subscription", ["", "labels-stream"], ["projects/p/topics/labels"]),
    ("alert_threshold", ["0.5", "1", "0", ".9"], ["1.5", "-0.1"]),
    ("max_message_bytes", ["65536"], ["0", "-1", "1.5"]),
])
def test_regexes_accept_and_refuse_what_the_job_does(name, good, bad):
    (regex,) = PARAMETERS[name]["regexes"]
    assert all(re.fullmatch(regex, v) for v in good), [v for v in good if not re.fullmatch(regex, v)]
    assert not any(re.fullmatch(regex, v) for v in bad), [v for v in bad if re.fullmatch(regex, v)]


def test_the_template_is_streaming_and_offers_both_modes():
    assert METADATA["streaming"] is True
    assert METADATA["supportsExactlyOnce"] and METADATA["supportsAtLeastOnce"]
    assert METADATA["defaultStreamingMode"] == "EXACTLY_ONCE"
