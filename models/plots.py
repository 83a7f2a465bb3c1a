"""Plots for the HTML reports (models/report.py, loadtest/replay_report.py), drawn by matplotlib.

:func:`figure` gives a figure and axes with the reports' look; :func:`to_svg` turns a figure into
inline SVG (text kept as text, so a report can be searched and read by screen readers) and
closes it. The Agg backend is used: no display needed.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
         "axes.grid": True, "grid.color": "#e5e5e5", "axes.spines.top": False, "axes.spines.right": False,
         "svg.hashsalt": "streamscore"}


def figure(width_in: float = 4.8, height_in: float = 3.3):
    """``(fig, ax)`` in the reports' style."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(width_in, height_in), layout="constrained")
    return fig, ax


def to_svg(fig) -> str:
    """The figure as an inline ``<svg ...>...</svg>`` element (no XML prolog); closes the figure."""
    buffer = io.StringIO()
    with plt.rc_context(STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]
