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


class _Manager:
    """A KV cache manager whose ``usage`` counts its calls, by one of vLLM's formulas."""

    def __init__(self, pool, divisor_of) -> None:
        self.block_pool = pool
        self.divisor_of = divisor_of
        self.usage_calls = 0

    @property
    def usage(self) -> float:
        self.usage_calls += 1
        free = self.block_pool.get_num_free_blocks()
        divisor = self.divisor_of(self.block_pool.num_gpu_blocks)
        return 1.0 - free / divisor if divisor else 0


def _scheduler_with_usage(free, divisor_of, blocks=101):
    pool = _Pool(free)
    pool.num_gpu_blocks = blocks
    return SimpleNamespace(kv_cache_manager=_Manager(pool, divisor_of),
                           kv_cache_config=SimpleNamespace(num_blocks=blocks))


def _usage_after_steps(this, frees):
    """The hook's usage figure and vLLM's after each step's free-block count."""
    pool = this.kv_cache_manager.block_pool
    figures = []
    for free in frees:
        pool.free = pool.free_block_queue.num_free_blocks = free
        manager = this.kv_cache_manager
        total, read = scheduler._used_blocks(this)
        ours = scheduler._kv_usage(this, read)
        calls = manager.usage_calls
        figures.append((ours, manager.usage))
        manager.usage_calls = calls  # the comparison's own call not counted
    return figures


def test_usage_by_vllm_formula_without_asking_vllm(monkeypatch):
    # vLLM 0.9 and later leave the null block out; 0.8 counted every block
    for divisor_of in (lambda blocks: blocks - 1, lambda blocks: blocks):
        monkeypatch.setattr(scheduler, "_kv_pool", None)
        this = _scheduler_with_usage(60, divisor_of)
        figures = _usage_after_steps(this, [60, 55, 20, 100, 1])
        assert [ours for ours, _ in figures] == [theirs for _, theirs in figures]
        assert this.kv_cache_manager.usage_calls == 1  # once, to recognise the formula


def test_usage_of_another_formula_is_asked_every_step(monkeypatch):
    monkeypatch.setattr(scheduler, "_kv_pool", None)
    this = _scheduler_with_usage(60, lambda blocks: blocks + 7)
    figures = _usage_after_steps(this, [60, 50, 40])
    assert [ours for ours, _ in figures] == [theirs for _, theirs in figures]
    assert this.kv_cache_manager.usage_calls == 1 + 3


def test_usage_formula_found_once_a_block_is_free(monkeypatch):
    # With no block free both formulas give 1.0: the choice waits for a step with one free
    monkeypatch.setattr(scheduler, "_kv_pool", None)
    this = _scheduler_with_usage(0, lambda blocks: blocks)
    figures = _usage_after_steps(this, [0, 0, 30, 10])
    assert [ours for ours, _ in figures] == [theirs for _, theirs in figures]
    assert figures[-1][0] == 1.0 - 10 / 101
