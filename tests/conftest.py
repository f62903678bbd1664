"""Shared by every test folder.

Test tiers (see README "Development"): a test that needs vLLM (or torch, which comes with it)
carries the ``vllm`` marker. Modules that import vLLM get it here automatically; a test that
reaches vLLM only indirectly (the installed version, the instrumentor on real vLLM modules)
says ``@pytest.mark.vllm`` itself. Without vLLM installed every marked test is skipped with a
reason, never failed, so ``make test-fast`` (``-m "not vllm and not e2e"``) runs anywhere.
"""

import importlib.util
import logging
import sys

import pytest

# Tests read the package's log lines through pytest's caplog, a root handler. A handler of the
# package logger's own marks it as configured, so instrument() leaves its propagation alone
# (see instrumentor.ensure_visible_logging); a dedicated test covers the unconfigured case.
logging.getLogger("otel_vllm_ascend").addHandler(logging.NullHandler())

# find_spec, not import: importing vLLM takes seconds and the fast tier must not pay for it.
VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
NO_VLLM_REASON = "needs vLLM installed (the full tier: make test); not installed here"
_HEAVY_PACKAGES = ("vllm", "torch")


def _uses_heavy_package(module: object) -> bool:
    """Whether a test module imported vLLM or torch (a module, class or function of theirs)."""
    for value in vars(module).values():
        name = getattr(value, "__module__", None) if not isinstance(value, type(sys)) \
            else value.__name__
        if isinstance(name, str) and name.split(".", 1)[0] in _HEAVY_PACKAGES:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    verdicts = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is not None:
            if module not in verdicts:
                verdicts[module] = _uses_heavy_package(module)
            if verdicts[module]:
                item.add_marker(pytest.mark.vllm)


def pytest_runtest_setup(item):
    if not VLLM_INSTALLED and item.get_closest_marker("vllm") is not None:
        pytest.skip(NO_VLLM_REASON)
