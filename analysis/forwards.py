"""``forward.csv``: one row per model forward per process, with the idle gap before it.

The forward records are the capture's most specific model-execution spans: the Workers'
``forward`` (vLLM >= 0.15 model runners, and vllm-ascend's ``capture_async("forward")``); in a
capture without them, the model runner's ``modelRunnerExec``; without those either,
EngineCore's ``modelExec``. The ``name`` column says which one was used.

Columns, the reference's first (datetimes UTC, durations ms):

=========================  =========================================================================
``name``                   the record (``forward``, ``modelRunnerExec`` or ``modelExec``)
``relative_start_time(ms)`` start − the first forward start of the same host
``start_time``             start (UTC)
``end_time``               end (UTC)
``during_time(ms)``        duration
``bubble_time(ms)``        start − end of the previous forward of the same process: the device's
                           idle gap before this forward (negative if they overlap); empty for the
                           first forward of a process
``batch_size``             requests in the engine step the forward ran (``batch.csv``'s
                           ``total_batch_size``); else the request ids the record carries; else
                           empty
``batch_type``             ``Prefill`` / ``Decode`` / ``Prefill,Decode`` of that step
``forward_iter``           1-based count of forwards of the process
``dp_rank``                data-parallel rank of the process (else of its engine step); empty
                           without data parallelism
``prof_id``                source file stem
``hostname``               host
``pid``, ``tid``           process and thread
``scheduled_tokens``       tokens scheduled in that step (``total_scheduled_tokens``)
``step_id``                the ``batch.csv`` step (:mod:`.step_match`); empty when not found
=========================  =========================================================================

Rows are sorted by start. The reference puts the gap to the *next* forward on each row; here a
row carries the gap that came before it, so the last forward of a process is not left without
a value and the first one (with nothing before it) is.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.date_cells import datetime_column_us
from otel_vllm_ascend.analysis.rid_lists import rid_lengths
from otel_vllm_ascend.analysis.step_match import NO_STEP, step_of_records

# Most specific first: the first of these the capture holds is the forward record.
FORWARD_NAMES = ("forward", "modelRunnerExec", "modelExec")
FORWARD_COLUMNS = ("name", "relative_start_time(ms)", "start_time", "end_time", "during_time(ms)",
                   "bubble_time(ms)", "batch_size", "batch_type", "forward_iter", "dp_rank",
                   "prof_id", "hostname")
FORWARD_EXTRA_COLUMNS = ("pid", "tid", "scheduled_tokens", "step_id")
CSV_COLUMNS = FORWARD_COLUMNS + FORWARD_EXTRA_COLUMNS


# The columns build_forwards (and step_of_records) reads.
_READ_COLUMNS = ["name", "host", "pid", "tid", "dp_rank", "start_us", "end_us", "dur_us", "rids",
                 "batch_type", "source"]


def forward_records(frame: pd.DataFrame, columns: Optional[list] = None) -> pd.DataFrame:
    """The rows of the forward record the capture holds (see the module docstring); of
    ``columns`` only (with ``name``) when given."""
    wanted = frame["name"].isin(FORWARD_NAMES).to_numpy()
    rows = frame.loc[wanted] if columns is None else frame.loc[wanted, columns]
    present = set(rows["name"].unique())
    for name in FORWARD_NAMES:
        if name in present:
            return rows.loc[rows["name"] == name] if len(present) > 1 else rows
    return rows


def empty_forwards() -> pd.DataFrame:
    """The table with its columns and no row."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in CSV_COLUMNS})


def build_forwards(frame: pd.DataFrame, batches: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per forward record: ``CSV_COLUMNS``; ``batches`` is ``batch.csv``'s table (with
    its internal µs columns); without it the step columns stay empty."""
    # Only the columns read: every column of the forward records, copied again by the sort,
    # was most of the build's peak at x100.
    rows = forward_records(frame, _READ_COLUMNS)
    if rows.empty:
        return empty_forwards()
    rows = rows.sort_values(["host", "pid", "start_us"], kind="stable")
    n = len(rows)
    start = rows["start_us"].to_numpy(dtype="float64")
    end = rows["end_us"].to_numpy(dtype="float64")
    host = rows["host"].to_numpy(dtype=object)
    pid = rows["pid"].to_numpy(dtype="int64")

    same_process = np.zeros(n, dtype=bool)
    same_process[1:] = (host[1:] == host[:-1]) & (pid[1:] == pid[:-1])
    bubble = np.full(n, np.nan)
    bubble[1:] = (start[1:] - end[:-1]) / 1000.0
    bubble[~same_process] = np.nan
    first_of_process = np.flatnonzero(~same_process)
    counts = np.diff(np.append(first_of_process, n))
    forward_iter = np.arange(n) - np.repeat(first_of_process, counts) + 1
    host_start = pd.Series(start).groupby(host).transform("min").to_numpy()

    batch_size = rid_lengths(rows["rids"]).astype("float64")  # no list made
    batch_size[batch_size == 0] = np.nan
    batch_type = rows["batch_type"].to_numpy(dtype=object).copy()
    tokens = np.full(n, np.nan)
    step_id = np.full(n, np.nan)
    dp_rank = rows["dp_rank"].to_numpy(dtype="float64", na_value=np.nan).copy()
    if batches is not None and len(batches):
        position = step_of_records(rows, batches)
        hit = position != NO_STEP
        picked = position[hit]
        batch_size[hit] = batches["total_batch_size"].to_numpy(dtype="float64")[picked]
        batch_type[hit] = batches["batch_type"].to_numpy(dtype=object)[picked]
        tokens[hit] = batches["total_scheduled_tokens"].to_numpy(dtype="float64")[picked]
        step_id[hit] = batches["step_id"].to_numpy(dtype="float64")[picked]
        step_dp = batches["dp_rank"].to_numpy(dtype="float64", na_value=np.nan)[picked]
        dp_rank[hit] = np.where(np.isnan(dp_rank[hit]), step_dp, dp_rank[hit])
    out = pd.DataFrame({
        "name": rows["name"].to_numpy(dtype=object),
        "relative_start_time(ms)": (start - host_start) / 1000.0,
        "start_time": datetime_column_us(start),
        "end_time": datetime_column_us(end),
        "during_time(ms)": rows["dur_us"].to_numpy(dtype="float64") / 1000.0,
        "bubble_time(ms)": bubble,
        "batch_size": _whole(batch_size),
        "batch_type": batch_type,
        "forward_iter": forward_iter.astype("int64"),
        "dp_rank": _whole(dp_rank),
        "prof_id": rows["source"].to_numpy(dtype=object),
        "hostname": host,
        "pid": pid,
        "tid": rows["tid"].to_numpy(dtype="int64"),
        "scheduled_tokens": _whole(tokens),
        "step_id": _whole(step_id),
        "start_us": start,  # internal (not written): what rows are sorted by
        "end_us": end,  # internal
    })
    order = np.argsort(start, kind="stable")
    return out.iloc[order].reset_index(drop=True)


def _whole(values: np.ndarray) -> pd.arrays.IntegerArray:
    """Whole numbers as nullable integers (no fraction when written; NaN -> empty)."""
    return pd.array(np.round(values), dtype="Float64").astype("Int64")
