"""``streamscore loadtest compare A.json B.json``: what changed between two replay reports, regressions flagged.

    streamscore loadtest compare before.json after.json [--threshold 10%] [--fail-on-regression]

Key figures of B are set against A (e.g. two model versions, two configurations of the job):
latencies (higher is worse), throughput and the highest sustainable rate (lower is worse),
lost / duplicated / dead-lettered events (more is worse), and average precision (lower is
worse). A continuous figure regresses when it is worse by more than ``--threshold``
(relative); a count regresses when it grows at all (and B's is above ``--count-slack``).
A figure missing or beyond the timeout (``null``) in B but present in A is a regression.
With ``--fail-on-regression`` the exit code is 1 when anything is flagged.

>>> rows = compare({"latency_ms": {"e2e": {"p99": 100.0}}}, {"latency_ms": {"e2e": {"p99": 130.0}}}, 0.1,
...                figures=(("latency_ms.e2e.p99", "e2e p99 ms", "lower"),))
>>> rows[0]["regression"], round(rows[0]["change"], 2)
(True, 0.3)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

#: (dotted path in the report, label, which direction is better: "lower" | "higher"), counts marked "count".
FIGURES = (
    ("latency_ms.e2e.p50", "end-to-end p50 ms", "lower"),
    ("latency_ms.e2e.p90", "end-to-end p90 ms", "lower"),
    ("latency_ms.e2e.p99", "end-to-end p99 ms", "lower"),
    ("latency_ms.e2e.p99.9", "end-to-end p99.9 ms", "lower"),
    ("latency_ms.e2e.max", "end-to-end max ms", "lower"),
    ("latency_ms.pipeline.p99", "pipeline (ack→score) p99 ms", "lower"),
    ("throughput_tps.in", "throughput in tx/s", "higher"),
    ("throughput_tps.out", "throughput out tx/s", "higher"),
    ("step.highest_sustainable_tps", "highest sustainable tx/s", "higher"),
    ("step.p99_ms", "p99 ms at the sustainable rate", "lower"),
    ("accounting.lost", "lost", "count"),
    ("accounting.duplicates", "duplicates", "count"),
    ("accounting.dead_lettered", "dead-lettered", "count"),
    ("quality.average_precision", "production AP", "higher"),
    ("shadow.candidate.average_precision", "shadow candidate AP", "higher"),
    ("shadow.alerts.agreement", "shadow alert agreement", "higher"),
    ("shadow.top_overlap.overlap", "shadow top-1% overlap", "higher"),
)


def lookup(report: dict, dotted: str):
    """``report["a"]["b"]...`` for ``"a.b..."``, also when a key contains a dot (``p99.9``); ``None`` if absent."""
    node, rest = report, dotted
    while rest:
        if not isinstance(node, dict):
            return None
        for key in sorted((k for k in node if rest == k or rest.startswith(k + ".")), key=len, reverse=True):
            node, rest = node[key], rest[len(key) + 1:]
            break
        else:
            return None
    return node


def compare(a: dict, b: dict, threshold: float = 0.1, *, count_slack: int = 0, figures=FIGURES) -> list[dict]:
    """One row per figure present in either report: values, relative change, regression flag."""
    rows = []
    for path, label, better in figures:
        va, vb = lookup(a, path), lookup(b, path)
        if va is None and vb is None:
            if not (path.startswith(("latency_ms.e2e", "accounting")) and (lookup(a, "accounting") or lookup(b, "accounting"))):
                continue  # absent in both (no step load, no shadow): nothing to say
        change = (vb - va) / abs(va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        if better == "count":
            regression = va is not None and vb is not None and vb > va and vb > count_slack
        elif va is None or vb is None:
            # null latency = beyond the timeout (worse than any number); a figure that vanished is a regression
            regression = va is not None and vb is None
        elif better == "lower":
            regression = vb > va * (1 + threshold) if va > 0 else vb > va
        else:
            regression = vb < va * (1 - threshold)
        rows.append({"figure": path, "label": label, "a": va, "b": vb, "change": change, "better": better,
                     "regression": bool(regression)})
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 1 else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"


def format_rows(rows: list[dict], a_name: str, b_name: str) -> str:
    width = max([len(r["label"]) for r in rows] + [6])
    lines = [f"{'figure':<{width}}  {'A':>12}  {'B':>12}  {'change':>8}", "-" * (width + 40)]
    for r in rows:
        change = "-" if r["change"] is None or not math.isfinite(r["change"]) else f"{r['change']:+.1%}"
        flag = "  REGRESSION" if r["regression"] else ""
        lines.append(f"{r['label']:<{width}}  {_fmt(r['a']):>12}  {_fmt(r['b']):>12}  {change:>8}{flag}")
    flagged = sum(r["regression"] for r in rows)
    lines.append(f"A = {a_name}, B = {b_name}: {flagged} regression{'s' if flagged != 1 else ''} flagged")
    return "\n".join(lines)


def _threshold(text: str) -> float:
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a fraction >= 0 such as 0.1 or a percentage such as 10%, got {text!r}")
    return value


def _load(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(report, dict) or "accounting" not in report or "latency_ms" not in report:
        raise ValueError(f"{path}: not a replay report (expected the JSON of `streamscore loadtest replay --json`)")
    return report


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamscore loadtest compare", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("a", type=Path, metavar="A.json", help="the baseline report")
    p.add_argument("b", type=Path, metavar="B.json", help="the report to check against it")
    p.add_argument("--threshold", type=_threshold, default=0.1, help="relative change that counts (default 10%%)")
    p.add_argument("--count-slack", type=int, default=0, help="lost/duplicate/dead counts up to this are not flagged")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    try:
        a, b = _load(args.a), _load(args.b)
    except ValueError as exc:
        print(f"streamscore loadtest compare: {exc}", file=sys.stderr)
        return 2
    rows = compare(a, b, args.threshold, count_slack=args.count_slack)
    print(format_rows(rows, str(args.a), str(args.b)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if args.fail_on_regression and any(r["regression"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(run())
