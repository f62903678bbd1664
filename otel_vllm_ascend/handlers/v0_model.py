"""V0 engine model execution handlers (domain ``ModelExecute``).

* ``ExecutorBase.execute_model(execute_model_req)`` (and ``DistributedExecutorBase``'s) -> span
  ``modelExec`` per step, with the step's request details (the same ``ms.rid_detail`` as its
  ``batchFrameworkProcessing`` span), ``batch_type`` and ``batch_size`` = tokens of the step, as
  the V1 record. When the schedule span was not recorded, the details come from the request's
  ``SequenceGroupMetadata`` (``iter`` then counts from this hook's own calls).
* A V0 model runner's ``execute_model`` -> span ``modelRunnerExec`` (msserviceprofiler writes a
  second ``modelExec`` there; one name per step keeps steps and executions one-to-one).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from otel_vllm_ascend import contract, operator_profiler, recorder, wrapping
from otel_vllm_ascend.handlers import common, v0_common, v0_scheduler
from otel_vllm_ascend.handlers.v0_common import MODEL_EXECUTE


def _step_of(request: Any) -> Optional[v0_scheduler.ScheduledStep]:
    metadata = getattr(request, "seq_group_metadata_list", None)
    if not metadata:
        return None
    step = v0_scheduler.last_step
    if step is not None and step.metadata is metadata:
        return step
    rows, request_ids = [], []
    has_prefill = has_decode = False
    total = 0
    for item in metadata:
        request_id = item.request_id
        iteration = v0_scheduler.next_iteration(request_id)
        prefill = bool(item.is_prompt)
        has_prefill |= prefill
        has_decode |= not prefill
        tokens = int(item.token_chunk_size or 0)
        total += tokens
        rows.append((request_id, iteration, common.PREFILL if prefill else common.DECODE,
                     tokens, None, None))
        request_ids.append(request_id)
    kind = "Prefill,Decode" if has_prefill and has_decode else (
        "Prefill" if has_prefill else "Decode")
    return v0_scheduler.ScheduledStep(metadata, request_ids, rows, kind, total)


def _execute_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    request = args[0] if args else kwargs.get("execute_model_req")
    step = _step_of(request)
    if step is None:
        return None
    v0_common.engine_seen("engine_core")
    return step, time.time_ns(), threading.get_native_id()


def _execute_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                   error: Optional[BaseException]) -> None:
    step, start, tid = state
    attributes = step.attributes(MODEL_EXECUTE)
    attributes["batch_size"] = step.num_tokens
    recorder.record_span("modelExec", start, time.time_ns(), attributes, exception=error,
                         thread_id=tid)


execute_model = wrapping.AroundHandler(
    _execute_before, _execute_after, "v0_execute_model",
    "V0 executor ``execute_model(execute_model_req)``: span ``modelExec``.", after_errors=True)


def _runner_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    # UniProcExecutor runs the model inside the engine process; vLLM names extra worker
    # processes "VllmWorkerProcess", which process_role recognises.
    v0_common.engine_seen("engine_core")
    operator_profiler.step_begin()
    return time.time_ns(), threading.get_native_id()


def _runner_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                  error: Optional[BaseException]) -> None:
    operator_profiler.step_end()
    start, tid = state
    recorder.record_span("modelRunnerExec", start, time.time_ns(),
                         {contract.DOMAIN: MODEL_EXECUTE}, exception=error, thread_id=tid)


model_runner_execute = wrapping.AroundHandler(
    _runner_before, _runner_after, "v0_model_runner_execute",
    "V0 model runner ``execute_model``: span ``modelRunnerExec``.", after_errors=True)
