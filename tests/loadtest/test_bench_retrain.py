"""The weekly-retrain benchmark on the reference data (skipped when ../shared/data/fraud-handbook is absent)."""

import json

import pytest

from loadtest import bench_retrain
from streaming.io.datasets import reference_dir


@pytest.mark.reference
def test_weekly_retrain_reports_both_models_with_intervals(capsys):
    if not (reference_dir() / "features_2018-04_to_2018-08.parquet").exists():
        pytest.skip(f"reference data not found at {reference_dir()} (../shared/data/fraud-handbook is absent)")
    assert bench_retrain.run(["--weeks", "2", "--resamples", "50", "--nthread", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    weeks = [json.loads(line) for line in lines[:2]]
    result = json.loads("\n".join(lines[2:]))
    # Week 1's model is the bootstrap: the once model and the maintained one are the same.
    assert weeks[0]["promoted"] and weeks[0]["ap_once"] == weeks[0]["ap_maintained"]
    assert [w["test_week"] for w in weeks] == ["2018-08-08", "2018-08-15"]
    for model in ("once", "maintained"):
        lo, hi = result[model]["ap_interval"]
        assert lo <= result[model]["average_precision"] <= hi
        lo, hi = result[model]["cp100_interval"]
        assert lo <= result[model]["card_precision@100"] <= hi


@pytest.mark.reference
def test_the_whole_loop_week_by_week_shadows_promotes_and_watches(capsys):
    if not (reference_dir() / "features_2018-04_to_2018-08.parquet").exists():
        pytest.skip(f"reference data not found at {reference_dir()} (../shared/data/fraud-handbook is absent)")
    assert bench_retrain.run(["--weeks", "3", "--resamples", "50", "--nthread", "1", "--loop",
                              "--shadow-events", "2000", "--min-ap", "0.99"]) == 0
    lines = capsys.readouterr().out.splitlines()
    weeks = [json.loads(line) for line in lines[:3]]
    result = json.loads("\n".join(lines[3:]))
    assert result["loop"] and weeks[0]["promoted"] and not weeks[0]["shadow"]  # the bootstrap: no champion to shadow
    assert not any(w["promoted"] for w in weeks[1:])  # after the bootstrap only the controller promotes
    shadowed = [w for w in weeks[1:] if w["shadow"]]
    assert shadowed, "no weekly challenger passed the gate: nothing went to shadow"
    for week in shadowed:  # promoted after 2000 shadow events, then rolled back: AP 0.99 is out of reach
        assert week["controller"]["shadow"]["action"] == "promote"
        assert week["controller"]["watch"]["action"] == "rollback" and "below the bound 0.99" in week["controller"]["watch"]["reason"]
        assert week["production_after"] == week["maintained_version"]
    for week in weeks[1:]:
        if not week["shadow"]:
            assert week["controller"] == {} and week["production_after"] == week["maintained_version"]
