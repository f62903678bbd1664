"""``--every DURATION``: a long capture analysed one window after the other.

The span to cover is ``--since`` / ``--until`` (each defaulting to the capture's first and last
record, from its SQLite files); it is cut into windows of ``DURATION`` and each is analysed as
``--since`` / ``--until`` would (time_window.py) into its own folder under the output folder,
named by the window's start (``20261207-140000``). Memory is that of one window, whatever the
capture's length. ``windows.csv`` in the output folder has one row per window: its start and
end, its folder (empty for a window without records), the analysis's exit status, and from its
tables (whatever ``--format`` writes) the requests (all, complete), TTFT and end-to-end p50 /
p99 of the complete ones, output tokens/s (service_summary's: complete requests' tokens, so
lowered by the requests the window's edges cut), the engine steps' decode and scheduled tokens
per second of the window (not lowered so) and the engine steps: how the service went, window
by window.
"""

from __future__ import annotations

import csv
import gc
import logging
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.allocator import give_back_free_memory
from otel_vllm_ascend.analysis.time_window import _EPOCH, TimeWindow, text_of

_logger = logging.getLogger("otel_vllm_ascend.analysis")

WINDOWS_CSV = "windows.csv"
COLUMNS = ("window_start", "window_end", "folder", "status", "requests", "complete_requests",
           "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "output_tokens_per_s",
           "decode_tokens_per_s", "scheduled_tokens_per_s", "engine_steps")


def cut(span: TimeWindow, every_us: int) -> list[TimeWindow]:
    """``span`` (finite) cut into windows of ``every_us``, the last one shorter."""
    starts = range(int(span.since_us), int(span.until_us), every_us)
    return [TimeWindow(start, min(start + every_us, span.until_us)) for start in starts]


def folder_name(since_us: int) -> str:
    moment = _EPOCH + timedelta(microseconds=since_us)
    name = moment.strftime("%Y%m%d-%H%M%S")
    return name if not moment.microsecond else f"{name}.{moment.microsecond:06d}"


NO_RECORDS = -1  # what ``analyse_one`` returns for a window without records


def run_every(analyse_one: Callable[[Path, TimeWindow, dict], int], out: Path,
              span: TimeWindow, every_us: int) -> int:
    """Analyse each window of ``span`` with ``analyse_one(folder, window, figures)`` (its exit
    status, or :data:`NO_RECORDS`; it puts the window's :func:`figures_of` into ``figures``)
    and write ``windows.csv``. Returns the worst exit status."""
    windows = cut(span, every_us)
    _logger.info("%d window(s) of %s s from %s", len(windows), f"{every_us / 1e6:g}",
                 span.describe())
    rows, worst = [], 0
    for index, window in enumerate(windows, 1):
        folder = out / folder_name(int(window.since_us))
        _logger.info("window %d of %d: %s", index, len(windows), window.describe())
        figures: dict = {}
        status = analyse_one(folder, window, figures)
        # The analysis runs with the cyclic collector off (cli.main): what pandas leaves in
        # cycles would otherwise add up, window after window.
        gc.collect()
        give_back_free_memory()
        row = {"window_start": text_of(window.since_us), "window_end": text_of(window.until_us),
               "folder": folder.name, "status": max(status, 0)}
        if status == NO_RECORDS:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            row.update(folder="", requests=0)
        else:
            worst = max(worst, status)
            row.update(figures)
        rows.append(row)
    path = out / WINDOWS_CSV
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(windows)} window(s) analysed, one folder each under {out}; one row each in"
          f" {path}")
    return worst


def figures_of(requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
               tables: dict, window: TimeWindow) -> dict:
    """One window's row figures, from the analysis's tables as it wrote them."""
    figures: dict = {}
    if requests is not None:
        complete = requests.loc[~requests["partial"].astype(bool)]
        figures.update(requests=len(requests), complete_requests=len(complete))
        for key, column in (("ttft", "ttft_ms"), ("e2e", "e2e_ms")):
            values = complete[column].to_numpy(dtype="float64")
            values = values[np.isfinite(values)]
            if values.size:
                figures[f"{key}_p50_ms"] = round(float(np.percentile(values, 50)), 3)
                figures[f"{key}_p99_ms"] = round(float(np.percentile(values, 99)), 3)
    service = tables.get("service_summary")
    if service is not None:
        values = dict(zip(service["Metric"], service["Value"]))
        figures["output_tokens_per_s"] = values.get("generate_token_speed (token/s)", "")
        figures["engine_steps"] = values.get("engine_step_num", "")
    if batches is not None:  # one row per engine step
        seconds = (window.until_us - window.since_us) / 1e6
        for key, column in (("decode_tokens_per_s", "Decode_scheduled_tokens"),
                            ("scheduled_tokens_per_s", "total_scheduled_tokens")):
            tokens = float(np.nansum(batches[column].to_numpy(dtype="float64")))
            figures[key] = round(tokens / seconds, 4)
    return figures
