"""The shutdown-grace hook on vLLM 0.32's real process-manager ``shutdown``: with collection on,
a child that needs a moment to exit after SIGTERM (as EngineCore does to flush its records) is
no longer killed at once under ``--shutdown-timeout 0``."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import slow_exit_child
from runtime_helpers import Capture, instrument

from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
from otel_vllm_ascend.symbols import load_symbols

engine_utils = pytest.importorskip("vllm.v1.engine.utils",
                                   reason="needs vLLM's real shutdown (make test)")


def _run_shutdown(tmp_path, timeout):
    marker = str(tmp_path / f"exited-{timeout}")
    proc = multiprocessing.get_context("spawn").Process(target=slow_exit_child.run,
                                                        args=(marker,))
    proc.start()
    slow_exit_child.wait_ready(marker)
    started = time.monotonic()
    engine_utils.shutdown([proc], timeout=timeout)
    proc.join(10)
    return os.path.exists(marker), time.monotonic() - started


@pytest.fixture
def default_shutdown_spec():
    specs = [s for s in load_symbols().specs if s.symbol == "vllm.v1.engine.utils:shutdown"]
    assert len(specs) == 1, "the default YAML hooks vLLM's process-manager shutdown"
    yield specs
    VllmServiceInstrumentor().uninstrument()


def test_without_the_hook_abort_mode_kills_before_the_child_exits(tmp_path):
    clean, _ = _run_shutdown(tmp_path, 0)
    assert not clean


def test_recording_gives_the_child_time_to_exit_cleanly(tmp_path, default_shutdown_spec,
                                                        monkeypatch):
    monkeypatch.setenv("OTEL_VLLM_SHUTDOWN_GRACE_S", "5")
    instrument(Capture(), default_shutdown_spec)
    clean, elapsed = _run_shutdown(tmp_path, 0)
    assert clean
    assert elapsed < 4, "a child that exits sooner is not waited for"


def test_not_recording_leaves_vllm_shutdown_unchanged(tmp_path, default_shutdown_spec):
    instrument(Capture(), default_shutdown_spec, config=ProfilerConfig(enable=False))
    clean, _ = _run_shutdown(tmp_path, 0)
    assert not clean
