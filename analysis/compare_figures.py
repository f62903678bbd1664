"""The figures of ``compare.html``: A and B drawn together, returned as inline SVG text.

Each function takes the two runs' values (:class:`~.compare.RunValues`) or the comparison table
and returns SVG text, or None when there is nothing to draw; page assembly is
``compare_report.py``'s job. Call them inside ``matplotlib.rc_context(STYLE)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.compare import METRICS, RunValues
from otel_vllm_ascend.analysis.report_figures import COLORS, MAX_POINTS, _figure, _svg, fmt_number

SIDE_COLORS = {"A": COLORS["muted"], "B": COLORS["ttft"]}
FLAG_COLOR = COLORS["e2e"]
PANELS_PER_ROW = 3
TOP_SPANS = 20


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution function, at most ``MAX_POINTS`` steps (quantiles beyond)."""
    if values.size <= MAX_POINTS:
        x = np.sort(values)
        return x, np.arange(1, x.size + 1) / x.size
    levels = np.linspace(0.0, 1.0, MAX_POINTS)
    return np.quantile(values, levels), levels


def distribution_pairs(a: RunValues, b: RunValues,
                       verdicts: Mapping[str, str]) -> Optional[str]:
    """One panel per table metric: the distribution of A and of B (cumulative share)."""
    shown = [m for m in METRICS if a.metrics.get(m.key, np.zeros(0)).size
             or b.metrics.get(m.key, np.zeros(0)).size]
    if not shown:
        return None
    rows = math.ceil(len(shown) / PANELS_PER_ROW)
    figure, axes = _figure(10.5, 2.6 * rows + 0.4, rows, PANELS_PER_ROW)
    for index, ax in enumerate(axes.flat):
        if index >= len(shown):
            ax.set_visible(False)
            continue
        metric = shown[index]
        for run in (a, b):
            values = run.metrics.get(metric.key, np.zeros(0))
            if not values.size:
                continue
            x, y = _ecdf(values)
            # A wide and pale under B thin: identical runs show as one line with a halo.
            wide = run.label == "A"
            ax.step(x, y * 100, where="post", color=SIDE_COLORS[run.label],
                    linewidth=3.2 if wide else 1.3, alpha=0.55 if wide else 1.0,
                    label=f"{run.label}: p50 {fmt_number(np.median(values))}")
        verdict = verdicts.get(metric.label, "")
        ax.set_title(metric.label, loc="left")
        label = ax.set_xlabel(f"{metric.unit} · {verdict}" if verdict else metric.unit)
        if verdict.startswith("B "):
            label.set_color(FLAG_COLOR)
        ax.set_ylim(0, 100)
        ax.legend(loc="lower right", fontsize=8)
        if index % PANELS_PER_ROW == 0:
            ax.set_ylabel("% of values ≤ x")
    return _svg(figure, "compare-dist")


def span_medians(table: pd.DataFrame, top: int = TOP_SPANS) -> Optional[str]:
    """Median duration per span name, A and B as paired bars (the ``top`` busiest names)."""
    spans = table.loc[table["section"] == "span"].copy()
    if spans.empty:
        return None
    weight = (spans["mean_a"].fillna(0) * spans["n_a"].fillna(0).astype("float64")
              + spans["mean_b"].fillna(0) * spans["n_b"].fillna(0).astype("float64"))
    spans = spans.assign(weight=weight.to_numpy()).sort_values("weight", ascending=False)
    spans = spans.head(top).iloc[::-1]  # busiest at the top of the chart
    y = np.arange(len(spans))
    height = 0.38
    figure, axes = _figure(10.5, 0.32 * len(spans) + 1.1)
    ax = axes[0][0]
    figure.subplots_adjust(left=2.4 / 10.5)
    ax.barh(y + height / 2, spans["value_a"].fillna(0), height, color=SIDE_COLORS["A"],
            label="A")
    ax.barh(y - height / 2, spans["value_b"].fillna(0), height, color=SIDE_COLORS["B"],
            label="B")
    labels = []
    for name, flag in zip(spans["metric"].tolist(), spans["significant"].tolist()):
        labels.append(f"{name} *" if flag is True else name)
    ax.set_yticks(y, labels)
    for tick, flag in zip(ax.get_yticklabels(), spans["significant"].tolist()):
        if flag is True:
            tick.set_color(FLAG_COLOR)
    ax.set_xlabel("median duration (ms)   * difference beyond noise")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", ncols=2)
    if len(table.loc[table["section"] == "span"]) > top:
        ax.set_title(f"the {top} span names with the most time", loc="right", fontsize=8.5,
                     fontweight="normal", color=COLORS["muted"])
    return _svg(figure, "compare-spans")
