"""EngineCore KV-cache handlers (domain ``Schedule.KVCache``).

* ``KVCacheManager.free`` -> event ``Free`` after the call: ``deviceBlock`` (free blocks now) and
  ``UsagePercent`` (usage fraction 0..1 now).
* ``KVCacheManager.get_computed_blocks`` -> event ``CacheHitRate`` with ``hitCache`` = prefix-cache
  hit tokens / request tokens, when the request has tokens. vLLM 0.32 returns
  ``(blocks, num_computed_tokens, shared_prefix_boundary)``; older V1 returned two values: the
  token count is the second element in both.
"""

from __future__ import annotations

from typing import Any, Optional

from otel_vllm_ascend import contract, wrapping
from otel_vllm_ascend.handlers import common

DOMAIN = "Schedule.KVCache"


def _free_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                error: Optional[BaseException]) -> None:
    if common._role_recorded is None:
        common.ensure_role("engine_core")
    request = args[0] if args else kwargs.get("request")
    request_id = request.request_id
    common.record_request_event("Free", {
        contract.DOMAIN: DOMAIN,
        contract.RID: request_id,
        contract.METRIC_PREFIX + "deviceBlock": int(this.block_pool.get_num_free_blocks()),
        contract.METRIC_PREFIX + "UsagePercent": float(this.usage),
    }, request, request_id)


free = wrapping.AroundHandler(wrapping.always, _free_after, "free", "``KVCacheManager.free``.")


def _computed_blocks_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                           error: Optional[BaseException]) -> None:
    if common._role_recorded is None:
        common.ensure_role("engine_core")
    request = args[0] if args else kwargs.get("request")
    num_tokens = int(getattr(request, "num_tokens", 0) or 0)
    if isinstance(result, tuple) and len(result) > 1 and num_tokens > 0:
        request_id = request.request_id
        common.record_request_event("CacheHitRate", {
            contract.DOMAIN: DOMAIN,
            contract.RID: request_id,
            "hitCache": int(result[1]) / num_tokens,
        }, request, request_id)


get_computed_blocks = wrapping.AroundHandler(
    wrapping.always, _computed_blocks_after, "get_computed_blocks",
    "``KVCacheManager.get_computed_blocks``.")
