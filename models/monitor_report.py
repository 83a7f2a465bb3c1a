"""A self-contained HTML report of ``monitoring`` events over time (``streamscore monitor --report``).

What the person on call looks at when the job raises a drift alarm: the PSI of the score and of
the features that moved most, window by window, against the warn and alarm thresholds; live
quality (AP and card precision@100 over the sliding labelled window); and, where the events carry
them (``streamscore monitor`` over a table or an example log), the alert rate and precision per
segment (:mod:`models.segments`), so a model that holds up on average but fails one group shows.

:func:`render_monitor_report` takes the events (dicts as printed by ``monitor`` or received by
``monitor --follow``: ``kind == "stability"``) in time order.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from models.plots import COLORS, figure, to_svg

#: how many features (besides the score) the PSI plot draws: those with the highest PSI seen
TOP_FEATURES = 6


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _when(event: dict, i: int) -> str:
    return str(event.get("at") or event.get("window_end") or f"window {i + 1}")[:16]


def _ticks(ax, labels: Sequence[str]) -> None:
    step = max(1, len(labels) // 10)
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], rotation=30, ha="right")


def _psi_plot(events: Sequence[dict], labels: Sequence[str]) -> str:
    names = sorted({n for e in events for n in e["psi"]})
    features = [n for n in names if n != "score"]
    top = sorted(features, key=lambda n: -max(e["psi"].get(n, 0.0) for e in events))[:TOP_FEATURES]
    fig, ax = figure(7.2, 3.6)
    x = np.arange(len(events))
    for i, name in enumerate((["score"] if "score" in names else []) + top):
        y = [e["psi"].get(name, np.nan) for e in events]
        ax.plot(x, y, marker=".", color=COLORS[i % len(COLORS)], label=name, linewidth=2.2 if name == "score" else 1.2)
    thresholds = events[-1].get("thresholds") or {}
    for key, style in (("warn", ":"), ("alarm", "--")):
        if key in thresholds:
            ax.axhline(thresholds[key], color="#555555", linestyle=style, linewidth=1, label=f"{key} {thresholds[key]:g}")
    ax.set_ylabel("PSI vs training reference")
    ax.set_title("Population stability per window")
    _ticks(ax, labels)
    ax.legend(fontsize=7, ncol=2)
    return to_svg(fig)


def _quality_plot(events: Sequence[dict], labels: Sequence[str]) -> str | None:
    live = [e.get("live") or {} for e in events]
    metrics = [m for m in ("average_precision", "card_precision@100") if any(q.get(m) is not None for q in live)]
    if not metrics:
        return None
    fig, ax = figure(7.2, 3.0)
    x = np.arange(len(events))
    for i, metric in enumerate(metrics):
        y = [np.nan if q.get(metric) is None else q[metric] for q in live]
        ax.plot(x, y, marker=".", color=COLORS[i], label=metric)
    ax.set_ylim(0, 1)
    ax.set_title("Live quality over the sliding labelled window")
    _ticks(ax, labels)
    ax.legend(fontsize=7)
    return to_svg(fig)


def _segment_plot(events: Sequence[dict], labels: Sequence[str], measure: str) -> str | None:
    series: dict[str, list[float]] = {}
    for i, event in enumerate(events):
        for family, rows in (event.get("segments") or {}).items():
            if family == "all":
                continue
            for name, row in rows.items():
                series.setdefault(f"{family}: {name}", [np.nan] * len(events))[i] = (
                    np.nan if row.get(measure) is None else row[measure])
    if not series:
        return None
    fig, ax = figure(7.2, 3.4)
    x = np.arange(len(events))
    for i, (name, y) in enumerate(sorted(series.items())):
        ax.plot(x, y, marker=".", color=COLORS[i % len(COLORS)], label=name, linewidth=1.1)
    ax.set_title(f"{measure.replace('_', ' ').capitalize()} per segment (alerts: top-100 cards per day)")
    _ticks(ax, labels)
    ax.legend(fontsize=6, ncol=2)
    return to_svg(fig)


def _table(events: Sequence[dict], labels: Sequence[str]) -> str:
    rows = []
    for label, event in zip(labels, events):
        live = event.get("live") or {}
        ap = live.get("average_precision")
        rows.append(f"<tr><td>{_esc(label)}</td><td class='{_esc(event.get('status'))}'>{_esc(event.get('status'))}</td>"
                    f"<td>{_esc(', '.join(event.get('drifted') or []) or '-')}</td>"
                    f"<td>{'-' if ap is None else f'{ap:.3f}'}</td></tr>")
    return ("<table><tr><th>window</th><th>status</th><th>past the alarm</th><th>live AP</th></tr>"
            + "".join(rows) + "</table>")


def render_monitor_report(events: Sequence[dict], title: str = "streamscore monitoring") -> str:
    """The HTML page for ``events`` (``stability`` events in time order)."""
    events = [e for e in events if isinstance(e, dict) and e.get("kind") == "stability"]
    if not events:
        raise ValueError("monitor report: no stability events to draw")
    labels = [_when(e, i) for i, e in enumerate(events)]
    alarms = sum(e.get("status") == "alarm" for e in events)
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p>{len(events)} windows from {_esc(labels[0])} to {_esc(labels[-1])}; {alarms} with a PSI alarm; "
             f"model {_esc(events[-1].get('model_version'))}.</p>",
             _psi_plot(events, labels)]
    for plot in (_quality_plot(events, labels), _segment_plot(events, labels, "alert_rate"),
                 _segment_plot(events, labels, "precision")):
        if plot is not None:
            parts.append(plot)
    parts.append(_table(events, labels))
    style = ("body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}.alarm{color:#b00}.warn{color:#a60}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
