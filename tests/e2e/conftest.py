"""Fixtures of the end-to-end tests: a real ``vllm serve`` of the tiny model, once per path.

Every test in this folder is marked ``e2e``. Servers are session fixtures: the plain baseline
(vLLM without the tool) and one profiled server per activation path, each driven through the
whole scenario of ``scenario.py`` before the first test that needs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario  # noqa: E402
from build_tiny_model import ensure_model  # noqa: E402


def pytest_collection_modifyitems(items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_model():
    return ensure_model()


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def baseline(tiny_model, e2e_root):
    return scenario.run_baseline(tiny_model, e2e_root / "baseline")


@pytest.fixture(scope="session", params=["instrument", "plugin"])
def served(request, tiny_model, e2e_root):
    """The whole profiled scenario for one activation path (run once per path)."""
    run = scenario.run_profiled(request.param, tiny_model, e2e_root / request.param)
    report = os.environ.get("OTEL_VLLM_MATRIX_REPORT")
    if report:  # set by tools/compat.py
        scenario.write_matrix_report(run, Path(report))
    return run
