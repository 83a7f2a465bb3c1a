"""A label whose transaction never comes is dead-lettered by the terminal stage's event-time timer,
even when its terminal goes quiet; a label whose transaction comes in time is not; both runners agree.

The deadline is the label's element timestamp + the terminal's retention horizon (allowed lateness
+ delay + longest window: 1 + 7 + 30 = 38 days here).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streaming.features.spec import DAY_NS, DEFAULT_SPEC
from streaming.features.state import TerminalState
from streaming.features.stream import StreamFeatures
from streaming.io.events import Label, Transaction, parse
from streaming.runner.testing import replay

T0 = datetime(2018, 4, 2, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


def tx(tid: str, terminal: str, days: float) -> Transaction:
    return Transaction(tid, T0 + timedelta(days=days), f"c-{tid}", terminal, 10.0)  # one customer each: never late


def label(tid: str, terminal: str, days: float, reported: float) -> Label:
    return Label(tid, 1, T0 + timedelta(days=days), f"c-{tid}", terminal, T0 + timedelta(days=reported))


def batches() -> list[list]:
    return [
        [tx("1", "t1", 0)],
        [label("early", "t1", 1, 2), label("ghost", "quiet", 1, 2)],  # both before their transaction
        [tx("2", "busy", 20)],  # the watermark moves 18 days: no deadline (day 40) passed
        [tx("early", "t1", 1)],  # in time: matched, not dead-lettered
        [tx("3", "busy", 50)],  # the watermark passes day 40: "ghost" ages out, its terminal quiet all along
        [tx("ghost", "quiet", 1)],  # after all: featurised (nothing is lost), its label no longer counts
    ]


def summary(keep_examples_days: float | None = None) -> dict:
    out = replay(batches(), StreamFeatures(DEFAULT_SPEC, 1.0, keep_examples_days))
    result = {"features": sorted(f.transaction.transaction_id for f in out["features"]),
              "dead": sorted([d.stage, d.transaction_id, d.error] for d in out["dead_letter"])}
    if keep_examples_days:
        result["examples"] = sorted(e.transaction_id for e in out["examples"])
    return result


@pytest.mark.parametrize("keep_examples_days", [None, 8.0])
def test_a_lone_label_is_dead_lettered_when_the_watermark_passes_its_deadline(keep_examples_days):
    result = summary(keep_examples_days)
    assert result["features"] == ["1", "2", "3", "early", "ghost"]
    assert result["dead"] == [["label", "ghost", "label for transaction_id ghost: its transaction never came to terminal "
                                                 "quiet within 38 days (watermark) of the label's arrival"]]
    if keep_examples_days:
        assert result["examples"] == ["early"]  # the dead-lettered label is never learned from as well


def test_the_dead_letter_carries_the_label():
    out = replay(batches()[:5], StreamFeatures(DEFAULT_SPEC, 1.0))
    (dead,) = out["dead_letter"]
    assert parse(dead.data, dead.attributes) == label("ghost", "quiet", 1, 2)


def test_labels_still_waiting_at_the_end_of_the_stream_are_dead_lettered():
    # the watermark goes to infinity after the last batch: "ghost" (no later event at all) ages out
    out = replay(batches()[:2], StreamFeatures(DEFAULT_SPEC, 1.0))
    assert sorted((d.stage, d.transaction_id) for d in out["dead_letter"]) == [("label", "early"), ("label", "ghost")]
    assert [f.transaction.transaction_id for f in out["features"]] == ["1"]


def test_the_untuned_runner_gives_the_same_answer():
    """Parity: the tuned local runner (which skips timer scans of timer-less ParDos) and Beam's own."""
    from streaming.runner import local as local_runner

    local_runner.install()
    tuned = summary(8.0)
    code = ("import json, sys; from tests.streaming.features.test_label_age import summary; "
            "assert 'streaming.runner.local' not in sys.modules; print(json.dumps(summary(8.0)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == tuned


def test_expired_labels_are_forgotten_and_no_longer_count():
    s = TerminalState(DEFAULT_SPEC, DAY_NS)
    s.add_transaction("a", 2)
    assert s.add_label("lone", 1, 1, payload="L", deadline=100) is True
    assert s.add_label("a", 2, 1, payload="A", deadline=50) is False  # its transaction is there: nothing waits
    assert s.next_deadline == 100 and s.pending_labels == 1
    assert s.expire_waiting(99) == [] and s.expire_waiting(100) == ["L"] and s.expire_waiting(10**9) == []
    assert s.pending_labels == 0 and s.next_deadline is None
    s.add_transaction("lone", 1)
    risk = s.add_transaction("b", 8 * DAY_NS)["TERMINAL_ID_RISK_1DAY_WINDOW"]
    assert risk == 0.5  # "a" is fraud; "lone" came after its label was dead-lettered: genuine
    with pytest.raises(ValueError, match="deadline must be an integer"):
        s.add_label("x", 1, 1, payload="X", deadline=1.5)


def test_terminal_states_pickled_before_deadlines_load_and_new_ones_round_trip():
    s = TerminalState(DEFAULT_SPEC, DAY_NS)
    s.add_transaction("a", 0)
    s.add_label("lone", 5, 1, payload="L")  # no deadline: the shape states had before
    assert len(s.__getstate__()) == 5 + 4
    old = pickle.loads(pickle.dumps(s))
    assert old.next_deadline is None and old.pending_labels == 1
    s.add_label("lone2", 6, 1, payload="L2", deadline=7)
    new = pickle.loads(pickle.dumps(s))
    assert new.next_deadline == 7 and new.expire_waiting(7) == ["L2"]
    legacy = s.__getstate__()[:5] + s.__getstate__()[5:7]  # (frauds, pending): the oldest shape
    oldest = TerminalState.__new__(TerminalState)
    oldest.__setstate__(legacy)
    assert oldest.pending_labels == 2 and oldest.next_deadline is None and oldest.take_aged_out() == []
