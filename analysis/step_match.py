"""Which engine step a record ran in: the join of Worker-side records to ``batch.csv`` rows.

An engine step's model execution is EngineCore's ``modelExec`` span; the Workers' records of
that step (``forward``, ``computing_logits``, ``sample``, ``modelRunnerExec``, ...) start inside
it, because EngineCore waits for the Workers while the span is open. A record therefore belongs
to the step whose ``modelExec`` window ``[exec_start, exec_end]`` holds the record's start,
looked for in this order:

1. the steps of the record's own process (one process runs both when the executor is
   in-process, and EngineCore's own ``modelExec`` belongs to its own step);
2. the steps of the same host and data-parallel rank, when the record's process has a rank
   and the host has steps of that rank; otherwise the steps of the same host.

Among the windows that hold the start, the latest one to open wins. Records that no window
holds (a Worker record of a step whose ``modelExec`` was not captured) get no step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NO_STEP = -1
# Windows of other processes (data-parallel ranks on one host) may overlap: look back this many
# windows for one that still holds the record's start.
_LOOK_BACK = 8


def _match(starts: np.ndarray, ends: np.ndarray, rows: np.ndarray, times: np.ndarray
           ) -> np.ndarray:
    """Per time, the position in ``rows`` (steps sorted by start) of the latest window holding
    it, or NO_STEP."""
    out = np.full(len(times), NO_STEP, dtype="int64")
    if not len(starts) or not len(times):
        return out
    last = np.searchsorted(starts, times, side="right") - 1
    open_ = np.ones(len(times), dtype=bool)
    for back in range(_LOOK_BACK):
        candidate = last - back
        hit = open_ & (candidate >= 0)
        if not hit.any():
            break
        safe = np.clip(candidate, 0, None)
        hit &= ends[safe] >= times
        out[hit] = rows[safe[hit]]
        open_ &= ~hit
    return out


def step_of_records(records: pd.DataFrame, batches: pd.DataFrame) -> np.ndarray:
    """Per row of ``records`` (columns ``host``, ``pid``, ``dp_rank``, ``start_us``), the
    position in ``batches`` (columns ``host``, ``pid``, ``dp_rank``, ``exec_start_us``,
    ``exec_end_us``) of the step it ran in, or ``NO_STEP``."""
    n = len(records)
    found = np.full(n, NO_STEP, dtype="int64")
    if not n or batches is None or batches.empty:
        return found
    exec_start = batches["exec_start_us"].to_numpy(dtype="float64")
    exec_end = batches["exec_end_us"].to_numpy(dtype="float64")
    timed = np.flatnonzero(np.isfinite(exec_start) & np.isfinite(exec_end))
    if not len(timed):
        return found
    order = timed[np.argsort(exec_start[timed], kind="stable")]
    step_host = batches["host"].to_numpy(dtype=object)[order]
    step_pid = batches["pid"].to_numpy(dtype="int64")[order]
    step_dp = batches["dp_rank"].to_numpy(dtype="float64", na_value=np.nan)[order]
    starts, ends = exec_start[order], exec_end[order]

    host = records["host"].to_numpy(dtype=object)
    pid = records["pid"].to_numpy(dtype="int64")
    # Ranks are whole numbers >= 0; -1 stands for "no rank" (NaN keys would never be equal).
    dp = np.nan_to_num(records["dp_rank"].to_numpy(dtype="float64", na_value=np.nan), nan=-1.0)
    times = records["start_us"].to_numpy(dtype="float64")
    for key_host, key_pid, key_dp in dict.fromkeys(zip(host.tolist(), pid.tolist(),
                                                        dp.tolist())):
        mine = np.flatnonzero((host == key_host) & (pid == key_pid) & (dp == key_dp))
        same_host = step_host == key_host
        groups = [same_host & (step_pid == key_pid)]
        same_rank = same_host & (step_dp == key_dp) if key_dp >= 0 else None
        if same_rank is not None and same_rank.any():
            groups.append(same_rank)  # the rank's own engine: never another rank's steps
        else:
            groups.append(same_host)
        for group in groups:
            open_ = mine[found[mine] == NO_STEP]
            if not len(open_):
                break
            where = np.flatnonzero(group)
            if not len(where):
                continue
            hit = _match(starts[where], ends[where], order[where], times[open_])
            found[open_] = hit
    return found
