"""streamscore up's pieces that need no stack: the progress line, the warm-up accounting, the summary."""

from __future__ import annotations

from streaming.demo import progress as up
from streaming.demo.summary import build_summary, render_summary


def busy_progress() -> up.Progress:
    p = up.Progress(published_transactions=12_345, published_labels=12_000, malformed=4, scored=12_000,
                    dead_lettered=4, alerts=9_999)
    p.latencies_ms = [1_234.0, 19_999.0]
    p.batch_scores = [(0.9, 1), (0.1, 0)]
    p.online_scores = [(0.4, 1), (0.6, 0)]
    return p


def test_progress_line_fits_80_columns_and_keeps_every_figure():
    line = up.status_line(busy_progress(), 999.6)  # demo-sized figures
    assert len(line) <= 79
    assert "in 12,345 |" in line and "out 12,000 dead 4 left 345" in line
    assert line.endswith("| AP 1.00/.50")


def test_warmup_scores_are_not_measured():
    p = up.Progress()
    p.warmup["warmup-1"] = None
    up.on_score(p, {"transaction_id": "warmup-1", "score": 0.2}, now=5.0)
    assert p.warmup["warmup-1"] == 5.0 and p.scored == 0 and not p.latencies_ms
    p.truth, p.sent_at = {"t1": 1}, {"t1": 4.0}
    up.on_score(p, {"transaction_id": "t1", "event_time": "2018-04-01T00:00:00Z", "score": 0.7}, now=5.0)
    assert p.scored == 1 and p.latencies_ms == [1000.0] and p.batch_scores == [(0.7, 1)]


def test_summary_is_sections_with_a_verdict_and_its_text_fits_80_columns():
    p = busy_progress()
    summary = build_summary("completed", 80.04, "v1", p, 2.14, {"predictor": "/tmp/x/predictor.log"})
    assert summary["run"] == {"status": "completed", "verdict": "failed", "elapsed_s": 80.0, "ready_after_s": 2.1,
                              "production_model": "v1"}  # 345 events unaccounted
    assert summary["traffic"]["unaccounted"] == 345
    assert summary["average_precision"]["online"] == 0.5
    summary["extra"] = {"added_by": "another section"}  # sections can be added by key
    text = render_summary(summary)
    assert text.splitlines()[0] == "streamscore up: FAILED (completed) in 80 s"
    assert "  extra: added_by another section" in text and "/tmp/x/predictor.log" in text
    assert all(len(line) <= 79 for line in text.splitlines())
