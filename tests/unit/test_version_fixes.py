"""Bugs found by running the tool on older vLLM lines, each with the shape that exposed it.

The fakes below copy the field names of the vLLM release named in each test (checked against
that release's source); the version-matrix run (``make compat``) repeats these on real servers.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import subprocess
import sys
import textwrap
import weakref

import pytest
from runtime_helpers import Capture, instrument, spec, write_module

from otel_vllm_ascend import engine
from otel_vllm_ascend.handlers import common
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor


@pytest.fixture(autouse=True)
def _engine_from_the_installation(monkeypatch):
    """The version matrix runs these with the environment of its entry (VLLM_USE_V1=0 for
    0.9.1-v0); the tests say which engine they mean themselves."""
    monkeypatch.delenv("VLLM_USE_V1", raising=False)


@dataclasses.dataclass
class CachedRequestData091:
    """vLLM 0.9.x: one object per already-seen request (0.10 made it one object of lists)."""

    req_id: str
    resumed_from_preemption: bool
    new_token_ids: list
    new_block_ids: tuple
    num_computed_tokens: int


@dataclasses.dataclass
class NewRequestData091:
    req_id: str
    prompt_token_ids: list
    num_computed_tokens: int


@dataclasses.dataclass
class SchedulerOutput091:
    scheduled_new_reqs: list
    scheduled_cached_reqs: list
    num_scheduled_tokens: dict
    total_num_scheduled_tokens: int
    finished_req_ids: set


def test_vllm_0_9_cached_requests_are_decode_steps():
    classifier = common.BatchClassifier()
    prefill = SchedulerOutput091([NewRequestData091("a", [1] * 5, 0)], [], {"a": 5}, 5, set())
    rows, kind = classifier.classify(common.BatchInputs.of(prefill))
    assert kind == "Prefill"
    decode = SchedulerOutput091([], [CachedRequestData091("a", False, [7], ([],), 5)],
                                {"a": 1}, 1, set())
    inputs = common.BatchInputs.of(decode)
    assert inputs.cached_ids == ["a"] and inputs.cached_computed == [5]
    rows, kind = classifier.classify(inputs)
    assert kind == "Decode"
    assert rows[0][1:] == (1, common.DECODE, 1, 5, 5)


SHUTDOWN_0_11 = """
calls = []

def shutdown(procs):
    calls.append(list(procs))
    return "done"
"""


@pytest.fixture
def capture():
    cap = Capture()
    yield cap
    VllmServiceInstrumentor().uninstrument()


def test_shutdown_hook_steps_aside_on_a_signature_without_timeout(tmp_path, capture, caplog):
    name = write_module(tmp_path, SHUTDOWN_0_11)
    module = importlib.import_module(name)
    original = module.shutdown
    instrumentor = instrument(capture, [spec(name, "shutdown", handler="shutdown_grace")])
    assert instrumentor.hooks == []
    assert module.shutdown is original, "vLLM's function stays exactly as it was"
    assert module.shutdown(["p"]) == "done" and module.calls == [["p"]]
    warned = [r.getMessage() for r in caplog.records if "steps aside" in r.getMessage()]
    assert len(warned) == 1 and "'timeout'" in warned[0] and "(procs)" in warned[0]


def test_shutdown_hook_installs_where_the_timeout_exists(tmp_path, capture):
    name = write_module(tmp_path, "def shutdown(procs, timeout=None):\n    return timeout\n")
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, "shutdown", handler="shutdown_grace")])
    assert len(instrumentor.hooks) == 1
    assert module.shutdown([], 0) >= 1, "the grace period raises a shorter timeout"


def test_api_servers_get_the_grace_too(capture, monkeypatch):
    """Several API servers (one per DP rank by default) are stopped by the main process's
    APIServerProcessManager; with --shutdown-timeout 0 it killed them before they wrote their
    last httpRes (found serving with --data-parallel-size 2). vLLM's real class; the processes
    left out (none to stop), the timeout it passes on observed."""
    utils = pytest.importorskip("vllm.v1.utils")
    stop = getattr(getattr(utils, "APIServerProcessManager", None), "shutdown", None)
    if stop is None or "timeout" not in inspect.signature(stop).parameters:
        pytest.skip("before vLLM 0.18 the API servers' manager has no timeout to raise")
    passed = []
    monkeypatch.setattr(utils, "shutdown", lambda procs, timeout=None: passed.append(timeout))
    instrumentor = instrument(capture, [spec("vllm.v1.utils", "APIServerProcessManager.shutdown",
                                             handler="api_servers_shutdown_grace")])
    assert len(instrumentor.hooks) == 1

    def manager():
        made = object.__new__(utils.APIServerProcessManager)
        made.processes, made._listeners, made._address_pipes = [], [], []
        made._finalizer = weakref.finalize(made, lambda: None)
        return made

    manager().shutdown(0)
    manager().shutdown(timeout=30)
    assert passed == [5.0, 30], "a shorter timeout is raised to the grace, a longer one kept"


def test_grace_zero_leaves_the_always_on_hook_out(tmp_path, monkeypatch):
    from otel_vllm_ascend.instrumentor import ALWAYS_ON_SYMBOLS, _load_specs

    user = tmp_path / "symbols.yaml"
    user.write_text("- symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule\n"
                    "  handler: schedule\n")
    monkeypatch.setenv("OTEL_VLLM_SHUTDOWN_GRACE_S", "0")
    for path in (str(user), None):
        specs, _, _ = _load_specs(path)
        assert not ALWAYS_ON_SYMBOLS & {s.symbol for s in specs}


# -- our log lines, whatever root handlers others installed ---------------------------------

LOGGING_CHILD = """
import logging, sys
{root_setup}
from otel_vllm_ascend.instrumentor import ensure_visible_logging
ensure_visible_logging()
logging.getLogger("otel_vllm_ascend.installer").info("our-info-line")
"""


@pytest.mark.parametrize("root_setup", [
    "",  # plain vllm serve without IPEX: nobody configured logging
    # IPEX: a root handler at WARNING (INFO lines used to vanish)
    "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)",
    # opentelemetry-instrument with IPEX: a root handler at INFO (lines used to appear twice)
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)",
])
def test_our_info_lines_show_exactly_once(root_setup):
    child = textwrap.dedent(LOGGING_CHILD).format(root_setup=root_setup)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("our-info-line") == 1, result.stderr


def test_a_logger_the_user_configured_is_left_alone():
    child = textwrap.dedent("""
        import logging
        mine = logging.getLogger("otel_vllm_ascend")
        handler = logging.StreamHandler()
        mine.addHandler(handler)
        mine.setLevel(logging.ERROR)
        from otel_vllm_ascend.instrumentor import ensure_visible_logging
        ensure_visible_logging()
        assert mine.handlers == [handler] and mine.level == logging.ERROR and mine.propagate
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_log_level_from_the_environment(monkeypatch):
    logger = logging.getLogger("otel_vllm_ascend")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers.clear()
    try:
        monkeypatch.setenv("OTEL_VLLM_LOG_LEVEL", "warning")
        from otel_vllm_ascend.instrumentor import ensure_visible_logging

        ensure_visible_logging()
        assert logger.level == logging.WARNING and not logger.propagate
        logger.handlers.clear()
        monkeypatch.setenv("OTEL_VLLM_LOG_LEVEL", "loud")
        ensure_visible_logging()
        assert logger.level == logging.INFO
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


# -- engine and missing records -------------------------------------------------------------

@pytest.mark.parametrize("version,use_v1,platform,expected", [
    ("0.32.0+cpu", None, None, engine.V1),
    ("0.9.1", "0", "cuda", engine.V0),
    ("0.9.1+cpu", None, None, engine.V1),
    ("0.10.2", "0", "cuda", engine.V0),
    ("0.11.0", "0", "cuda", engine.V1),  # no V0 worker any more: the variable has no effect
    ("0.8.5", None, "cuda", engine.V1),
    ("0.8.5", None, "cpu", engine.V0),  # V1 needs CUDA/TPU in 0.8.x: vLLM falls back to V0
    ("0.8.5+cpu", None, None, engine.V0),
    ("0.8.4", None, "npu", engine.V0),
    ("0.8.5", "1", "cpu", engine.V1),
    ("0.7.3", None, "cuda", engine.V0),
    ("0.7.3", "1", "cuda", engine.V1),
])
def test_engine_detection(version, use_v1, platform, expected):
    assert engine.detect(version, use_v1, platform).engine == expected


def test_unknown_engine_and_lines_outside_the_matrix_get_one_sentence_each():
    unknown = engine.detect("0.11.0", "yes")
    assert unknown.engine == engine.UNKNOWN and "neither 0 nor 1" in unknown.reason
    [missing] = engine.missing_records(unknown, [("schedule", True, "")])
    assert "engine is unknown" in missing.reason
    assert engine.outside_checked_lines(engine.detect("0.11.0", None)) is None
    assert engine.outside_checked_lines(engine.detect("0.32.7", None)) is None
    assert engine.outside_checked_lines(engine.detect("0.8.5", "0")) is None
    for version in ("0.8.4", "0.33.0", "1.0.0"):
        assert "outside the lines" in engine.outside_checked_lines(engine.detect(version, "1"))


@pytest.mark.vllm
def test_check_symbols_names_engine_version_and_missing_records(tmp_path, capsys,
                                                               monkeypatch):
    from otel_vllm_ascend import cli

    symbols = tmp_path / "symbols.yaml"
    symbols.write_text("- symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule\n"
                       "  handler: schedule\n")
    monkeypatch.setattr(engine, "installed_platform", lambda version=None: engine.CUDA)
    cli.main(["check-symbols", "--symbols", str(symbols), "--vllm-version", "0.8.4"])
    out = capsys.readouterr().out
    assert "vLLM version: 0.8.4; engine: V1 (the default)" in out
    assert "note: vLLM 0.8.4 is outside the lines" in out
    assert "missing record: model execution (modelExec): no entry of the symbol file" in out
    assert "missing record: batch span" not in out
    assert "cannot fire" not in out


@pytest.mark.vllm  # the logits processor's entry resolves only with vLLM installed
def test_check_symbols_names_the_v1_entries_that_cannot_fire_on_v0(tmp_path, capsys,
                                                                    monkeypatch):
    from otel_vllm_ascend import cli

    symbols = tmp_path / "symbols.yaml"
    symbols.write_text("- symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule\n"
                       "  handler: schedule\n"
                       "- symbol: vllm.model_executor.layers.logits_processor:"
                       "LogitsProcessor.forward\n  handler: compute_logits\n")
    monkeypatch.setattr(engine, "installed_platform", lambda version=None: engine.CPU)
    cli.main(["check-symbols", "--symbols", str(symbols), "--vllm-version", "0.8.5"])
    out = capsys.readouterr().out
    assert "engine: V0 (vLLM 0.8 runs V1 only on CUDA and TPU: on CPU it falls back" in out
    [line] = [line for line in out.splitlines() if line.startswith("cannot fire:")]
    assert line.endswith("1 entry for vLLM's V1 engine, which cannot fire here: "
                         "vllm.v1.core.sched.scheduler:Scheduler.schedule")
    assert "missing record: batch span, queues and request states" in out
    assert "missing record: logits" not in out  # the logits processor serves both engines


def test_the_default_file_holds_both_engines_and_names_nothing_idle():
    from otel_vllm_ascend.symbols import load_symbols

    for version, use_v1 in (("0.9.1", "0"), ("0.9.1", "1"), ("0.8.5", "0"), ("0.10.2", "0")):
        found = engine.detect(version, use_v1, engine.CPU)
        symbols = load_symbols(vllm_version=version)
        available = [(engine.handler_short_name(s.handler), True, "") for s in symbols.specs]
        missing = engine.missing_records(found, available)
        assert [m.record for m in missing] == [engine.LIMITATIONS[0][0]], (version, use_v1)
        assert engine.idle_entries(found, [s.symbol for s in symbols.specs], missing) is None


def test_engine_unknown_without_vllm(monkeypatch):
    monkeypatch.setattr(engine, "installed_vllm_version", lambda: None)
    found = engine.detect(None, None)
    assert found.engine == engine.UNKNOWN and "not installed" in found.describe()


def test_missing_records_name_the_gate_and_the_engine():
    available = [("schedule", True, ""), ("add_request_async", True, ""),
                 ("process_outputs", True, ""), ("compute_logits", True, ""),
                 ("sampler_forward", True, ""),
                 ("execute_model", False, "vLLM 0.11.0 is above max_version 0.10")]
    missing = engine.missing_records(engine.detect("0.11.0", None), available)
    assert [m.record for m in missing] == ["model execution (modelExec)"]
    older = engine.missing_records(engine.detect("0.9.2", None), available)
    assert [m.record for m in older] == [engine.LIMITATIONS[0][0], "model execution (modelExec)"]
    assert "before 0.10.2" in older[0].reason
    assert "max_version 0.10" in missing[0].reason
    on_v0 = engine.missing_records(engine.detect("0.9.1", "0"), available)
    # Only the logits processor and the sampler handlers serve both engines.
    v0_lacking = [record for record, _ in engine.V0_RECORDS[:4]]
    assert [m.record for m in on_v0] == [engine.LIMITATIONS[0][0]] + v0_lacking
    assert all(m.reason == "no entry of the symbol file records it" for m in on_v0[1:])


def test_default_symbol_file_misses_no_record_on_any_matrix_line():
    from otel_vllm_ascend.symbols import load_symbols

    for version in ("0.9.1", "0.9.2", "0.10.0", "0.10.2", "0.11.0", "0.11.2", "0.12.0",
                    "0.23.0", "0.25.1", "0.32.0"):
        symbols = load_symbols(vllm_version=version)
        available = [(engine.handler_short_name(s.handler), True, "") for s in symbols.specs]
        available += [(engine.handler_short_name(s.handler), False, why)
                      for s, why in symbols.skipped]
        missing = engine.missing_records(engine.detect(version, None), available)
        limits = [m for m in missing if m.record == engine.LIMITATIONS[0][0]]
        assert missing == limits, version
        assert bool(limits) == (version in ("0.9.1", "0.9.2", "0.10.0")), version


# -- the caller's traceparent on vLLM before 0.32 (dropped unless vLLM's tracing is on) -----

TRACEPARENT = "00-94c9c9500925e4749b575bd13653f8dd-b7ad6b7169203331-01"


def test_traceparent_reaches_add_request_from_a_streamed_generator():
    import asyncio
    import contextvars

    from otel_vllm_ascend.handlers import request

    async def vllm_get_trace_headers(headers):  # vLLM 0.9-0.31 with its own tracing off
        return None

    async def vllm_generate(prompt, sampling_params, request_id, trace_headers=None):
        yield request_id

    async def handler_task():
        # The OpenAI handler (run in its own task by vLLM's with_cancellation) reads the
        # headers, then creates the generator that a StreamingResponse iterates elsewhere.
        result = await request.incoming_trace_headers(vllm_get_trace_headers, None,
                                                      {"traceparent": TRACEPARENT})
        assert result is None, "vLLM's result passes through"
        return request.bind_trace_context(vllm_generate, None, "prompt", None, "cmpl-abc-0")

    generator = asyncio.run(handler_task())
    # Iterated in a context that never saw the handler's context variables:
    assert contextvars.Context().run(request._incoming.get) is None
    context = request._waiting_contexts.pop("cmpl-abc-0")
    assert context is not None and f"{context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert asyncio.run(generator.__anext__()) == "cmpl-abc-0"


@pytest.mark.vllm
def test_start_up_names_the_records_a_symbol_file_cannot_give(tmp_path, capture, caplog):
    symbols = tmp_path / "symbols.yaml"
    symbols.write_text("- symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule\n"
                       "  handler: schedule\n"
                       "- symbol: vllm.v1.sample.sampler:Sampler.forward\n"
                       "  handler: sampler_forward\n"
                       "  max_version: '0.1'\n")
    from otel_vllm_ascend.config import ProfilerConfig

    VllmServiceInstrumentor().instrument(tracer_provider=capture.provider,
                                         symbols_path=str(symbols),
                                         config=ProfilerConfig(enable=True))
    lines = [r.getMessage() for r in caplog.records if "will be missing" in r.getMessage()]
    idle = [r.getMessage() for r in caplog.records if "cannot fire here" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "sampling (sample): " in lines[0] and "max_version 0.1" in lines[0]
    if engine.detect().engine == engine.V0:  # the installed vLLM runs V0 (0.8.x on CPU)
        assert "V0 engine" in lines[0] and "batch span, queues and request states" in lines[0]
        # The sampler entry is gated out; the scheduler entry is installed and idle.
        assert len(idle) == 1 and idle[0].endswith(
            "1 entry for vLLM's V1 engine, which cannot fire here: "
            "vllm.v1.core.sched.scheduler:Scheduler.schedule")
    else:
        assert "V1 engine" in lines[0] and "model execution (modelExec)" in lines[0]
        assert "batch span" not in lines[0] and not idle
