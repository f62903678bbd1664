"""``request_status.csv``: the scheduler's queue lengths over time, per process.

Built from the records that carry a queue's length: ``Enqueue`` / ``Dequeue`` (vLLM V1 and V0,
domain ``Schedule`` / ``BatchSchedule``: ``QueueSize=`` = the queue's length after the change,
``scope#QueueName`` = ``WAITING`` / ``RUNNING`` / ``SWAPPED``) and MindIE's ``Queue`` records
(the queue named by ``status``). Any other record with ``QueueSize=`` and a queue name counts
too.

One row per (process, instant) at which some queue was measured; the records of one instant
(V1 writes its RUNNING and WAITING changes of a step at the same time) share a row. Columns:

==========================  =====================================================================
``hostuid``                 host (the reference's name for it)
``pid``                     the scheduler's process
``start_datetime``          the instant (UTC)
``relative_timestamp(ms)``  the instant − the process's first queue record
``waiting``                 length of the waiting queue, if measured at this instant
``running``                 length of the running queue, if measured at this instant
``swapped``                 length of the swapped queue (V0: requests whose KV blocks are in CPU
                            memory), if measured at this instant
``timestamp(ms)``           the instant in ms since the Unix epoch
``dp_rank``                 data-parallel rank of the process; empty without data parallelism
==========================  =====================================================================

A queue not measured at an instant has an empty cell: vLLM writes a queue's length only when
requests join or leave it during scheduling (V1 also when a request arrives), and V1 requests
that finish leave the running queue after the step without a record, so carrying the last
value forward would show requests that are gone. V0's ``ReqState`` transitions count changes,
not lengths (the lengths when the capture started are unknown), and are not used here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.date_cells import datetime_column_us
from otel_vllm_ascend.analysis.record_dicts import key_floats, key_values

QUEUES = ("WAITING", "RUNNING", "SWAPPED")
CSV_COLUMNS = ("hostuid", "pid", "start_datetime", "relative_timestamp(ms)", "waiting",
               "running", "swapped", "timestamp(ms)", "dp_rank")
QUEUE_RECORD_NAMES = ("Enqueue", "Dequeue", "Queue")


def empty_request_status() -> pd.DataFrame:
    """The table with its columns and no row."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in CSV_COLUMNS})


def _queue_names(candidates: pd.DataFrame) -> np.ndarray:
    """Per record, its queue's name in capitals (``scope#QueueName``, else the ``status``
    attribute; ``""`` without either), read key by key: no dict made per record (three per
    queue record, a third of a million of them at x100)."""
    names = key_values(candidates["scopes"], "QueueName")
    status = key_values(candidates["attrs"], "status")
    unnamed = np.fromiter((name is None for name in names.tolist()), dtype=bool,
                          count=len(names))
    names[unnamed] = status[unnamed]
    upper: dict[str, str] = {}  # one string per queue name (text only: 1 and 1.0 differ)

    def capitals(name: object) -> str:
        if name is None:
            return ""
        if name.__class__ is not str:
            return str(name).upper()
        text = upper.get(name)
        if text is None:
            text = upper[name] = name.upper()
        return text

    return np.asarray([capitals(name) for name in names.tolist()], dtype=object)


def build_request_status(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (process, instant) with a queue length: ``CSV_COLUMNS``."""
    if frame.empty:
        return empty_request_status()
    # Only the columns read: every column of the queue records was most of the peak at x100.
    candidates = frame.loc[frame["name"].isin(QUEUE_RECORD_NAMES).to_numpy(),
                           ["host", "pid", "dp_rank", "start_us", "metrics", "scopes", "attrs"]]
    if candidates.empty:
        return empty_request_status()
    size = key_floats(candidates["metrics"], "QueueSize")
    queue = _queue_names(candidates)
    keep = np.isfinite(size) & np.isin(queue, QUEUES)
    if not keep.any():
        return empty_request_status()
    rows = pd.DataFrame({
        "host": candidates["host"].to_numpy(dtype=object)[keep],
        "pid": candidates["pid"].to_numpy(dtype="int64")[keep],
        "dp_rank": candidates["dp_rank"].array[keep],
        "start_us": candidates["start_us"].to_numpy(dtype="float64")[keep],
        "queue": queue[keep],
        "size": size[keep],
    })
    # The frame is in time order (ties in emission order): the last record of an instant wins.
    wide = rows.pivot_table(index=["host", "pid", "start_us"], columns="queue", values="size",
                            aggfunc="last", sort=True)
    wide = wide.reindex(columns=list(QUEUES))
    index = wide.index.to_frame(index=False)
    dp_of = dict(zip(zip(rows["host"].tolist(), rows["pid"].tolist()),
                     rows["dp_rank"].tolist()))
    start = index["start_us"].to_numpy(dtype="float64")
    first = index.groupby(["host", "pid"], observed=True)["start_us"].transform("min").to_numpy()
    out = pd.DataFrame({
        "hostuid": index["host"].to_numpy(dtype=object),
        "pid": index["pid"].to_numpy(dtype="int64"),
        "start_datetime": datetime_column_us(start),
        "relative_timestamp(ms)": (start - first) / 1000.0,
        **{queue.lower(): _whole(wide[queue].to_numpy(dtype="float64")) for queue in QUEUES},
        "timestamp(ms)": start / 1000.0,
        "dp_rank": pd.array([dp_of[key] for key in zip(index["host"].tolist(),
                                                       index["pid"].tolist())],
                            dtype="Int64"),
        "start_us": start,  # internal (not written): the instant in µs
    })
    order = np.argsort(start, kind="stable")
    return out.iloc[order].reset_index(drop=True)


def _whole(values: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.array(np.round(values), dtype="Float64").astype("Int64")
