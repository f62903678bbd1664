"""V0 engine scheduler handlers (``vllm.core.scheduler.Scheduler``; domain ``BatchSchedule``).

* ``Scheduler.schedule`` -> span ``batchFrameworkProcessing`` around the call, for non-empty
  steps, with the per-request details (``ms.rid_detail``: ``rid``, ``iter``, ``type``,
  ``num_scheduled_tokens``, ``num_prompt_tokens``, ``num_computed_tokens``), ``batch_type``,
  ``batch_size`` (requests), ``ms.metric.num_scheduled_tokens``, ``ms.metric.preempted``,
  ``ms.metric.swapInBlocks`` / ``swapOutBlocks``; span events ``Dequeue`` / ``Enqueue`` for
  requests that left / joined the WAITING, RUNNING and SWAPPED queues during the call (with
  ``QueueSize`` after it), and ``KVCacheStatus`` (domain ``KVCache``): total, used, free blocks,
  usage fraction and blocks allocated by this step.
* Request-state transitions -> ``ReqState`` events (:func:`v0_common.state_event`), after the
  original returned: ``add_seq_group`` WAITING+1 (and an ``Enqueue`` into WAITING);
  ``_allocate_and_set_running`` WAITING-1 RUNNING+1; ``_preempt_by_recompute`` RUNNING-1
  WAITING+1; ``_swap_out`` RUNNING-1 SWAPPED+1; ``_swap_in`` SWAPPED-1 RUNNING+1;
  ``free_finished_seq_groups`` RUNNING-1 FINISHED+1 per finished request (and a ``Dequeue``
  from RUNNING); ``abort_seq_group`` FINISHED_ABORTED+1 and -1 for the queue it was in.
* ``_schedule_default`` / ``_schedule_chunked_prefill`` / ``_schedule_priority_preemption``
  (msserviceprofiler's hook points): the queue events of that call, unless the ``schedule``
  handler already reports them for the enclosing step.

``iter`` counts the steps a request was scheduled in, from 0; ``type`` is 0 while the request
is in its prefill stage (``SequenceGroup.is_prefill()``, which includes recomputing a preempted
request) and 1 in decode.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, List, Optional

from otel_vllm_ascend import contract, control, recorder, wrapping
from otel_vllm_ascend.handlers import common, v0_common
from otel_vllm_ascend.handlers.v0_common import (
    BATCH_SCHEDULE,
    FINISHED,
    FINISHED_ABORTED,
    KV_CACHE,
    RUNNING,
    SWAPPED,
    WAITING,
    queue_changes,
    queue_event,
    request_id_of,
    state_event,
)

_QUEUES = ((RUNNING, "running"), (WAITING, "waiting"), (SWAPPED, "swapped"))

# request id -> steps it was scheduled in so far (bounded; finished requests are dropped).
_iterations: OrderedDict[str, int] = OrderedDict()
_in_schedule = threading.local()


class ScheduledStep:
    """One V0 engine step as the scheduler decided it; ``modelExec`` reuses it."""

    __slots__ = ("metadata", "request_ids", "rows", "kind", "num_tokens", "_json")

    def __init__(self, metadata: Any, request_ids: List[str], rows: List[tuple], kind: str,
                 num_tokens: int) -> None:
        self.metadata = metadata  # the seq_group_metadata_list vLLM passes to the executor
        self.request_ids = request_ids
        self.rows = rows
        self.kind = kind
        self.num_tokens = num_tokens
        self._json: Optional[str] = None

    def details_json(self) -> str:
        if self._json is None:
            self._json = common.details_json(self.rows)
        return self._json

    def attributes(self, domain: str) -> dict:
        return {
            contract.DOMAIN: domain,
            contract.RID_DETAIL: recorder.Deferred(ScheduledStep.details_json, self),
            contract.RID: self.request_ids,
            "batch_type": self.kind,
        }


last_step: Optional[ScheduledStep] = None


def describe_step(metadata: Any, scheduled: Any, num_tokens: int) -> ScheduledStep:
    """Rows (DETAIL_KEYS order) of the scheduled SequenceGroups, read now: their computed-token
    counts change once the step has run."""
    rows = []
    request_ids = []
    has_prefill = has_decode = False
    for scheduled_group in scheduled:
        group = scheduled_group.seq_group
        request_id = group.request_id
        data = group.first_seq.data
        iteration = next_iteration(request_id)
        if group.is_prefill():
            kind = common.PREFILL
            has_prefill = True
        else:
            kind = common.DECODE
            has_decode = True
        rows.append((request_id, iteration, kind, int(scheduled_group.token_chunk_size),
                     data.get_prompt_len(), data.get_num_computed_tokens()))
        request_ids.append(request_id)
    while len(_iterations) > common.MAX_TRACKED_REQUESTS:
        _iterations.popitem(last=False)
    kind = "Prefill,Decode" if has_prefill and has_decode else (
        "Prefill" if has_prefill else ("Decode" if has_decode else ""))
    return ScheduledStep(metadata, request_ids, rows, kind, num_tokens)


def next_iteration(request_id: str) -> int:
    """Count one more step of the request; its ``iter`` in that step (from 0)."""
    iteration = _iterations.get(request_id, -1) + 1
    _iterations[request_id] = iteration
    return iteration


def forget(request_ids: Any) -> None:
    for request_id in request_ids or ():
        _iterations.pop(request_id, None)


def kv_pool(block_manager: Any) -> Optional[tuple]:
    """(total, free) device blocks of a V0 block manager, or None when not readable."""
    try:
        return (int(block_manager.num_total_gpu_blocks),
                int(block_manager.get_num_free_gpu_blocks()))
    except Exception:
        return None


def _snapshot(this: Any) -> tuple:
    return tuple(list(getattr(this, attr)) for _, attr in _QUEUES)


def _queue_events(this: Any, before: tuple, timestamp: int) -> list:
    events = []
    for (name, attr), queue_before in zip(_QUEUES, before):
        after = getattr(this, attr)
        left, joined = queue_changes(queue_before, after)
        if left:
            events.append(queue_event("Dequeue", timestamp, left, name, len(after)))
        if joined:
            events.append(queue_event("Enqueue", timestamp, joined, name, len(after)))
    return events


def _schedule_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    v0_common.engine_seen("engine_core")
    _in_schedule.active = True
    finished = tuple(getattr(this, "_finished_requests_ids", ()) or ())
    return (_snapshot(this), kv_pool(this.block_manager), finished, time.time_ns(),
            threading.get_native_id())


def _schedule_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                    error: Optional[BaseException]) -> None:
    global last_step
    _in_schedule.active = False
    if error is not None:
        return
    end = time.time_ns()
    queues_before, kv_before, finished, start, tid = state
    forget(finished)
    metadata, outputs = result[0], result[1]
    scheduled = outputs.scheduled_seq_groups
    if not scheduled:
        return
    step = describe_step(metadata, scheduled, int(outputs.num_batched_tokens))
    last_step = step
    events = _queue_events(this, queues_before, end)
    kv_after = kv_pool(this.block_manager)
    if kv_after is not None and control.allows(KV_CACHE):
        total, free = kv_after
        used = total - free
        used_before = kv_before[0] - kv_before[1] if kv_before is not None else used
        events.append(("KVCacheStatus", end, {
            contract.DOMAIN: KV_CACHE,
            contract.RID: step.request_ids,
            contract.METRIC_PREFIX + "TotalBlocks": total,
            contract.METRIC_PREFIX + "UsedBlocks": used,
            contract.METRIC_PREFIX + "FreeBlocks": free,
            contract.METRIC_PREFIX + "UsagePercent": used / total if total else 0.0,
            contract.METRIC_PREFIX + "AllocatedBlocks": used - used_before,
        }))
    attributes = step.attributes(BATCH_SCHEDULE)
    attributes["batch_size"] = len(step.request_ids)
    attributes[contract.METRIC_PREFIX + "num_scheduled_tokens"] = step.num_tokens
    attributes[contract.METRIC_PREFIX + "preempted"] = int(getattr(outputs, "preempted", 0) or 0)
    attributes[contract.METRIC_PREFIX + "swapInBlocks"] = len(outputs.blocks_to_swap_in)
    attributes[contract.METRIC_PREFIX + "swapOutBlocks"] = len(outputs.blocks_to_swap_out)
    recorder.record_span("batchFrameworkProcessing", start, end, attributes, events=events,
                         thread_id=tid)


schedule = wrapping.AroundHandler(
    _schedule_before, _schedule_after, "v0_schedule",
    "V0 ``Scheduler.schedule``: span ``batchFrameworkProcessing``.", after_errors=True)


def _queue_changes_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    if getattr(_in_schedule, "active", False):
        return None  # the schedule span reports the queues of the whole step
    v0_common.engine_seen("engine_core")
    return (_snapshot(this),)


def _queue_changes_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                         error: Optional[BaseException]) -> None:
    now = time.time_ns()
    for name, timestamp, attributes in _queue_events(this, state[0], now):
        recorder.record_event(name, attributes, timestamp_ns=timestamp)


queue_changes_handler = wrapping.AroundHandler(
    _queue_changes_before, _queue_changes_after, "v0_queue_changes",
    "V0 ``Scheduler._schedule_default`` and its siblings: ``Enqueue`` / ``Dequeue`` events.")


def _group_arg(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs.get("seq_group")


def _transition(name: str, changes: dict, doc: str) -> wrapping.AroundHandler:
    """A handler writing ``ReqState`` with ``changes`` for the SequenceGroup argument."""

    def after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
              error: Optional[BaseException]) -> None:
        v0_common.engine_seen("engine_core")
        state_event(request_id_of(_group_arg(args, kwargs)), changes)

    return wrapping.AroundHandler(wrapping.always, after, name, doc)


allocate_and_set_running = _transition(
    "v0_allocate_and_set_running", {WAITING: -1, RUNNING: 1},
    "V0 ``Scheduler._allocate_and_set_running``: WAITING -> RUNNING.")
preempt_by_recompute = _transition(
    "v0_preempt_by_recompute", {RUNNING: -1, WAITING: 1},
    "V0 ``Scheduler._preempt_by_recompute``: RUNNING -> WAITING (preempted, recomputed later).")
swap_out = _transition(
    "v0_swap_out", {RUNNING: -1, SWAPPED: 1},
    "V0 ``Scheduler._swap_out``: RUNNING -> SWAPPED (preempted by swapping its blocks out).")
swap_in = _transition(
    "v0_swap_in", {SWAPPED: -1, RUNNING: 1}, "V0 ``Scheduler._swap_in``: SWAPPED -> RUNNING.")


def _enqueue_after(queue_name: str, attr: str, with_state: bool):
    def after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
              error: Optional[BaseException]) -> None:
        v0_common.engine_seen("engine_core")
        request_id = request_id_of(_group_arg(args, kwargs))
        if request_id is None:
            return
        if with_state:
            state_event(request_id, {queue_name: 1})
        if control.allows(BATCH_SCHEDULE):
            name, timestamp, attributes = queue_event(
                "Enqueue", time.time_ns(), [request_id], queue_name, len(getattr(this, attr)))
            recorder.record_event(name, attributes, timestamp_ns=timestamp)
    return after


add_seq_group = wrapping.AroundHandler(
    wrapping.always, _enqueue_after(WAITING, "waiting", True), "v0_add_seq_group",
    "V0 ``Scheduler.add_seq_group``: ReqState WAITING+1 and ``Enqueue`` into WAITING.")
add_seq_group_to_running = wrapping.AroundHandler(
    wrapping.always, _enqueue_after(RUNNING, "running", False), "v0_add_seq_group_to_running",
    "V0 ``Scheduler._add_seq_group_to_running`` (vLLM's tests): ``Enqueue`` into RUNNING.")
add_seq_group_to_swapped = wrapping.AroundHandler(
    wrapping.always, _enqueue_after(SWAPPED, "swapped", False), "v0_add_seq_group_to_swapped",
    "V0 ``Scheduler._add_seq_group_to_swapped`` (vLLM's tests): ``Enqueue`` into SWAPPED.")


def _free_finished_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    return (list(this.running),)


def _free_finished_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                         error: Optional[BaseException]) -> None:
    before = state[0]
    left, _ = queue_changes(before, this.running)
    if not left:
        return
    v0_common.engine_seen("engine_core")
    now = time.time_ns()
    for request_id in left:
        state_event(request_id, {RUNNING: -1, FINISHED: 1}, timestamp_ns=now)
    if control.allows(BATCH_SCHEDULE):
        name, timestamp, attributes = queue_event("Dequeue", now, left, RUNNING,
                                                  len(this.running))
        recorder.record_event(name, attributes, timestamp_ns=timestamp)


free_finished_seq_groups = wrapping.AroundHandler(
    _free_finished_before, _free_finished_after, "v0_free_finished_seq_groups",
    "V0 ``Scheduler.free_finished_seq_groups``: RUNNING -> FINISHED, ``Dequeue``.")


def _abort_before(this: Any, args: tuple, kwargs: dict) -> Optional[list]:
    wanted = args[0] if args else kwargs.get("request_id")
    ids = {wanted} if isinstance(wanted, str) else set(wanted or ())
    # n > 1: each sample is its own group ("<id>_parallel_sample_<k>"), mapped to its request
    groups = (args[1] if len(args) > 1 else kwargs.get("seq_id_to_seq_group")) or {}
    found = []
    for name, attr in _QUEUES:
        for group in getattr(this, attr):
            parent = groups.get(group.request_id)
            if group.request_id in ids or getattr(parent, "group_id", None) in ids:
                found.append((group.request_id, name))
    return found or None


def _abort_after(found: list, this: Any, args: tuple, kwargs: dict, result: Any,
                 error: Optional[BaseException]) -> None:
    v0_common.engine_seen("engine_core")
    now = time.time_ns()
    for request_id, queue_name in found:
        state_event(request_id, {queue_name: -1, FINISHED_ABORTED: 1}, timestamp_ns=now)


abort_seq_group = wrapping.AroundHandler(
    _abort_before, _abort_after, "v0_abort_seq_group",
    "V0 ``Scheduler.abort_seq_group``: FINISHED_ABORTED for each request found in a queue.")
