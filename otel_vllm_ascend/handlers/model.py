"""Model execution handlers (domain ``Execute``).

* ``MultiprocExecutor.execute_model`` / ``UniProcExecutor.execute_model`` (EngineCore) -> span
  ``modelExec`` per non-empty engine step, with the batch details, ``batch_type`` and
  ``batch_size`` = scheduled **tokens**. vLLM 0.32's ``EngineCore.step`` calls it with
  ``non_block=True`` and gets a Future: the span then ends when that Future completes, so it
  covers the model's real execution, not only its dispatch. The span links to the traces of the
  batch's requests. With ``acl_task_time: 3`` it also advances the torch_npu profiler.
* ``LogitsProcessor.forward`` -> span ``computing_logits``; ``Sampler.forward`` -> span
  ``sample`` (Worker). On Ascend (``torch_npu`` importable) the NPU stream is synchronised
  before and after the call, as the reference does, so the span measures device work; nowhere
  else.
* vllm-ascend's ``ProfileExecuteDuration.capture_async(tag)`` (a context manager) -> a span named
  by the tag around the ``with`` block (synchronised for tag ``forward`` on NPU).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from otel_vllm_ascend import contract, recorder, samplers, wrapping
from otel_vllm_ascend.handlers import common

DOMAIN = "Execute"

_npu_synchronize: Optional[Callable[[], None]] = None
_npu_checked = False


def npu_synchronize() -> Optional[Callable[[], None]]:
    """``torch.npu.synchronize`` when torch_npu imports here, else None (checked once)."""
    global _npu_synchronize, _npu_checked
    if not _npu_checked:
        _npu_checked = True
        try:
            import torch
            import torch_npu  # noqa: F401

            _npu_synchronize = torch.npu.synchronize  # type: ignore[attr-defined]
        except Exception:
            _npu_synchronize = None
    return _npu_synchronize


def _execute_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    scheduler_output = args[0] if args else kwargs.get("scheduler_output")
    total_tokens = int(getattr(scheduler_output, "total_num_scheduled_tokens", 0) or 0)
    if total_tokens <= 0:
        return None
    common.ensure_role("engine_core")
    samplers.profiler_step()
    batch = common.describe_batch(scheduler_output)
    return batch, total_tokens, time.time_ns(), threading.get_native_id()


def _execute_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                   error: Optional[BaseException]) -> None:
    batch, total_tokens, start, tid = state
    attributes = common.batch_attributes(DOMAIN, batch)
    attributes["batch_size"] = total_tokens
    links = common.batch_links(batch)

    def finish(_: Any = None) -> None:
        recorder.record_span("modelExec", start, time.time_ns(), attributes, links=links,
                             thread_id=tid)

    add_done_callback = getattr(result, "add_done_callback", None)
    if add_done_callback is not None and not result.done():
        add_done_callback(finish)  # runs once the worker's output arrives (or the call fails)
    else:
        finish()


execute_model = wrapping.AroundHandler(
    _execute_before, _execute_after, "execute_model",
    "Executor ``execute_model(scheduler_output, non_block=False)``: span ``modelExec``.")


def _synchronised_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    common.ensure_role("worker")
    synchronize = npu_synchronize()
    if synchronize is not None:
        synchronize()
    return time.time_ns(), threading.get_native_id(), synchronize


def _synchronised_after(name: str) -> Callable:
    def after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
              error: Optional[BaseException]) -> None:
        start, tid, synchronize = state
        if synchronize is not None and error is None:
            try:
                synchronize()
            except BaseException as exc:
                recorder.record_span(name, start, time.time_ns(), {contract.DOMAIN: DOMAIN},
                                     exception=exc, thread_id=tid)
                raise
        recorder.record_span(name, start, time.time_ns(), {contract.DOMAIN: DOMAIN},
                             exception=error, thread_id=tid)
    return after


compute_logits = wrapping.AroundHandler(
    _synchronised_before, _synchronised_after("computing_logits"), "compute_logits",
    "``LogitsProcessor.forward``: span ``computing_logits``.", after_errors=True)
sampler_forward = wrapping.AroundHandler(
    _synchronised_before, _synchronised_after("sample"), "sampler_forward",
    "``Sampler.forward``: span ``sample``.", after_errors=True)


def capture_async(original: Any, this: Any, duration_tag: Any = None, *args: Any,
                  **kwargs: Any) -> Any:
    """vllm-ascend ``ProfileExecuteDuration.capture_async(duration_tag)``: span named by the tag."""
    common.ensure_role("worker")
    name = str(duration_tag or "capture_async")
    synchronize = npu_synchronize() if name == "forward" else None
    manager = original(duration_tag, *args, **kwargs)
    start = time.time_ns()
    tid = threading.get_native_id()

    def on_exit(error: Optional[BaseException]) -> None:
        if synchronize is not None:
            synchronize()
        recorder.record_span(name, start, time.time_ns(), {contract.DOMAIN: DOMAIN},
                             exception=error, thread_id=tid)

    return wrapping.DelegatingContext(manager, on_exit)
