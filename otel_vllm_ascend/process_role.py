"""Which vLLM process this is: ``api_server``, ``engine_core`` or ``worker``.

The one detector, used for the resource attribute ``vllm.process.role``, the Meta row ``role``
and the self meter's report.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Optional

ROLE_ENV = "OTEL_VLLM_PROCESS_ROLE"


def detect_process_role(hint: Optional[str] = None) -> Optional[str]:
    """This process's role when it can be told, else ``hint``.

    ``OTEL_VLLM_PROCESS_ROLE`` wins; then the name vLLM gives its processes; then the command
    line (the API server). ``hint`` is what the caller knows (a handler of engine code says
    ``worker`` or ``engine_core``).
    """
    role = os.environ.get(ROLE_ENV)
    if role:
        return role
    name = multiprocessing.current_process().name
    if name.startswith(("EngineCore", "DPEngineCore")):
        return "engine_core"
    if name.startswith(("VllmWorker", "Worker")) or "Worker" in name:
        return "worker"
    if hint == "worker" and "vllm.v1.engine.core" in sys.modules and \
            "vllm.v1.core.sched.scheduler" in sys.modules:
        return "engine_core"  # UniProcExecutor: the model runs inside EngineCore
    if hint == "worker" and "vllm.engine.multiprocessing.engine" in sys.modules and \
            "vllm.core.scheduler" in sys.modules:
        return "engine_core"  # V0 engine process (MQLLMEngine) running its model itself
    if hint is not None:
        return hint
    if "--multiprocessing-fork" in sys.argv:
        return None  # a spawn child before multiprocessing has told it its name
    if multiprocessing.parent_process() is None and sys.argv and (
            os.path.basename(sys.argv[0]) == "vllm" or "vllm.entrypoints" in " ".join(sys.argv)):
        return "api_server"
    return None
