"""Version needs of tests that run against the installed vLLM (see tests/conftest.py).

A test that depends on what one vLLM release contains (class names, which targets exist, the
default file's version gates) says so with ``needs_vllm``: on another installed release it is
skipped with a reason naming the release it needs, instead of failing.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytest

from otel_vllm_ascend.versions import installed_vllm_version, version_in_range

INSTALLED_VLLM = installed_vllm_version()


def needs_vllm(min_version: str, max_version: Optional[str] = None,
               what: str = "") -> Callable:
    """Mark a test (``vllm`` marker) and skip it unless the installed vLLM is in the range.

    ``max_version`` compares as the symbol file's gates do: "0.32" covers every 0.32.x.
    """
    applies = INSTALLED_VLLM is not None and (
        # An untagged build (source tree, dev) is let through, as the symbol gates do.
        version_in_range(INSTALLED_VLLM, min_version, max_version)[0])
    if max_version == min_version:
        wanted = f"the vLLM {min_version} line"
    else:
        wanted = f"vLLM {min_version}" + (f" to {max_version}" if max_version else " or newer")
    reason = f"needs {wanted} ({what}); installed: {INSTALLED_VLLM or 'none'}"

    def decorate(test: Callable) -> Callable:
        test = pytest.mark.vllm(test)
        return pytest.mark.skipif(not applies, reason=reason)(test)

    return decorate


def skip_module_unless_vllm(min_version: str, what: str) -> None:
    """The module-level form of ``needs_vllm`` (call it at the top of a test module)."""
    if INSTALLED_VLLM is None or not version_in_range(INSTALLED_VLLM, min_version, None)[0]:
        pytest.skip(f"needs vLLM {min_version} or newer ({what}); installed: "
                    f"{INSTALLED_VLLM or 'none'}", allow_module_level=True)
