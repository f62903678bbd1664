"""EngineCore scheduler handlers.

* ``Scheduler.schedule`` -> span ``batchFrameworkProcessing`` (domain ``Schedule``) around the
  call, for non-empty batches only, with the per-request details (``ms.rid_detail``),
  ``batch_type``, ``batch_size`` (requests) and ``ms.metric.num_scheduled_tokens``; span events
  ``Dequeue`` / ``Enqueue`` for requests that left / joined the RUNNING then the WAITING queue
  during the call (with ``QueueSize`` after it), and ``KVCacheStatus`` (domain
  ``Schedule.KVCache``): total, used, free blocks, usage fraction and blocks allocated by this
  step. The span links to the trace of every scheduled request.
* ``Scheduler.add_request`` -> event ``Enqueue`` (WAITING) after the call.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Optional

from otel_vllm_ascend import contract, control, native_thread, selfmeter, wrapping
from otel_vllm_ascend.handlers import common, meta
from otel_vllm_ascend.records import SpanRecord, new_span_record

DOMAIN = "Schedule"
KV_DOMAIN = "Schedule.KVCache"
RUNNING, WAITING = "RUNNING", "WAITING"

def _queue_changes(changes: list, queue_name: str, before: list, after: list) -> None:
    """``(event name, queue name, request ids, queue size)`` of one queue's changes between
    two snapshots, for the ``Dequeue`` / ``Enqueue`` events."""
    left, joined = common.queue_changes(before, after)
    if left:
        changes.append(("Dequeue", queue_name, left, len(after)))
    if joined:
        changes.append(("Enqueue", queue_name, joined, len(after)))


# vLLM's FCFS waiting queue is a deque whose __iter__ / __len__ only call deque's own (Python
# frames around C); the hook reads it through deque's C methods. Other queue types as they are.
_deque_iter, _deque_len = collections.deque.__iter__, collections.deque.__len__
_readers: dict = {}  # queue type -> (its length, its iteration) as the hook calls them


def _readers_of(kind: type) -> tuple:
    readers = _readers.get(kind)
    if readers is None:
        plain = issubclass(kind, collections.deque) and kind.__name__ == "FCFSRequestQueue"
        readers = _readers[kind] = (_deque_len, _deque_iter) if plain else (len, iter)
    return readers


def _queue_len(queue: Any) -> int:
    return (_readers.get(type(queue)) or _readers_of(type(queue)))[0](queue)


def _snapshot(queue: Any) -> list:
    """A copy of a scheduler queue's members, in its order."""
    if type(queue) is list:
        return queue[:]
    length, iterate = _readers.get(type(queue)) or _readers_of(type(queue))
    return list(iterate(queue)) if length(queue) else []


# What the hook knows of the KV cache's block pool, found once per pool: (the pool, total
# blocks, whether the pool's free-block queue holds the count get_num_free_blocks() returns,
# the divisor of vLLM's usage figure or None). The hook runs once per step with cold caches,
# where each call costs (docs/benchmarks.md, issue 17, tenth part); the objects themselves are
# read every step, so a replaced one is seen.
_kv_pool: Optional[tuple] = None
_NOT_YET = -1  # the divisor, while no free block has told the two formulas apart


def _usage_divisor(this: Any, pool: Any, free: int) -> Optional[int]:
    """``d`` such that vLLM's ``kv_cache_manager.usage`` is ``1 - free / d`` (0 for ``d`` 0):
    the pool's blocks less its null block (vLLM 0.9 and later) or all of them (0.8), whichever
    gives vLLM's own figure now. None when neither does (a manager of another kind: its usage
    is asked every step); ``_NOT_YET`` when both would (no block free: asked again next step)."""
    try:
        usage = float(this.kv_cache_manager.usage)
        blocks = int(pool.num_gpu_blocks)
    except Exception:
        return None
    if free <= 0:
        return _NOT_YET
    for divisor in (blocks - 1, blocks):
        if (1.0 - free / divisor if divisor else 0.0) == usage:
            return divisor
    return None


def _used_blocks(this: Any) -> Optional[tuple]:
    """(total, free) blocks of the scheduler's KV cache, or None when not readable."""
    global _kv_pool
    try:
        pool = this.kv_cache_manager.block_pool
        known = _kv_pool
        if known is None or known[0] is not pool or known[3] == _NOT_YET:
            queue = getattr(pool, "free_block_queue", None)
            direct = (type(getattr(queue, "num_free_blocks", None)) is int
                      and queue.num_free_blocks == pool.get_num_free_blocks())
            free = pool.free_block_queue.num_free_blocks if direct \
                else int(pool.get_num_free_blocks())
            _kv_pool = (pool, int(this.kv_cache_config.num_blocks), direct,
                        _usage_divisor(this, pool, free))
            return _kv_pool[1], free
        if known[2]:
            return known[1], pool.free_block_queue.num_free_blocks
        return known[1], int(pool.get_num_free_blocks())
    except Exception:
        return None


def _kv_usage(this: Any, free: int) -> float:
    """vLLM's ``kv_cache_manager.usage`` of the scheduler ``this`` with ``free`` blocks free,
    by its formula where :func:`_used_blocks` recognised it (no call into vLLM)."""
    divisor = _kv_pool[3] if _kv_pool is not None else None
    if divisor is None or divisor < 0:
        return float(this.kv_cache_manager.usage)
    return 1.0 - free / divisor if divisor else 0.0


def _schedule_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    if common._role_recorded is None:
        common.ensure_role("engine_core")
    if not meta._recorded:
        meta.record_engine_dp_rank(this)
    running = this.running
    state = (running[:] if type(running) is list else _snapshot(running),
             _snapshot(this.waiting), _used_blocks(this))
    return state + native_thread.stamp()  # (running, waiting, kv, start, thread id)


_kv_switch = control.Switch(KV_DOMAIN)


def _schedule_after(state: tuple, this: Any, args: tuple, kwargs: dict, output: Any,
                    error: Optional[BaseException]) -> None:
    end = time.time_ns()
    running_before, waiting_before, kv_before, start, tid = state
    batch = common.describe_batch(output, getattr(this, "requests", None))
    if not batch.inputs.scheduled or not control.engine_step(output):  # profiler_step_num
        common.record_step(_expand_schedule, batch, None)  # the step still counts
        return
    # A steady step leaves both queues as they were: compared here (identity, in C) before
    # any call; only a queue that changed has its request ids that left and joined worked out.
    queue_changes: list = []
    running = this.running
    if type(running) is not list or running != running_before:
        _queue_changes(queue_changes, RUNNING, running_before, _snapshot(running))
    waiting = this.waiting
    if waiting_before or _queue_len(waiting):
        waiting_after = _snapshot(waiting)
        if waiting_after != waiting_before:
            _queue_changes(queue_changes, WAITING, waiting_before, waiting_after)
    kv = None
    if _kv_switch.on:
        kv_after = _used_blocks(this)
        if kv_after is not None:
            total, free = kv_after
            used = total - free
            used_before = kv_before[0] - kv_before[1] if kv_before is not None else used
            try:
                usage = _kv_usage(this, free)
            except Exception:
                usage = used / total if total else 0.0
            kv = (total, used, free, usage, used - used_before)
    common.record_step(_expand_schedule, batch, (
        start, end, tid, queue_changes, kv, int(output.total_num_scheduled_tokens)))


def _schedule_span(batches: common.RemoteBatches, seq: int, span: tuple) -> SpanRecord:
    """``batchFrameworkProcessing`` of one step from what ``_schedule_after`` captured."""
    start, end, tid, queue_changes, kv, num_tokens = span
    attributes = batches.batch_attributes(DOMAIN, seq)
    request_ids = attributes[contract.RID]
    attributes[contract.METRIC_PREFIX + "num_scheduled_tokens"] = num_tokens
    batches.add_details(attributes, seq)
    events = [(name, end, {
        contract.DOMAIN: DOMAIN,
        contract.RID: request_ids_of_change,
        contract.METRIC_PREFIX + "QueueSize": size,
        contract.SCOPE_PREFIX + "QueueName": queue_name,
    }) for name, queue_name, request_ids_of_change, size in queue_changes]
    if kv is not None:
        total, used, free, usage, allocated = kv
        events.append(("KVCacheStatus", end, {
            contract.DOMAIN: KV_DOMAIN,
            contract.RID: request_ids,
            contract.METRIC_PREFIX + "TotalBlocks": total,
            contract.METRIC_PREFIX + "UsedBlocks": used,
            contract.METRIC_PREFIX + "FreeBlocks": free,
            contract.METRIC_PREFIX + "UsagePercent": usage,
            contract.METRIC_PREFIX + "AllocatedBlocks": allocated,
        }))
    return new_span_record(SpanRecord, ("batchFrameworkProcessing", start, end, attributes,
                                        events or None, None, batches.links(seq), None, tid,
                                        None))


_expand_schedule = common.step_expander(selfmeter.STEP_TASK, _schedule_span)


schedule = wrapping.AroundHandler(
    _schedule_before, _schedule_after, "schedule",
    "``Scheduler.schedule`` (and vllm-ascend's ``AscendScheduler.schedule``).")


def _add_request_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                       error: Optional[BaseException]) -> None:
    if common._role_recorded is None:
        common.ensure_role("engine_core")
    request = args[0] if args else kwargs.get("request")
    request_id = getattr(request, "request_id", None)
    if request_id is not None:
        # The trace context is parsed from the request's headers where the span is built.
        common.record_request_event("Enqueue", {
            contract.DOMAIN: DOMAIN,
            contract.RID: request_id,
            contract.METRIC_PREFIX + "QueueSize": _queue_len(this.waiting),
            contract.SCOPE_PREFIX + "QueueName": WAITING,
        }, request, request_id)


add_request = wrapping.AroundHandler(wrapping.always, _add_request_after, "add_request",
                                     "``Scheduler.add_request``: ``Enqueue`` into WAITING.")
