"""A self-contained HTML report of a model's test periods, with inline SVG plots (no plotting library).

What a fraud analyst looks at: the metrics per fold, precision–recall and ROC curves, card
precision@k per day next to the number of compromised cards there were to find, score
distributions of frauds and genuine transactions, and feature importance.

:func:`render_report` takes fold outcomes — objects with ``split`` (a
:class:`~models.evaluation.Split`), ``metrics`` (dict), ``importance`` (feature → total gain)
and ``test`` (a frame with ``TX_DATETIME``, ``CUSTOMER_ID``, ``TX_FRAUD`` and ``score``) —
such as :class:`models.training.FoldOutcome`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence

import numpy as np

from models.evaluation import card_precision_at_k, event_days, precision_recall_curve, roc_curve

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
WIDTH, HEIGHT = 460, 320
MARGIN = dict(left=58, right=16, top=28, bottom=44)
METRIC_LABELS = {"auc_roc": "AUC ROC", "average_precision": "Average precision"}


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _label(metric: str) -> str:
    if metric.startswith("card_precision@"):
        return "Card precision@" + metric.split("@", 1)[1]
    return METRIC_LABELS.get(metric, metric)


def _nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) in [lo, hi]."""
    raw = (hi - lo) / target or 1.0
    mag = 10.0 ** np.floor(np.log10(raw))
    step = mag * next(m for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    first = np.ceil(lo / step - 1e-9) * step
    return [float(round(v, 10)) + 0.0 for v in np.arange(first, hi + step * 1e-6, step)]  # no "-0"


class _Plot:
    """One SVG chart with linear axes; data coordinates in, pixels out."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float], ylim: tuple[float, float],
                 width: int = WIDTH, height: int = HEIGHT, ylog: bool = False):
        self.w, self.h, self.ylog = width, height, ylog
        self.x0, self.x1 = xlim
        self.y0, self.y1 = (np.log10(ylim[0]), np.log10(ylim[1])) if ylog else ylim
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel

    def px(self, x) -> np.ndarray:
        span = (self.x1 - self.x0) or 1.0
        return MARGIN["left"] + (np.asarray(x, dtype=float) - self.x0) / span * (self.w - MARGIN["left"] - MARGIN["right"])

    def py(self, y) -> np.ndarray:
        y = np.asarray(y, dtype=float)
        if self.ylog:
            y = np.log10(np.maximum(y, 10 ** self.y0))
        span = (self.y1 - self.y0) or 1.0
        return self.h - MARGIN["bottom"] - (y - self.y0) / span * (self.h - MARGIN["top"] - MARGIN["bottom"])

    def line(self, x, y, color: str, label: str | None = None, width: float = 1.6, dash: str | None = None) -> None:
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(self.px(x), self.py(y)))
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{extra} points="{pts}"/>')
        if label:
            self.legend.append((color, label))

    def bars(self, x_left, x_right, y, color: str, label: str | None = None, opacity: float = 0.85) -> None:
        base = self.py(10 ** self.y0 if self.ylog else max(self.y0, 0.0))
        for a, b, top in zip(self.px(x_left), self.px(x_right), self.py(y)):
            self.parts.append(f'<rect x="{a:.1f}" y="{min(top, base):.1f}" width="{max(b - a, 0.5):.1f}" '
                              f'height="{abs(base - top):.1f}" fill="{color}" fill-opacity="{opacity}"/>')
        if label:
            self.legend.append((color, label))

    def markers(self, x, y, color: str, label: str | None = None) -> None:
        for a, b in zip(self.px(x), self.py(y)):
            self.parts.append(f'<path d="M{a - 4:.1f},{b:.1f}h8" stroke="{color}" stroke-width="2.5"/>')
        if label:
            self.legend.append((color, label))

    def _ticks(self, lo: float, hi: float, log: bool) -> list[float]:
        if log:
            return [10.0 ** e for e in range(int(np.ceil(lo)), int(np.floor(hi)) + 1)]
        return _nice_ticks(lo, hi)

    def svg(self, xticks: Sequence[tuple[float, str]] | None = None, legend_at: str = "top right") -> str:
        left, right = MARGIN["left"], self.w - MARGIN["right"]
        top, bottom = MARGIN["top"], self.h - MARGIN["bottom"]
        axes = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafafa" stroke="#bbb"/>']
        for v in self._ticks(self.y0, self.y1, self.ylog):
            y = float(self.py(v))
            text = f"{v:g}" if self.ylog else f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.0f}"
            axes.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                        f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_esc(text)}</text>')
        ticks = xticks if xticks is not None else [(v, f"{v:.2f}".rstrip("0").rstrip(".")) for v in _nice_ticks(self.x0, self.x1)]
        for v, text in ticks:
            x = float(self.px(v))
            axes.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#888"/>'
                        f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_esc(text)}</text>')
        axes.append(f'<text x="{(left + right) / 2:.0f}" y="{self.h - 8}" text-anchor="middle">{_esc(self.xlabel)}</text>')
        axes.append(f'<text transform="translate(14,{(top + bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">{_esc(self.ylabel)}</text>')
        axes.append(f'<text x="{left}" y="18" font-weight="bold">{_esc(self.title)}</text>')
        legend = []
        first = top + 14 if legend_at.startswith("top") else bottom - 8 - 15 * (len(self.legend) - 1)
        if legend_at.endswith("left"):
            x = left + 10
        else:
            x = right - 20 - 6.2 * max((len(label) for _, label in self.legend), default=0)  # ~6 px per character
        for i, (color, label) in enumerate(self.legend):
            y = first + 15 * i
            legend.append(f'<rect x="{x:.0f}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
                          f'<text x="{x + 15:.0f}" y="{y}">{_esc(label)}</text>')
        body = "".join(axes + self.parts + legend)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif" font-size="11">{body}</svg>')


def _thin(x: np.ndarray, y: np.ndarray, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``n`` points of a curve, evenly spaced along its length (ends kept), so
    steep and flat stretches are both drawn faithfully."""
    if len(x) <= n:
        return x, y
    along = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    idx = np.searchsorted(along, np.linspace(0.0, along[-1], n))
    idx = np.unique(np.r_[0, np.minimum(idx, len(x) - 1), len(x) - 1])
    return x[idx], y[idx]


def _fold_label(outcome) -> str:
    test = outcome.split.to_dict()["test"]
    return f"test {test[0][5:]}..{test[1][5:]}"


def _pr_plot(outcomes) -> str:
    plot = _Plot("Precision–recall (transactions)", "Recall", "Precision", (0, 1), (0, 1))
    for i, o in enumerate(outcomes):
        p, r, _ = precision_recall_curve(o.test["TX_FRAUD"].to_numpy(), o.test["score"].to_numpy())
        r, p = _thin(np.r_[0.0, r], np.r_[p[0], p])
        plot.line(r, p, COLORS[i % len(COLORS)], f"{_fold_label(o)} AP {o.metrics['average_precision']:.3f}")
    prevalence = np.mean([o.test["TX_FRAUD"].mean() for o in outcomes])
    plot.line([0, 1], [prevalence, prevalence], "#999", f"random ({prevalence:.3%})", dash="4 3")
    return plot.svg(legend_at="bottom left")  # PR curves never reach low precision at low recall


def _roc_plot(outcomes) -> str:
    plot = _Plot("ROC curve", "False positive rate", "True positive rate", (0, 1), (0, 1))
    for i, o in enumerate(outcomes):
        fpr, tpr, _ = roc_curve(o.test["TX_FRAUD"].to_numpy(), o.test["score"].to_numpy())
        fpr, tpr = _thin(fpr, tpr)
        plot.line(fpr, tpr, COLORS[i % len(COLORS)], f"{_fold_label(o)} AUC {o.metrics['auc_roc']:.3f}")
    plot.line([0, 1], [0, 1], "#999", "random", dash="4 3")
    return plot.svg(legend_at="bottom right")


def _card_precision_plot(outcomes, k: int) -> str:
    rows = []
    for i, o in enumerate(outcomes):
        t = o.test
        cp = card_precision_at_k(event_days(t), t["CUSTOMER_ID"].to_numpy(), t["TX_FRAUD"].to_numpy(), t["score"].to_numpy(), k=k)
        for day, value, n in zip(cp.days, cp.per_day, cp.fraud_cards_per_day):
            rows.append((day, value, min(n, k) / k, i))
    rows.sort()
    n = len(rows)
    width = max(WIDTH, 36 * n + MARGIN["left"] + MARGIN["right"])
    top = max([r[2] for r in rows] + [r[1] for r in rows] + [0.1])
    ymax = min(1.0, np.ceil(top * 1.4 * 10) / 10)  # headroom for the legend, on a 0.1 grid
    plot = _Plot(f"Card precision@{k} per test day", "Test day", f"Card precision@{k}", (-0.5, n - 0.5),
                 (0, ymax), width=width)
    x = np.arange(n)
    for i in sorted({r[3] for r in rows}):
        sel = np.array([r[3] == i for r in rows])
        plot.bars(x[sel] - 0.35, x[sel] + 0.35, np.array([r[1] for r in rows])[sel], COLORS[i % len(COLORS)],
                  _fold_label(outcomes[i]))
    plot.markers(x, [r[2] for r in rows], "#000", f"best possible (compromised cards / {k})")
    mean = float(np.mean([r[1] for r in rows]))
    plot.line([-0.5, n - 0.5], [mean, mean], "#555", f"mean {mean:.3f}", dash="4 3")
    step = max(1, n // 14)
    ticks = [(j, rows[j][0].strftime("%m-%d") if isinstance(rows[j][0], dt.date) else str(rows[j][0])) for j in range(0, n, step)]
    return plot.svg(xticks=ticks)


def _score_plot(outcomes) -> str:
    scores = np.concatenate([o.test["score"].to_numpy() for o in outcomes])
    fraud = np.concatenate([o.test["TX_FRAUD"].to_numpy() for o in outcomes]) == 1
    edges = np.linspace(0, 1, 41)
    genuine_counts, _ = np.histogram(scores[~fraud], bins=edges)
    fraud_counts, _ = np.histogram(scores[fraud], bins=edges)
    peak = max(genuine_counts.max(initial=1), fraud_counts.max(initial=1))
    plot = _Plot("Score distribution by class", "Fraud score", "Transactions (log scale)", (0, 1),
                 (0.5, 10 ** np.ceil(np.log10(peak + 1) + 0.5)), ylog=True)
    middle = (edges[:-1] + edges[1:]) / 2  # genuine in the left half of each bin, fraud in the right
    plot.bars(edges[:-1], middle, np.maximum(genuine_counts, 1e-9), "#1f77b4", f"genuine ({(~fraud).sum():,})")
    plot.bars(middle, edges[1:], np.maximum(fraud_counts, 1e-9), "#d62728", f"fraud ({fraud.sum():,})")
    return plot.svg()


def _importance_plot(outcomes) -> str:
    names = sorted({name for o in outcomes for name in o.importance})
    if not names:
        return "<p>No feature importance (the model has no splits).</p>"
    shares = []
    for o in outcomes:
        total = sum(o.importance.values()) or 1.0
        shares.append([o.importance.get(name, 0.0) / total for name in names])
    mean = np.mean(shares, axis=0)
    order = np.argsort(-mean)
    height = 30 + 20 * len(names)
    left = 250
    width = WIDTH + 120
    bar_span = width - left - 60
    scale = bar_span / max(mean.max(), 1e-12)
    parts = [f'<text x="10" y="18" font-weight="bold">Feature importance (share of total gain, mean over folds)</text>']
    for row, j in enumerate(order):
        y = 30 + 20 * row
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{_esc(names[j])}</text>'
                     f'<rect x="{left}" y="{y + 2}" width="{mean[j] * scale:.1f}" height="14" fill="#2ca02c"/>'
                     f'<text x="{left + mean[j] * scale + 4:.1f}" y="{y + 13}">{mean[j]:.1%}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif" font-size="11">{"".join(parts)}</svg>')


def _metrics_table(outcomes, reference: dict | None) -> str:
    metrics = list(outcomes[0].metrics)
    head = "".join(f"<th>{_esc(_label(m))}</th>" for m in metrics)
    rows = []
    for o in outcomes:
        d = o.split.to_dict()
        cells = "".join(f"<td>{o.metrics[m]:.3f}</td>" for m in metrics)
        rows.append(f"<tr><td>{d['train'][0]} .. {d['train'][1]}</td><td>{d['test'][0]} .. {d['test'][1]}</td>"
                    f"<td>{len(o.test):,}</td><td>{int(o.test['TX_FRAUD'].sum()):,}</td>{cells}</tr>")
    if len(outcomes) > 1:
        cells = "".join(f"<td><b>{np.mean([o.metrics[m] for o in outcomes]):.3f}</b></td>" for m in metrics)
        rows.append(f'<tr><td colspan="4"><b>mean over {len(outcomes)} folds</b></td>{cells}</tr>')
    if reference:
        cells = "".join(f"<td>{reference[m]:.3f}</td>" if m in reference else "<td>-</td>" for m in metrics)
        rows.append(f'<tr class="ref"><td colspan="4">handbook (reference)</td>{cells}</tr>')
    return (f"<table><tr><th>training days</th><th>test days</th><th>test transactions</th><th>test frauds</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _selection_table(selection, top: int = 10) -> str:
    ranked = selection.ranked()[:top]  # best first, as the selection ranked them
    label = ", ties broken by ".join(_label(m) for m in selection.metrics)
    metrics = list(ranked[0]["mean"])
    head = "".join(f"<th>{_esc(_label(m))}</th>" for m in metrics)
    rows = "".join(
        f"<tr{' class=best' if r['params'] == selection.best else ''}><td><code>{_esc(json.dumps(r['params']))}</code></td>"
        + "".join(f"<td>{r['mean'][m]:.3f} ± {r['std'][m]:.3f}</td>" for m in metrics) + "</tr>" for r in ranked)
    return (f"<p>Chosen by mean validation {_esc(label)} over {len(ranked[0]['folds'])} validation folds "
            f"({len(selection.results)} candidates; top {len(ranked)} shown; test data was not used).</p>"
            f"<table><tr><th>parameters</th>{head}</tr>{rows}</table>")


CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right}
th{background:#f0f0f0}td:first-child{text-align:left}tr.best td{background:#e8f5e9}tr.ref td{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:16px}.note{color:#555;font-size:13px}code{font-size:12px}
"""


def render_report(outcomes: Sequence, *, title: str, params: dict | None = None, selection=None,
                  reference: dict | None = None, top_k: int = 100, notes: Sequence[str] = ()) -> str:
    """The HTML report (a string) of one or more assessed test folds."""
    if not outcomes:
        raise ValueError("a report needs at least one assessed test fold")
    sections = [f"<h1>{_esc(title)}</h1>",
                f'<p class="note">Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Test sets leave out cards already '
                f"known to be compromised; card precision@{top_k} ranks each day's cards by their highest score, "
                "and cards caught on a day leave the later days (handbook chapter 4).</p>"]
    sections += [f'<p class="note">{_esc(n)}</p>' for n in notes]
    if params is not None:
        sections.append(f"<p>Model parameters: <code>{_esc(json.dumps(params))}</code></p>")
    sections += ["<h2>Test performance</h2>", _metrics_table(outcomes, reference),
                 '<div class="grid">', _pr_plot(outcomes), _roc_plot(outcomes), "</div>",
                 "<h2>Alerts: card precision per day</h2>", _card_precision_plot(outcomes, top_k),
                 '<div class="grid">', _score_plot(outcomes), _importance_plot(outcomes), "</div>"]
    if selection is not None:
        sections += ["<h2>Model selection (validation folds)</h2>", _selection_table(selection)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>")


def write_report(path, outcomes: Sequence, **kwargs) -> str:
    """Render the report and, if ``path`` is given, write it there; returns the HTML."""
    text = render_report(outcomes, **kwargs)
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return text
