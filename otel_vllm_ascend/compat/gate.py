"""Whether a fluent-API record is collected: the level and domain gates.

The reference asks its C library (``IsEnable(level)``, ``IsValidDomain(domain)``). We ask the
process's live control state (:mod:`otel_vllm_ascend.control`), which follows
``ms_service_profiler_config.json`` while vLLM runs: ``enable``, ``timelimit``,
``profiler_level`` and the ``domain`` allow-list. Before live control has started (no config
loaded) nothing is collected, like the reference without its library.
"""

from __future__ import annotations

from typing import Any, Optional

from otel_vllm_ascend import control

DEFAULT_LEVEL = 20  # INFO, the reference's default ``profiler_level``


def _configured_level(config: Any) -> int:
    level = getattr(config, "profiler_level", DEFAULT_LEVEL)
    try:
        return int(level)
    except (TypeError, ValueError):
        return DEFAULT_LEVEL


def enabled(level: int, domain: Optional[str] = None) -> bool:
    """True when a record of ``level`` (and ``domain``, when given) is collected right now."""
    state = control.current()
    if not state.recording:
        return False
    if domain is None:
        return level <= _configured_level(state.config)
    return state.allows(str(domain), level)
