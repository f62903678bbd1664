"""Process metadata: the Meta row ``dpRankId`` under data parallelism, once per process.

* EngineCore: hooked on ``DPEngineCoreProc.add_request``; the first call records the engine's
  data-parallel rank. The built-in ``schedule`` records it too, at the engine's first step
  (:func:`record_engine_dp_rank`), which also covers the ranks of a dense model: vLLM (0.14 and
  later) runs them as independent engines (``EngineCoreProc``, data-parallel size 1), the rank
  kept in ``data_parallel_index`` and the process titled ``EngineCore_DP<rank>`` (only under data
  parallelism; vLLM 0.14-0.17 name every engine's ``multiprocessing`` process ``EngineCore_DP<k>``,
  so the name does not tell).
* Worker (model runner): ``init_data_parallel_worker`` on the runner's ``execute_model``, and the
  built-in ``execute_model_runner`` itself, record the runner's rank at its first step: its
  ``dp_rank`` (vllm-ascend), else ``data_parallel_rank``, else the parallel config's. Workers of
  a service without data parallelism (``data_parallel_size`` 1) record nothing, like their
  EngineCore, so ``dp_rank`` stays empty for the whole service. The workers of an independent
  rank record nothing either (their configuration says size 1): the analyzer gives a worker
  its EngineCore's rank.

One row per process whichever hook comes first (an EngineCore that runs its model itself has
both).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from otel_vllm_ascend import recorder, wrapping
from otel_vllm_ascend.handlers import common

_recorded = False


def init_data_parallel(original: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """``DPEngineCoreProc.add_request``: Meta ``dpRankId`` once per process."""
    global _recorded
    result = original(*args, **kwargs)
    if not _recorded:
        rank = getattr(this, "dp_rank", None)
        if rank is None:
            rank = this.vllm_config.parallel_config.data_parallel_rank
        _recorded = True
        common.ensure_role("engine_core")
        recorder.record_meta("dpRankId", int(rank))
    return result


def _rank(value: Any) -> Optional[int]:
    """``value`` if it is a rank (an int, not a bool, >= 0), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def engine_dp_rank(scheduler: Any) -> Optional[int]:
    """An EngineCore's data-parallel rank from its scheduler's parallel config, or None without
    data parallelism (or without vLLM's config: vllm-ascend's older scheduler)."""
    parallel = getattr(getattr(scheduler, "vllm_config", None), "parallel_config", None)
    size = getattr(parallel, "data_parallel_size", None)
    if isinstance(size, int) and size > 1:
        return _rank(getattr(parallel, "data_parallel_rank", None))
    # An independent rank, or no data parallelism.
    if "EngineCore_DP" not in _process_title():
        return None
    return _rank(getattr(parallel, "data_parallel_index", None))


def _process_title() -> str:
    """The title vLLM gave this process (``VLLM::EngineCore_DP1``), or '' when not readable."""
    try:
        from setproctitle import getproctitle  # what vLLM sets it with

        return getproctitle()
    except Exception:
        return ""


def worker_dp_rank(runner: Any) -> Optional[int]:
    """The model runner's data-parallel rank, or None without data parallelism."""
    parallel = getattr(runner, "parallel_config", None)
    if parallel is None:
        parallel = getattr(getattr(runner, "vllm_config", None), "parallel_config", None)
    size = getattr(parallel, "data_parallel_size", None)
    if isinstance(size, int) and size <= 1:
        return None
    for holder, name in ((runner, "dp_rank"), (runner, "data_parallel_rank"),
                         (parallel, "data_parallel_rank")):
        rank = _rank(getattr(holder, name, None))
        if rank is not None:
            return rank
    return None


def _record_once(role: str, rank_of: Any, holder: Any) -> None:
    """Meta ``dpRankId`` of this process, the first time a hook asks: ``rank_of(holder)``."""
    global _recorded
    if _recorded:
        return
    _recorded = True
    rank = rank_of(holder)
    if rank is not None:
        common.ensure_role(role)
        recorder.record_meta("dpRankId", rank)


def record_engine_dp_rank(scheduler: Any) -> None:
    """Meta ``dpRankId`` of an EngineCore, from its scheduler, once per process."""
    _record_once("engine_core", engine_dp_rank, scheduler)


def record_worker_dp_rank(runner: Any) -> None:
    """Meta ``dpRankId`` of a model runner, at its first step in the process."""
    _record_once("worker", worker_dp_rank, runner)


def _worker_before(this: Any, args: tuple, kwargs: dict) -> None:
    record_worker_dp_rank(this)
    return None  # nothing around the call: the runner runs as if unhooked


def _never_after(*unused: Any) -> None:  # before returns None: after never runs
    return None


init_data_parallel_worker = wrapping.AroundHandler(
    _worker_before, _never_after, "init_data_parallel_worker",
    "Model runner ``execute_model``: Meta ``dpRankId`` of the worker, once per process.")


def _after_fork_in_child() -> None:
    global _recorded
    _recorded = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
