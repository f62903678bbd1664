"""What the analyser prints at the end: warnings about partial requests and a short summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.output_jobs import _Run

_logger = logging.getLogger("otel_vllm_ascend.analysis")

# The request-table columns the summary lines read (:func:`_print_summary`).
SUMMARY_REQUEST_COLUMNS = ("partial", "ttft_ms", "e2e_ms")


def _warn_partial(requests: Optional[pd.DataFrame], windowed: bool = False) -> None:
    """Partial requests, said as a warning; as information for a time window, whose edges
    are expected to cut requests."""
    if requests is None or requests.empty:
        return
    say = _logger.info if windowed else _logger.warning
    no_start = int((~requests["has_arrival"].astype(bool)).sum())
    no_end = int((~requests["has_end"].astype(bool)).sum())
    if no_start:
        say("%d request(s) have no httpReq record (capture, or its --since window, started"
            " while they ran): kept and marked partial, arrival-based latencies left empty",
            no_start)
    if no_end:
        say("%d request(s) have no httpRes record (capture, or its --until window, ended"
            " before they finished, or the client aborted them): kept and marked partial,"
            " end-to-end latency left empty", no_end)


def _pct(values: Any, q: float) -> str:
    data = np.asarray(values, dtype="float64")
    data = data[np.isfinite(data)]
    return f"{np.percentile(data, q):.2f}" if data.size else "n/a"


def _print_summary(requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
                   tables: dict, run: _Run, out: Path) -> None:
    lines = []
    if requests is not None and not requests.empty:
        partial = int(requests["partial"].astype(bool).sum())
        lines.append(f"requests: {len(requests)} ({len(requests) - partial} complete,"
                     f" {partial} partial)")
        lines.append(f"TTFT ms: p50 {_pct(requests['ttft_ms'], 50)}"
                     f"  p99 {_pct(requests['ttft_ms'], 99)}")
        lines.append(f"end-to-end ms: p50 {_pct(requests['e2e_ms'], 50)}"
                     f"  p99 {_pct(requests['e2e_ms'], 99)}")
    else:
        lines.append("requests: 0")
    service = tables.get("service_summary")
    if service is not None:
        value = dict(zip(service["Metric"], service["Value"])).get(
            "generate_token_speed (token/s)")
        if value is not None and value == value:
            lines.append(f"output tokens/s: {value:.1f}")
    if batches is not None:
        lines.append(f"engine steps: {len(batches)}")
    names = ", ".join(p.name for p in run.written) or "nothing"
    lines.append(f"written to {out}: {names}")
    if run.failed:
        lines.append(f"not written: {', '.join(dict.fromkeys(run.failed))}")
    print("\n".join(lines))
