"""``batch.csv``: one row per engine step (scheduling + model execution joined).

Columns, in the reference's order (units: datetimes as text in UTC, durations in ms):

``name`` (the schedule record, ``batchFrameworkProcessing``; ``modelExec`` for an execution
whose schedule span was not captured), ``res_list`` (the step's request dicts, as a Python
literal like the reference), ``start_time`` / ``end_time`` / ``during_time(ms)`` (the schedule
span), ``batch_type`` (``Prefill``, ``Decode``, ``Prefill,Decode``), ``prof_id`` (source file
stem), ``total_batch_size`` (requests in the step), the KV columns of the step's
``KVCacheStatus`` record (``total_blocks``, ``used_blocks``, ``free_blocks``,
``blocks_allocated``; ``blocks_freed`` = blocks returned by requests finishing after this step
and before the next; ``kvcache_usage_rate`` fraction 0..1), ``Prefill_batch_size`` /
``Decode_batch_size`` (requests by type), ``Prefill_scheduled_tokens`` /
``Decode_scheduled_tokens`` / ``total_scheduled_tokens`` (tokens scheduled in the step),
``dp_rank``.

Then, beyond the reference: ``step_id``, ``host``, ``pid``, ``model_exec_start_time``,
``model_exec_end_time``, ``model_exec_time(ms)``. The reference writes two rows per step (schedule
and execution) and never fills the KV columns for vLLM; here one row holds both.

Last, speculative decoding (empty for steps that verified no drafts; see
:mod:`otel_vllm_ascend.analysis.spec_decode`): ``num_spec_output_tokens`` (drafts verified),
``num_spec_accepted_tokens``, ``accepted_ratio`` (accepted / drafted) and
``accepted_ratio_per_pos`` (JSON list, entry p: of the requests with more than p drafts, the
fraction that accepted more than p).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.date_cells import datetime_column_us
from otel_vllm_ascend.analysis.kvcache import RELEASE_NAMES, REQUEST_KV_NAMES, build_kvcache
from otel_vllm_ascend.analysis.rid_lists import rid_sequence
from otel_vllm_ascend.analysis.spec_decode import (
    ACCEPTANCE_COLUMNS,
    build_spec_decode,
    step_acceptance,
)
from otel_vllm_ascend.analysis.steps import engine_steps, row_chunks, step_requests
from otel_vllm_ascend.analysis.writers import LazyText

BATCH_COLUMNS = (
    "name", "res_list", "start_time", "end_time", "during_time(ms)", "batch_type", "prof_id",
    "total_batch_size", "total_blocks", "used_blocks", "free_blocks", "blocks_allocated",
    "blocks_freed", "kvcache_usage_rate", "Prefill_batch_size", "Decode_batch_size",
    "Prefill_scheduled_tokens", "Decode_scheduled_tokens", "total_scheduled_tokens", "dp_rank",
)
BATCH_EXTRA_COLUMNS = ("step_id", "host", "pid", "model_exec_start_time", "model_exec_end_time",
                       "model_exec_time(ms)") + ACCEPTANCE_COLUMNS
CSV_COLUMNS = BATCH_COLUMNS + BATCH_EXTRA_COLUMNS
# Numeric columns kept for the other builders, the trace and the report (not written to CSV).
INTERNAL_COLUMNS = ("sched_start_us", "sched_end_us", "exec_start_us", "exec_end_us",
                    "sched_dur_us")


STEP_CHUNK_ROWS = 262_144
# The (step, request) table's columns build_batches reads (the CLI passes only these).
COUNTED_COLUMNS = ("step_id", "type", "num_scheduled_tokens")


def _step_counts(per_request: Any, n: int) -> tuple[np.ndarray, ...]:
    """Per step: requests, prefill and decode requests (float64), whether any request has a
    token count, and the prefill, decode and total scheduled tokens.

    Read a chunk of (step, request) rows at a time (twenty million at x100: their float64
    tokens and masks were held at once), of the whole table or of
    :class:`steps.StepRequestChunks` (the table then never whole). Token sums accumulate in
    row order (``np.add.at``, as one ``bincount`` over all rows adds), so they are those of one
    pass whatever the chunks; each kind's sum runs over that kind's rows only (the others would
    add exact zeros).
    """
    size, prefill_n, decode_n, with_tokens = (np.zeros(n, dtype="int64") for _ in range(4))
    prefill_tok, decode_tok, total_tok = (np.zeros(n) for _ in range(3))
    for part in row_chunks(per_request, STEP_CHUNK_ROWS):
        idx, kind = part["step_id"].to_numpy(), part["type"].to_numpy()
        tokens = part["num_scheduled_tokens"].to_numpy().astype("float64")  # held float16/32
        tok = np.nan_to_num(tokens, nan=0.0)
        size += np.bincount(idx, minlength=n)
        for is_kind, count, summed in ((kind == 0, prefill_n, prefill_tok),
                                       (kind == 1, decode_n, decode_tok)):
            count += np.bincount(idx[is_kind], minlength=n)
            np.add.at(summed, idx[is_kind], tok[is_kind])
        with_tokens += np.bincount(idx[~np.isnan(tokens)], minlength=n)
        np.add.at(total_tok, idx, tok)
    return (size.astype("float64"), prefill_n.astype("float64"), decode_n.astype("float64"),
            with_tokens > 0, prefill_tok, decode_tok, total_tok)


def _res_list(detail: object, rids: object) -> str:
    # The reference's form: the Python literal of the request dicts (ast.literal_eval reads it).
    return repr(detail) if detail else repr(list(rids or []))


def _res_lists(steps: pd.DataFrame) -> list:
    """One ``ResList`` per step; a step with request dicts keeps no id list (its ids are in
    the dicts), the others their list made from the codes."""
    rids = rid_sequence(steps["rids"])
    return [ResList(detail, None if detail else rids[index])
            for index, detail in enumerate(steps["rid_detail"].tolist())]


class ResList(LazyText):
    """A ``res_list`` cell, its text made when written (``str``): at ten times the benchmark
    capture the texts would hold 280 MB for the whole run; the writers turn a few hundred rows
    at a time into text."""

    __slots__ = ("detail", "rids")

    def __init__(self, detail: object, rids: object) -> None:
        self.detail = detail
        self.rids = rids

    def __str__(self) -> str:
        return _res_list(self.detail, self.rids)

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    __hash__ = None  # type: ignore[assignment]


def build_batches(frame: pd.DataFrame, steps: Optional[pd.DataFrame] = None,
                  per_request: Any = None,
                  kvcache: Optional[pd.DataFrame] = None,
                  spec_decode: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per engine step; ``steps``/``per_request``/``kvcache``/``spec_decode`` may be
    passed precomputed."""
    if steps is None:
        steps = engine_steps(frame)
    if per_request is None:
        per_request = step_requests(steps)
    if kvcache is None:
        kvcache = build_kvcache(frame)
    if spec_decode is None:
        spec_decode = build_spec_decode(frame, steps, per_request)
    n = len(steps)
    if n == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object)
                             for c in CSV_COLUMNS + INTERNAL_COLUMNS})
    size, prefill_n, decode_n, counted, prefill_tok, decode_tok, total_tok = \
        _step_counts(per_request, n)
    total_tok = np.where(counted, total_tok, np.nan)
    # Without per-request counts: modelExec's batch_size (tokens), else the schedule metric.
    fallback = steps["exec_batch_size"].to_numpy(dtype="float64")
    fallback = np.where(np.isnan(fallback),
                        pd.to_numeric(steps["sched_scheduled_tokens"], errors="coerce")
                        .to_numpy(dtype="float64"), fallback)
    total_tok = np.where(np.isnan(total_tok), fallback, total_tok)
    prefill_tok = np.where(counted, prefill_tok, np.nan)
    decode_tok = np.where(counted, decode_tok, np.nan)

    batch_type = steps["batch_type"].to_numpy(dtype=object).copy()
    derived = np.where((prefill_n > 0) & (decode_n > 0), "Prefill,Decode",
                       np.where(prefill_n > 0, "Prefill", np.where(decode_n > 0, "Decode", "")))
    empty = np.asarray([not b for b in batch_type])
    batch_type[empty] = derived[empty]

    sched_start = steps["sched_start_us"].to_numpy(dtype="float64")
    sched_end = steps["sched_end_us"].to_numpy(dtype="float64")
    exec_start = steps["exec_start_us"].to_numpy(dtype="float64")
    exec_end = steps["exec_end_us"].to_numpy(dtype="float64")
    sched_dur = steps["sched_dur_us"].to_numpy(dtype="float64")
    exec_dur = steps["exec_dur_us"].to_numpy(dtype="float64")
    has_sched = ~np.isnan(sched_start)
    start = np.where(has_sched, sched_start, exec_start)
    end = np.where(has_sched, sched_end, exec_end)

    kv = _step_kv(steps, kvcache, start, end)
    # The four datetime columns as DateText cells, their texts made when written (a text of
    # 89 bytes a cell held for the run, 88 MB at x100; a cell is 48).
    out = pd.DataFrame({
        "name": steps["name"].to_numpy(dtype=object),
        "res_list": _res_lists(steps),
        "start_time": datetime_column_us(start),
        "end_time": datetime_column_us(end),
        "during_time(ms)": np.where(has_sched, sched_dur, exec_dur) / 1000.0,
        "batch_type": batch_type,
        "prof_id": steps["source"].to_numpy(dtype=object),
        "total_batch_size": size,
        **kv,
        "Prefill_batch_size": prefill_n,
        "Decode_batch_size": decode_n,
        "Prefill_scheduled_tokens": prefill_tok,
        "Decode_scheduled_tokens": decode_tok,
        "total_scheduled_tokens": total_tok,
        "dp_rank": steps["dp_rank"].array,
        "step_id": steps["step_id"].to_numpy(),
        "host": steps["host"].to_numpy(dtype=object),
        "pid": steps["pid"].to_numpy(),
        "model_exec_start_time": datetime_column_us(exec_start),
        "model_exec_end_time": datetime_column_us(exec_end),
        "model_exec_time(ms)": exec_dur / 1000.0,
        **step_acceptance(spec_decode, steps["step_id"].to_numpy()),
        "sched_start_us": sched_start,
        "sched_end_us": sched_end,
        "exec_start_us": exec_start,
        "exec_end_us": exec_end,
        "sched_dur_us": sched_dur,
    }, copy=False)  # the arrays made here are the table's: not copied into blocks
    return out


def _step_kv(steps: pd.DataFrame, kvcache: pd.DataFrame, start: np.ndarray,
             end: np.ndarray) -> dict[str, np.ndarray]:
    n = len(steps)
    names = ("total_blocks", "used_blocks", "free_blocks", "blocks_allocated",
             "kvcache_usage_rate")
    out = {name: np.full(n, np.nan) for name in names}
    out["blocks_freed"] = np.full(n, np.nan)
    if kvcache.empty:
        return {k: out[k] for k in names[:4] + ("blocks_freed", "kvcache_usage_rate")}
    hosts = steps["host"].to_numpy(dtype=object)
    pids = steps["pid"].to_numpy()
    kv_hosts = kvcache["host"].to_numpy(dtype=object)
    kv_pids = kvcache["pid"].to_numpy()
    kv_start = kvcache["start_us"].to_numpy()
    names_kv = kvcache["name"]
    kv_status = (~names_kv.isin(REQUEST_KV_NAMES)).to_numpy()
    kv_release = names_kv.isin(RELEASE_NAMES).to_numpy()
    freed = kvcache["blocks_freed"].to_numpy(dtype="float64")
    for host, pid in set(zip(hosts.tolist(), pids.tolist())):
        mine = np.flatnonzero((hosts == host) & (pids == pid))
        kv_mine = (kv_hosts == host) & (kv_pids == pid)
        if not kv_mine.any():
            continue
        # The step's KVCacheStatus: the last one written inside its schedule span.
        status = np.flatnonzero(kv_mine & kv_status)
        if len(status):
            times = kv_start[status]
            pos = np.searchsorted(times, end[mine], side="right") - 1
            ok = (pos >= 0)
            pick = status[np.clip(pos, 0, None)]
            ok &= kv_start[pick] >= start[mine]
            for name in names:
                values = kvcache[name].to_numpy(dtype="float64")[pick]
                out[name][mine] = np.where(ok, values, np.nan)
        # Blocks returned between the end of this step and the start of the next.
        frees = np.flatnonzero(kv_mine & kv_release)
        cum = np.concatenate([[0.0], np.cumsum(freed[frees])])
        times = kv_start[frees]
        step_end = end[mine]
        following = np.append(start[mine][1:], np.inf)
        hi = np.searchsorted(times, following, side="left")
        lo = np.searchsorted(times, step_end, side="left")
        out["blocks_freed"][mine] = cum[hi] - cum[lo]
    return {k: out[k] for k in names[:4] + ("blocks_freed", "kvcache_usage_rate")}
