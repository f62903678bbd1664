"""How the schedule hook reads the KV cache's free blocks: from the pool's free-block queue
where its count is the one ``get_num_free_blocks()`` returns, through that method otherwise,
and from whatever pool the scheduler holds now (a replaced pool or queue is seen)."""

from __future__ import annotations

from types import SimpleNamespace

from otel_vllm_ascend.handlers import scheduler


class _Pool:
    """A block pool's shape as vLLM V1 has it: a free-block queue with its own count."""

    def __init__(self, free: int, queue_count=None) -> None:
        self.free = free
        self.calls = 0
        self.free_block_queue = SimpleNamespace(
            num_free_blocks=free if queue_count is None else queue_count)

    def get_num_free_blocks(self) -> int:
        self.calls += 1
        return self.free


def _scheduler(pool, total=100):
    return SimpleNamespace(kv_cache_manager=SimpleNamespace(block_pool=pool),
                           kv_cache_config=SimpleNamespace(num_blocks=total))


def test_free_blocks_from_the_queue_then_from_a_replaced_pool(monkeypatch):
    monkeypatch.setattr(scheduler, "_kv_pool", None)
    pool = _Pool(40)
    this = _scheduler(pool)
    assert scheduler._used_blocks(this) == (100, 40)
    calls = pool.calls
    pool.free_block_queue.num_free_blocks = 35  # vLLM allocated five blocks
    assert scheduler._used_blocks(this) == (100, 35)
    assert pool.calls == calls  # read from the queue, not through the method
    pool.free_block_queue = SimpleNamespace(num_free_blocks=7)  # a new queue
    assert scheduler._used_blocks(this) == (100, 7)
    this.kv_cache_manager.block_pool = _Pool(3)  # a new pool: found again
    this.kv_cache_config.num_blocks = 50
    assert scheduler._used_blocks(this) == (50, 3)


def test_free_blocks_through_the_method_when_the_queue_disagrees(monkeypatch):
    monkeypatch.setattr(scheduler, "_kv_pool", None)
    pool = _Pool(40, queue_count=41)  # a pool whose queue does not hold the count
    this = _scheduler(pool)
    assert scheduler._used_blocks(this) == (100, 40)
    pool.free = 38
    assert scheduler._used_blocks(this) == (100, 38)
    del pool.free_block_queue
    assert scheduler._used_blocks(this) == (100, 38)


def test_unreadable_kv_cache_gives_none(monkeypatch):
    monkeypatch.setattr(scheduler, "_kv_pool", None)
    assert scheduler._used_blocks(SimpleNamespace()) is None
