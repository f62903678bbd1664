"""Service shutdown: give EngineCore and Workers time to write their last records.

vLLM's default shutdown (``--shutdown-timeout 0``, "abort") sends SIGTERM to EngineCore and
kills it at once when it is still alive. EngineCore would exit cleanly within a fraction of a
second — and on the way out flush its queued records — but it never gets that fraction, so the
last engine steps of a capture are lost.

Hooked on the API server's process-manager ``shutdown(procs, timeout)`` (vLLM 0.18 and later;
before, ``shutdown(procs)`` always waits 5 s and the hook steps aside): while recording, the
timeout is raised to at least ``OTEL_VLLM_SHUTDOWN_GRACE_S`` seconds (default 5; 0 leaves the
hook out altogether). Only the wait before the forced kill changes: EngineCore still aborts or
drains requests exactly as ``--shutdown-timeout`` says, and a process that exits sooner is not
waited for.

The same holds for the API servers themselves when vLLM runs several (``--api-server-count``,
by default one per data-parallel rank): the main process stops them through
``APIServerProcessManager.shutdown(timeout)``, which would kill them at once, before they write
the ``httpRes`` of the last requests.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_GRACE_S = 5.0


def grace_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("OTEL_VLLM_SHUTDOWN_GRACE_S", DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def _at_least_grace(timeout: Any) -> Any:
    """A timeout shorter than the grace period raised to it (None, vLLM's own default, kept)."""
    grace = grace_seconds()
    return grace if timeout is not None and timeout < grace else timeout


def shutdown_grace(original: Any, this: Any, procs: Any, timeout: Any = None, *args: Any,
                   **kwargs: Any) -> Any:
    """``vllm.v1.engine.utils.shutdown``: wait at least the grace period before killing."""
    return original(procs, _at_least_grace(timeout), *args, **kwargs)


# vLLM 0.9-0.11's shutdown(procs) has no timeout (it always waits 5 s): the hook steps aside.
shutdown_grace.expects = ("procs", "timeout")  # type: ignore[attr-defined]


def api_servers_shutdown_grace(original: Any, this: Any, timeout: Any = None, *args: Any,
                               **kwargs: Any) -> Any:
    """``APIServerProcessManager.shutdown(timeout)``: wait at least the grace period before
    killing the API servers."""
    return original(_at_least_grace(timeout), *args, **kwargs)


api_servers_shutdown_grace.expects = ("timeout",)  # type: ignore[attr-defined]
