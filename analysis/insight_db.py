"""What MindStudio Insight reads in ``profiler.db``: registry tables, ``*_curve`` views, and the
latency-over-time tables behind two of them.

Insight finds its way through a service-profiling database by two registry tables:

* ``data_table(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, view_name TEXT)``: one row per
  view shown as a plain table, ``name`` = ``view_name`` = the view: ``request_data``,
  ``batch_info``, ``kvcache_usage`` (views the writer already creates over ``request``,
  ``batch``, ``kvcache``);
* ``translate(key TEXT NOT NULL PRIMARY KEY, value_en TEXT, value_zh TEXT)``: a caption, in
  English and Chinese, for each of those views and each curve view.

Curve views (Insight draws each as a line chart; created when their source table exists):

========================================  =====================================================
view                                      columns (source)
========================================  =====================================================
``Batch_Size_curve``                      ``batch_id`` (``batch.step_id``: engine step number
                                          from 0, by time), ``total_batch_size``,
                                          ``prefill_batch_size``, ``decode_batch_size``
``Batch_Token_curve``                     ``batch_id``, ``total_scheduled_tokens``,
                                          ``prefill_scheduled_tokens``,
                                          ``decode_scheduled_tokens``
``Kvcache_Usage_Percent_curve``           ``datetime``, ``kvcache_usage_percent``
                                          (0-100) of every ``kvcache`` row that has a usage
``First_Token_Latency_curve``             ``time``, ``p99(ms)``, ``p90(ms)``, ``p50(ms)``,
                                          ``min(ms)`` (``first_token_latency``)
``Request_Latency_curve``                 ``time``, ``avg(ms)``, ``p99(ms)``, ``p90(ms)``,
                                          ``p50(ms)`` (``req_latency``)
``Prefill_Generate_Speed_Latency_curve``  ``time``, ``avg(tokens/s)``, ``p99(tokens/s)``,
                                          ``p90(tokens/s)``, ``p50(tokens/s)``
                                          (``prefill_gen_speed``)
``Decode_Generate_Speed_Latency_curve``   the same from ``decode_gen_speed``
``Request_Status_curve``                  ``time``, ``waiting``, ``swapped``, ``running``, from
                                          a ``request_status`` table with ``start_datetime``,
                                          ``waiting``, ``running``, ``swapped`` columns (queue
                                          sizes over time) when one is in the database
========================================  =====================================================

``time`` and ``datetime`` are ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (the source's UTC text
without its offset); all latencies are in ms, in the tables too (the reference stores µs in
``req_latency`` and writes local-zone times with ``:`` before the microseconds).

Latency-over-time tables (``timestamp`` in the project's UTC text form; linear-interpolation
percentiles; a request without the value is left out, never counted as 0):

* ``first_token_latency(timestamp, p50, p90, p99, min_value, p50_alltime)``: requests with a
  TTFT grouped by arrival into windows of ``WINDOW_MS`` ms, the first starting at the earliest
  such arrival; one row per window holding a request (``timestamp`` = the window's start);
  ``p50_alltime`` = median TTFT over all of them.
* ``req_latency(timestamp, avg, p50, p90, p99, p50_alltime)``: requests with an end-to-end
  latency, ordered by their end (``httpRes``); statistics of all latencies ended so far
  (cumulative), after every ``k``-th request with ``k = max(n // CUMULATIVE_POINTS, 1)`` and
  after the last; ``timestamp`` = that request's end.
* ``prefill_gen_speed`` / ``decode_gen_speed(timestamp, avg, p50, p90, p99, p50_alltime)``: for
  every engine step that schedules prefill (decode) tokens, those tokens divided by the step's
  time from the start of scheduling to the end of model execution (tokens/s; a mixed step
  counts for both), grouped by the step's start into windows of ``WINDOW_MS`` ms as above.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.frame import format_datetime_us

WINDOW_MS = 100
CUMULATIVE_POINTS = 100
DECIMALS = 6  # as the other tables: ms values to the nanosecond

FIRST_TOKEN_COLUMNS = ("timestamp", "p50", "p90", "p99", "min_value", "p50_alltime")
REQ_LATENCY_COLUMNS = ("timestamp", "avg", "p50", "p90", "p99", "p50_alltime")
GEN_SPEED_COLUMNS = ("timestamp", "avg", "p50", "p90", "p99", "p50_alltime")


class Caption(NamedTuple):
    en: str
    zh: str


# Plain-table views (created by writers.write_profiler_db) and their captions.
TABLE_VIEWS: dict[str, Caption] = {
    "request_data": Caption("One row per request: arrival, tokens in and out, TTFT, queue wait,"
                            " end-to-end latency (ms)",
                            "每个请求一行：到达时间、输入输出token数、首token时延、排队时间、端到端时延（毫秒）"),
    "batch_info": Caption("One row per engine step: requests and tokens scheduled, scheduling"
                          " and model execution time (ms), KV-cache blocks",
                          "每个引擎步一行：调度的请求数与token数、调度与模型执行耗时（毫秒）、KV缓存块"),
    "kvcache_usage": Caption("KV-cache block usage after each scheduling step and each release",
                             "每次调度与释放后的KV缓存块使用情况"),
}


class CurveView(NamedTuple):
    name: str
    source: str  # the table it reads
    needs: tuple[str, ...]  # columns of the source it reads
    select: str  # the SELECT statement
    caption: Caption


CURVE_VIEWS: tuple[CurveView, ...] = (
    CurveView(
        "Batch_Size_curve", "batch",
        ("step_id", "batch_size", "prefill_batch_size", "decode_batch_size"),
        'SELECT step_id AS batch_id, batch_size AS total_batch_size,'
        ' "Prefill_batch_size" AS prefill_batch_size,'
        ' "Decode_batch_size" AS decode_batch_size FROM batch ORDER BY step_id',
        Caption("Requests per engine step, prefill and decode apart, in step order",
                "按引擎步顺序统计每步的请求数，区分prefill与decode")),
    CurveView(
        "Batch_Token_curve", "batch",
        ("step_id", "total_scheduled_tokens", "prefill_scheduled_tokens",
         "decode_scheduled_tokens"),
        'SELECT step_id AS batch_id, total_scheduled_tokens,'
        ' "Prefill_scheduled_tokens" AS prefill_scheduled_tokens,'
        ' "Decode_scheduled_tokens" AS decode_scheduled_tokens FROM batch ORDER BY step_id',
        Caption("Tokens scheduled per engine step: total, prefill, decode",
                "每个引擎步调度的token数：总数、prefill、decode")),
    CurveView(
        "Kvcache_Usage_Percent_curve", "kvcache",
        ("start_datetime", "kvcache_usage_rate"),
        "SELECT substr(start_datetime, 1, 26) AS datetime,"
        " kvcache_usage_rate * 100 AS kvcache_usage_percent"
        " FROM kvcache WHERE kvcache_usage_rate IS NOT NULL ORDER BY start_datetime",
        Caption("KV-cache usage (%) over time", "KV缓存使用率（%）随时间的变化")),
    CurveView(
        "First_Token_Latency_curve", "first_token_latency",
        ("timestamp", "p99", "p90", "p50", "min_value"),
        'SELECT substr(timestamp, 1, 26) AS time, p99 AS "p99(ms)", p90 AS "p90(ms)",'
        ' p50 AS "p50(ms)", min_value AS "min(ms)" FROM first_token_latency ORDER BY timestamp',
        Caption(f"Time to first token per {WINDOW_MS} ms of arrivals: p99, p90, p50, minimum",
                f"按到达时间每{WINDOW_MS}毫秒统计的首token时延：p99、p90、p50、最小值")),
    CurveView(
        "Request_Latency_curve", "req_latency",
        ("timestamp", "avg", "p99", "p90", "p50"),
        'SELECT substr(timestamp, 1, 26) AS time, avg AS "avg(ms)", p99 AS "p99(ms)",'
        ' p90 AS "p90(ms)", p50 AS "p50(ms)" FROM req_latency ORDER BY timestamp',
        Caption("End-to-end latency of the requests finished so far: mean, p99, p90, p50",
                "截至各时刻已完成请求的端到端时延：均值、p99、p90、p50")),
    CurveView(
        "Request_Status_curve", "request_status",
        ("start_datetime", "waiting", "running", "swapped"),
        "SELECT substr(start_datetime, 1, 26) AS time, waiting, swapped, running"
        " FROM request_status ORDER BY start_datetime",
        Caption("Waiting, swapped and running queue sizes over time",
                "等待、换出与运行队列长度随时间的变化")),
    *(CurveView(
        f"{kind}_Generate_Speed_Latency_curve", f"{kind.lower()}_gen_speed",
        ("timestamp", "avg", "p99", "p90", "p50"),
        f'SELECT substr(timestamp, 1, 26) AS time, avg AS "avg(tokens/s)",'
        f' p99 AS "p99(tokens/s)", p90 AS "p90(tokens/s)", p50 AS "p50(tokens/s)"'
        f" FROM {kind.lower()}_gen_speed ORDER BY timestamp",
        Caption(f"{kind} tokens per second of the engine steps, per {WINDOW_MS} ms:"
                " mean, p99, p90, p50",
                f"按每{WINDOW_MS}毫秒统计的引擎步{kind.lower()} token处理速度（token/s）："
                "均值、p99、p90、p50"))
      for kind in ("Prefill", "Decode")),
)


# ----------------------------------------------------------------------------- tables

def _values(table: Optional[pd.DataFrame], time_column: str, value_column: str
            ) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``table`` with both a time (µs) and a value: (times, values)."""
    if table is None or table.empty or not {time_column, value_column} <= set(table.columns):
        return np.zeros(0), np.zeros(0)
    times = pd.to_numeric(table[time_column], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan)
    values = pd.to_numeric(table[value_column], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan)
    keep = np.isfinite(times) & np.isfinite(values)
    return times[keep], values[keep]


def _windowed(times_us: np.ndarray, values: np.ndarray, columns: Sequence[str],
              window_ms: float) -> pd.DataFrame:
    """Statistics of ``values`` per window of ``window_ms`` from the first time; ``columns``
    from ``timestamp``, ``avg``, ``p50``, ``p90``, ``p99``, ``min_value``, ``p50_alltime``."""
    if not times_us.size:
        return pd.DataFrame(columns=list(columns))
    origin = float(times_us.min())
    window_us = window_ms * 1000.0
    window = np.floor((times_us - origin) / window_us).astype("int64")
    groups = pd.Series(values).groupby(window, sort=True)  # one group per window with a value
    quantiles = groups.quantile([0.5, 0.9, 0.99]).unstack()  # linear, as numpy's percentile
    table = pd.DataFrame({
        "timestamp": format_datetime_us(origin + quantiles.index.to_numpy() * window_us
                                        ).to_numpy(),
        "avg": groups.mean().to_numpy(),
        "p50": quantiles[0.5].to_numpy(), "p90": quantiles[0.9].to_numpy(),
        "p99": quantiles[0.99].to_numpy(), "min_value": groups.min().to_numpy()})
    table["p50_alltime"] = float(np.percentile(values, 50))
    return table.reindex(columns=list(columns)).round(DECIMALS)


def first_token_latency_table(requests: pd.DataFrame, window_ms: float = WINDOW_MS
                              ) -> pd.DataFrame:
    """``first_token_latency``: TTFT statistics per arrival window (see the module docs)."""
    arrival, ttft = _values(requests, "arrival_us", "ttft_ms")
    return _windowed(arrival, ttft, FIRST_TOKEN_COLUMNS, window_ms)


def generation_speed_table(batches: pd.DataFrame, kind: str, window_ms: float = WINDOW_MS
                           ) -> pd.DataFrame:
    """``prefill_gen_speed`` (``kind`` = ``Prefill``) or ``decode_gen_speed`` (``Decode``).

    Per engine step scheduling tokens of that kind: those tokens / the step's time from the
    start of scheduling to the end of model execution (tokens/s), placed at the step's start.
    """
    if batches is None or batches.empty or not {
            "sched_start_us", "exec_end_us", f"{kind}_scheduled_tokens"} <= set(batches.columns):
        return pd.DataFrame(columns=list(GEN_SPEED_COLUMNS))
    both = batches[["sched_start_us", "exec_end_us", f"{kind}_scheduled_tokens"]].apply(
        pd.to_numeric, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    start, end, tokens = both[:, 0], both[:, 1], both[:, 2]
    keep = np.isfinite(start) & np.isfinite(end) & (end > start) & (tokens > 0)
    speed = tokens[keep] / ((end[keep] - start[keep]) / 1e6)
    return _windowed(start[keep], speed, GEN_SPEED_COLUMNS, window_ms)


def request_latency_table(requests: pd.DataFrame, points: int = CUMULATIVE_POINTS
                          ) -> pd.DataFrame:
    """``req_latency``: cumulative end-to-end statistics by request end (see the module docs)."""
    end, e2e = _values(requests, "end_us", "e2e_ms")
    if not end.size:
        return pd.DataFrame(columns=list(REQ_LATENCY_COLUMNS))
    order = np.argsort(end, kind="stable")
    end, e2e = end[order], e2e[order]
    every = max(end.size // points, 1)
    marks = [i for i in range(end.size) if (i + 1) % every == 0 or i == end.size - 1]
    rows = []
    for i in marks:
        ended = e2e[:i + 1]
        p50, p90, p99 = np.percentile(ended, [50, 90, 99])
        rows.append((end[i], ended.mean(), p50, p90, p99))
    table = pd.DataFrame(rows, columns=["end_us", "avg", "p50", "p90", "p99"])
    table.insert(0, "timestamp", format_datetime_us(table.pop("end_us")).to_numpy())
    table["p50_alltime"] = float(np.percentile(e2e, 50))
    return table.reindex(columns=list(REQ_LATENCY_COLUMNS)).round(DECIMALS)


# ----------------------------------------------------------------------------- writing

def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1].lower() for row in conn.execute(f'PRAGMA table_info("{table}")')}


def _views(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}


def write_insight_tables(conn: sqlite3.Connection, requests: pd.DataFrame,
                         batches: Optional[pd.DataFrame] = None) -> list[str]:
    """Add the latency tables, the curve views and the registry; returns the curve views made.

    Call after ``request``, ``batch``, ``kvcache`` and their views are written. ``requests`` and
    ``batches`` are the builders' tables (with their internal µs and ms columns).
    """
    for name, table in (
            ("first_token_latency", first_token_latency_table(requests)),
            ("req_latency", request_latency_table(requests)),
            ("prefill_gen_speed", generation_speed_table(batches, "Prefill")),
            ("decode_gen_speed", generation_speed_table(batches, "Decode"))):
        table.to_sql(name, conn, index=False, if_exists="replace")
    conn.executescript("""
        DROP TABLE IF EXISTS data_table;
        DROP TABLE IF EXISTS translate;
        CREATE TABLE data_table (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
                                 view_name TEXT);
        CREATE TABLE translate (key TEXT NOT NULL PRIMARY KEY, value_en TEXT, value_zh TEXT);
    """)
    views = _views(conn)
    for view, caption in TABLE_VIEWS.items():
        if view in views:
            conn.execute("INSERT INTO data_table (name, view_name) VALUES (?, ?)", (view, view))
            conn.execute("INSERT INTO translate VALUES (?, ?, ?)", (view, *caption))
    made = []
    for curve in CURVE_VIEWS:
        if not {c.lower() for c in curve.needs} <= _columns(conn, curve.source):
            continue
        conn.execute(f'DROP VIEW IF EXISTS "{curve.name}"')
        conn.execute(f'CREATE VIEW "{curve.name}" AS {curve.select}')
        conn.execute("INSERT INTO translate VALUES (?, ?, ?)", (curve.name, *curve.caption))
        made.append(curve.name)
    return made
