"""msserviceprofiler users' symbol files, unchanged: what each entry becomes here.

The fixtures under tests/fixtures/ms_symbols/ have the shape of msserviceprofiler 1.2.3's
packaged YAML and of the files vllm-ascend writes to ~/.config/vllm_ascend/ (0.12 - 0.18 in
msserviceprofiler 1.x's handler layout, 0.20 and later in 26.x's). They are loaded with the
project's own loader and checked entry by entry: which built-in handler the entry resolves to
(so, which records it produces), which entries are reported and skipped, which are chained, and
which targets the installed vLLM no longer has.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml
from vllm_tiers import needs_vllm

from otel_vllm_ascend import handlers, symbols
from otel_vllm_ascend.handlers import (
    BUILTIN_HANDLERS,
    REFERENCE_HANDLER_ALIASES,
    reference_handler_gap,
    resolve_builtin,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ms_symbols"
WHEEL_YAML = FIXTURES / "msserviceprofiler-1.2.3.yaml"
VLLM_ASCEND_YAML = FIXTURES / "vllm_ascend" / "service_profiling_symbols.0.32.0.yaml"  # 0.12
VLLM_ASCEND_018 = FIXTURES / "vllm_ascend" / "vllm-ascend-0.18.yaml"
VLLM_ASCEND_023 = FIXTURES / "vllm_ascend" / "vllm-ascend-0.23.yaml"
VLLM_ASCEND_NEWEST = FIXTURES / "vllm_ascend" / "vllm-ascend-0.25.1rc1.yaml"
V0_YAML = FIXTURES / "vllm_v0.yaml"
VLLM = "0.32.0"

_H = "otel_vllm_ascend.handlers"
SCHEDULE = f"{_H}.scheduler:schedule"
ADD_REQUEST_STATE = f"{_H}.compat_extra:add_request"
ADD_REQUEST = f"{_H}.scheduler:add_request"
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
# Built-ins named by msserviceprofiler 26.x's handlers (written alongside this change; until they
# exist the runtime times these entries with one warning, see test_symbol_file_features.py).
RUNNER = f"{_H}.model:execute_model_runner"
PHASES = f"{_H}.model:record_function_or_nullcontext"
DRAFT = f"{_H}.spec_decode:propose_draft_token_ids"
REJECTION = f"{_H}.spec_decode:capture_rejection_output"
DP_WORKER = f"{_H}.meta:init_data_parallel_worker"
TIMER = None

# Records each resolved handler writes (span contract, "Records the built-in vLLM V1 handlers
# emit", plus the ReqState events of handlers/compat_extra.py).
RECORDS = {
    SCHEDULE: ["batchFrameworkProcessing", "Enqueue", "Dequeue", "KVCacheStatus"],
    ADD_REQUEST_STATE: ["ReqState", "Enqueue"],
    ADD_REQUEST: ["Enqueue"],
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
    RUNNER: ["modelRunnerExec"],
    PHASES: ["prepare input", "forward", "post process", "sample_token", "..."],
    DRAFT: ["specDecoding"],
    REJECTION: ["specDecoding"],
    DP_WORKER: ["Meta"],
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

# vllm-ascend 0.15 - 0.18: the same without capture_async (gone from vllm-ascend).
VLLM_ASCEND_018_EXPECTED = [entry for entry in VLLM_ASCEND_EXPECTED if entry[1] != CAPTURE]

_RUNNER = "vllm_ascend.worker.model_runner_v1:NPUModelRunner"
# vllm-ascend 0.20.2 - 0.24 (26.x layout) for vLLM 0.23.0: kept entries, in file order.
VLLM_ASCEND_023_EXPECTED = [
    ("vllm.v1.core.sched.scheduler:Scheduler.schedule", SCHEDULE),
    ("vllm_ascend.core.scheduler:AscendScheduler.schedule", SCHEDULE),
    ("vllm.v1.core.sched.scheduler:Scheduler.add_request", ADD_REQUEST),  # Enqueue only
    ("vllm.v1.core.kv_cache_manager:KVCacheManager.free", FREE),
    ("vllm.v1.core.kv_cache_manager:KVCacheManager.get_computed_blocks", COMPUTED),
    ("vllm.model_executor.layers.logits_processor:LogitsProcessor.forward", LOGITS),
    ("vllm.v1.sample.sampler:Sampler.forward", SAMPLER),
    ("vllm.v1.executor.abstract:Executor.execute_model", EXECUTE),
    ("vllm.v1.executor.multiproc_executor:MultiprocExecutor.execute_model", EXECUTE),
    (f"{_RUNNER}.execute_model", RUNNER),
    (f"{_RUNNER}._update_states", TIMER),
    (f"{_RUNNER}._prepare_inputs", TIMER),
    ("vllm.model_executor.models.*:*.embed_multimodal", TIMER),
    ("vllm.v1.utils:record_function_or_nullcontext", PHASES),
    (f"{_RUNNER}.propose_draft_token_ids", DRAFT),
    ("vllm_ascend.sample.rejection_sampler:rejection_sample", REJECTION),
    ("vllm.v1.engine.async_llm:AsyncLLM.add_request", ADD_ASYNC),
    ("vllm.v1.engine.output_processor:OutputProcessor.process_outputs", OUTPUTS),
    ("vllm.v1.engine.core:DPEngineCoreProc.add_request", DP_META),
    (f"{_RUNNER}.execute_model", DP_WORKER),  # chained after entry #10
]
VLLM_ASCEND_023_SKIPPED = [  # version gates for vLLM 0.23.0
    ("vllm_ascend.utils:ProfileExecuteDuration.capture_async", "above max_version 0.14.0rc1"),
    ("vllm.engine.async_llm_engine:AsyncLLMEngine.add_request", "above max_version 0.11.0"),
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
    (VLLM_ASCEND_018, VLLM_ASCEND_018_EXPECTED, "ModelExecute"),
], ids=["msserviceprofiler-1.2.3", "vllm-ascend-0.12", "vllm-ascend-0.18"])
def test_every_entry_resolves_to_the_handler_with_the_reference_records(
        path, expected, timer_domain):
    loaded = _load(path)
    assert [(spec.symbol, spec.handler) for spec in loaded.specs] == expected
    assert [(spec.qualname, why.split(":")[0]) for spec, why in loaded.skipped] == [
        ("KVCacheManager.allocate_slots", "no equivalent")]
    for spec in loaded.specs:
        if spec.handler is None:
            assert spec.name == TIMER_NAMES[spec.qualname]
            assert spec.domain == timer_domain
        else:
            assert spec.handler in RECORDS


@pytest.mark.parametrize("path", [WHEEL_YAML, VLLM_ASCEND_YAML, VLLM_ASCEND_018])
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


ALL_FILES = [(WHEEL_YAML, VLLM), (VLLM_ASCEND_YAML, "0.12.0"), (VLLM_ASCEND_018, "0.18.0"),
             (VLLM_ASCEND_023, "0.23.0"), (VLLM_ASCEND_NEWEST, "0.25.1"),
             (VLLM_ASCEND_NEWEST, VLLM)]


@pytest.mark.parametrize("path, version", ALL_FILES)
def test_no_reference_handler_silently_falls_back_to_the_timer(path, version):
    """Every entry that names a handler is a built-in, or skipped with its reason printed."""
    raw = yaml.safe_load(path.read_text())
    loaded = symbols.load_symbols(path, vllm_version=version)
    kept = {spec.source: spec for spec in loaded.specs}
    skipped = {spec.source: why for spec, why in loaded.skipped}
    assert len(kept) + len(skipped) == len(raw)
    for number, entry in enumerate(raw, start=1):
        source = f"{path}#{number}"
        if source in skipped:
            why = skipped[source]
            assert why.startswith(("skipped by version gate", "no equivalent")), why
            if why.startswith("no equivalent"):
                assert sum(entry["handler"] in p for p in loaded.problems) == 1
            continue
        spec = kept[source]
        if "handler" in entry:
            assert spec.handler in RECORDS, (number, entry["handler"])
        else:
            assert spec.handler is None and spec.name == entry.get("name", spec.name)
    assert all("no equivalent" in p or "allocate_slots" in p for p in loaded.problems)


def test_vllm_ascend_0_23_file_entry_by_entry():
    loaded = symbols.load_symbols(VLLM_ASCEND_023, vllm_version="0.23.0")
    assert [(spec.symbol, spec.handler) for spec in loaded.specs] == VLLM_ASCEND_023_EXPECTED
    assert [(spec.symbol, why.rsplit(" is ", 1)[1]) for spec, why in loaded.skipped] == \
        VLLM_ASCEND_023_SKIPPED
    assert loaded.problems == []
    wildcard = next(spec for spec in loaded.specs if spec.wildcard)
    assert (wildcard.name, wildcard.domain) == ("multimodalEmbedding", "Multimodal")
    runner = [spec for spec in loaded.specs if spec.symbol == f"{_RUNNER}.execute_model"]
    assert [(spec.source.rsplit("#")[1], spec.name, spec.domain) for spec in runner] == [
        ("10", "modelRunnerExec", "Execute"), ("22", "execute_model", "Default")]


def test_newest_vllm_ascend_file_keeps_every_entry():
    """76 entries: 7 built-in handlers' records plus timers with attributes (Mooncake, ...)."""
    loaded = symbols.load_symbols(VLLM_ASCEND_NEWEST, vllm_version="0.25.1")
    assert loaded.problems == []
    assert len(loaded.specs) == 74 and len(loaded.skipped) == 2
    mooncake = [spec for spec in loaded.specs if spec.domain == "KVTransfer"]
    assert len(mooncake) >= 10
    recv = next(spec for spec in loaded.specs if spec.name == "MooncakeRecvThread.enqueue")
    assert [a.name for a in recv.attributes][:2] == ["req_id", "remote_req_id"]
    assert recv.attributes[0].compiled.evaluate(
        {"kwargs": {"request_id": 7}, "args": (), "this": None}) == "7"
    read = next(spec for spec in loaded.specs if spec.name == "MooncakeSyncRead")
    assert read.attributes[0].compiled.evaluate(
        {"args": (None, {"remote_request_id": "r-1"})}) == "r-1"


@pytest.mark.parametrize("path, version", ALL_FILES[1:5])
def test_vllm_ascend_files_give_every_record_of_the_default_file(path, version):
    """With their own version's vLLM, each release's file yields the records the default
    symbol file would (the instrumentor adds the default's runtime hooks, see
    test_instrumentor.py)."""
    from otel_vllm_ascend import engine
    from otel_vllm_ascend.instrumentor import ALWAYS_ON_HANDLERS, NEWER_RECORD_HANDLERS

    loaded = symbols.load_symbols(path, vllm_version=version)
    default = symbols.load_symbols(symbols.PACKAGED_SYMBOLS, vllm_version=version)
    assert engine.missing_records(engine.detect(version, use_v1="1"), [
        (engine.handler_short_name(s.handler), True, "") for s in loaded.specs]) == []
    ours = {engine.handler_short_name(s.handler) for s in loaded.specs}
    if any(s.handler == ADD_REQUEST_STATE for s in loaded.specs):
        ours.add("add_request")  # ReqState + the built-in's Enqueue
    theirs = {engine.handler_short_name(s.handler) for s in default.specs} - {None}
    # capture_async: its target left vllm-ascend after 0.14, the default's entry is never hooked;
    # the reference's newer records come from the default (test below).
    assert theirs - ours - ALWAYS_ON_HANDLERS - NEWER_RECORD_HANDLERS <= {"capture_async"}


@pytest.mark.parametrize("path, version", ALL_FILES[1:5])
def test_files_of_the_reference_layout_also_get_its_newer_records(path, version, monkeypatch):
    from otel_vllm_ascend import engine, instrumentor

    monkeypatch.setattr(symbols, "installed_vllm_version", lambda: version)
    specs, _, _ = instrumentor._load_specs(str(path))
    given = {engine.handler_short_name(s.handler) for s in specs}
    default = {engine.handler_short_name(s.handler)
               for s in symbols.load_symbols(symbols.PACKAGED_SYMBOLS, vllm_version=version).specs}
    assert default & instrumentor.NEWER_RECORD_HANDLERS <= given
    # never a second modelRunnerExec where the file already times the runner itself
    assert len([s for s in specs if s.symbol.endswith("NPUModelRunner.execute_model")
                and s.handler is None]) <= 1


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


# msserviceprofiler 26.x: every handler function of its vLLM V1 handler modules.
REFERENCE_PATHS_OF_26 = [
    "batch_handlers:schedule", "batch_handlers:add_request", "kvcache_handlers:free",
    "kvcache_handlers:get_computed_blocks", "model_handlers:compute_logits",
    "model_handlers:sampler_forward", "model_handlers:execute_model",
    "model_handlers:execute_model_runner", "model_handlers:capture_async",
    "model_handlers:record_function_or_nullcontext", "model_handlers:set_forward_context",
    "mtp_handlers:propose_draft_token_ids_npu", "mtp_handlers:capture_rejection_output",
    "request_handlers:add_request_async", "request_handlers:process_outputs",
    "meta_handlers:init_data_parallel", "meta_handlers:init_data_parallel_worker",
    "meta_handlers:make_stats", "meta_handlers:record",
    "metric_handlers:record_function_timer_hook", "metric_handlers:scheduler_scheduler_hooker",
]


@pytest.mark.parametrize("path", [
    *(f"msserviceprofiler.vllm_profiler.vllm_v1.{tail}" for tail in REFERENCE_PATHS_OF_SECTION_B),
    *(f"ms_service_profiler.patcher.vllm.handlers.v1.{tail}" for tail in REFERENCE_PATHS_OF_26),
])
def test_every_reference_handler_path_is_mapped_or_has_a_reason(path):
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
    assert handlers.reference_handler_gap(
        "ms_service_profiler.patcher.vllm.handlers.v0.model_handlers:execute_model") is None
    assert handlers.reference_handler_gap(
        "ms_service_profiler.patcher.vllm.handlers.v0.model_handlers:no_such_handler") is not None
    # 26.x's add_request writes Enqueue only; 1.x's also the ReqState increment
    assert resolve_builtin("ms_service_profiler.patcher.vllm.handlers.v1.batch_handlers:"
                           "add_request") == ADD_REQUEST
    assert resolve_builtin("msserviceprofiler.vllm_profiler.vllm_v1.batch_hookers:"
                           "add_request") == ADD_REQUEST_STATE


def test_loading_a_file_never_imports_the_reference_handlers(tmp_path, monkeypatch):
    """Even where CANN's ms_service_profiler is importable, its handlers are not loaded: they
    write through CANN, not OpenTelemetry."""
    from otel_vllm_ascend.installer import HookInstallError, resolve_handler

    root = tmp_path / "cann"
    package = root / "ms_service_profiler" / "patcher" / "vllm" / "handlers" / "v1"
    package.mkdir(parents=True)
    for folder in [package, *package.parents][:5]:
        (folder / "__init__.py").write_text("")
    for module in ("batch_handlers", "model_handlers", "meta_handlers", "mtp_handlers",
                   "kvcache_handlers", "request_handlers"):
        (package / f"{module}.py").write_text("raise AssertionError('reference imported')\n")
    monkeypatch.syspath_prepend(str(root))
    loaded = symbols.load_symbols(VLLM_ASCEND_NEWEST, vllm_version="0.25.1")
    for spec in loaded.specs:
        try:
            resolve_handler(spec.handler)
        except HookInstallError as exc:  # a built-in this build does not provide (yet)
            assert "otel_vllm_ascend.handlers." in str(exc)
    assert not [name for name in sys.modules if name.startswith("ms_service_profiler.patcher")]


# --- against the installed vLLM (0.32): which targets still exist -------------------------------

GONE_IN_VLLM_032 = {"vllm.v1.engine.processor:Processor.process_inputs"}


@needs_vllm("0.32", "0.32", "which targets of each file exist in the 0.32 line")
@pytest.mark.parametrize("path", [WHEEL_YAML, VLLM_ASCEND_YAML])
def test_targets_are_checked_against_the_installed_vllm(path):
    from otel_vllm_ascend import symbol_check

    statuses = symbol_check.check_symbol_set(_load(path))
    for status in statuses:
        symbol = status.spec.symbol
        assert status.handler_note is None, symbol  # every handler imports
        if status.status == symbol_check.NO_EQUIVALENT:
            assert status.spec.qualname == "KVCacheManager.allocate_slots"
            assert status.becomes == ""  # left out, so it becomes nothing
        elif symbol.startswith("vllm_ascend."):
            assert status.status == symbol_check.MODULE_NOT_INSTALLED and status.package_absent
            assert status.ok  # no vllm-ascend on this machine: nothing to fix
        elif symbol in GONE_IN_VLLM_032:
            assert status.status == symbol_check.MODULE_NOT_INSTALLED
            assert not status.package_absent and not status.ok  # vLLM moved it: reported
        else:
            assert status.status == symbol_check.RESOLVES, (symbol, status.reason)


@needs_vllm("0.32", "0.32", "the multimodal models and gates of the 0.32 line")
def test_newest_file_checked_against_the_installed_vllm():
    """vllm-ascend's newest file on vLLM 0.32: the wildcard finds vLLM's multimodal models
    (importing them all, as only check-symbols does), the chained entries are shown as such."""
    from otel_vllm_ascend import symbol_check

    statuses = {status.spec.source.rsplit("#")[1]: status
                for status in symbol_check.check_symbol_set(_load(VLLM_ASCEND_NEWEST))}
    wildcard = statuses["14"]
    assert wildcard.status == symbol_check.WILDCARD and wildcard.ok
    assert len(wildcard.matches) >= 10
    assert all(match.startswith("vllm.model_executor.models.")
               and match.endswith(".embed_multimodal") for match in wildcard.matches)
    assert ("vllm.model_executor.models.whisper:WhisperForConditionalGeneration."
            "embed_multimodal") in wildcard.matches
    assert statuses["2"].becomes == "built-in schedule"
    assert statuses["4"].becomes == "built-in add_request"
    runner, worker = statuses["11"], statuses["23"]
    assert runner.becomes.endswith("chained 1 of 2 (#11, #23)")
    assert worker.becomes.endswith("chained 2 of 2 (#11, #23)")
    assert "execute_model_runner" in runner.becomes
    assert "init_data_parallel_worker" in worker.becomes
    assert statuses["20"].status == symbol_check.SKIPPED  # AsyncLLMEngine, up to 0.11.0


@pytest.mark.vllm
@pytest.mark.parametrize("path, version", ALL_FILES[1:5],
                         ids=["0.12", "0.18", "0.23", "newest"])
def test_check_symbols_shows_what_each_entry_of_each_release_becomes(path, version, capsys):
    from otel_vllm_ascend.cli import main

    assert main(["check-symbols", "--symbols", str(path), "--vllm-version", version]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0][1:]: line for line in out.splitlines() if line.startswith("#")}
    raw = yaml.safe_load(path.read_text())
    assert len(lines) == len(raw)
    for number, entry in enumerate(raw, start=1):
        line = lines[str(number)]
        if "skipped by version gate: " in line or "skipped, no equivalent: " in line:
            assert " -> " not in line
            continue
        becomes = line.rsplit(" -> ", 1)[1]
        if "handler" not in entry:
            assert becomes.startswith("timer"), line
        else:  # a built-in, or (this build lacking it) the timer standing in for one
            assert becomes.startswith(("built-in ", "timer (instead of built-in ")), line
        if "*" in entry["symbol"]:
            assert " wildcard: " in line and " wildcard: 0 matches" not in line
    assert sum("chained" in line for line in lines.values()) == (2 if "0.2" in version else 0)
