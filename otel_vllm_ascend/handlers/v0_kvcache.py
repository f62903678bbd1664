"""V0 engine KV-cache handlers (``vllm.core.block_manager.SelfAttnBlockSpaceManager``; domain
``KVCache``).

Every record names its request and carries the device pool after the call: ``TotalBlocks=``,
``FreeBlocks=``, ``UsedBlocks=``, ``UsagePercent=`` (fraction 0..1).

* ``allocate(seq_group)`` -> ``Allocate`` with ``AllocatedBlocks=`` (blocks taken from the free
  pool by the prompt); with prefix caching on, also ``CacheHitRate`` with ``hitCache`` = prompt
  tokens found in the cache / prompt tokens.
* ``append_slots(seq, num_lookahead_slots)`` -> ``AppendSlot`` with ``AllocatedBlocks=`` and
  ``copyOnWrite=``, only when the call took a new block or copied one (every ``block_size``
  tokens of a request, not every decode step).
* ``swap_out(seq_group)`` / ``swap_in(seq_group)`` -> ``SwapOut`` / ``SwapIn`` with ``swap``
  (``swap_out`` / ``swap_in``), ``SwappedBlocks=`` (blocks moved), ``FreeCpuBlocks=``.
* ``free(seq)`` -> ``Free`` with ``deviceBlock=`` (free blocks after, as the V1 record), when the
  sequence held blocks.

Sequences do not know their request: the handlers map sequence ids to request ids when a
request's blocks are allocated or swapped in.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Optional

from otel_vllm_ascend import contract, control, recorder, wrapping
from otel_vllm_ascend.handlers import common, v0_common
from otel_vllm_ascend.handlers.v0_common import KV_CACHE, request_id_of
from otel_vllm_ascend.handlers.v0_scheduler import kv_pool

# sequence id -> request id (bounded; dropped when the sequence is freed)
_requests_of_seqs: OrderedDict[int, str] = OrderedDict()


def _remember(seq_group: Any) -> Optional[str]:
    request_id = request_id_of(seq_group)
    if request_id is not None:
        for seq in getattr(seq_group, "seqs", ()) or ():
            _requests_of_seqs[seq.seq_id] = request_id
        while len(_requests_of_seqs) > common.MAX_TRACKED_REQUESTS:
            _requests_of_seqs.popitem(last=False)
    return request_id


def _pool_attributes(this: Any, request_id: Any, pool: Optional[tuple]) -> dict:
    attributes = {contract.DOMAIN: KV_CACHE, contract.RID: str(request_id)}
    if pool is not None:
        total, free = pool
        attributes[contract.METRIC_PREFIX + "TotalBlocks"] = total
        attributes[contract.METRIC_PREFIX + "FreeBlocks"] = free
        attributes[contract.METRIC_PREFIX + "UsedBlocks"] = total - free
        attributes[contract.METRIC_PREFIX + "UsagePercent"] = \
            (total - free) / total if total else 0.0
    return attributes


def _free_blocks(this: Any) -> Optional[int]:
    try:
        return int(this.get_num_free_gpu_blocks())
    except Exception:
        return None


def _pool_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    if not control.allows(KV_CACHE):
        return None
    return (kv_pool(this),)


def _group_call(state: tuple, this: Any, args: tuple,
                kwargs: dict) -> tuple[Any, Optional[str], dict, Optional[int]]:
    """What ``allocate`` and ``swap_*`` (calls on a whole sequence group) record alike: the
    group, its request (remembered for its sequences), the record's request and pool
    attributes, and the device blocks the call took from the free pool (None if unknown)."""
    v0_common.engine_seen("engine_core")
    seq_group = args[0] if args else kwargs.get("seq_group")
    request_id = _remember(seq_group)
    pool = kv_pool(this)
    taken = state[0][1] - pool[1] if state[0] is not None and pool is not None else None
    return seq_group, request_id, _pool_attributes(this, request_id, pool), taken


def _allocate_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                    error: Optional[BaseException]) -> None:
    seq_group, request_id, attributes, taken = _group_call(state, this, args, kwargs)
    if taken is not None:
        attributes[contract.METRIC_PREFIX + "AllocatedBlocks"] = taken
    now = time.time_ns()
    recorder.record_event("Allocate", attributes, timestamp_ns=now)
    if getattr(this, "enable_caching", False):
        seq = seq_group.first_seq
        prompt = seq.data.get_prompt_len()
        if prompt > 0:
            recorder.record_event("CacheHitRate", {
                contract.DOMAIN: KV_CACHE, contract.RID: str(request_id),
                "hitCache": min(1.0, int(this.get_num_cached_tokens(seq)) / prompt),
            }, timestamp_ns=now)


allocate = wrapping.AroundHandler(_pool_before, _allocate_after, "v0_allocate",
                                  "V0 ``BlockSpaceManager.allocate``: ``Allocate``.")


def _append_before(this: Any, args: tuple, kwargs: dict) -> Optional[int]:
    # The hot path of every decode step: one count before, one after, a record only when the
    # pool changed. Not ``control.allows`` here: the hook is already off when KVCache is.
    return _free_blocks(this)


def _append_after(free_before: int, this: Any, args: tuple, kwargs: dict, result: Any,
                  error: Optional[BaseException]) -> None:
    free_after = _free_blocks(this)
    allocated = free_before - free_after if free_after is not None else 0
    copies = len(result) if result else 0
    if allocated <= 0 and not copies:
        return
    pool = kv_pool(this)
    seq = args[0] if args else kwargs.get("seq")
    seq_id = getattr(seq, "seq_id", None)
    attributes = _pool_attributes(this, _requests_of_seqs.get(seq_id, seq_id), pool)
    attributes[contract.METRIC_PREFIX + "AllocatedBlocks"] = max(allocated, 0)
    attributes[contract.METRIC_PREFIX + "copyOnWrite"] = copies
    recorder.record_event("AppendSlot", attributes)


append_slots = wrapping.AroundHandler(
    _append_before, _append_after, "v0_append_slots",
    "V0 ``BlockSpaceManager.append_slots``: ``AppendSlot`` when a block was taken or copied.")


def _swap_after(name: str, direction: str):
    def after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
              error: Optional[BaseException]) -> None:
        _, _, attributes, taken = _group_call(state, this, args, kwargs)
        attributes["swap"] = direction
        attributes[contract.METRIC_PREFIX + "SwappedBlocks"] = len(result or ())
        if taken is not None:
            attributes[contract.METRIC_PREFIX + "AllocatedBlocks"] = max(0, taken)
        try:
            attributes[contract.METRIC_PREFIX + "FreeCpuBlocks"] = \
                int(this.get_num_free_cpu_blocks())
        except Exception:
            pass
        recorder.record_event(name, attributes)
    return after


swap_out = wrapping.AroundHandler(_pool_before, _swap_after("SwapOut", "swap_out"),
                                  "v0_kv_swap_out", "V0 ``BlockSpaceManager.swap_out``.")
swap_in = wrapping.AroundHandler(_pool_before, _swap_after("SwapIn", "swap_in"),
                                 "v0_kv_swap_in", "V0 ``BlockSpaceManager.swap_in``.")


def _free_before(this: Any, args: tuple, kwargs: dict) -> Optional[int]:
    seq = args[0] if args else kwargs.get("seq")
    seq_id = getattr(seq, "seq_id", None)
    if seq_id not in this.block_tables:  # nothing held: vLLM returns at once
        return None
    return seq_id


def _free_after(seq_id: int, this: Any, args: tuple, kwargs: dict, result: Any,
                error: Optional[BaseException]) -> None:
    v0_common.engine_seen("engine_core")
    request_id = _requests_of_seqs.pop(seq_id, seq_id)
    pool = kv_pool(this)
    attributes = _pool_attributes(this, request_id, pool)
    if pool is not None:
        attributes[contract.METRIC_PREFIX + "deviceBlock"] = pool[1]
    recorder.record_event("Free", attributes)


free = wrapping.AroundHandler(_free_before, _free_after, "v0_free",
                              "V0 ``BlockSpaceManager.free``: ``Free``.")
