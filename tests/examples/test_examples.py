"""The examples in examples/ run as documented: against the real Pub/Sub emulator and local stack."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from streaming.io.events import Transaction, parse
from streaming.io.pubsub_local import EmulatorNotFound, find_emulator, pull_all

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    """Import ``examples/<name>.py`` as the user runs it (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_producer_publishes_messages_the_job_accepts(pubsub_emulator, monkeypatch, capsys):
    pubsub_emulator.ensure(["example-tx"], {"example-tx-check": "example-tx"}, ordering=True)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host_port)
    assert load("producer").main(["--project", pubsub_emulator.project, "--topic", "example-tx", "--count", "7"]) == 0
    assert "published 7 transactions to projects/" in capsys.readouterr().out
    got = pull_all(pubsub_emulator.subscriber_client(), pubsub_emulator.subscription_path("example-tx-check"), 7,
                   timeout=30)
    events = [parse(m.data, m.attributes) for m in got]
    assert all(isinstance(e, Transaction) for e in events), events  # the contract's parser accepts every one
    assert sorted(e.transaction_id for e in events) == sorted(f"example-{i}" for i in range(7))


@pytest.mark.integration
def test_replay_example_scores_everything_through_the_local_stack(tmp_path, capsys):
    try:
        find_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(f"Pub/Sub emulator unavailable: {exc}")
    code = load("replay").main(["--transactions", "40", "--rate", "20", "--registry", str(tmp_path / "registry"),
                                "--workdir", str(tmp_path / "run")])
    assert code == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["accounting"]["sent"] == report["accounting"]["scored"] == 40
    assert report["accounting"]["lost"] == 0
    assert "replayed 40 transactions at 20 tx/s: 40 scored" in capsys.readouterr().out
