"""The demo's summary: a dict of sections (written as JSON) and its rendering for people."""

from __future__ import annotations

from streaming.demo import PROG
from streaming.demo.progress import Progress
from streaming.store.check import raw_transaction_check


def raw_check(target: str, df, progress: Progress, version: str | None = None) -> dict:
    """The summary's raw-transaction check over the sampled stream scores (see streaming/store/check.py);
    with ``version``, only the scores that version gave (the model the predictor serves now)."""
    from streaming.io.datasets import iter_transactions

    with progress.lock:
        sampled = {tid: body for tid, body in progress.sampled.items()
                   if version is None or body.get("model_version") == version}
    # The store keeps each key's latest state, so the check takes each card's last transaction whose
    # terminal saw nothing later either: its raw score must equal the stream's (up to 200 of them).
    ordered = df.sort_values("TX_DATETIME", kind="stable")
    last = ordered.drop_duplicates("CUSTOMER_ID", keep="last")
    last = last[last["TRANSACTION_ID"].isin(ordered.drop_duplicates("TERMINAL_ID", keep="last")["TRANSACTION_ID"])]
    rows = last[last["TRANSACTION_ID"].astype(str).isin(sampled)].head(200)
    try:
        return raw_transaction_check(target, list(iter_transactions(rows)), sampled)
    except Exception as exc:  # noqa: BLE001 - the check reports, it never costs the demo its summary
        return {"error": f"{type(exc).__name__}: {exc}"}


def _round(value, digits: int):
    return None if value is None or value != value else round(float(value), digits)  # NaN -> None


def build_summary(status: str, elapsed: float, version: str | None, progress: Progress, ready_s: float | None,
                  logs: dict[str, str]) -> dict:
    """The run's summary as a dict of sections (other sections can be added by key)."""
    p = progress
    unaccounted = max(p.expected - p.done, 0)
    return {
        "run": {"status": status, "verdict": "ok" if status == "completed" and unaccounted == 0 else "failed",
                "elapsed_s": round(elapsed, 1), "ready_after_s": _round(ready_s, 1), "production_model": version},
        "traffic": {"published_transactions": p.published_transactions, "published_labels": p.published_labels,
                    "malformed_injected": p.malformed, "scored": p.scored, "dead_lettered": p.dead_lettered,
                    "duplicates_seen": p.duplicates, "unaccounted": unaccounted, "alerts": p.alerts},
        "latency_ms": {"e2e_p50": _round(p.percentile(50), 0), "e2e_p99": _round(p.percentile(99), 0)},
        "average_precision": {"xgboost": _round(p.ap("batch"), 3), "online": _round(p.ap("online"), 3),
                              "xgboost_where_online": _round(p.ap("paired"), 3),
                              "online_prequential": _round(p.online_prequential_ap, 3)},
        "online": {"scored_with_online": len(p.online_scores), "snapshots": p.online_snapshots,
                   "last_version": p.online_version, "versions_served": len(p.online_served_versions),
                   "drift_events": p.drifts},
        "logs": logs,
    }


def render_summary(summary: dict, width: int = 79) -> str:
    """The summary for people: a verdict line, then one line per section (each fits ``width``)."""
    run, traffic = summary["run"], summary["traffic"]
    lines = [f"{PROG}: {'OK' if run['verdict'] == 'ok' else 'FAILED'}"
             f" ({run['status']}) in {run['elapsed_s']:g} s"]
    if "traffic" in summary:
        lines.append(f"  {traffic['published_transactions']:,} transactions + {traffic['malformed_injected']}"
                     f" malformed -> {traffic['scored']:,} scored, {traffic['dead_lettered']} dead-lettered")
        lines.append(f"  {traffic['unaccounted']:,} unaccounted, {traffic['duplicates_seen']:,} duplicates,"
                     f" {traffic['alerts']:,} alerts, {traffic['published_labels']:,} labels published")
    for name, section in summary.items():
        if name in ("run", "traffic") or not isinstance(section, dict):
            continue
        if name == "logs":
            lines.append("  logs:")
            lines.extend(f"    {path}" for path in section.values())
            continue
        items = [f"{key} {_human(value)}" for key, value in section.items()
                 if value is not None and not (isinstance(value, (dict, list)) and len(str(value)) > 60)]
        if len(items) < sum(value is not None for value in section.values()):
            items.append("(more in the JSON summary)")  # nested tables (e.g. per day) do not fit a terminal
        line = f"  {name}:"
        for item in items:  # wrap at width
            if len(line) + len(item) + 2 > width:
                lines.append(line.rstrip(","))
                line = "    "
            line += f" {item},"
        lines.append(line.rstrip(","))
    return "\n".join(lines)


def _human(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
