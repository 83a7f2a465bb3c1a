"""The streaming benchmark's arithmetic and parsing (the benchmark itself needs the emulator and minutes)."""

from __future__ import annotations

import math

import pytest

from loadtest import bench_stream as bs


def test_steady_rate_counts_outputs_between_the_quantiles():
    times = [float(t) for t in range(11)]  # one output a second
    assert bs.steady_rate(times) == pytest.approx(1.0)
    assert bs.steady_rate(list(reversed(times))) == pytest.approx(1.0)  # order does not matter
    # a slow start and a slow tail are left out: 10 outputs at 0.1 s spacing between two long gaps
    burst = [0.0] + [10 + i / 10 for i in range(100)] + [100.0]
    assert bs.steady_rate(burst) == pytest.approx(10.0, rel=0.02)
    assert bs.steady_rate(burst, 0.0, 1.0) == pytest.approx(101 / 100)


def test_steady_rate_edge_cases():
    assert math.isnan(bs.steady_rate([]))
    assert math.isnan(bs.steady_rate([1.0]))
    assert bs.steady_rate([2.0, 2.0, 2.0]) == math.inf
    with pytest.raises(ValueError):
        bs.steady_rate([1.0, 2.0], 0.9, 0.1)


def test_cpu_per_message_uses_the_same_span():
    times = [float(t) for t in range(11)]
    cpu = [(0.0, 0.0), (10.0, 5.0)]  # 0.5 CPU s per wall s
    assert bs.cpu_per_message(times, cpu) == pytest.approx(0.5)  # one output per wall second
    assert bs.interpolate(cpu, -1) == 0.0 and bs.interpolate(cpu, 99) == 5.0
    assert bs.interpolate(cpu, 4.0) == pytest.approx(2.0)
    assert math.isnan(bs.cpu_per_message(times, [(0.0, 1.0)]))


def test_proc_parsers():
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  251904 kB\nVmRSS:\t  250000 kB\n"
    assert bs.proc_status_kib(status, "VmHWM") == 251904
    assert bs.proc_status_kib(status, "VmSwap") is None
    stat = "1234 (python -m x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 77 0"
    assert bs.proc_stat_cpu_ticks(stat) == 300


def test_own_process_is_readable():
    import os

    assert bs.peak_rss_mib(os.getpid()) > 1
    assert bs.cpu_seconds(os.getpid()) > 0


def test_variants_parse_and_alternate():
    assert bs.parse_variant("features") == bs.Variant("features", "features", 100, 30.0, True)
    v = bs.parse_variant("scoring-pull10-wait30")
    assert (v.base, v.pull_size, v.pull_timeout, v.tuned) == ("scoring", 10, 30.0, True)
    assert v.job_flags() == ["--pull-size", "10", "--pull-timeout", "30.0"]
    untuned = bs.parse_variant("bare-untuned")
    assert not untuned.tuned and untuned.tuning == () and untuned.job_flags()[-1] == "--untuned"
    for bad in ("nope", "features-pull0", "features-x", "features-wait0", "features-untuned-pull10"):
        with pytest.raises(ValueError):
            bs.parse_variant(bad)
    assert bs.variant_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert bs.variant_order(["a", "b", "c"], 1) == ["c", "b", "a"]


def test_baseline_is_the_bare_run_with_the_same_tuning():
    names = ("bare", "features", "bare-untuned", "features-untuned", "scoring-wait2")
    variants = [bs.parse_variant(n) for n in names]
    by = {v.name: v for v in variants}
    assert bs.baseline_of(by["features"], variants).name == "bare"
    assert bs.baseline_of(by["features-untuned"], variants).name == "bare-untuned"
    assert bs.baseline_of(by["scoring-wait2"], variants).name == "bare"  # no bare-wait2: plain bare
    assert bs.baseline_of(by["bare-untuned"], variants) is None


def test_job_commands_pass_the_tuning_to_every_kind():
    class Emulator:
        project, host_port = "local-project", "127.0.0.1:1"

    names = {k: k for k in ("in_sub", "out", "dead", "labels_sub")}
    real = bs._job_command(bs.parse_variant("features-pull50"), Emulator, names, "off", None)
    assert real[1:3] == ["-m", "streaming.job.pipeline"] and real[-4:] == ["--local-pull-size", "50", "--local-pull-deadline", "30.0"]
    assert bs._job_command(bs.parse_variant("features-untuned"), Emulator, names, "off", None)[-1] == "--no-local-tuning"
    bare = bs._job_command(bs.parse_variant("bare-untuned"), Emulator, names, "off", None)
    assert "bare-job" in bare and "--untuned" in bare
    names["alerts"] = "alerts"
    scoring = bs._job_command(bs.parse_variant("scoring"), Emulator, names, "off", None, predictor="h:1")
    assert scoring[1:3] == ["-m", "streaming.job.pipeline"] and scoring[scoring.index("--predictor") + 1] == "h:1"
    assert scoring[scoring.index("--scores-topic") + 1] == "out"
    with pytest.raises(ValueError, match="needs a predictor"):
        bs._job_command(bs.parse_variant("scoring"), Emulator, names, "off", None)


def test_median_ignores_missing_values():
    assert bs.median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(bs.median([math.nan]))


def test_learn_log_and_monitor_variants_pass_the_jobs_flags(monkeypatch):
    class Emulator:
        project, host_port = "local-project", "127.0.0.1:1"

    monkeypatch.setattr(bs, "_REGISTRY", ["/reg"])
    names = {k: k for k in ("in_sub", "out", "dead", "labels_sub", "alerts", "monitoring", "log_dir")}
    learn = bs._job_command(bs.parse_variant("scoring-learn"), Emulator, names, "backlog", None, predictor="h:1")
    full = bs._job_command(bs.parse_variant("scoring-learn-log-monitor"), Emulator, names, "backlog", None,
                           predictor="h:1")
    assert learn[learn.index("--registry") + 1] == "/reg" and "--example-log" not in learn
    assert "--live-monitoring" not in learn
    assert full[full.index("--example-log") + 1] == "log_dir" and "--live-monitoring" in full
    assert [a for a in full if a not in ("--example-log", "log_dir", "--live-monitoring")] == learn
    for bad, why in (("features-log", "needs the scoring job"), ("scoring-log-monitor", "-monitor needs -learn")):
        with pytest.raises(ValueError, match=why):
            bs.parse_variant(bad)
