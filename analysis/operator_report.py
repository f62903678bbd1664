"""The operators section of ``report.html``: what it shows, drawn from the operator tables.

A figure of each profiled step's host-overhead share (the part of the step in which no
operator ran, ``op_statistic.csv``) over the run, one series per process, and two tables: the
top operators by total time (``op_summary.csv``) and, per process, the mean step and operator
time and the mean and worst host-overhead share. Page assembly stays in ``report.py``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis import report_figures

HEADING = "Operators"
CAPTION = ("Profiled model steps (acl_task_time): the share of each step in which no operator "
           "ran (host overhead), by time since the capture start; then the operators with the "
           "most time and the overhead per process.")
TOP_OPERATORS = 15


def host_overhead_figure(statistic: pd.DataFrame, origin: float) -> Optional[str]:
    """Host-overhead % per profiled step over time, one series per (host, pid)."""
    if statistic is None or statistic.empty:
        return None
    figure, axes = report_figures._figure(10.5, 2.9)
    ax = axes[0][0]
    for (host, pid), part in statistic.groupby(["host", "pid"], sort=True):
        seconds = (part["start_us"].to_numpy(dtype="float64") - origin) / 1e6
        ax.plot(seconds, part["host_overhead_pct"].to_numpy(dtype="float64"), marker="o",
                markersize=3, linewidth=0.8, label=f"{host} {pid}")
    ax.set_xlabel("step start (s since capture start)")
    ax.set_ylabel("host overhead (% of step)")
    ax.set_ylim(0, 100)
    if statistic[["host", "pid"]].drop_duplicates().shape[0] > 1:
        ax.legend(loc="upper right", fontsize=7)
    return report_figures._svg(figure, "operators")


def tables(summary: Optional[pd.DataFrame], statistic: Optional[pd.DataFrame]
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top operators, per-process overhead) as shown on the page."""
    top = pd.DataFrame() if summary is None or summary.empty else \
        summary.head(TOP_OPERATORS).reset_index(drop=True)
    if statistic is None or statistic.empty:
        return top, pd.DataFrame()
    per_process = statistic.groupby(["host", "pid"], sort=True).agg(
        steps=("step", "count"), step_ms=("step_us", "mean"),
        operator_ms=("operator_us", "mean"), overhead_pct_mean=("host_overhead_pct", "mean"),
        overhead_pct_max=("host_overhead_pct", "max")).reset_index()
    per_process["step_ms"] = (per_process["step_ms"] / 1000.0).round(3)
    per_process["operator_ms"] = (per_process["operator_ms"] / 1000.0).round(3)
    per_process["overhead_pct_mean"] = per_process["overhead_pct_mean"].round(1)
    per_process["overhead_pct_max"] = np.round(per_process["overhead_pct_max"], 1)
    return top, per_process.rename(columns={
        "step_ms": "mean step (ms)", "operator_ms": "mean operator time (ms)",
        "overhead_pct_mean": "mean host overhead (%)",
        "overhead_pct_max": "max host overhead (%)"})
