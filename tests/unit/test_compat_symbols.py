"""msserviceprofiler users' symbol files, unchanged: what each entry becomes here.

The fixtures under tests/fixtures/ms_symbols/ have the shape of msserviceprofiler 1.2.3's
packaged YAML and of the file vllm-ascend writes to ~/.config/vllm_ascend/. They are loaded with
the project's own loader for vLLM 0.32.0 and checked entry by entry: which built-in handler the
entry resolves to (so, which records it produces), which entries are reported and skipped, and
which targets the installed vLLM no longer has.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from otel_vllm_ascend import handlers, symbols
from otel_vllm_ascend.handlers import (
    BUILTIN_HANDLERS,
    REFERENCE_HANDLER_ALIASES,
    reference_handler_gap,
    resolve_builtin,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ms_symbols"
WHEEL_YAML = FIXTURES / "msserviceprofiler-1.2.3.yaml"
VLLM_ASCEND_YAML = FIXTURES / "vllm_ascend" / "service_profiling_symbols.0.32.0.yaml"
V0_YAML = FIXTURES / "vllm_v0.yaml"
VLLM = "0.32.0"

_H = "otel_vllm_ascend.handlers"
SCHEDULE = f"{_H}.scheduler:schedule"
ADD_REQUEST_STATE = f"{_H}.compat_extra:add_request"
FREE_REQUEST = f"{_H}.compat_extra:free_request"
PROCESS_INPUTS = f"{_H}.compat_extra:process_inputs"
FREE = f"{_H}.kvcache:free"
COMPUTED = f"{_H}.kvcache:get_computed_blocks"
LOGITS = f"{_H}.model:compute_logits"
SAMPLER = f"{_H}.model:sampler_forward"
EXECUTE = f"{_H}.model:execute_model"
CAPTURE = f"{_H}.model:capture_async"
ADD_ASYNC = f"{_H}.request:add_request_async"
OUTPUTS = f"{_H}.request:process_outputs"
DP_META = f"{_H}.meta:init_data_parallel"
TIMER = None

# Records each resolved handler writes (span contract, "Records the built-in vLLM V1 handlers
# emit", plus the ReqState events of handlers/compat_extra.py).
RECORDS = {
    SCHEDULE: ["batchFrameworkProcessing", "Enqueue", "Dequeue", "KVCacheStatus"],
    ADD_REQUEST_STATE: ["ReqState", "Enqueue"],
    FREE_REQUEST: ["ReqState"],
    PROCESS_INPUTS: ["ReqState"],
    FREE: ["Free"],
    COMPUTED: ["CacheHitRate"],
    LOGITS: ["computing_logits"],
    SAMPLER: ["sample"],
    EXECUTE: ["modelExec"],
    CAPTURE: ["<tag passed by vllm-ascend>"],
    ADD_ASYNC: ["httpReq", "tokenize", "link"],
    OUTPUTS: ["httpRes", "detokenize"],
    DP_META: ["Meta"],
}

# symbol -> (handler it resolves to, name, domain) for vLLM 0.32.0; None handler = timer.
WHEEL_EXPECTED = [
    ("vllm.v1.core.sched.scheduler:Scheduler.schedule", SCHEDULE),
    ("vllm_ascend.core.scheduler:AscendScheduler.schedule", SCHEDULE),
    ("vllm.v1.core.sched.scheduler:Scheduler.add_request", ADD_REQUEST_STATE),
    ("vllm.v1.core.kv_cache_manager:KVCacheManager.free", FREE),
    ("vllm.v1.core.kv_cache_manager:KVCacheManager.get_computed_blocks", COMPUTED),
    ("vllm.model_executor.layers.logits_processor:LogitsProcessor.forward", LOGITS),
    ("vllm.v1.sample.sampler:Sampler.forward", SAMPLER),
    ("vllm.v1.executor.abstract:Executor.execute_model", EXECUTE),
    ("vllm.v1.executor.multiproc_executor:MultiprocExecutor.execute_model", EXECUTE),
    ("vllm_ascend.worker.model_runner_v1:NPUModelRunner.execute_model", TIMER),
    ("vllm_ascend.worker.model_runner_v1:NPUModelRunner._update_states", TIMER),
    ("vllm_ascend.worker.model_runner_v1:NPUModelRunner._prepare_inputs", TIMER),
    ("vllm_ascend.utils:ProfileExecuteDuration.capture_async", CAPTURE),
    ("vllm.v1.engine.async_llm:AsyncLLM.add_request", ADD_ASYNC),
    ("vllm.engine.async_llm_engine:AsyncLLMEngine.add_request", ADD_ASYNC),
    ("vllm.v1.engine.output_processor:OutputProcessor.process_outputs", OUTPUTS),
    ("vllm.v1.engine.core:DPEngineCoreProc.add_request", DP_META),
]

VLLM_ASCEND_EXPECTED = [
    ("vllm.v1.engine.processor:Processor.process_inputs", PROCESS_INPUTS),
    ("vllm.v1.core.sched.scheduler:Scheduler.schedule", SCHEDULE),
    ("vllm.v1.core.sched.scheduler:Scheduler._free_request", FREE_REQUEST),
    ("vllm.v1.core.sched.scheduler:Scheduler.add_request", ADD_REQUEST_STATE),
    ("vllm.v1.core.kv_cache_manager:KVCacheManager.free", FREE),
    ("vllm.v1.core.kv_cache_manager:KVCacheManager.get_computed_blocks", COMPUTED),
    ("vllm.model_executor.layers.logits_processor:LogitsProcessor.forward", LOGITS),
    ("vllm.v1.sample.sampler:Sampler.forward", SAMPLER),
    ("vllm.v1.executor.abstract:Executor.execute_model", EXECUTE),
    ("vllm.v1.executor.multiproc_executor:MultiprocExecutor.execute_model", EXECUTE),
    ("vllm_ascend.worker.model_runner_v1:NPUModelRunner.execute_model", TIMER),
    ("vllm_ascend.worker.model_runner_v1:NPUModelRunner._update_states", TIMER),
    ("vllm_ascend.worker.model_runner_v1:NPUModelRunner._prepare_inputs", TIMER),
    ("vllm_ascend.utils:ProfileExecuteDuration.capture_async", CAPTURE),
    ("vllm.v1.engine.async_llm:AsyncLLM.add_request", ADD_ASYNC),
    ("vllm.engine.async_llm_engine:AsyncLLMEngine.add_request", ADD_ASYNC),
    ("vllm.v1.engine.output_processor:OutputProcessor.process_outputs", OUTPUTS),
]

TIMER_NAMES = {  # the default-timer entries keep their name and domain
    "NPUModelRunner.execute_model": "modelRunnerExec",
    "NPUModelRunner._update_states": "_update_states",
    "NPUModelRunner._prepare_inputs": "_prepare_inputs",
}


def _load(path):
    return symbols.load_symbols(path, vllm_version=VLLM)


@pytest.mark.parametrize("path, expected, timer_domain", [
    (WHEEL_YAML, WHEEL_EXPECTED, "Execute"),
    (VLLM_ASCEND_YAML, VLLM_ASCEND_EXPECTED, "ModelExecute"),
], ids=["msserviceprofiler-1.2.3", "vllm-ascend"])
def test_every_entry_resolves_to_the_handler_with_the_reference_records(
        path, expected, timer_domain):
    loaded = _load(path)
    assert [(spec.symbol, spec.handler) for spec in loaded.specs] == expected
    assert loaded.skipped == []
    for spec in loaded.specs:
        if spec.handler is None:
            assert spec.name == TIMER_NAMES[spec.qualname]
            assert spec.domain == timer_domain
        else:
            assert spec.handler in RECORDS


@pytest.mark.parametrize("path", [WHEEL_YAML, VLLM_ASCEND_YAML])
def test_allocate_slots_is_reported_once_and_skipped(path, caplog):
    with caplog.at_level(logging.WARNING, logger="otel_vllm_ascend.symbols"):
        loaded = _load(path)
    assert all("allocate_slots" not in spec.symbol for spec in loaded.specs)
    assert len(loaded.problems) == 1
    (problem,) = loaded.problems
    assert str(path) in problem
    assert "KVCacheManager.allocate_slots" in problem
    assert "no handler function 'allocate_slots'" in problem
    assert problem.endswith("entry skipped")
    logged = [r.getMessage() for r in caplog.records if "allocate_slots" in r.getMessage()]
    assert logged == [problem]


def test_no_reference_handler_silently_falls_back_to_the_timer():
    for path in (WHEEL_YAML, VLLM_ASCEND_YAML):
        loaded = _load(path)
        for spec in loaded.specs:
            raw_has_handler = spec.qualname not in TIMER_NAMES
            assert (spec.handler is not None) == raw_has_handler, spec.symbol


def test_vllm_v0_handlers_map_to_the_v0_built_ins():
    loaded = _load(V0_YAML)
    assert loaded.problems == []
    assert [(spec.symbol, spec.handler) for spec in loaded.specs] == [
        ("vllm.core.scheduler:Scheduler.schedule", BUILTIN_HANDLERS["v0_schedule"]),
        ("vllm.worker.model_runner:ModelRunner.execute_model",
         BUILTIN_HANDLERS["v0_model_runner_execute"]),
        ("vllm.engine.async_llm_engine:AsyncLLMEngine.add_request",
         BUILTIN_HANDLERS["add_request_async"]),
        ("vllm.v1.sample.sampler:Sampler.forward", None)]


V0_FUNCTIONS = {
    "batch": ["schedule", "abort_seq_group", "allocate_and_set_running", "preempt_by_recompute",
              "swap_in", "swap_out", "free_finished_seq_groups", "add_seq_group_to_running",
              "schedule_priority_preemption", "schedule_default", "schedule_chunked_prefill",
              "add_seq_group", "add_seq_group_to_swapped", "add_processed_request"],
    "kvcache": ["allocate", "append_slots", "swap_in", "swap_out", "free", "get_stats"],
    "model": ["handle_execute_model", "execute_model", "begin_forward", "set_forward_context"],
    "request": ["add_request_063", "add_request_084", "add_request_async",
                "process_model_outputs", "validate_output"],
}


@pytest.mark.parametrize("layout", ["msserviceprofiler.vllm_profiler.vllm_v0.{}_hookers",
                                    "ms_service_profiler.patcher.vllm.handlers.v0.{}_handlers"])
def test_every_reference_v0_handler_is_mapped_or_has_a_reason(layout):
    for module, functions in V0_FUNCTIONS.items():
        for function in functions:
            path = f"{layout.format(module)}:{function}"
            resolved, gap = resolve_builtin(path), reference_handler_gap(path)
            assert (resolved is None) != (gap is None), path
            if resolved is not None:
                assert resolved in BUILTIN_HANDLERS.values(), path
    unknown = layout.format("batch") + ":no_such_function"
    assert resolve_builtin(unknown) is None and "no equivalent" in reference_handler_gap(unknown)


def test_the_file_vllm_ascend_writes_is_picked_up_from_home(tmp_path, monkeypatch):
    config_dir = tmp_path / ".config" / "vllm_ascend"
    config_dir.mkdir(parents=True)
    target = config_dir / f"service_profiling_symbols.{VLLM}.yaml"
    target.write_text(VLLM_ASCEND_YAML.read_text())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(symbols.SYMBOLS_PATH_ENV, raising=False)
    loaded = symbols.load_symbols(vllm_version=VLLM)
    assert Path(loaded.path) == target
    assert [spec.symbol for spec in loaded.specs] == [s for s, _ in VLLM_ASCEND_EXPECTED]


# --- the alias table itself -------------------------------------------------------------------

REFERENCE_PATHS_OF_SECTION_B = [
    "batch_hookers:process_inputs", "batch_hookers:schedule", "batch_hookers:free_request",
    "batch_hookers:add_request", "kvcache_hookers:allocate_slots", "kvcache_hookers:free",
    "kvcache_hookers:get_computed_blocks", "model_hookers:compute_logits",
    "model_hookers:sampler_forward", "model_hookers:execute_model",
    "model_hookers:capture_async", "model_hookers:set_forward_context",
    "request_hookers:add_request_async", "request_hookers:process_outputs",
    "meta_hookers:init_data_parallel",
]


@pytest.mark.parametrize("tail", REFERENCE_PATHS_OF_SECTION_B)
def test_every_reference_handler_path_is_mapped_or_has_a_reason(tail):
    path = f"msserviceprofiler.vllm_profiler.vllm_v1.{tail}"
    resolved, gap = resolve_builtin(path), reference_handler_gap(path)
    assert (resolved is None) != (gap is None)
    if resolved is not None:
        assert resolved in RECORDS
        assert resolve_builtin(resolved) == resolved  # canonical form is stable


def test_aliases_only_point_at_real_handler_functions():
    import importlib

    for target in set(REFERENCE_HANDLER_ALIASES.values()):
        module, _, name = target.partition(":")
        if module.endswith(".compat_extra"):
            assert callable(getattr(importlib.import_module(module), name))
        else:
            assert target in BUILTIN_HANDLERS.values()


def test_short_names_and_our_own_paths_still_resolve():
    assert resolve_builtin("schedule") == BUILTIN_HANDLERS["schedule"]
    assert resolve_builtin(BUILTIN_HANDLERS["free"]) == BUILTIN_HANDLERS["free"]
    assert resolve_builtin("my_pkg.hooks:step") is None
    assert reference_handler_gap("my_pkg.hooks:step") is None
    assert handlers.reference_handler_gap(
        "msserviceprofiler.vllm_profiler.vllm_v0.kvcache_hookers:get_stats") is not None
    assert handlers.reference_handler_gap(
        "msserviceprofiler.vllm_profiler.vllm_v0.kvcache_hookers:free") is None


# --- against the installed vLLM (0.32): which targets still exist -------------------------------

GONE_IN_VLLM_032 = {"vllm.v1.engine.processor:Processor.process_inputs"}


@pytest.mark.parametrize("path", [WHEEL_YAML, VLLM_ASCEND_YAML])
def test_targets_are_checked_against_the_installed_vllm(path):
    from otel_vllm_ascend import symbol_check

    statuses = symbol_check.check_symbol_set(_load(path))
    for status in statuses:
        symbol = status.spec.symbol
        assert status.handler_note is None, symbol  # every handler imports
        if symbol.startswith("vllm_ascend."):
            assert status.status == symbol_check.MODULE_NOT_INSTALLED and status.package_absent
            assert status.ok  # no vllm-ascend on this machine: nothing to fix
        elif symbol in GONE_IN_VLLM_032:
            assert status.status == symbol_check.MODULE_NOT_INSTALLED
            assert not status.package_absent and not status.ok  # vLLM moved it: reported
        else:
            assert status.status == symbol_check.RESOLVES, (symbol, status.reason)
