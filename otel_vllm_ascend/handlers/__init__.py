"""Built-in handlers for vLLM V1 (and vllm-ascend), named in the default symbol YAML.

Every handler has the custom-handler signature ``handler(original, this, *args, **kwargs)``:
it calls ``original(*args, **kwargs)`` exactly once and returns its result. Short names and the
reference tool's handler paths resolve to these through :data:`BUILTIN_HANDLERS`.
"""

_MODULE = "otel_vllm_ascend.handlers"

# short name -> "module:function"
BUILTIN_HANDLERS = {
    "add_request_async": f"{_MODULE}.request:add_request_async",
    "process_outputs": f"{_MODULE}.request:process_outputs",
    "schedule": f"{_MODULE}.scheduler:schedule",
    "add_request": f"{_MODULE}.scheduler:add_request",
    "free": f"{_MODULE}.kvcache:free",
    "get_computed_blocks": f"{_MODULE}.kvcache:get_computed_blocks",
    "execute_model": f"{_MODULE}.model:execute_model",
    "compute_logits": f"{_MODULE}.model:compute_logits",
    "sampler_forward": f"{_MODULE}.model:sampler_forward",
    "capture_async": f"{_MODULE}.model:capture_async",
    "init_data_parallel": f"{_MODULE}.meta:init_data_parallel",
}


def resolve_builtin(handler: str) -> "str | None":
    """The canonical ``module:function`` of a built-in handler named by short name or path."""
    if handler in BUILTIN_HANDLERS:
        return BUILTIN_HANDLERS[handler]
    if handler in BUILTIN_HANDLERS.values():
        return handler
    return None
