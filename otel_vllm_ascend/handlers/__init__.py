"""Built-in handlers for vLLM V1, V0 (``v0_*``) and vllm-ascend, named in the default symbol YAML.

Every handler has the custom-handler signature ``handler(original, this, *args, **kwargs)``:
it calls ``original(*args, **kwargs)`` exactly once and returns its result. Those of sync hot
paths are :class:`~otel_vllm_ascend.wrapping.AroundHandler` halves (``before`` / ``after`` the
call), which the hook wrapper calls around the original itself, at half the cost. Short names
resolve to these through :data:`BUILTIN_HANDLERS`.

msserviceprofiler's handler paths, in both of its layouts (as its packaged YAMLs and the files
vllm-ascend writes name them), resolve through :data:`REFERENCE_HANDLER_ALIASES` to the
built-in that writes the same records, whether or not msserviceprofiler is installed: its own
handlers write through CANN's library, not OpenTelemetry, so a path in its namespaces is never
imported. The layouts:

* ``msserviceprofiler.vllm_profiler.vllm_v1.<module>:<function>`` (msserviceprofiler 1.x;
  vllm-ascend 0.12 - 0.18), modules ``*_hookers``;
* ``ms_service_profiler.patcher.vllm.handlers.v1.<module>:<function>`` (msserviceprofiler
  26.x; vllm-ascend 0.20 and later), modules ``*_handlers``.

Both layouts' V0-engine handlers map to the ``v0_*`` built-ins (``handlers/v0_*.py``). Paths
with no equivalent are listed in :data:`REFERENCE_HANDLERS_WITHOUT_EQUIVALENT` (whole modules in
:data:`REFERENCE_MODULES_WITHOUT_EQUIVALENT`); :func:`reference_handler_gap` gives the reason to
report.
"""

import re

_MODULE = "otel_vllm_ascend.handlers"

# short name -> "module:function"
BUILTIN_HANDLERS = {
    "add_request_async": f"{_MODULE}.request:add_request_async",
    "process_outputs": f"{_MODULE}.request:process_outputs",
    "assign_request_id": f"{_MODULE}.request:assign_request_id",
    "carry_trace_context": f"{_MODULE}.request:carry_trace_context",
    "incoming_trace_headers": f"{_MODULE}.request:incoming_trace_headers",
    "bind_trace_context": f"{_MODULE}.request:bind_trace_context",
    "schedule": f"{_MODULE}.scheduler:schedule",
    "add_request": f"{_MODULE}.scheduler:add_request",
    "free": f"{_MODULE}.kvcache:free",
    "get_computed_blocks": f"{_MODULE}.kvcache:get_computed_blocks",
    "execute_model": f"{_MODULE}.model:execute_model",
    "execute_model_runner": f"{_MODULE}.model:execute_model_runner",
    "compute_logits": f"{_MODULE}.model:compute_logits",
    "sampler_forward": f"{_MODULE}.model:sampler_forward",
    "capture_async": f"{_MODULE}.model:capture_async",
    "record_function_or_nullcontext": f"{_MODULE}.model:record_function_or_nullcontext",
    "propose_draft_token_ids": f"{_MODULE}.spec_decode:propose_draft_token_ids",
    "capture_rejection_output": f"{_MODULE}.spec_decode:capture_rejection_output",
    "init_data_parallel": f"{_MODULE}.meta:init_data_parallel",
    "init_data_parallel_worker": f"{_MODULE}.meta:init_data_parallel_worker",
    "shutdown_grace": f"{_MODULE}.lifecycle:shutdown_grace",
    "api_servers_shutdown_grace": f"{_MODULE}.lifecycle:api_servers_shutdown_grace",
    # vLLM's V0 engine (handlers/v0_*.py)
    "v0_generate": f"{_MODULE}.v0_request:generate",
    "v0_request_output": f"{_MODULE}.v0_request:request_output",
    "v0_add_request": f"{_MODULE}.v0_request:add_request",
    "v0_add_processed_request": f"{_MODULE}.v0_request:add_processed_request",
    "v0_parallel_sample": f"{_MODULE}.v0_request:parallel_sample",
    "v0_process_model_outputs": f"{_MODULE}.v0_request:process_model_outputs",
    "v0_schedule": f"{_MODULE}.v0_scheduler:schedule",
    "v0_queue_changes": f"{_MODULE}.v0_scheduler:queue_changes_handler",
    "v0_add_seq_group": f"{_MODULE}.v0_scheduler:add_seq_group",
    "v0_add_seq_group_to_running": f"{_MODULE}.v0_scheduler:add_seq_group_to_running",
    "v0_add_seq_group_to_swapped": f"{_MODULE}.v0_scheduler:add_seq_group_to_swapped",
    "v0_allocate_and_set_running": f"{_MODULE}.v0_scheduler:allocate_and_set_running",
    "v0_preempt_by_recompute": f"{_MODULE}.v0_scheduler:preempt_by_recompute",
    "v0_swap_out": f"{_MODULE}.v0_scheduler:swap_out",
    "v0_swap_in": f"{_MODULE}.v0_scheduler:swap_in",
    "v0_free_finished_seq_groups": f"{_MODULE}.v0_scheduler:free_finished_seq_groups",
    "v0_abort_seq_group": f"{_MODULE}.v0_scheduler:abort_seq_group",
    "v0_allocate": f"{_MODULE}.v0_kvcache:allocate",
    "v0_append_slots": f"{_MODULE}.v0_kvcache:append_slots",
    "v0_kv_swap_out": f"{_MODULE}.v0_kvcache:swap_out",
    "v0_kv_swap_in": f"{_MODULE}.v0_kvcache:swap_in",
    "v0_free": f"{_MODULE}.v0_kvcache:free",
    "v0_execute_model": f"{_MODULE}.v0_model:execute_model",
    "v0_model_runner_execute": f"{_MODULE}.v0_model:model_runner_execute",
}

# Top-level packages of the reference tool: handler paths under them are its own.
REFERENCE_PACKAGES = ("msserviceprofiler", "ms_service_profiler", "ms_service_metric")

_REF_V1 = "msserviceprofiler.vllm_profiler.vllm_v1"  # 1.x layout
_REF_V0 = "msserviceprofiler.vllm_profiler.vllm_v0"
_NEW_V1 = "ms_service_profiler.patcher.vllm.handlers.v1"  # 26.x layout
_NEW_V0 = "ms_service_profiler.patcher.vllm.handlers.v0"
_COMPAT = f"{_MODULE}.compat_extra"

# msserviceprofiler handler path -> our "module:function" with the same records.
REFERENCE_HANDLER_ALIASES = {
    f"{_REF_V1}.batch_hookers:schedule": BUILTIN_HANDLERS["schedule"],
    f"{_REF_V1}.batch_hookers:add_request": f"{_COMPAT}:add_request",  # ReqState + Enqueue
    f"{_REF_V1}.batch_hookers:free_request": f"{_COMPAT}:free_request",
    f"{_REF_V1}.batch_hookers:process_inputs": f"{_COMPAT}:process_inputs",
    f"{_REF_V1}.kvcache_hookers:free": BUILTIN_HANDLERS["free"],
    f"{_REF_V1}.kvcache_hookers:get_computed_blocks": BUILTIN_HANDLERS["get_computed_blocks"],
    f"{_REF_V1}.model_hookers:execute_model": BUILTIN_HANDLERS["execute_model"],
    f"{_REF_V1}.model_hookers:compute_logits": BUILTIN_HANDLERS["compute_logits"],
    f"{_REF_V1}.model_hookers:sampler_forward": BUILTIN_HANDLERS["sampler_forward"],
    f"{_REF_V1}.model_hookers:capture_async": BUILTIN_HANDLERS["capture_async"],
    f"{_REF_V1}.request_hookers:add_request_async": BUILTIN_HANDLERS["add_request_async"],
    f"{_REF_V1}.request_hookers:process_outputs": BUILTIN_HANDLERS["process_outputs"],
    f"{_REF_V1}.meta_hookers:init_data_parallel": BUILTIN_HANDLERS["init_data_parallel"],
    # 26.x: add_request writes Enqueue only (the ReqState increments are gone).
    f"{_NEW_V1}.batch_handlers:schedule": BUILTIN_HANDLERS["schedule"],
    f"{_NEW_V1}.batch_handlers:add_request": BUILTIN_HANDLERS["add_request"],
    f"{_NEW_V1}.kvcache_handlers:free": BUILTIN_HANDLERS["free"],
    f"{_NEW_V1}.kvcache_handlers:get_computed_blocks": BUILTIN_HANDLERS["get_computed_blocks"],
    f"{_NEW_V1}.model_handlers:compute_logits": BUILTIN_HANDLERS["compute_logits"],
    f"{_NEW_V1}.model_handlers:sampler_forward": BUILTIN_HANDLERS["sampler_forward"],
    f"{_NEW_V1}.model_handlers:execute_model": BUILTIN_HANDLERS["execute_model"],
    f"{_NEW_V1}.model_handlers:execute_model_runner": BUILTIN_HANDLERS["execute_model_runner"],
    f"{_NEW_V1}.model_handlers:capture_async": BUILTIN_HANDLERS["capture_async"],
    f"{_NEW_V1}.model_handlers:record_function_or_nullcontext":
        BUILTIN_HANDLERS["record_function_or_nullcontext"],
    f"{_NEW_V1}.mtp_handlers:propose_draft_token_ids_npu":
        BUILTIN_HANDLERS["propose_draft_token_ids"],
    f"{_NEW_V1}.mtp_handlers:capture_rejection_output":
        BUILTIN_HANDLERS["capture_rejection_output"],
    f"{_NEW_V1}.request_handlers:add_request_async": BUILTIN_HANDLERS["add_request_async"],
    f"{_NEW_V1}.request_handlers:process_outputs": BUILTIN_HANDLERS["process_outputs"],
    f"{_NEW_V1}.meta_handlers:init_data_parallel": BUILTIN_HANDLERS["init_data_parallel"],
    f"{_NEW_V1}.meta_handlers:init_data_parallel_worker":
        BUILTIN_HANDLERS["init_data_parallel_worker"],
}

# msserviceprofiler's V0 handlers, by (module in the 1.x layout, module in the 26.x layout,
# function) -> our built-in short name. Both layouts name the same functions.
_V0_HANDLERS = {
    ("batch_hookers", "batch_handlers", "schedule"): "v0_schedule",
    ("batch_hookers", "batch_handlers", "schedule_default"): "v0_queue_changes",
    ("batch_hookers", "batch_handlers", "schedule_chunked_prefill"): "v0_queue_changes",
    ("batch_hookers", "batch_handlers", "schedule_priority_preemption"): "v0_queue_changes",
    ("batch_hookers", "batch_handlers", "add_seq_group"): "v0_add_seq_group",
    ("batch_hookers", "batch_handlers", "add_seq_group_to_running"):
        "v0_add_seq_group_to_running",
    ("batch_hookers", "batch_handlers", "add_seq_group_to_swapped"):
        "v0_add_seq_group_to_swapped",
    ("batch_hookers", "batch_handlers", "allocate_and_set_running"):
        "v0_allocate_and_set_running",
    ("batch_hookers", "batch_handlers", "preempt_by_recompute"): "v0_preempt_by_recompute",
    ("batch_hookers", "batch_handlers", "swap_in"): "v0_swap_in",
    ("batch_hookers", "batch_handlers", "swap_out"): "v0_swap_out",
    ("batch_hookers", "batch_handlers", "free_finished_seq_groups"):
        "v0_free_finished_seq_groups",
    ("batch_hookers", "batch_handlers", "abort_seq_group"): "v0_abort_seq_group",
    ("batch_hookers", "batch_handlers", "add_processed_request"): "v0_add_processed_request",
    ("kvcache_hookers", "kvcache_handlers", "allocate"): "v0_allocate",
    ("kvcache_hookers", "kvcache_handlers", "append_slots"): "v0_append_slots",
    ("kvcache_hookers", "kvcache_handlers", "swap_in"): "v0_kv_swap_in",
    ("kvcache_hookers", "kvcache_handlers", "swap_out"): "v0_kv_swap_out",
    ("kvcache_hookers", "kvcache_handlers", "free"): "v0_free",
    ("model_hookers", "model_handlers", "handle_execute_model"): "v0_execute_model",
    ("model_hookers", "model_handlers", "execute_model"): "v0_model_runner_execute",
    ("request_hookers", "request_handlers", "add_request_063"): "v0_add_request",
    ("request_hookers", "request_handlers", "add_request_084"): "v0_add_request",
    ("request_hookers", "request_handlers", "add_request_async"): "add_request_async",
    ("request_hookers", "request_handlers", "process_model_outputs"): "v0_process_model_outputs",
}
for (_old, _new, _function), _short in _V0_HANDLERS.items():
    REFERENCE_HANDLER_ALIASES[f"{_REF_V0}.{_old}:{_function}"] = BUILTIN_HANDLERS[_short]
    REFERENCE_HANDLER_ALIASES[f"{_NEW_V0}.{_new}:{_function}"] = BUILTIN_HANDLERS[_short]

_NO_FORWARD_CONTEXT = ("msserviceprofiler ships this hook commented out; its span only repeats "
                       "the modelRunnerExec / forward timing; no equivalent")
_METRICS = ("writes Prometheus metrics through msserviceprofiler's metrics package (and "
            "changes vLLM's stats objects to carry them); this project records traces, not "
            "metrics; no equivalent")

# msserviceprofiler handler paths we deliberately do not map, and why (entries are skipped).
REFERENCE_HANDLERS_WITHOUT_EQUIVALENT = {
    f"{_REF_V1}.kvcache_hookers:allocate_slots": (
        "msserviceprofiler has no handler function 'allocate_slots' (its YAML names one that "
        "does not exist, so it records nothing there either); no equivalent"),
    f"{_REF_V1}.model_hookers:set_forward_context": _NO_FORWARD_CONTEXT,
    f"{_NEW_V1}.model_handlers:set_forward_context": _NO_FORWARD_CONTEXT,
    f"{_NEW_V1}.meta_handlers:make_stats": _METRICS,
    f"{_NEW_V1}.meta_handlers:record": _METRICS,
}
_V0_WITHOUT_EQUIVALENT = {
    ("kvcache_hookers", "kvcache_handlers", "get_stats"): (
        "its GetCacheHitRate record carries the GPU cache usage, not a hit rate; every "
        "scheduling step's KVCacheStatus carries the usage and Allocate the prefix-cache hit "
        "rate; no equivalent"),
    ("model_hookers", "model_handlers", "begin_forward"): (
        "it only prepares msserviceprofiler's forward span, which repeats the "
        "modelRunnerExec timing; no equivalent"),
    ("model_hookers", "model_handlers", "set_forward_context"): (
        "its forward span repeats the modelRunnerExec timing; no equivalent"),
    ("request_hookers", "request_handlers", "validate_output"): (
        "it hooks vLLM 0.6.3 only, which this project does not run; the API server's httpRes "
        "(v0_request_output) records the same; no equivalent"),
}
for (_old, _new, _function), _why in _V0_WITHOUT_EQUIVALENT.items():
    REFERENCE_HANDLERS_WITHOUT_EQUIVALENT[f"{_REF_V0}.{_old}:{_function}"] = _why
    REFERENCE_HANDLERS_WITHOUT_EQUIVALENT[f"{_NEW_V0}.{_new}:{_function}"] = _why
_V0_REASON = ("msserviceprofiler V0 handler this project does not know (its V0 handlers are "
              "mapped in otel_vllm_ascend.handlers._V0_HANDLERS); no equivalent")
# Module prefixes whose every handler has no equivalent.
REFERENCE_MODULES_WITHOUT_EQUIVALENT = {
    f"{_NEW_V1}.metric_handlers": _METRICS,
}


# The 1.x layout's package was spelt more than one way across releases.
_OLD_PACKAGE_RE = re.compile(r"^ms_?service_?profiler\.vllm_profiler\.")


def _normalise(handler: str) -> str:
    return _OLD_PACKAGE_RE.sub("msserviceprofiler.vllm_profiler.", handler, count=1)


def is_reference_handler(handler: str) -> bool:
    """True for a handler path in one of the reference tool's packages (never to be imported)."""
    top = _normalise(handler).partition(":")[0].split(".", 1)[0]
    return top in REFERENCE_PACKAGES


def reference_handler_gap(handler: str) -> "str | None":
    """Why a msserviceprofiler handler path has no built-in equivalent, or None if it has one
    (or is not one of msserviceprofiler's paths). The entry naming it is to be skipped."""
    handler = _normalise(handler)
    reason = REFERENCE_HANDLERS_WITHOUT_EQUIVALENT.get(handler)
    if reason is None and handler.startswith((_REF_V0 + ".", _NEW_V0 + ".")) \
            and handler not in REFERENCE_HANDLER_ALIASES:
        return _V0_REASON
    if reason is None:
        module = handler.partition(":")[0]
        for prefix, why in REFERENCE_MODULES_WITHOUT_EQUIVALENT.items():
            if module == prefix or module.startswith(prefix + "."):
                return why
    return reason


def resolve_builtin(handler: str) -> "str | None":
    """The canonical ``module:function`` of a built-in handler named by short name or path
    (ours, or one of msserviceprofiler's with an equivalent)."""
    if handler in BUILTIN_HANDLERS:
        return BUILTIN_HANDLERS[handler]
    alias = REFERENCE_HANDLER_ALIASES.get(_normalise(handler))
    if alias is not None:
        return alias
    if handler in _CANONICAL:
        return handler
    return None


_CANONICAL = frozenset(BUILTIN_HANDLERS.values()) | frozenset(REFERENCE_HANDLER_ALIASES.values())
