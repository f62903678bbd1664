"""V0 engine request-lifecycle handlers (domain ``Request``).

API server (what the client sees; V0 keeps the API server's request id inside the engine, so
only the completions of a request with ``n`` > 1 need mapping, below):

* ``MQLLMEngineClient.generate(prompt, sampling_params, request_id, lora_request,
  trace_headers, ...)`` (``vllm serve``'s default: the engine in its own process) -> events
  ``httpReq`` and ``tokenize`` when the request is handed to the engine (the OpenAI server has
  tokenized the prompt just before). The request gets a trace context as on V1: the caller's
  ``traceparent`` as parent, or a new trace rooted at ``httpReq``.
* ``MQLLMEngineClient._add_output(request_output)`` and, for an engine inside the API server
  (``--disable-frontend-multiprocessing``), ``RequestTracker.process_request_output`` -> one
  ``detokenize`` per batch of outputs the API server hands to its requests (every request id of
  the batch), and ``httpRes`` per finished request with ``recvTokenSize=`` (prompt tokens) and
  ``replyTokenSize=`` (generated tokens, all completions of the request; added up over the
  outputs when they are streamed as deltas).

Engine side, for msserviceprofiler's V0 hook points (not in the default symbol file, where the
API server records the same facts closer to the client):

* ``LLMEngine.add_request`` -> ``httpReq`` and ``tokenize`` (sync);
* ``LLMEngine._add_processed_request`` -> ``ReqState`` WAITING+1;
* ``LLMEngine._process_model_outputs(ctx)`` -> ``httpRes`` per finished request, then one
  ``detokenize`` for the requests of the processed step.

Engine side, in the default symbol file: ``ParallelSampleSequenceGroup.add_request`` (a request
with ``n`` > 1, run as one sequence group ``<id>_parallel_sample_<i>`` per completion) -> a
``link`` record from the request's id to each completion's, as V1's child requests get.

No prompt or completion text is read, only ids and token counts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any, List, Optional

from otel_vllm_ascend import contract, control, recorder, wrapping
from otel_vllm_ascend.handlers import common, v0_common
from otel_vllm_ascend.handlers import request as v1_request
from otel_vllm_ascend.handlers.v0_common import REQUEST, WAITING


class _Tally:
    """Token counts of a request as its outputs reach the API server: with streaming
    (``RequestOutputKind.DELTA``) each output holds only its new tokens and only the first one
    the prompt's ids, so they are added up."""

    __slots__ = ("prompt", "generated", "delta")

    def __init__(self, delta: bool) -> None:
        self.prompt = 0
        self.generated = 0
        self.delta = delta


# request id -> its tally, from its arrival to its finish (bounded: aborted ones age out)
_tallies: OrderedDict[str, _Tally] = OrderedDict()


def _track(request_id: str, params: Any) -> None:
    kind = getattr(getattr(params, "output_kind", None), "name", "")
    _tallies[request_id] = _Tally(kind == "DELTA")
    while len(_tallies) > common.MAX_TRACKED_REQUESTS:
        _tallies.popitem(last=False)


def _arrival(request_id: Any, trace_headers: Any, params: Any = None) -> None:
    """``httpReq`` and ``tokenize`` for a request handed to the engine now."""
    if not isinstance(request_id, str):
        return
    _track(request_id, params)
    v0_common.engine_seen("api_server")
    # The caller's context: vLLM's trace_headers, else what the OpenAI server's
    # _get_trace_headers hook kept for this task (handlers/request.py).
    incoming = common.parse_traceparent(trace_headers) or v1_request._incoming.get()
    v1_request.record_arrival(request_id, incoming, REQUEST)


def generate(original: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """``MQLLMEngineClient.generate(prompt, sampling_params, request_id, lora_request,
    trace_headers, ...)``: returns vLLM's async generator unchanged."""
    request_id = args[2] if len(args) > 2 else kwargs.get("request_id")
    trace_headers = args[4] if len(args) > 4 else kwargs.get("trace_headers")
    params = args[1] if len(args) > 1 else kwargs.get("sampling_params")
    if control.allows(REQUEST):
        _arrival(request_id, trace_headers, params)
    return original(*args, **kwargs)


generate.expects = ("request_id", "trace_headers")  # type: ignore[attr-defined]


def add_request(original: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """``LLMEngine.add_request(request_id, prompt, ...)`` (engine side): ``httpReq``,
    ``tokenize``."""
    request_id = args[0] if args else kwargs.get("request_id")
    trace_headers = kwargs.get("trace_headers")  # its position moved between releases
    params = kwargs.get("params", args[2] if len(args) > 2 else None)
    if control.allows(REQUEST):
        _arrival(request_id, trace_headers, params)
    return original(*args, **kwargs)


# -- outputs ----------------------------------------------------------------------------------

class _OutputBatch:
    """Request ids of the outputs handed out in one turn of the event loop: one ``detokenize``
    record for them, written when the loop gets to its next callback."""

    def __init__(self) -> None:
        self.request_ids: List[str] = []
        self.start = 0
        self.tid = 0

    def add(self, request_id: str) -> None:
        if not self.request_ids:
            self.start = time.time_ns()
            self.tid = threading.get_native_id()
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (offline use): one record per output
                self.request_ids.append(request_id)
                self.flush()
                return
        self.request_ids.append(request_id)

    def flush(self) -> None:
        request_ids, self.request_ids = self.request_ids, []
        if request_ids:
            recorder.record_span("detokenize", self.start, self.start,
                                 {contract.DOMAIN: REQUEST, contract.RID: request_ids,
                                  contract.RECORD: contract.RECORD_EVENT}, thread_id=self.tid)


_batch = _OutputBatch()


def generated_tokens(request_output: Any) -> int:
    return sum(len(completion.token_ids) for completion in request_output.outputs or ())


def _count(request_output: Any, request_id: str) -> _Tally:
    tally = _tallies.get(request_id)
    if tally is None:  # arrived before recording started, or no arrival hook
        tally = _tallies[request_id] = _Tally(False)
    prompt = getattr(request_output, "prompt_token_ids", None)
    if prompt:
        tally.prompt = len(prompt)
    tokens = generated_tokens(request_output)
    tally.generated = tally.generated + tokens if tally.delta else tokens
    return tally


def _finished(tally: _Tally, request_id: str) -> None:
    _tallies.pop(request_id, None)
    attributes = {contract.DOMAIN: REQUEST, contract.RID: request_id,
                  contract.METRIC_PREFIX + "recvTokenSize": tally.prompt,
                  contract.METRIC_PREFIX + "replyTokenSize": tally.generated}
    recorder.record_event("httpRes", attributes, parent=common.request_contexts.pop(request_id))


def _output_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                  error: Optional[BaseException]) -> None:
    request_output = args[0] if args else kwargs.get("request_output")
    request_id = getattr(request_output, "request_id", None)
    if not isinstance(request_id, str) or not hasattr(request_output, "outputs"):
        return  # RPC replies (LoRA loaded, sleeping) travel the same way
    if not control.allows(REQUEST):
        return
    v0_common.engine_seen("api_server")
    _batch.add(request_id)
    tally = _count(request_output, request_id)
    if request_output.finished:
        _finished(tally, request_id)


request_output = wrapping.AroundHandler(
    wrapping.always, _output_after, "v0_request_output",
    "V0 API server: ``MQLLMEngineClient._add_output`` / ``RequestTracker."
    "process_request_output``: ``detokenize`` per batch, ``httpRes`` per finished request.")


def _processed_request_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                             error: Optional[BaseException]) -> None:
    v0_common.engine_seen("engine_core")
    request_id = args[0] if args else kwargs.get("request_id")
    v0_common.state_event(request_id, {WAITING: 1}, domain=REQUEST)


add_processed_request = wrapping.AroundHandler(
    wrapping.always, _processed_request_after, "v0_add_processed_request",
    "V0 ``LLMEngine._add_processed_request``: ``ReqState`` WAITING+1.")


def _parallel_sample_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                           error: Optional[BaseException]) -> None:
    if error is not None:
        return
    request_id = args[0] if args else kwargs.get("request_id")
    engine = args[1] if len(args) > 1 else kwargs.get("engine")
    params = args[2] if len(args) > 2 else kwargs.get("params")
    n = getattr(params, "n", None)
    groups = getattr(engine, "seq_id_to_seq_group", None)
    if not isinstance(request_id, str) or type(n) is not int or not isinstance(groups, dict):
        return
    # The children as the engine holds them (vLLM names them "<id>_parallel_sample_<i>"): only
    # those whose group is this request's are linked.
    children = [child for child in (f"{request_id}_parallel_sample_{i}" for i in range(n))
                if getattr(groups.get(child), "group_id", None) == request_id]
    now = time.time_ns()
    for child in children:
        recorder.record_event(contract.LINK_NAME, {
            contract.DOMAIN: REQUEST, contract.LINK_FROM: request_id, contract.LINK_TO: child,
        }, timestamp_ns=now, record=contract.RECORD_LINK)


parallel_sample = wrapping.AroundHandler(
    wrapping.always, _parallel_sample_after, "v0_parallel_sample",
    "V0 ``ParallelSampleSequenceGroup.add_request`` (``n`` > 1): a ``link`` record from the "
    "request to each completion's sequence group.")


def _model_outputs_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    ctx = args[0] if args else kwargs.get("ctx")
    queue = getattr(ctx, "output_queue", None)
    if not queue:
        return None
    entry = queue[0]
    # (outputs, seq_group_metadata_list, scheduler_outputs, is_async, is_last_step,
    #  is_first_step_output, skip)
    return entry[2], entry[-1]


def _model_outputs_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                         error: Optional[BaseException]) -> None:
    scheduler_outputs, skip = state
    v0_common.engine_seen("engine_core")
    request_ids = []
    for index, scheduled in enumerate(scheduler_outputs.scheduled_seq_groups):
        if index in skip:
            continue
        group = scheduled.seq_group
        request_ids.append(group.request_id)
        if group.is_finished():
            seq = group.first_seq
            recorder.record_event("httpRes", {
                contract.DOMAIN: REQUEST, contract.RID: group.request_id,
                contract.METRIC_PREFIX + "recvTokenSize": seq.get_prompt_len(),
                contract.METRIC_PREFIX + "replyTokenSize": sum(
                    s.get_output_len() for s in group.seqs)})
    if request_ids:
        recorder.record_event("detokenize", {contract.DOMAIN: REQUEST, contract.RID: request_ids})


process_model_outputs = wrapping.AroundHandler(
    _model_outputs_before, _model_outputs_after, "v0_process_model_outputs",
    "V0 ``LLMEngine._process_model_outputs`` (engine side): ``httpRes``, ``detokenize``.")
