"""The replay report: one JSON document with every figure, a text summary, and an HTML page with plots.

The HTML draws its plots with matplotlib (:mod:`models.plots`, as the model report does): latency
percentiles over time (by intended send time), throughput in vs out, backlog, and a latency
histogram; step-load stages are marked on the time axes.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np

from loadtest.replay_ledger import highest_sustainable, histogram, latency_figures, series
from models.online import average_precision
from models.plots import COLORS, figure, to_svg
from models.report import CSS, _esc

SCHEMA = "streamscore.loadtest.replay.v1"


def strict(value):
    """``value`` with every NaN or infinite float replaced by ``None`` (strict JSON: null = not measured)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def _rate(count: int, span: float) -> float | None:
    return count / span if span > 0 and count else None


def _quality(scores: dict, truth: dict, threshold: float = 0.5) -> dict:
    """The production model's average precision and alerts on the labelled, scored events."""
    pairs = [(s[0], truth[tid]) for tid, s in scores.items() if tid in truth and s[0] is not None]
    y = np.array([label for _, label in pairs], dtype=int)
    p = np.array([score for score, _ in pairs], dtype=float)
    return {"labelled": len(pairs), "frauds": int(y.sum()),
            "average_precision": average_precision(p, y) if len(pairs) and y.sum() else None,
            "alerts": int(np.sum(p >= threshold)), "model_versions": sorted({s[1] for s in scores.values() if s[1]})}


def examples(o, n: int = 20) -> dict:
    """Up to ``n`` events of each bad kind (id and intended send offset), to look them up in the system's logs."""
    out = {}
    for kind, sel in (("lost", o.is_lost & np.isnan(o.arrival)), ("late", o.is_late), ("dead_lettered", o.is_dead),
                      ("duplicated", o.score_count > 1)):
        idx = np.flatnonzero(sel)[:n]
        out[kind] = [{"transaction_id": o.ids[i], "intended_s": round(float(o.intended[i]), 3)} for i in idx]
    return out


def build_report(result, *, truth: dict | None = None, shadow: dict | None = None, bucket: float | None = None,
                 run: dict | None = None) -> dict:
    """Everything a replay measured, as plain JSON-able data (``None`` = not measured / beyond the timeout)."""
    o = result.outcome
    acc = o.accounting()
    acc["labels_sent"] = result.publish.report.labels
    acc["publish_retries"] = result.publish.report.retries
    last_ack = float(np.nanmax(o.acked)) if np.isfinite(o.acked).any() else 0.0
    scored_arrivals = o.arrival[o.is_scored]
    last_score = float(scored_arrivals.max()) if len(scored_arrivals) else 0.0
    last_intended = float(o.intended.max()) if len(o.intended) else 0.0
    span = max(result.elapsed_s, last_ack, last_score)
    bucket = bucket or max(1.0, round(span / 120.0))
    report = {
        "schema": SCHEMA,
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": {**(run or {}), "elapsed_s": round(result.elapsed_s, 3), "stop_reason": result.stop_reason,
                "error": result.error, "warmup": result.warmup},
        "accounting": acc,
        "examples": examples(o),
        "latency_ms": latency_figures(o),
        "throughput_tps": {"offered": _rate(acc["sent"] - 1, last_intended),  # n events span n - 1 intervals
                           "in": _rate(acc["published"], last_ack), "out": _rate(acc["scored"], last_score)},
        "series": series(o, bucket, end=span),
        "histogram": histogram(o),
        "quality": _quality(result.scores, truth or {}),
        "stages": result.assessed,
        "step": None,
        "shadow": shadow,
    }
    if result.stages is not None and run and run.get("mode") == "step":
        best = highest_sustainable(result.assessed)
        failed = next((s for s in result.assessed if not s["sustainable"]), None)
        report["step"] = {
            "slo_ms": run.get("slo_ms"), "stages_planned": len(result.stages), "stages_assessed": len(result.assessed),
            "highest_sustainable_tps": best["rate_tps"] if best else None,
            "p50_ms": best["latency_ms"]["p50"] if best else None,
            "p99_ms": best["latency_ms"]["p99"] if best else None,
            "first_unsustainable": {"rate_tps": failed["rate_tps"], "reason": failed["reason"]} if failed else None,
            "note": None if failed else "no stage failed: the highest tested rate is a lower bound",
        }
    return report


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def format_summary(report: dict) -> str:
    acc, e2e, tp = report["accounting"], report["latency_ms"]["e2e"], report["throughput_tps"]
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
    lines = [f"replay: {report['run'].get('stop_reason')} after {report['run']['elapsed_s']:.1f} s",
             f"  sent {acc['sent']:,}  published {acc['published']:,}  scored {acc['scored']:,}  "
             f"dead-lettered {acc['dead_lettered']}  lost {acc['lost']} (late {acc['late']})  "
             f"duplicates {acc['duplicates']}  foreign {acc['foreign_scores']}  labels {acc['labels_sent']:,}",
             f"  throughput tx/s: offered {fmt(tp['offered'])}  in {fmt(tp['in'])}  out {fmt(tp['out'])}",
             f"  end-to-end ms: p50 {_ms(e2e['p50'])}  p90 {_ms(e2e['p90'])}  p99 {_ms(e2e['p99'])}  "
             f"p99.9 {_ms(e2e['p99.9'])}  max {_ms(e2e['max'])}"]
    for s in report["stages"]:
        lat = s["latency_ms"]
        lines.append(f"  stage {s['stage']}: {s['rate_tps']:g} tx/s  in {s['in_tps']:.1f}  out {s['out_tps']:.1f}  "
                     f"p50 {_ms(lat['p50'])}  p99 {_ms(lat['p99'])} ms  lost {s['lost']}  -> "
                     f"{'ok' if s['sustainable'] else s['reason']}")
    step = report.get("step")
    if step:
        best = step["highest_sustainable_tps"]
        lines.append(f"  highest sustainable rate: {'none' if best is None else f'{best:g} tx/s'}"
                     + (f" (p50 {_ms(step['p50_ms'])} ms, p99 {_ms(step['p99_ms'])} ms, SLO {step['slo_ms']:g} ms)"
                        if best is not None else "") + (f"; {step['note']}" if step["note"] else ""))
    q = report["quality"]
    if q["average_precision"] is not None:
        lines.append(f"  production AP {q['average_precision']:.3f} on {q['labelled']:,} labelled ({q['frauds']} frauds)")
    sh = report.get("shadow")
    if sh:
        ap = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        diff = lambda v: "-" if v is None else f"{v:.2g}"  # noqa: E731
        lines.append(f"  shadow {sh['target']}: {sh['events']:,} events, mean |diff| {diff(sh['mean_abs_diff'])}, "
                     f"spearman {ap(sh['spearman'])}, top-1% overlap {ap(sh.get('top_overlap', {}).get('overlap'))}, alert agreement {ap(sh['alerts']['agreement'])}; AP production "
                     f"{ap(sh['production']['average_precision'])} vs candidate {ap(sh['candidate']['average_precision'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML


def _time_plot(report: dict, title: str, ylabel: str, lines: list[tuple[str, str, list]], ymin: float = 0.0,
               limit: tuple[float, str] | None = None) -> str:
    s = report["series"]
    t = np.asarray([v - s["bucket_s"] / 2 for v in s["t"]], dtype=float)
    fig, ax = figure()
    if limit is not None:
        ax.axhline(limit[0], color="#d62728", linewidth=1, linestyle="--", label=limit[1])
    for st in report["stages"]:
        ax.axvline(st["start_s"], color="#bbb", linewidth=1, linestyle=":")
    for color, label, ys in lines:  # None / non-finite values leave gaps (matplotlib skips NaN)
        ax.plot(t, [np.nan if v is None or not math.isfinite(v) else v for v in ys], color=color, label=label)
    ax.set(title=title, xlabel="Seconds since the start", ylabel=ylabel, xlim=(0, max(s["t"], default=1.0)))
    ax.set_ylim(bottom=ymin)
    ax.legend(loc="upper left", fontsize=8)
    return to_svg(fig)


def _histogram_plot(report: dict) -> str:
    h = report["histogram"]
    if not h["counts"]:
        return "<p>No scored events.</p>"
    edges = np.asarray(h["edges_ms"], dtype=float)
    counts = np.asarray(h["counts"], dtype=float)
    fig, ax = figure()
    ax.stairs(counts, edges, fill=True, color=COLORS[0], label=f"{int(counts.sum()):,} scored events")
    ax.set_xscale("log")
    ax.set(title="End-to-end latency histogram", xlabel="Latency (ms, log scale)", ylabel="Events",
           xlim=(edges[0], edges[-1]))
    ax.legend(loc="upper right", fontsize=8)
    return to_svg(fig)


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render_html(report: dict) -> str:
    run, acc, s = report["run"], report["accounting"], report["series"]
    title = f"Replay load test: {run.get('input', '')} ({run.get('mode', '')})"
    lat = report["latency_ms"]
    parts = [f"<h1>{_esc(title)}</h1>",
             f'<p class="note">Generated {report["generated_at"]}. Latency is measured from each event\'s '
             f"<b>intended</b> send time (open loop) to the Pub/Sub publish time of its score"
             f" (arrival: {_esc(run.get('arrival_time', 'publish'))}); lost events count as infinitely late"
             f" ('-' = beyond the {run.get('timeout_s', '?')} s timeout). Command: <code>{_esc(run.get('command', ''))}"
             "</code></p>",
             "<h2>Accounting</h2>", _table(list(acc), [list(acc.values())]),
             "<h2>Latency (ms)</h2>",
             _table(["leg", "count", "p50", "p90", "p99", "p99.9", "max", "mean"],
                    [[leg, v["count"], *(_ms(v[k]) for k in ("p50", "p90", "p99", "p99.9", "max", "mean"))]
                     for leg, v in lat.items()]),
             "<h2>Throughput (tx/s)</h2>", _table(list(report["throughput_tps"]),
                                                  [[_ms(v) for v in report["throughput_tps"].values()]])]
    if report["step"]:
        st = report["step"]
        parts += ["<h2>Step load</h2>",
                  f"<p>Highest sustainable rate: <b>{_esc(st['highest_sustainable_tps'] or 'none')} tx/s</b> "
                  f"(p50 {_ms(st['p50_ms'])} ms, p99 {_ms(st['p99_ms'])} ms; SLO p99 ≤ {st['slo_ms']:g} ms)"
                  f"{'; ' + _esc(st['note']) if st['note'] else ''}</p>"]
    if report["stages"]:
        parts.append(_table(["stage", "rate", "in", "out", "sent", "scored", "dead", "lost", "p50 ms", "p99 ms",
                             "verdict"],
                            [[x["stage"], f"{x['rate_tps']:g}", f"{x['in_tps']:.1f}", f"{x['out_tps']:.1f}", x["sent"],
                              x["scored"], x["dead_lettered"], x["lost"], _ms(x["latency_ms"]["p50"]),
                              _ms(x["latency_ms"]["p99"]), "sustainable" if x["sustainable"] else x["reason"]]
                             for x in report["stages"]]))
    parts += ['<div class="grid">',
              _time_plot(report, "Latency by send time", "ms", [
                  (COLORS[0], "p50", s["p50_ms"]), (COLORS[2], "p90", s["p90_ms"]), (COLORS[1], "p99", s["p99_ms"])],
                  limit=(report["step"]["slo_ms"], "SLO (p99)") if report["step"] else None),
              _time_plot(report, "Throughput", "transactions / s", [
                  ("#999", "offered (schedule)", s["sent_tps"]), (COLORS[0], "in (published)", s["published_tps"]),
                  (COLORS[1], "out (scored)", s["scored_tps"])]),
              _time_plot(report, "Backlog", "events", [
                  (COLORS[3], "published, not yet scored", s["backlog"]),
                  (COLORS[4], "due, not yet published", s["publisher_lag"])]),
              _histogram_plot(report), "</div>"]
    q = report["quality"]
    parts += ["<h2>Scores</h2>", _table(["labelled", "frauds", "production AP", "alerts", "model versions"],
                                        [[q["labelled"], q["frauds"], _ms(q["average_precision"]) if q[
                                            "average_precision"] is None else f"{q['average_precision']:.3f}",
                                          q["alerts"], ", ".join(q["model_versions"])]])]
    sh = report.get("shadow")
    if sh:
        f3 = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        al = sh["alerts"]
        parts += ["<h2>Shadow comparison</h2>",
                  _table(["candidate", "events", "mean |diff|", "max |diff|", "Spearman", "top-1% overlap",
                          "alert agreement",
                          "alerts prod / cand / both", "AP production", "AP candidate"],
                         [[f"{sh['target']} ({', '.join(sh['candidate']['model_versions'])})", sh["events"],
                           f3(sh["mean_abs_diff"]), f3(sh["max_abs_diff"]), f3(sh["spearman"]),
                           f3(sh.get("top_overlap", {}).get("overlap")), f3(al["agreement"]),
                           f"{al['production']} / {al['candidate']} / {al['both']}",
                           f3(sh["production"]["average_precision"]), f3(sh["candidate"]["average_precision"])]])]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def write_html(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
