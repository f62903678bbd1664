"""EngineCore KV-cache handlers (domain ``Schedule.KVCache``).

* ``KVCacheManager.free`` -> event ``Free`` after the call: ``deviceBlock`` (free blocks now) and
  ``UsagePercent`` (usage fraction 0..1 now).
* ``KVCacheManager.get_computed_blocks`` -> event ``CacheHitRate`` with ``hitCache`` = prefix-cache
  hit tokens / request tokens, when the request has tokens. vLLM 0.32 returns
  ``(blocks, num_computed_tokens, shared_prefix_boundary)``; older V1 returned two values: the
  token count is the second element in both.
"""

from __future__ import annotations

from typing import Any

from otel_vllm_ascend import contract, recorder
from otel_vllm_ascend.handlers import common

DOMAIN = "Schedule.KVCache"


def free(original: Any, this: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    """``KVCacheManager.free``."""
    result = original(request, *args, **kwargs)
    common.ensure_role("engine_core")
    recorder.record_event("Free", {
        contract.DOMAIN: DOMAIN,
        contract.RID: request.request_id,
        contract.METRIC_PREFIX + "deviceBlock": int(this.block_pool.get_num_free_blocks()),
        contract.METRIC_PREFIX + "UsagePercent": float(this.usage),
    }, parent=common.engine_context(request))
    return result


def get_computed_blocks(original: Any, this: Any, request: Any, *args: Any,
                        **kwargs: Any) -> Any:
    """``KVCacheManager.get_computed_blocks``."""
    result = original(request, *args, **kwargs)
    common.ensure_role("engine_core")
    num_tokens = int(getattr(request, "num_tokens", 0) or 0)
    if isinstance(result, tuple) and len(result) > 1 and num_tokens > 0:
        recorder.record_event("CacheHitRate", {
            contract.DOMAIN: DOMAIN,
            contract.RID: request.request_id,
            "hitCache": int(result[1]) / num_tokens,
        }, parent=common.engine_context(request))
    return result
