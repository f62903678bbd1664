"""The KV-cache built-ins on an object shaped like vLLM's ``KVCacheManager``: the fast-tier
twin of tests/unit/test_handlers.py's real-class test, and the worked example of
docs/writing-a-handler.md (no vLLM needed)."""

from types import SimpleNamespace

import pytest
from runtime_helpers import Capture

from otel_vllm_ascend import contract, control, recorder
from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.handlers import common, kvcache


class ShapedKVCacheManager:
    """The members the handlers read, as vLLM names them (block_pool, usage)."""

    def __init__(self, free_blocks, usage):
        self.block_pool = SimpleNamespace(get_num_free_blocks=lambda: free_blocks)
        self.usage = usage
        self.freed = []

    def free(self, request):
        self.freed.append(request.request_id)

    def get_computed_blocks(self, request):
        return ["block"], 6, 0  # 0.32's shape: blocks, computed tokens, one more count


@pytest.fixture
def capture():
    cap = Capture()
    recorder.set_tracer_provider(cap.provider)
    control.start(config=ProfilerConfig(enable=True))
    common._role_recorded = None
    yield cap
    control.stop()
    recorder.flush()
    recorder.set_tracer_provider(None)


def test_free_records_the_pool_after_the_call(capture):
    manager = ShapedKVCacheManager(free_blocks=7, usage=0.25)
    request = SimpleNamespace(request_id="r-1", num_tokens=8)
    assert kvcache.free(manager.free, manager, request) is None
    assert manager.freed == ["r-1"]  # the original ran, once
    (event,) = capture.named("Free")
    assert event.attributes[contract.DOMAIN] == "Schedule.KVCache"
    assert event.attributes[contract.RID] == "r-1"
    assert event.attributes[contract.METRIC_PREFIX + "deviceBlock"] == 7
    assert event.attributes[contract.METRIC_PREFIX + "UsagePercent"] == 0.25


def test_cache_hit_rate_only_for_requests_with_tokens(capture):
    manager = ShapedKVCacheManager(free_blocks=7, usage=0.25)
    result = kvcache.get_computed_blocks(manager.get_computed_blocks, manager,
                                         SimpleNamespace(request_id="r-2", num_tokens=8))
    assert result == (["block"], 6, 0)  # the result passes through untouched
    (hit,) = capture.named("CacheHitRate")
    assert hit.attributes["hitCache"] == pytest.approx(6 / 8)
    capture.clear()
    kvcache.get_computed_blocks(manager.get_computed_blocks, manager,
                                SimpleNamespace(request_id="r-3", num_tokens=0))
    assert capture.named("CacheHitRate") == []
