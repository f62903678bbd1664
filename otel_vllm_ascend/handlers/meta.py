"""Process metadata: ``dpRankId`` of an EngineCore under data parallelism.

Hooked on ``DPEngineCoreProc.add_request``; the first call in the process records the Meta row
``dpRankId`` = the engine's data-parallel rank.
"""

from __future__ import annotations

import os
from typing import Any

from otel_vllm_ascend import recorder
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


def _after_fork_in_child() -> None:
    global _recorded
    _recorded = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
