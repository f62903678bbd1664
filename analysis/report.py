"""``report.html``: one self-contained page that shows how the service behaved.

Open it in any browser, offline: plots are inline SVG drawn by matplotlib, styles are inline, no
script and no network access. The page has

* headline figures: requests (complete / partial), TTFT, time per output token and end-to-end
  latency (p50 / p99), output tokens per second, engine steps, mean batch size, peak KV usage;
* latency distributions: TTFT, time per output token and end-to-end histograms of the complete
  requests, p50 and p99 marked;
* latency over the run: TTFT and end-to-end latency of each request by arrival time;
* engine steps over time: requests per step and tokens per step, prefill and decode stacked;
* KV cache and queues over time: KV-cache usage (%) and the running / waiting queue lengths;
* operators, when the capture has operator data (``acl_task_time``): host overhead per step,
  the top operators and the host-overhead share per process (``operator_report.py``);
* the summary tables (``service_summary``, ``request_summary``, ``batch_summary``);
* the stage breakdown of prefill and decode steps (``prefill.csv``, ``decode.csv``), when given.

Time axes count seconds from the first record of the capture (its UTC time is printed in the
page header). Series longer than ``MAX_POINTS`` are drawn as per-interval means with a min-max
band, so a long capture still gives a small, fast page.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis import page_parts
from otel_vllm_ascend.analysis.report_figures import (
    LATENCY_COLUMNS,
    STYLE,
    column,
    complete_requests,
    finite,
    fmt_number,
    kv_and_queues,
    latency_histograms,
    latency_over_time,
    max_of,
    mean_of,
    queue_rows,
    steps_over_time,
)

_logger = logging.getLogger(__name__)

SUMMARY_ORDER = ("service_summary", "request_summary", "batch_summary", "dp_summary")

# Operator tables get their own section (operator_report.py), not a summary card.
OPERATOR_TABLES = ("op_summary", "op_statistic")

SUMMARY_TITLES = {"service_summary": "Service", "request_summary": "Requests",
                  "batch_summary": "Engine steps (batches)",
                  "dp_summary": "Data-parallel ranks: the load of each"}


def _fill(part: str, **values: str) -> str:
    """One part with its placeholders filled. string.Template does not escape: callers pass
    text through ``html.escape`` (or markup built from filled parts)."""
    return page_parts.parts("report_parts.html")[part].substitute(values)


@cache
def _page() -> Template:
    return Template(page_parts.template_text("report.html"))


def write_report(path: Union[str, Path], requests: pd.DataFrame, batches: pd.DataFrame,
                 kvcache: pd.DataFrame, summaries: Mapping[str, pd.DataFrame],
                 frame: Optional[pd.DataFrame] = None,
                 title: str = "vLLM service profile",
                 stage_tables: Optional[Mapping[str, pd.DataFrame]] = None,
                 queue_table: Optional[pd.DataFrame] = None) -> Path:
    """Write ``report.html`` at ``path`` (see the module docstring); returns the path.

    ``requests``, ``batches``, ``kvcache`` are the builders' tables (with their internal µs
    columns), ``summaries`` maps ``service_summary`` / ``request_summary`` / ``batch_summary``
    to their tables, ``frame`` (optional) supplies the queue-length records and the capture
    start, ``stage_tables`` (optional) the stage breakdown by phase (``prefill`` / ``decode``),
    ``queue_table`` (optional) the queue records already read from the frame
    (``report_figures.queue_rows``). Missing or empty inputs leave their section with a note,
    never an exception.
    """
    path = Path(path)
    text = render_report(requests, batches, kvcache, summaries, frame, title, stage_tables,
                         queue_table)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def render_report(requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
                  kvcache: Optional[pd.DataFrame], summaries: Mapping[str, pd.DataFrame],
                  frame: Optional[pd.DataFrame] = None,
                  title: str = "vLLM service profile",
                  stage_tables: Optional[Mapping[str, pd.DataFrame]] = None,
                  queue_table: Optional[pd.DataFrame] = None) -> str:
    """The report page as HTML text (the arguments: :func:`write_report`'s)."""
    requests = _table(requests)
    batches = _table(batches)
    kvcache = _table(kvcache)
    origin = _origin_us(frame, requests, batches, kvcache)
    if queue_table is None:
        queue_table = queue_rows(frame)
    sections = [
        ("Latency distributions",
         "Complete requests only. Solid line: median (p50); dashed line: p99.",
         lambda: latency_histograms(requests)),
        ("Latency over the run",
         "Each dot is one request, placed at its arrival time.",
         lambda: latency_over_time(requests, origin)),
        ("Engine steps over time",
         "Requests and tokens scheduled in each engine step, prefill and decode stacked.",
         lambda: steps_over_time(batches, origin)),
        ("KV cache and queues over time",
         "KV-cache block usage after each scheduling step and each request's release, and the "
         "scheduler's queue lengths.",
         lambda: kv_and_queues(kvcache, queue_table, origin)),
    ]
    body = [_header(title, requests, batches, kvcache, summaries, origin)]
    import matplotlib

    with matplotlib.rc_context(STYLE):
        for heading, caption, draw in sections:
            body.append(_section(heading, caption, draw))
        body.append(_operator_section(summaries, origin))
    body.append(_summary_tables(summaries))
    if stage_tables:
        body.append(_stage_tables(stage_tables))
    return _page().substitute(title=html.escape(title), css=page_parts.template_text("report.css"),
                              body="\n".join(body))


def _table(value: Optional[pd.DataFrame]) -> pd.DataFrame:
    return value if isinstance(value, pd.DataFrame) else pd.DataFrame()


def _origin_us(frame: Optional[pd.DataFrame], requests: pd.DataFrame, batches: pd.DataFrame,
               kvcache: pd.DataFrame) -> float:
    """The capture's first instant (µs since the epoch): time axes count from here."""
    candidates = []
    if frame is not None and not frame.empty and "start_us" in frame.columns:
        candidates.append(finite(frame["start_us"].to_numpy(dtype="float64")))
    candidates += [finite(column(requests, "arrival_us")),
                   finite(column(batches, "sched_start_us")),
                   finite(column(kvcache, "start_us"))]
    values = [c.min() for c in candidates if c.size]
    return float(min(values)) if values else 0.0


def _utc(us: float) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ----------------------------------------------------------------------------- header tiles

def _header(title: str, requests: pd.DataFrame, batches: pd.DataFrame, kvcache: pd.DataFrame,
            summaries: Mapping[str, pd.DataFrame], origin: float) -> str:
    done = complete_requests(requests, LATENCY_COLUMNS)
    partial = len(requests) - len(done)
    ends = [finite(column(requests, "end_us")), finite(column(batches, "exec_end_us")),
            finite(column(kvcache, "start_us"))]
    last = max((e.max() for e in ends if e.size), default=origin)
    tiles = [
        ("Requests", f"{len(requests):,}",
         f"{len(done):,} complete · {partial:,} partial" if len(requests) else "none found"),
        _percentile_tile("Time to first token", column(done, "ttft_ms")),
        _percentile_tile("Time per output token", column(done, "tpot_ms")),
        _percentile_tile("End-to-end latency", column(done, "e2e_ms")),
        ("Output tokens / s",
         fmt_number(_service_value(summaries, "generate_token_speed (token/s)")),
         "generated tokens ÷ first arrival to last response"),
        ("Engine steps", f"{len(batches):,}",
         "mean batch " + fmt_number(mean_of(column(batches, "total_batch_size"))) + " requests"),
        ("Peak KV-cache usage",
         fmt_number(max_of(column(kvcache, "kvcache_usage_rate")) * 100) + " %",
         "of " + fmt_number(max_of(column(kvcache, "total_blocks"))) + " blocks"),
    ]
    tile_html = "\n".join(
        _fill("tile", label=html.escape(label), value=html.escape(value), note=html.escape(note))
        for label, value, note in tiles)
    span = (f"{_utc(origin)} · {(last - origin) / 1e6:,.1f} s captured" if origin else
            "no timed records")
    return _fill("header", title=html.escape(title), span=html.escape(span), tiles=tile_html)


def _percentile_tile(label: str, values: np.ndarray) -> tuple[str, str, str]:
    data = finite(values)
    if not data.size:
        return label, "–", "no complete requests"
    p50, p99 = np.percentile(data, [50, 99])
    return label, f"{fmt_number(p50)} ms", f"p50 · p99 {fmt_number(p99)} ms"


def _service_value(summaries: Mapping[str, pd.DataFrame], metric: str) -> float:
    table = summaries.get("service_summary") if summaries else None
    if table is None or table.empty or "Metric" not in table.columns:
        return math.nan
    match = table.loc[table["Metric"] == metric, "Value"]
    return float(pd.to_numeric(match, errors="coerce").iloc[0]) if len(match) else math.nan


# ----------------------------------------------------------------------------- sections

def _section(heading: str, caption: str, draw: Callable[[], Optional[str]]) -> str:
    try:
        svg = draw()
    except Exception as exc:  # one broken plot must not cost the rest of the page
        _logger.warning("report.html: could not draw %r: %s: %s", heading, type(exc).__name__,
                        exc)
        svg = None
        caption = f"Could not draw this section ({type(exc).__name__}: {exc})."
    content = svg if svg else _fill("empty", text="No data for this section in the capture.")
    return _fill("section", heading=html.escape(heading), caption=html.escape(caption),
                 content=content)


def _operator_section(summaries: Mapping[str, pd.DataFrame], origin: float) -> str:
    """Operators (only with operator data): overhead figure, top operators, per process."""
    from otel_vllm_ascend.analysis import operator_report

    summary = (summaries or {}).get("op_summary")
    statistic = (summaries or {}).get("op_statistic")
    if not isinstance(statistic, pd.DataFrame) or statistic.empty:
        return ""
    section = _section(operator_report.HEADING, operator_report.CAPTION,
                       lambda: operator_report.host_overhead_figure(statistic, origin))
    top, per_process = operator_report.tables(summary, statistic)
    cards = [_fill("table_card", title=html.escape(title), file=html.escape(file),
                   table=_html_table(table))
             for title, file, table in (("Top operators", "op_summary.csv", top),
                                        ("Host overhead per process", "op_statistic.csv",
                                         per_process)) if not table.empty]
    return section + "\n" + "\n".join(cards)


# ----------------------------------------------------------------------------- tables

def _summary_tables(summaries: Mapping[str, pd.DataFrame]) -> str:
    summaries = summaries or {}
    names = [n for n in SUMMARY_ORDER if n in summaries] + sorted(
        n for n in summaries if n not in SUMMARY_ORDER and n not in OPERATOR_TABLES)
    parts = []
    for name in names:
        table = summaries[name]
        if not isinstance(table, pd.DataFrame) or table.empty:
            continue
        title = SUMMARY_TITLES.get(name, name)
        parts.append(_fill("table_card", title=html.escape(title),
                           file=html.escape(f"{name}.csv"), table=_html_table(table)))
    cards = "\n".join(parts) if parts else _fill("empty", text="No summary tables.")
    return _fill("summaries", cards=cards)


STAGE_CAPTION = ("Where the time of engine steps goes, per stage (ms): prefill steps hold at"
                 " least one prefill, decode steps decodes only. 'all' covers every such step;"
                 " the other selections come from --split-batch-size / --split-rid. Empty:"
                 " the capture lacks that stage's records.")


def _stage_tables(stage_tables: Mapping[str, pd.DataFrame]) -> str:
    """The stage breakdown section: one table per phase."""
    cards = []
    for phase, table in stage_tables.items():
        if not isinstance(table, pd.DataFrame) or table.empty:
            continue
        cards.append(_fill("table_card", title=html.escape(phase.capitalize() + " steps"),
                           file=html.escape(f"{phase}.csv"), table=_html_table(table)))
    content = "\n".join(cards) if cards else _fill("empty", text="No engine steps.")
    return _fill("stages", caption=html.escape(STAGE_CAPTION), cards=content)


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(_fill("head_cell", text=html.escape(str(c))) for c in table.columns)
    rows = []
    for record in table.itertuples(index=False, name=None):
        cells = []
        for value in record:
            if isinstance(value, str):
                cells.append(_fill("text_cell", text=html.escape(value)))
            else:
                cells.append(_fill("number_cell", text=html.escape(_cell(value))))
        rows.append(_fill("row", cells="".join(cells)))
    return _fill("table", head=head, rows="".join(rows))


def _cell(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if not math.isfinite(number):
        return "–"
    if number == int(number) and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:,.4f}".rstrip("0").rstrip(".") if abs(number) < 1000 else f"{number:,.1f}"
