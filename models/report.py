"""A self-contained HTML report of a model's test periods, with inline SVG plots drawn by matplotlib.

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
from models.plots import COLORS, figure, to_svg

METRIC_LABELS = {"auc_roc": "AUC ROC", "average_precision": "Average precision"}


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _label(metric: str) -> str:
    if metric.startswith("card_precision@"):
        return "Card precision@" + metric.split("@", 1)[1]
    return METRIC_LABELS.get(metric, metric)


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
    fig, ax = figure()
    for i, o in enumerate(outcomes):
        p, r, _ = precision_recall_curve(o.test["TX_FRAUD"].to_numpy(), o.test["score"].to_numpy())
        r, p = _thin(np.r_[0.0, r], np.r_[p[0], p])
        ax.plot(r, p, color=COLORS[i % len(COLORS)], label=f"{_fold_label(o)} AP {o.metrics['average_precision']:.3f}")
    prevalence = np.mean([o.test["TX_FRAUD"].mean() for o in outcomes])
    ax.axhline(prevalence, color="#999", linestyle="--", label=f"random ({prevalence:.3%})")
    ax.set(title="Precision–recall (transactions)", xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower left", fontsize=8)  # PR curves never reach low precision at low recall
    return to_svg(fig)


def _roc_plot(outcomes) -> str:
    fig, ax = figure()
    for i, o in enumerate(outcomes):
        fpr, tpr, _ = roc_curve(o.test["TX_FRAUD"].to_numpy(), o.test["score"].to_numpy())
        fpr, tpr = _thin(fpr, tpr)
        ax.plot(fpr, tpr, color=COLORS[i % len(COLORS)], label=f"{_fold_label(o)} AUC {o.metrics['auc_roc']:.3f}")
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="random")
    ax.set(title="ROC curve", xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    return to_svg(fig)


def _card_precision_plot(outcomes, k: int) -> str:
    rows = []
    for i, o in enumerate(outcomes):
        t = o.test
        cp = card_precision_at_k(event_days(t), t["CUSTOMER_ID"].to_numpy(), t["TX_FRAUD"].to_numpy(), t["score"].to_numpy(), k=k)
        for day, value, n in zip(cp.days, cp.per_day, cp.fraud_cards_per_day):
            rows.append((day, value, min(n, k) / k, i))
    rows.sort()
    n = len(rows)
    fig, ax = figure(max(4.8, 0.38 * n + 1.2), 3.3)
    x = np.arange(n)
    for i in sorted({r[3] for r in rows}):
        sel = np.array([r[3] == i for r in rows])
        ax.bar(x[sel], np.array([r[1] for r in rows])[sel], width=0.7, color=COLORS[i % len(COLORS)],
               label=_fold_label(outcomes[i]))
    ax.plot(x, [r[2] for r in rows], "k_", markersize=12, linestyle="none",
            label=f"best possible (compromised cards / {k})")
    mean = float(np.mean([r[1] for r in rows])) if rows else 0.0
    ax.axhline(mean, color="#555", linestyle="--", label=f"mean {mean:.3f}")
    step = max(1, n // 14)
    ax.set_xticks(x[::step], [rows[j][0].strftime("%m-%d") if isinstance(rows[j][0], dt.date) else str(rows[j][0])
                              for j in range(0, n, step)])
    top = max([r[2] for r in rows] + [r[1] for r in rows] + [0.1])
    ax.set(title=f"Card precision@{k} per test day", xlabel="Test day", ylabel=f"Card precision@{k}",
           xlim=(-0.5, n - 0.5), ylim=(0, min(1.0, np.ceil(top * 1.4 * 10) / 10)))
    ax.legend(loc="upper right", fontsize=8, ncols=2)
    return to_svg(fig)


def _score_plot(outcomes) -> str:
    scores = np.concatenate([o.test["score"].to_numpy() for o in outcomes])
    fraud = np.concatenate([o.test["TX_FRAUD"].to_numpy() for o in outcomes]) == 1
    fig, ax = figure()
    edges = np.linspace(0, 1, 41)
    ax.hist([scores[~fraud], scores[fraud]], bins=edges, color=["#1f77b4", "#d62728"], log=True,
            label=[f"genuine ({(~fraud).sum():,})", f"fraud ({fraud.sum():,})"])
    ax.set(title="Score distribution by class", xlabel="Fraud score", ylabel="Transactions (log scale)", xlim=(0, 1))
    ax.legend(loc="upper right", fontsize=8)
    return to_svg(fig)


def _importance_plot(outcomes) -> str:
    names = sorted({name for o in outcomes for name in o.importance})
    if not names:
        return "<p>No feature importance (the model has no splits).</p>"
    shares = []
    for o in outcomes:
        total = sum(o.importance.values()) or 1.0
        shares.append([o.importance.get(name, 0.0) / total for name in names])
    mean = np.mean(shares, axis=0)
    order = np.argsort(mean)  # largest at the top
    fig, ax = figure(6.4, 0.6 + 0.22 * len(names))
    bars = ax.barh([names[j] for j in order], mean[order], color="#2ca02c")
    ax.bar_label(bars, labels=[f"{mean[j]:.1%}" for j in order], padding=3, fontsize=8)
    ax.set(title="Feature importance (share of total gain, mean over folds)", xlim=(0, mean.max() * 1.2 or 1))
    ax.grid(axis="y", visible=False)
    return to_svg(fig)


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
