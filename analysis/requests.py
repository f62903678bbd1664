"""``request.csv``: one row per request, API-server and EngineCore records joined.

A request is keyed by the API server's (external) id; EngineCore records use internal ids that
the frame has already mapped through the link records. Columns (times in ms, datetimes UTC):

==========================  ======================================================================
``http_rid``                the request id
``start_datetime``          arrival: start of the first ``httpReq`` (first record of any kind for
                            partial requests)
``recv_token_size``         prompt tokens (``recvTokenSize=`` of ``httpRes``; else the engine's
                            ``num_prompt_tokens``)
``reply_token_size``        generated tokens (``replyTokenSize=`` of ``httpRes``)
``execution_time(ms)``      end-to-end latency: end of the last ``httpRes`` − arrival
``queue_wait_time(ms)``     first scheduling − entering the waiting queue (first ``Enqueue``, else
                            arrival); first scheduling = the first ``Dequeue`` from ``WAITING``,
                            else the end of the first schedule span that holds the request
``first_token_latency(ms)`` TTFT: the first output the API server handled for the request
                            (``detokenize`` or ``httpRes``) − arrival; without API-server output
                            records, the end of the engine step that finished its prefill
``cache_hit_rate``          ``hitCache`` of the first ``CacheHitRate`` record, ``N/A`` if none
``time_per_output_token(ms)`` (e2e − TTFT) / (generated tokens − 1), vLLM's TPOT
``partial``                 ``True`` when the capture lacks the request's ``httpReq`` or
                            ``httpRes`` (collection started or stopped while it ran); latencies
                            that need the missing record are left empty
==========================  ======================================================================

Rows are sorted by arrival. The frame returned also holds the internal columns listed in
``INTERNAL_COLUMNS`` (µs instants and float ms) used by the summaries, the trace and the report.
"""

from __future__ import annotations

from itertools import chain
from typing import Optional

import numpy as np
import pandas as pd
from otel_vllm_ascend.analysis.frame import format_datetime_us
from otel_vllm_ascend.analysis.steps import engine_steps, step_requests

REQUEST_COLUMNS = ("http_rid", "start_datetime", "recv_token_size", "reply_token_size",
                   "execution_time(ms)", "queue_wait_time(ms)", "first_token_latency(ms)",
                   "cache_hit_rate")
REQUEST_EXTRA_COLUMNS = ("time_per_output_token(ms)", "partial")
CSV_COLUMNS = REQUEST_COLUMNS + REQUEST_EXTRA_COLUMNS
INTERNAL_COLUMNS = ("arrival_us", "enqueue_us", "first_scheduled_us", "first_token_us", "end_us",
                    "ttft_ms", "queue_wait_ms", "e2e_ms", "tpot_ms", "exec_ms", "prompt_tokens",
                    "reply_tokens", "steps", "has_arrival", "has_end")

OUTPUT_NAMES = ("detokenize", "httpRes")


def _explode(rows: pd.DataFrame, *value_columns: str) -> pd.DataFrame:
    """One row per (record, request id) with the chosen columns repeated."""
    rid_lists = rows["rids"].tolist()
    lengths = np.fromiter((len(r) for r in rid_lists), dtype="int64", count=len(rid_lists))
    out = {"rid": pd.array(list(chain.from_iterable(rid_lists)), dtype=object)}
    for column in value_columns:
        out[column] = np.repeat(rows[column].to_numpy(), lengths)
    return pd.DataFrame(out)


def _first_metric(rows: pd.DataFrame, name: str) -> pd.Series:
    values = [m.get(name) for m in rows["metrics"].tolist()]
    series = pd.Series(np.asarray([np.nan if v is None else v for v in values], dtype="float64"))
    exploded = _explode(rows.assign(_v=series.to_numpy()), "_v", "start_us")
    exploded = exploded.dropna(subset=["_v"])
    return exploded.sort_values("start_us", kind="stable").groupby("rid", sort=False)["_v"].first()


def build_requests(frame: pd.DataFrame, steps: Optional[pd.DataFrame] = None,
                   per_request: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per request id: ``CSV_COLUMNS`` then ``INTERNAL_COLUMNS``."""
    if steps is None:
        steps = engine_steps(frame)
    if per_request is None:
        per_request = step_requests(steps)
    names = frame["name"]
    has_rid = frame["rids"].map(len).to_numpy() > 0 if len(frame) else np.zeros(0, bool)
    with_rids = frame.loc[has_rid & (names != "link").to_numpy()]
    everything = _explode(with_rids, "start_us", "name")
    engine_rids = per_request["rid"]
    all_rids = pd.unique(pd.concat([everything["rid"], engine_rids], ignore_index=True))
    if len(all_rids) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object)
                             for c in CSV_COLUMNS + INTERNAL_COLUMNS})
    index = pd.Index(all_rids, name="rid")
    table = pd.DataFrame(index=index)

    def rows_named(*wanted: str) -> pd.DataFrame:
        return with_rids.loc[with_rids["name"].isin(wanted)]

    http_req = _explode(rows_named("httpReq"), "start_us")
    table["arrival_us"] = http_req.groupby("rid")["start_us"].min()
    http_res = rows_named("httpRes")
    ends = _explode(http_res, "end_us")
    table["end_us"] = ends.groupby("rid")["end_us"].max()
    table["recv"] = _first_metric(http_res, "recvTokenSize")
    table["reply_tokens"] = _first_metric(http_res, "replyTokenSize")
    outputs = _explode(rows_named(*OUTPUT_NAMES), "start_us")
    table["first_output_us"] = outputs.groupby("rid")["start_us"].min()
    table["first_seen_us"] = everything.groupby("rid")["start_us"].min()
    enqueue = _explode(rows_named("Enqueue"), "start_us")
    table["enqueue_us"] = enqueue.groupby("rid")["start_us"].min()
    dequeue_rows = rows_named("Dequeue")
    if len(dequeue_rows):
        queue = [str(s.get("QueueName", "")).upper() for s in dequeue_rows["scopes"].tolist()]
        dequeue_rows = dequeue_rows.loc[np.asarray(queue, dtype=object) != "RUNNING"]
    dequeue = _explode(dequeue_rows, "end_us")
    table["dequeue_us"] = dequeue.groupby("rid")["end_us"].min()

    # Engine side, per (step, request).
    if len(per_request):
        step_idx = per_request["step_id"].to_numpy()
        sched_end = steps["sched_end_us"].to_numpy(dtype="float64")[step_idx]
        exec_start = steps["exec_start_us"].to_numpy(dtype="float64")[step_idx]
        exec_end = steps["exec_end_us"].to_numpy(dtype="float64")[step_idx]
        exec_dur = steps["exec_dur_us"].to_numpy(dtype="float64")[step_idx]
        engine = pd.DataFrame({
            "rid": per_request["rid"].to_numpy(dtype=object),
            "scheduled": np.where(np.isnan(sched_end), exec_start, sched_end),
            "exec_ms": np.nan_to_num(exec_dur / 1000.0, nan=0.0),
            "exec_end": exec_end,
            "prompt": per_request["num_prompt_tokens"].to_numpy(),
        })
        nst = per_request["num_scheduled_tokens"].to_numpy()
        nct = per_request["num_computed_tokens"].to_numpy()
        npt = per_request["num_prompt_tokens"].to_numpy()
        rtype = per_request["type"].to_numpy()
        counts_known = ~(np.isnan(nst) | np.isnan(nct) | np.isnan(npt))
        prefill_done = np.where(counts_known, (rtype == 0) & (nct + nst >= npt),
                                per_request["iter"].to_numpy() == 0)
        engine["prefill_done_end"] = np.where(prefill_done, exec_end, np.nan)
        grouped = engine.groupby("rid", sort=False)
        table["first_step_us"] = grouped["scheduled"].min()
        table["exec_ms"] = grouped["exec_ms"].sum()
        table["steps"] = grouped.size()
        table["engine_prompt"] = grouped["prompt"].max()
        table["engine_first_token_us"] = grouped["prefill_done_end"].min()
    else:
        for column in ("first_step_us", "exec_ms", "steps", "engine_prompt",
                       "engine_first_token_us"):
            table[column] = np.nan
    hit_rows = rows_named("CacheHitRate")
    hits = pd.Series(dtype=object)
    if len(hit_rows):
        hit = [a.get("hitCache", 0) for a in hit_rows["attrs"].tolist()]
        hit = [0 if h is None else h for h in hit]
        exploded = _explode(hit_rows.assign(_hit=pd.array(hit, dtype=object)), "_hit",
                            "start_us")
        hits = exploded.sort_values("start_us", kind="stable").groupby("rid")["_hit"].first()

    has_arrival = table["arrival_us"].notna()
    has_end = table["end_us"].notna()
    arrival = table["arrival_us"]
    first_token = table["first_output_us"].fillna(table["engine_first_token_us"])
    first_scheduled = table["dequeue_us"].fillna(table["first_step_us"])
    enqueue = table["enqueue_us"].fillna(arrival)
    ttft = (first_token - arrival) / 1000.0
    e2e = (table["end_us"] - arrival) / 1000.0
    wait = (first_scheduled - enqueue) / 1000.0
    reply = table["reply_tokens"]
    tpot = ((e2e - ttft) / (reply - 1)).where(reply > 1)
    prompt = table["recv"].fillna(table["engine_prompt"])
    cache = hits.reindex(index).astype(object).where(hits.reindex(index).notna(), "N/A")
    start = arrival.fillna(table["first_seen_us"]).fillna(table["first_step_us"])
    out = pd.DataFrame({
        "http_rid": index.to_numpy(dtype=object),
        "start_datetime": format_datetime_us(start.to_numpy()).to_numpy(),
        "recv_token_size": prompt.to_numpy(),
        "reply_token_size": reply.to_numpy(),
        "execution_time(ms)": e2e.to_numpy(),
        "queue_wait_time(ms)": wait.to_numpy(),
        "first_token_latency(ms)": ttft.to_numpy(),
        "cache_hit_rate": cache.to_numpy(dtype=object),
        "time_per_output_token(ms)": tpot.to_numpy(),
        "partial": (~(has_arrival & has_end)).to_numpy(),
        "arrival_us": arrival.to_numpy(),
        "enqueue_us": enqueue.to_numpy(),
        "first_scheduled_us": first_scheduled.to_numpy(),
        "first_token_us": first_token.to_numpy(),
        "end_us": table["end_us"].to_numpy(),
        "ttft_ms": ttft.to_numpy(),
        "queue_wait_ms": wait.to_numpy(),
        "e2e_ms": e2e.to_numpy(),
        "tpot_ms": tpot.to_numpy(),
        "exec_ms": table["exec_ms"].fillna(0.0).to_numpy(),
        "prompt_tokens": prompt.to_numpy(),
        "reply_tokens": reply.to_numpy(),
        "steps": table["steps"].fillna(0).to_numpy(dtype="int64"),
        "has_arrival": has_arrival.to_numpy(),
        "has_end": has_end.to_numpy(),
        "_order": start.to_numpy(),
    })
    out = out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    return out


def token_times(frame: pd.DataFrame) -> pd.DataFrame:
    """(rid, time µs) of every API-server output record, for inter-token latencies."""
    rows = frame.loc[frame["name"] == "detokenize"]
    return _explode(rows, "start_us").sort_values(["rid", "start_us"], kind="stable")
