"""Built-in handlers for vLLM V1 (and vllm-ascend), named in the default symbol YAML.

Every handler has the custom-handler signature ``handler(original, this, *args, **kwargs)``:
it calls ``original(*args, **kwargs)`` exactly once and returns its result. Those of sync hot
paths are :class:`~otel_vllm_ascend.wrapping.AroundHandler` halves (``before`` / ``after`` the
call), which the hook wrapper calls around the original itself, at half the cost. Short names
resolve to these through :data:`BUILTIN_HANDLERS`.

msserviceprofiler's handler paths (``msserviceprofiler.vllm_profiler.vllm_v1.<file>:<function>``,
as its packaged YAML and the file vllm-ascend writes name them) resolve through
:data:`REFERENCE_HANDLER_ALIASES` to the built-in that writes the same records, whether or not
msserviceprofiler is installed: its own handlers write through CANN's library, not
OpenTelemetry. Paths with no equivalent are listed in :data:`REFERENCE_HANDLERS_WITHOUT_EQUIVALENT`
(and every ``vllm_v0`` path); :func:`reference_handler_gap` gives the reason to report.
"""

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
    "compute_logits": f"{_MODULE}.model:compute_logits",
    "sampler_forward": f"{_MODULE}.model:sampler_forward",
    "capture_async": f"{_MODULE}.model:capture_async",
    "execute_model_runner": f"{_MODULE}.model:execute_model_runner",
    "record_function_or_nullcontext": f"{_MODULE}.model:record_function_or_nullcontext",
    "init_data_parallel": f"{_MODULE}.meta:init_data_parallel",
    "init_data_parallel_worker": f"{_MODULE}.meta:init_data_parallel_worker",
    "propose_draft_token_ids_npu": f"{_MODULE}.spec_decode:propose_draft_token_ids",
    "capture_rejection_output": f"{_MODULE}.spec_decode:capture_rejection_output",
    "shutdown_grace": f"{_MODULE}.lifecycle:shutdown_grace",
}


_REF_V1 = "msserviceprofiler.vllm_profiler.vllm_v1"
_REF_V0 = "msserviceprofiler.vllm_profiler.vllm_v0."
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
}

# msserviceprofiler handler paths we deliberately do not map, and why (entries are skipped).
REFERENCE_HANDLERS_WITHOUT_EQUIVALENT = {
    f"{_REF_V1}.kvcache_hookers:allocate_slots": (
        "msserviceprofiler has no handler function 'allocate_slots' (its YAML names one that "
        "does not exist, so it records nothing there either); no equivalent"),
    f"{_REF_V1}.model_hookers:set_forward_context": (
        "msserviceprofiler ships this hook commented out; its span only repeats the "
        "modelRunnerExec / forward timing; no equivalent"),
}
_V0_REASON = ("handler for vLLM's V0 engine, which the vLLM versions this project supports no "
              "longer have; no equivalent")


def reference_handler_gap(handler: str) -> "str | None":
    """Why a msserviceprofiler handler path has no built-in equivalent, or None if it has one
    (or is not one of msserviceprofiler's paths). The entry naming it is to be skipped."""
    reason = REFERENCE_HANDLERS_WITHOUT_EQUIVALENT.get(handler)
    if reason is None and handler.startswith(_REF_V0):
        reason = _V0_REASON
    return reason


def resolve_builtin(handler: str) -> "str | None":
    """The canonical ``module:function`` of a built-in handler named by short name or path
    (ours, or one of msserviceprofiler's with an equivalent)."""
    if handler in BUILTIN_HANDLERS:
        return BUILTIN_HANDLERS[handler]
    alias = REFERENCE_HANDLER_ALIASES.get(handler)
    if alias is not None:
        return alias
    if handler in _CANONICAL:
        return handler
    return None


_CANONICAL = frozenset(BUILTIN_HANDLERS.values()) | frozenset(REFERENCE_HANDLER_ALIASES.values())
