"""Replay reports (JSON, text, HTML), `loadtest compare` and its flags, shadow agreement, argument errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from loadtest import compare as cmp
from loadtest import replay_ledger as rl
from loadtest.replay import PublishState, ReplayResult
from loadtest.replay import run as replay_run
from loadtest.replay_report import build_report, format_summary, render_html
from loadtest.shadow import agreement


def step_result(rates=(10.0, 20.0, 40.0), seconds=10.0, slow_from=2):
    """A constructed step run: stage k sends at rates[k]; from stage ``slow_from`` each event takes 2 s."""
    stages = [rl.Stage(r, seconds) for r in rates]
    ledger = rl.Ledger(timeout=30.0)
    scores = {}
    for k, ((start, _), stage) in enumerate(zip(rl.stage_windows(stages), stages)):
        for j in range(int(stage.size)):
            tid = f"{k}-{j}"
            t = start + j / stage.rate
            ledger.sent(tid, t, k)
            ledger.acked(tid, t + 0.01)
            ledger.scored(tid, t + (2.0 if k >= slow_from else 0.1 + 0.001 * (j % 50)))
            scores[tid] = (0.9 if j % 10 == 0 else 0.1, "v1", None)
    ledger.sent("lost-1", 1.0, 0)
    o = ledger.outcome()
    assessed = [rl.assess_stage(o, k, s.rate, w, slo_ms=500) for k, (s, w) in enumerate(zip(stages, rl.stage_windows(stages)))]
    state = PublishState(finished=True)
    return ReplayResult(o, stages, assessed, "stage 2 not sustainable", state, scores, elapsed_s=35.0)


def report_of(result, **run):
    truth = {tid: int(tid.endswith("0")) for tid in result.scores}
    return build_report(result, truth=truth, run={"mode": "step", "slo_ms": 500, "input": "x.parquet", **run})


def test_report_has_every_figure_and_is_strict_json():
    report = report_of(step_result())
    text = json.dumps(report, allow_nan=False)  # no NaN/Infinity anywhere: nulls instead
    back = json.loads(text)
    acc = back["accounting"]
    assert acc["sent"] == 100 + 200 + 400 + 1 and acc["scored"] == 700 and acc["lost"] == 1
    assert back["examples"]["lost"] == [{"transaction_id": "lost-1", "intended_s": 1.0}]
    assert back["examples"]["duplicated"] == back["examples"]["late"] == []
    step = back["step"]
    assert step["highest_sustainable_tps"] == 20.0 and step["first_unsustainable"]["rate_tps"] == 40.0
    assert step["p99_ms"] == pytest.approx(back["stages"][1]["latency_ms"]["p99"])
    assert "p99 2,000 ms > SLO 500 ms" in step["first_unsustainable"]["reason"]
    assert back["quality"]["labelled"] == 700 and back["quality"]["average_precision"] is not None
    s = back["series"]
    assert len(s["t"]) == len(s["p99_ms"]) == len(s["backlog"]) == len(s["scored_tps"])
    assert sum(s["sent_tps"]) * s["bucket_s"] == pytest.approx(acc["sent"])
    assert sum(back["histogram"]["counts"]) == 700
    # one lost event in 701 puts p99.9 (rank 701) beyond the timeout: null, not a number
    assert back["throughput_tps"]["offered"] > 0 and back["latency_ms"]["e2e"]["p99.9"] is None


def test_strict_turns_non_finite_numbers_into_null():
    from loadtest.replay_report import strict

    assert strict({"a": [1.0, float("nan"), {"b": float("inf")}], "c": "x", "d": 2}) == {
        "a": [1.0, None, {"b": None}], "c": "x", "d": 2}


def test_summary_and_html():
    report = report_of(step_result())
    text = format_summary(report)
    assert "highest sustainable rate: 20 tx/s" in text and "stage 2: 40 tx/s" in text
    page = render_html(report)
    assert page.count("<svg") == 4 and "Highest sustainable rate: <b>20.0 tx/s</b>" in page
    assert "Latency by send time" in page and "Backlog" in page and "histogram" in page
    report["shadow"] = {"target": "h:1", "events": 3, "mean_abs_diff": 0.1, "max_abs_diff": 0.1, "spearman": 1.0,
                        "alerts": {"agreement": 1.0, "production": 1, "candidate": 1, "both": 1},
                        "production": {"average_precision": 1.0}, "candidate": {"average_precision": 1.0,
                                                                              "model_versions": ["c"]}}
    assert "Shadow comparison" in render_html(report) and "shadow h:1" in format_summary(report)


def test_compare_flags_regressions_and_not_noise():
    a = report_of(step_result())
    b = copy.deepcopy(a)
    b["latency_ms"]["e2e"]["p99"] = a["latency_ms"]["e2e"]["p99"] * 1.3   # 30% worse: flagged
    b["latency_ms"]["e2e"]["p50"] = a["latency_ms"]["e2e"]["p50"] * 1.05  # 5% worse: within 10%
    b["throughput_tps"]["out"] = a["throughput_tps"]["out"] * 0.5          # halved: flagged
    b["accounting"]["lost"] = 4                                             # 1 -> 4: flagged
    b["accounting"]["duplicates"] = 0                                       # unchanged 0
    b["step"]["highest_sustainable_tps"] = 10.0                             # lower: flagged
    rows = {r["figure"]: r for r in cmp.compare(a, b, 0.1)}
    flagged = {f for f, r in rows.items() if r["regression"]}
    assert flagged == {"latency_ms.e2e.p99", "throughput_tps.out", "accounting.lost", "step.highest_sustainable_tps"}
    assert rows["latency_ms.e2e.p99"]["change"] == pytest.approx(0.3)
    assert "shadow.candidate.average_precision" not in rows  # absent in both
    better = copy.deepcopy(a)
    better["latency_ms"]["e2e"]["p99"] = a["latency_ms"]["e2e"]["p99"] / 2
    assert not any(r["regression"] for r in cmp.compare(a, better, 0.1))
    beyond = copy.deepcopy(a)
    beyond["latency_ms"]["e2e"]["p99"] = None  # beyond the timeout
    assert {r["figure"] for r in cmp.compare(a, beyond, 0.1) if r["regression"]} == {"latency_ms.e2e.p99"}
    assert cmp.lookup(a, "latency_ms.e2e.p99.9") == a["latency_ms"]["e2e"]["p99.9"]


def test_compare_cli_exit_codes(tmp_path, capsys):
    a = report_of(step_result())
    b = copy.deepcopy(a)
    b["accounting"]["lost"] = 9
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert cmp.run([str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "1 regression flagged" in out
    assert cmp.run([str(pa), str(pb), "--fail-on-regression", "--threshold", "5%"]) == 1
    assert cmp.run([str(pa), str(pa), "--fail-on-regression"]) == 0
    (tmp_path / "bad.json").write_text("{}")
    assert cmp.run([str(pa), str(tmp_path / "bad.json")]) == 2
    assert "not a replay report" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmp.run([str(pa), str(pb), "--threshold", "lots"])


def test_shadow_agreement_on_constructed_scores():
    same = agreement([0.1, 0.7, 0.2, 0.9], [0.1, 0.7, 0.2, 0.9], [0, 1, 0, None], threshold=0.5)
    assert same["mean_abs_diff"] == 0 and same["spearman"] == pytest.approx(1.0)
    assert same["alerts"] == {"threshold": 0.5, "production": 2, "candidate": 2, "both": 2, "only_production": 0,
                              "only_candidate": 0, "agreement": 1.0}
    assert same["labelled"] == 3 and same["frauds"] == 1
    assert same["production"]["average_precision"] == same["candidate"]["average_precision"] == 1.0
    assert same["top_overlap"] == {"share": 0.01, "k": 1, "overlap": 1.0}
    flipped = agreement([0.1, 0.7, 0.2, 0.9], [0.9, 0.2, 0.7, 0.1], [0, 1, 0, 1])
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["alerts"]["agreement"] == 0.0
    assert flipped["top_overlap"]["overlap"] == 0.0
    assert agreement(range(200), range(200), top_share=0.05)["top_overlap"] == {"share": 0.05, "k": 10, "overlap": 1.0}
    assert flipped["max_abs_diff"] == pytest.approx(0.8) and flipped["candidate"]["average_precision"] == pytest.approx(5 / 12)
    assert agreement([0.2], [0.3], [0])["production"]["average_precision"] is None  # no fraud: AP undefined
    with pytest.raises(ValueError, match="one score per event"):
        agreement([0.1], [0.1, 0.2])


@pytest.mark.parametrize("argv, message", [
    (["--input", "x.parquet", "--speedup", "10", "--step"], "--step needs --rate"),
    (["--input", "x.parquet", "--rate", "0"], "--rate: must be a finite number > 0"),
    (["--input", "x.parquet", "--rate", "5", "--shadow-model-file", "m.json"], "needs --local-stack"),
    (["--input", "x.parquet", "--rate", "5", "--label-delay-days", "1"], "needs --labels"),
    (["--input", "x.parquet"], "one of the arguments --speedup --rate is required"),
])
def test_bad_arguments_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        replay_run(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_missing_or_empty_input_exits_2(tmp_path, capsys, make_frame):
    assert replay_run(["--input", str(tmp_path / "none.parquet"), "--rate", "5"]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = tmp_path / "empty.parquet"
    make_frame(5).iloc[:0].to_parquet(path)
    assert replay_run(["--input", str(path), "--rate", "5"]) == 2
    assert "no transactions" in capsys.readouterr().err


def test_series_and_stage_arithmetic_agree():
    result = step_result(rates=(10.0,), seconds=10.0, slow_from=9)
    report = report_of(result)
    s = report["series"]
    assert np.nansum(np.asarray(s["scored_tps"], dtype=float)) * s["bucket_s"] == report["accounting"]["scored"]
    assert report["stages"][0]["sustainable"] and report["step"]["note"].startswith("no stage failed")
