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

import time
from typing import Any, List, Optional

from otel_vllm_ascend import contract, control, native_thread, recorder, wrapping
from otel_vllm_ascend.handlers import common

DOMAIN = "Schedule"
KV_DOMAIN = "Schedule.KVCache"
RUNNING, WAITING = "RUNNING", "WAITING"

def _queue_event(name: str, timestamp: int, request_ids: List[str], queue_name: str,
                 size: int) -> tuple:
    return (name, timestamp, {
        contract.DOMAIN: DOMAIN,
        contract.RID: request_ids,
        contract.METRIC_PREFIX + "QueueSize": size,
        contract.SCOPE_PREFIX + "QueueName": queue_name,
    })


def _queue_events(events: list, timestamp: int, queue_name: str, before: list,
                  queue: Any) -> None:
    """``Dequeue`` / ``Enqueue`` events of one queue's changes since ``before``."""
    after = queue if type(queue) is list else list(queue)  # the live list is only read here
    if after == before:  # a steady step: compared in C, nothing to record
        return
    left, joined = common.queue_changes(before, after)
    if left:
        events.append(_queue_event("Dequeue", timestamp, left, queue_name, len(after)))
    if joined:
        events.append(_queue_event("Enqueue", timestamp, joined, queue_name, len(after)))


def _used_blocks(this: Any) -> Optional[tuple]:
    """(total, free) blocks of the scheduler's KV cache, or None when not readable."""
    try:
        manager = this.kv_cache_manager
        total = int(this.kv_cache_config.num_blocks)
        free = int(manager.block_pool.get_num_free_blocks())
    except Exception:
        return None
    return total, free


def _schedule_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    common.ensure_role("engine_core")
    return (list(this.running), list(this.waiting), _used_blocks(this), time.time_ns(),
            native_thread.current.id)


def _schedule_after(state: tuple, this: Any, args: tuple, kwargs: dict, output: Any,
                    error: Optional[BaseException]) -> None:
    end = time.time_ns()
    running_before, waiting_before, kv_before, start, tid = state
    batch = common.describe_batch(output, getattr(this, "requests", None))
    request_ids = batch.request_ids
    if not request_ids or not control.engine_step(output):  # profiler_step_num reached
        return
    events: list = []
    _queue_events(events, end, RUNNING, running_before, this.running)
    _queue_events(events, end, WAITING, waiting_before, this.waiting)
    kv_after = _used_blocks(this)
    if kv_after is not None and control.allows(KV_DOMAIN):
        total, free = kv_after
        used = total - free
        used_before = kv_before[0] - kv_before[1] if kv_before is not None else used
        try:
            usage = float(this.kv_cache_manager.usage)
        except Exception:
            usage = used / total if total else 0.0
        events.append(("KVCacheStatus", end, {
            contract.DOMAIN: KV_DOMAIN,
            contract.RID: request_ids,
            contract.METRIC_PREFIX + "TotalBlocks": total,
            contract.METRIC_PREFIX + "UsedBlocks": used,
            contract.METRIC_PREFIX + "FreeBlocks": free,
            contract.METRIC_PREFIX + "UsagePercent": usage,
            contract.METRIC_PREFIX + "AllocatedBlocks": used - used_before,
        }))
    attributes = common.batch_attributes(DOMAIN, batch)
    attributes["batch_size"] = len(request_ids)
    attributes[contract.METRIC_PREFIX + "num_scheduled_tokens"] = \
        int(output.total_num_scheduled_tokens)
    recorder.record_span("batchFrameworkProcessing", start, end, attributes, events=events,
                         links=common.batch_links(batch), thread_id=tid)


schedule = wrapping.AroundHandler(
    _schedule_before, _schedule_after, "schedule",
    "``Scheduler.schedule`` (and vllm-ascend's ``AscendScheduler.schedule``).")


def _add_request_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                       error: Optional[BaseException]) -> None:
    common.ensure_role("engine_core")
    request = args[0] if args else kwargs.get("request")
    request_id = getattr(request, "request_id", None)
    if request_id is not None:
        recorder.record_event("Enqueue", {
            contract.DOMAIN: DOMAIN,
            contract.RID: request_id,
            contract.METRIC_PREFIX + "QueueSize": len(this.waiting),
            contract.SCOPE_PREFIX + "QueueName": WAITING,
        }, parent=common.engine_context(request))


add_request = wrapping.AroundHandler(wrapping.always, _add_request_after, "add_request",
                                     "``Scheduler.add_request``: ``Enqueue`` into WAITING.")
