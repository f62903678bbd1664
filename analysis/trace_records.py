"""The records' own trace events: one slice or instant per record, and the counters.

Counters are KV cache usage and blocks, queue sizes, batch size and scheduled tokens per
engine step, and free-form metric samples (records without a message ``type``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.record_dicts import has_keys
from otel_vllm_ascend.analysis.rid_detail import RequestDetail
from otel_vllm_ascend.analysis.trace_file import _ts

# Records about at most this many requests list their ids in the slice args; larger batches
# give a count (their members are reachable through the flows), which keeps the file small.
MAX_LISTED_RIDS = 16

_KV_DOMAINS = frozenset({"Schedule.KVCache", "KVCache"})
_COUNTER_RECORDS = frozenset({"KVCacheStatus", "Free"})
_QUEUE_RECORDS = frozenset({"Enqueue", "Dequeue"})
_SKIPPED_RECORDS = frozenset({"link", "Meta"})
_STEP_RECORDS = ("modelExec", "batchFrameworkProcessing")
_SCHEDULE_RECORD = "batchFrameworkProcessing"
_NUMBER_TYPES = frozenset({int, float})


def _is_counter_record(name: str, domain: str) -> bool:
    return name in _COUNTER_RECORDS and domain in _KV_DOMAINS


def _record_events(frame: pd.DataFrame, trace_pids: np.ndarray, slice_tids: np.ndarray,
                   start_ns: np.ndarray, end_ns: np.ndarray, names: list,
                   domains: list, samples: list) -> list[dict]:
    """One ``X`` per span record and one ``i`` per event record (links, Meta, KV counters aside)."""
    events = []
    columns = zip(trace_pids.tolist(), slice_tids.tolist(), start_ns.tolist(), end_ns.tolist(),
                  names, domains, frame["rids"].tolist(), frame["batch_type"].tolist(),
                  frame["metrics"].tolist(), frame["metric_incs"].tolist(),
                  frame["scopes"].tolist(), frame["attrs"].tolist(),
                  frame["rid_detail"].tolist(), samples)
    for pid, tid, start, end, name, domain, rids, batch_type, metrics, incs, scopes, attrs, \
            detail, is_sample in columns:
        if (not name or is_sample or name in _SKIPPED_RECORDS
                or _is_counter_record(name, domain)):
            continue
        args: dict = {"domain": domain} if domain else {}
        if rids:
            if len(rids) <= MAX_LISTED_RIDS:
                args["rid"] = rids if len(rids) > 1 else rids[0]
            else:
                args["requests"] = len(rids)
        if detail:
            args.update(_detail_counts(detail))
        if batch_type:
            args["batch_type"] = batch_type
        if metrics:
            args.update(metrics)
        if incs:
            args.update({f"{k}+": v for k, v in incs.items()})
        if scopes:
            args.update({f"scope#{k}": v for k, v in scopes.items()})
        if attrs:
            for key, value in attrs.items():
                args.setdefault(key, value)
        event = {"ph": "X" if end > start else "i", "name": name, "cat": domain or "record",
                 "pid": pid, "tid": tid, "ts": _ts(start), "args": _json_safe(args)}
        if end > start:
            event["dur"] = _ts(end - start)
        else:
            event["s"] = "t"
        events.append(event)
    return events


def _detail_counts(detail: list) -> dict:
    """Prefill / decode request and token counts of a batch's per-request dicts."""
    if isinstance(detail, RequestDetail):
        kinds, tokens = detail.column("type"), detail.column("num_scheduled_tokens")
        if kinds is not None and tokens is not None:
            prefill_rows = kinds == 0
            prefill_tokens = int(tokens[prefill_rows].sum())
            prefill = int(prefill_rows.sum())
            return {"prefill_requests": prefill, "decode_requests": len(kinds) - prefill,
                    "prefill_tokens": prefill_tokens,
                    "decode_tokens": int(tokens.sum()) - prefill_tokens}
    try:  # fast path: every dict has a numeric type and token count (the vLLM handlers' shape)
        kinds = [item["type"] for item in detail]
        tokens = [item["num_scheduled_tokens"] for item in detail]
        if not kinds or None in kinds or not {t.__class__ for t in tokens} <= _NUMBER_TYPES:
            raise TypeError
        total = sum(tokens)
        prefill = kinds.count(0)
        prefill_tokens = sum([t for t, k in zip(tokens, kinds) if k == 0]) if prefill else 0
        return {"prefill_requests": prefill, "decode_requests": len(kinds) - prefill,
                "prefill_tokens": prefill_tokens, "decode_tokens": total - prefill_tokens}
    except (KeyError, TypeError):
        return _detail_counts_checked(detail)


def _detail_counts_checked(detail: list) -> dict:
    """:func:`_detail_counts` for dicts with missing or odd values (item by item)."""
    prefill = decode = prefill_tokens = decode_tokens = 0
    have_tokens = False
    for item in detail:
        try:
            kind = item.get("type")
            tokens = item.get("num_scheduled_tokens")
        except AttributeError:  # not a dict: nothing to count
            continue
        if tokens.__class__ is int or tokens.__class__ is float:
            have_tokens = True
        else:
            tokens = 0
        if kind == 0 or (kind is None and item.get("iter") == 0):
            prefill += 1
            prefill_tokens += tokens
        else:
            decode += 1
            decode_tokens += tokens
    counts = {"prefill_requests": prefill, "decode_requests": decode}
    if have_tokens:
        counts["prefill_tokens"] = prefill_tokens
        counts["decode_tokens"] = decode_tokens
    return counts


def _json_safe(args: dict) -> dict:
    """NaN/inf are not JSON: replace them by None so every reader accepts the file."""
    for key, value in args.items():
        if isinstance(value, float) and not math.isfinite(value):
            args[key] = None
    return args


def _counter_events(frame: pd.DataFrame, trace_pids: np.ndarray, start_ns: np.ndarray,
                    names: list, domains: list, samples: list, step_name: Optional[str] = None,
                    total_blocks: Optional[dict] = None) -> list[dict]:
    """KV cache, queue, batch and free-form metric counters, on the process that recorded them.

    ``step_name`` (the record standing for an engine step, :func:`_step_record_name` of all the
    records') and ``total_blocks`` (each process's last ``TotalBlocks``) carry over when the
    records are passed a chunk at a time."""
    events = []
    if total_blocks is None:
        total_blocks = {}
    if step_name is None:
        step_name = _step_record_name(names, prefer=_SCHEDULE_RECORD)
    columns = zip(trace_pids.tolist(), start_ns.tolist(), names, domains,
                  frame["metrics"].tolist(), frame["scopes"].tolist(),
                  frame["attrs"].tolist(), frame["rids"].tolist(),
                  frame["rid_detail"].tolist(), samples)
    for pid, start, name, domain, metrics, scopes, attrs, rids, detail, is_sample in columns:
        ts = _ts(start)
        if _is_counter_record(name, domain):
            events += _kv_counters(pid, ts, name, metrics, total_blocks)
        elif name in _QUEUE_RECORDS:
            size = metrics.get("QueueSize") if metrics else None
            queue = str((scopes or {}).get("QueueName", "")).lower()
            if queue and _finite(size):
                events.append(_counter(f"{queue} queue", pid, ts, requests=size))
        elif name == step_name:
            events += _batch_counters(pid, ts, name, metrics, attrs, rids, detail)
        elif is_sample and metrics:
            values = {k: v for k, v in metrics.items() if _finite(v)}
            if not values:
                continue
            scope = " ".join(f"{k}={v}" for k, v in (scopes or {}).items())
            if name:  # e.g. hostUsage: one counter, one series per metric
                events.append(_counter(f"{name} ({scope})" if scope else name, pid, ts,
                                       **values))
            else:
                for key, value in values.items():
                    label = f"{key} ({scope})" if scope else key
                    events.append(_counter(label, pid, ts, value=value))
    return events


def _metric_samples(frame: pd.DataFrame, start_ns: np.ndarray, end_ns: np.ndarray
                    ) -> np.ndarray:
    """Per row: is it a metric sample (no message ``type``, zero duration, has metrics)? A
    bool array (one byte a record, held while the trace lives; a list took eight)."""
    no_type = frame["type"].isna().to_numpy()
    instant = end_ns == start_ns
    return no_type & instant & has_keys(frame["metrics"])


def _kv_counters(pid: int, ts: float, name: str, metrics: dict, total_blocks: dict) -> list:
    events = []
    metrics = metrics or {}
    usage = metrics.get("UsagePercent")
    if _finite(usage):
        # vLLM writes a fraction 0..1; MindIE-style captures write a percentage.
        events.append(_counter("KV cache", pid, ts, **{"usage %": usage * 100 if usage <= 1
                                                       else usage}))
    total = metrics.get("TotalBlocks")
    if _finite(total):
        total_blocks[pid] = total
    free = metrics.get("FreeBlocks") if name == "KVCacheStatus" else metrics.get("deviceBlock")
    used = metrics.get("UsedBlocks")
    if not _finite(used) and _finite(free) and pid in total_blocks:
        used = total_blocks[pid] - free
    blocks = {k: v for k, v in (("used", used), ("free", free)) if _finite(v)}
    if blocks:
        events.append(_counter("KV blocks", pid, ts, **blocks))
    return events


def _batch_counters(pid: int, ts: float, name: str, metrics: dict, attrs: dict, rids: list,
                    detail: Optional[list]) -> list:
    events = []
    size = len(detail) if detail else len(rids) if rids else None
    if size is None and name == _SCHEDULE_RECORD:
        size = _number((attrs or {}).get("batch_size"))
    if _finite(size):
        events.append(_counter("batch size", pid, ts, requests=size))
    tokens = (metrics or {}).get("num_scheduled_tokens")
    if not _finite(tokens) and detail:
        counts = _detail_counts(detail)
        if "prefill_tokens" in counts:
            tokens = counts["prefill_tokens"] + counts["decode_tokens"]
    if not _finite(tokens) and name == "modelExec":
        tokens = _number((attrs or {}).get("batch_size"))  # modelExec's batch_size is tokens
    if _finite(tokens):
        events.append(_counter("scheduled tokens", pid, ts, tokens=tokens))
    return events


def _counter(name: str, pid: int, ts: float, **values: float) -> dict:
    return {"ph": "C", "name": name, "pid": pid, "ts": ts,
            "args": {k: float(v) for k, v in values.items()}}


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(value))


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _step_record_name(names: list, prefer: str = _STEP_RECORDS[0]) -> Optional[str]:
    """The record that stands for one engine step: ``prefer`` if present, else the other one."""
    present = set(names.unique() if hasattr(names, "unique") else names)  # a column: no list
    if prefer in present:
        return prefer
    for name in _STEP_RECORDS:
        if name in present:
            return name
    return None
