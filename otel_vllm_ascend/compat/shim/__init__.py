"""Opt-in: run unmodified handler files that ``from ms_service_profiler import Profiler, Level``.

``ms_service_profiler`` is the Python API that ships inside CANN. This project never installs a
top-level module of that name, because it would shadow the real one on machines that have CANN.
Handler files written for msserviceprofiler can still run unchanged, in one of two explicit ways:

1. Put the shim folder on ``PYTHONPATH`` (every vLLM process inherits it)::

       export PYTHONPATH="$(python -m otel_vllm_ascend.compat.shim)${PYTHONPATH:+:$PYTHONPATH}"

2. Or set ``OTEL_VLLM_MS_SERVICE_PROFILER_SHIM=1``: when the project starts in a vLLM process
   it calls :func:`install_if_requested`, which adds an import alias for ``ms_service_profiler``
   **only if the real module is not importable**. The alias sits at the end of
   ``sys.meta_path``, so a real module always wins.

The shim provides ``Profiler``, ``Level`` and ``MarkType`` (from :mod:`otel_vllm_ascend.compat`),
``ms_service_profiler.profiler.prof_step`` (does nothing: the torch_npu profiler it drives is not
part of this project) and ``ms_service_profiler.mstx.service_profiler.is_enable(level)`` /
``is_domain_enable(domain)``. The better long-term path is to change the import in the handler
to ``from otel_vllm_ascend.compat import Profiler, Level``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

_logger = logging.getLogger(__name__)

ENV_VAR = "OTEL_VLLM_MS_SERVICE_PROFILER_SHIM"
MODULE_NAME = "ms_service_profiler"


def path() -> str:
    """The folder to add to ``PYTHONPATH`` (it holds the ``ms_service_profiler`` package)."""
    return str(Path(__file__).resolve().parent)


class ShimFinder:
    """Finds the top-level ``ms_service_profiler`` in the shim folder; submodules then come from
    the package's own ``__path__`` through the normal path finder."""

    def find_spec(self, fullname: str, target_path: Optional[Sequence[str]] = None,
                  target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != MODULE_NAME:
            return None
        package_dir = Path(path()) / MODULE_NAME
        return importlib.util.spec_from_file_location(
            MODULE_NAME, package_dir / "__init__.py",
            submodule_search_locations=[str(package_dir)])


def real_module_origin() -> Optional[str]:
    """Where an importable ``ms_service_profiler`` other than our alias lives, if any."""
    try:
        spec = importlib.util.find_spec(MODULE_NAME)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or "namespace package"


def is_installed() -> bool:
    return any(isinstance(finder, ShimFinder) for finder in sys.meta_path)


def install() -> bool:
    """Add the alias unless a real ``ms_service_profiler`` is importable. True when added."""
    if is_installed():
        return True
    origin = real_module_origin()
    if origin is not None:
        _logger.info("otel-vllm-ascend: %s found at %s; the compatibility shim is not used",
                     MODULE_NAME, origin)
        return False
    sys.meta_path.append(ShimFinder())
    _logger.info("otel-vllm-ascend: %s resolves to the compatibility shim (%s=1)",
                 MODULE_NAME, ENV_VAR)
    return True


def uninstall() -> None:
    """Remove the alias (already imported modules stay in ``sys.modules``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, ShimFinder)]


def install_if_requested() -> bool:
    """:func:`install` when ``OTEL_VLLM_MS_SERVICE_PROFILER_SHIM`` is ``1``/``true``/``yes``."""
    if os.environ.get(ENV_VAR, "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    return install()
