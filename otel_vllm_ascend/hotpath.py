"""The compiled part of the hooks' hot path (``_hotpath.c``), where it is built and wanted.

``setup.py`` builds it where a C compiler is at hand; each of its pieces has a Python twin that
is the reference and the fallback (``handler_calls.around_handler``, ``native_thread._stamp``,
the runner phases' hook in ``handlers.model``). ``OTEL_VLLM_PURE_PYTHON_HOOKS=1`` chooses the
twins.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional

PURE_PYTHON_ENV = "OTEL_VLLM_PURE_PYTHON_HOOKS"

try:
    from otel_vllm_ascend import _hotpath as _built
except ImportError:
    _built = None


def compiled() -> Optional[ModuleType]:
    """The compiled module, or None (not built, or the Python twins asked for)."""
    return _built if os.environ.get(PURE_PYTHON_ENV, "") in ("", "0") else None
