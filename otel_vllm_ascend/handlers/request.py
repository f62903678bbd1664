"""API-server handlers: a request's arrival, its id mapping, its response.

* ``AsyncLLM.add_request`` -> events ``httpReq`` and ``tokenize`` (domain ``Engine``) before the
  request is processed, then a ``link`` record external id -> internal id (one per child
  request when it asks for ``n`` > 1 completions, so the analyzer joins them into one request).
  The request gets a trace context: the caller's ``traceparent`` (vLLM's ``trace_headers``
  argument) as parent of its records, or a new trace whose root is the ``httpReq`` record.
* ``InputProcessor.assign_request_id`` (where vLLM creates the internal id) -> puts that context
  into the request's ``trace_headers`` when it has none, so EngineCore spans can link to the
  request's trace. ``trace_headers`` only feeds tracing: vLLM computes the same outputs; with
  vLLM's own tracing on, its ``llm_request`` span then joins our request trace.
* ``Processor.process_inputs`` (0.9-0.13, before ``assign_request_id`` existed): the same. Where
  the OpenAI server made the EngineCoreRequest itself (0.11.1-0.13) and hands it to
  ``AsyncLLM.add_request`` as the prompt, that hook puts the context into it.
* The OpenAI server's ``_get_trace_headers`` (before 0.32 it drops ``traceparent`` unless
  vLLM's own tracing is on): the caller's context is kept for ``AsyncLLM.add_request``, through
  ``AsyncLLM.generate`` where the response is streamed from another task.
* ``OutputProcessor.process_outputs`` -> one ``httpRes`` per request the call finished with
  ``recvTokenSize`` (prompt tokens) and ``replyTokenSize`` (generated tokens), then one
  ``detokenize`` naming every request of the call. Finished: the call dropped the request from
  vLLM's request states, whether EngineCore gave a finish reason or the detokenizer found a
  stop string (EngineCore learns of that by an abort). vLLM 0.32 keeps a streaming-input
  request between its chunks (no ``httpRes`` per chunk); one whose last input arrives after
  its last output is dropped by ``add_request``, not here, and gets no ``httpRes``.

Records name requests by their external id (what the client sees), except ``detokenize``,
which names EngineCore's ids as the outputs carry them (as msserviceprofiler's does; reading the
external ids would touch every request's state each step); the link record lets the analyzer
join EngineCore's ids with the external ones. No prompt or completion text is read.
"""

from __future__ import annotations

import contextvars
import operator
import random
import time
from typing import Any, List, Optional

from otel_vllm_ascend import (
    contract,
    control,
    handoff,
    native_thread,
    recorder,
    selfmeter,
    wrapping,
)
from otel_vllm_ascend.handlers import common
from otel_vllm_ascend.records import SpanRecord, new_span_record

DOMAIN = "Engine"

# The request being added on this task: (external id, trace context).
_adding: contextvars.ContextVar = contextvars.ContextVar("otel_vllm_adding", default=None)
# The caller's trace context of the HTTP request this task serves, when vLLM (its own tracing
# off, before 0.32) dropped the traceparent header instead of passing it on as trace_headers.
_incoming: contextvars.ContextVar = contextvars.ContextVar("otel_vllm_incoming", default=None)
# Request id -> that context, from AsyncLLM.generate() to its add_request(): a streamed response
# runs the generator in another task, which does not see the handler task's context variables.
_waiting_contexts = common.ContextMap(limit=4096)


def _trace_headers(args: tuple, kwargs: dict) -> Any:
    if "trace_headers" in kwargs:
        return kwargs["trace_headers"]
    # add_request(request_id, prompt, params, arrival_time, lora_request,
    #             tokenization_kwargs, trace_headers, ...)
    return args[6] if len(args) > 6 else None


# API-server records of vLLM V1 cross as one small task each (``_expand_api_spans``): plain
# span values with the trace contexts in their wire form (``handoff.context_to_wire``), held
# that way from the request's arrival on, so no SpanContext is built on vLLM's thread for a
# request without a caller's ``traceparent``.

# External id -> the request's trace context in its wire form (the httpRes parent).
_request_wires = common.ContextMap()
_getrandbits = random.getrandbits


def _new_context_wire() -> tuple:
    """A fresh trace for a request without ``traceparent`` (what common.new_request_context
    gives, in its wire form): random ids as the SDK's RandomIdGenerator draws them, without its
    two calls (a zero id, one draw in 2**64, is drawn again)."""
    trace_id = _getrandbits(128)
    span_id = _getrandbits(64)
    if not trace_id or not span_id:
        ids = common._IDS
        return ids.generate_trace_id(), ids.generate_span_id(), True, 1, None
    return trace_id, span_id, True, 1, None


def _add_request_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    request_id = kwargs.get("request_id", args[0] if args else None)
    if not isinstance(request_id, str):
        return None
    if common._role_recorded is None:
        common.ensure_role("api_server")
    headers = _trace_headers(args, kwargs)
    incoming = common.parse_traceparent(headers) if headers else None
    if incoming is None:
        incoming = _waiting_contexts.pop(request_id) or _incoming.get()
    now, tid = native_thread.stamp()
    if incoming is not None:  # the caller's span is the parent of the request's records
        wire = handoff.context_to_wire(incoming)
        parent, own = wire, None
    else:  # a new trace whose root is the httpReq record itself, ids chosen now
        wire = _new_context_wire()
        parent, own = None, wire
    _request_wires.put(request_id, wire)
    # vLLM 0.11.1-0.13's OpenAI server makes the EngineCoreRequest itself (process_inputs runs
    # before this call, outside it) and passes it as the prompt: carry the context into it here.
    _carry_context(kwargs.get("prompt", args[1] if len(args) > 1 else None), wire)
    arrival = (
        ("httpReq", now, now, {contract.DOMAIN: DOMAIN, contract.RID: request_id,
                               "gen_ai.request.id": request_id,
                               contract.RECORD: contract.RECORD_EVENT}, tid, parent, own),
        ("tokenize", now, now, {contract.DOMAIN: DOMAIN, contract.RID: request_id,
                                contract.RECORD: contract.RECORD_EVENT}, tid, wire, None))
    return request_id, wire, _adding.set((request_id, wire)), arrival


def _running_children(processor: Any, external_id: str) -> Any:
    """The internal ids of the request's completions still running, as the output processor
    keeps them (vLLM 0.23 and later); None where it keeps none."""
    by_external = getattr(processor, "external_req_ids", None)
    return by_external.get(external_id) if isinstance(by_external, dict) else None


def _internal_ids(this: Any, request_id: str, internal_id: Any, args: tuple,
                  kwargs: dict) -> list:
    """EngineCore's ids of the request: one, or one per completion when it asks for ``n`` > 1
    (vLLM fans it out into child requests ``<index>_<internal id>``)."""
    processor = getattr(this, "output_processor", None)
    internal_ids = _running_children(processor, request_id)
    if internal_ids:
        return list(internal_ids)
    params = kwargs.get("params", args[2] if len(args) > 2 else None)
    n = getattr(params, "n", 1)
    if type(n) is int and n > 1:  # before: the children as the request states know them
        states = getattr(processor, "request_states", None) or {}
        children = [child for child in (f"{index}_{internal_id}" for index in range(n))
                    if child in states]
        if children:
            return children
    return [internal_id]


def _add_request_after(state: tuple, this: Any, args: tuple, kwargs: dict, collector: Any,
                       error: Optional[BaseException]) -> None:
    request_id, wire, token, arrival = state
    _adding.reset(token)
    internal_id = getattr(collector, "request_id", None)
    if not isinstance(internal_id, str):  # before vLLM's internal ids: the client's id
        internal_id = request_id
    now, tid = native_thread.stamp()
    links = []
    try:
        for linked in _internal_ids(this, request_id, internal_id, args, kwargs):
            if isinstance(linked, str) and linked != request_id:
                links.append((contract.LINK_NAME, now, now,
                              {contract.DOMAIN: DOMAIN, contract.LINK_FROM: request_id,
                               contract.LINK_TO: linked, contract.RECORD: contract.RECORD_LINK},
                              tid, wire, None))
    finally:
        # The arrival's records (stamped before the call) and the links as one task: one record
        # less per request to queue and hand off; queued even when the links could not be
        # worked out.
        recorder.record_task(_expand_arrival, arrival + tuple(links) if links else arrival)


add_request_async = wrapping.AsyncAroundHandler(
    _add_request_before, _add_request_after, "add_request_async",
    "``AsyncLLM.add_request`` (vLLM V1): ``httpReq`` and ``tokenize``, the request's trace "
    "context for the calls it makes, then the ``link`` record.", after_errors=True)


def _api_span_records(state: dict, wire: tuple) -> list:
    """The span records of API-server spans captured as plain values."""
    from_wire = handoff.context_from_wire
    return [new_span_record(SpanRecord, (
        name, start, end, attributes, None, from_wire(parent) if parent is not None else None,
        None, None, tid, from_wire(own) if own is not None else None))
        for name, start, end, attributes, tid, parent, own in wire]


_expand_api_spans = handoff.register_expander("request.api_spans", None, _api_span_records)
# A request's arrival (httpReq, tokenize): the same expansion under its own name, which the
# self meter counts as a request where the records are handed to the writer.
_expand_arrival = handoff.register_expander(selfmeter.REQUEST_TASK, None, _api_span_records)


def record_arrival(request_id: str, incoming: Any, domain: str) -> Any:
    """``httpReq`` and ``tokenize`` of a request arriving now; returns its trace context (kept
    in :data:`common.request_contexts`): the caller's, or a new trace rooted at ``httpReq``."""
    now, tid = native_thread.stamp()
    attributes = {contract.DOMAIN: domain, contract.RID: request_id,
                  "gen_ai.request.id": request_id, contract.RECORD: contract.RECORD_EVENT}
    if incoming is not None:
        context = incoming  # the caller's span is the parent of the request's records
        recorder.record_span("httpReq", now, now, attributes, parent=context, thread_id=tid)
    else:
        # A new trace whose root is the httpReq record itself, with ids chosen now so later
        # records (and EngineCore, through trace_headers) can name it as their parent.
        context = common.new_request_context()
        recorder.record_span("httpReq", now, now, attributes, thread_id=tid,
                             span_context=context)
    common.request_contexts.put(request_id, context)
    recorder.record_span("tokenize", now, now,
                         {contract.DOMAIN: domain, contract.RID: request_id,
                          contract.RECORD: contract.RECORD_EVENT}, parent=context, thread_id=tid)
    return context


def _carry_context(request: Any, wire: Optional[tuple] = None) -> None:
    """Put a trace context (``wire``, else that of the request being added on this task) into
    the EngineCoreRequest's ``trace_headers`` when it has none (they only feed tracing; vLLM
    computes the same outputs). Anything without ``trace_headers`` is left alone."""
    if getattr(request, "trace_headers", False) is not None:
        return
    if wire is None:
        adding = _adding.get()
        if adding is None:
            return
        wire = adding[1]
    request.trace_headers = common.trace_headers_of_wire(wire)


def _assign_request_id_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                             error: Optional[BaseException]) -> None:
    _carry_context(args[0] if args else kwargs.get("request"))


assign_request_id = wrapping.AroundHandler(
    wrapping.always, _assign_request_id_after, "assign_request_id",
    "``InputProcessor.assign_request_id``: carry the request's trace context to EngineCore.")


def _process_inputs_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                          error: Optional[BaseException]) -> None:
    # 0.9-0.11 return (prompt text, EngineCoreRequest), 0.12-0.13 the request alone.
    _carry_context(result[-1] if isinstance(result, tuple) and result else result)


carry_trace_context = wrapping.AroundHandler(
    wrapping.always, _process_inputs_after, "carry_trace_context",
    "``Processor.process_inputs`` (before vLLM 0.14, which has no ``assign_request_id``): "
    "carry the request's trace context to EngineCore.")


def bind_trace_context(original: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """``AsyncLLM.generate(prompt, sampling_params, request_id, ...)``: called (not yet
    iterated) in the HTTP handler's task, where the caller's context is known."""
    context = _incoming.get()
    if context is not None:
        request_id = args[2] if len(args) > 2 else kwargs.get("request_id")
        if isinstance(request_id, str):
            _waiting_contexts.put(request_id, context)
    return original(*args, **kwargs)


bind_trace_context.expects = ("request_id",)  # type: ignore[attr-defined]


async def incoming_trace_headers(original: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """The OpenAI server's ``_get_trace_headers(headers)``: vLLM returns None unless its own
    tracing is on; remember the caller's ``traceparent`` for ``add_request`` all the same."""
    result = await original(*args, **kwargs)
    if result is None:
        _incoming.set(common.parse_traceparent(args[0] if args else kwargs.get("headers")))
    return result


def _generated_tokens(state: Any) -> Optional[int]:
    stats = getattr(state, "stats", None)
    if stats is not None:
        return int(stats.num_generation_tokens)
    detokenizer = getattr(state, "detokenizer", None)
    if detokenizer is not None and hasattr(detokenizer, "num_output_tokens"):
        return int(detokenizer.num_output_tokens())
    return None


def _outputs_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    engine_core_outputs = args[0] if args else kwargs.get("engine_core_outputs")
    if not engine_core_outputs:
        return None
    if common._role_recorded is None:
        common.ensure_role("api_server")
    # The request states are copied before the call: the original drops the requests it
    # finishes from request_states, also those EngineCore did not finish (a stop string its
    # detokenizer found). A state object stays readable after that, so a finished request's
    # token counts and external id are read after the call (final counts). A dict copy is a
    # table copy in C: no hashing of the outputs' freshly decoded ids, as lookups would be.
    states = getattr(this, "request_states", None)
    if type(states) is dict:
        before = states.copy()
    else:
        states, before = None, {}
    request_ids = list(map(_REQUEST_ID, engine_core_outputs))  # the loop in C
    start, tid = native_thread.stamp()
    return states, before, request_ids, start, tid


_detokenize_switch = control.Switch(DOMAIN)
_REQUEST_ID = operator.attrgetter("request_id")


def _finished(states: dict, before: dict, request_ids: List[str]) -> list:
    """(request id, state) of the requests this call dropped from the request states
    (``before``: a copy taken before the call), in the outputs' order."""
    return [(request_id, before[request_id]) for request_id in request_ids
            if request_id in before and request_id not in states]


def _outputs_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                   error: Optional[BaseException]) -> None:
    end = time.time_ns()
    states, before, request_ids, start, tid = state
    # the common step: the call adds no request state, so an unchanged count dropped none
    finished = _finished(states, before, request_ids) \
        if states is not None and len(before) != len(states) else ()
    for request_id, request_state in finished:
        external_id = getattr(request_state, "external_req_id", None) or request_id
        prompt = getattr(request_state, "prompt_token_ids", None)
        attributes = {contract.DOMAIN: DOMAIN, contract.RID: external_id,
                      contract.RECORD: contract.RECORD_EVENT}
        attributes[contract.METRIC_PREFIX + "recvTokenSize"] = len(prompt) \
            if prompt is not None else int(getattr(request_state, "prompt_len", 0) or 0)
        reply = _generated_tokens(request_state)
        if reply is not None:
            attributes[contract.METRIC_PREFIX + "replyTokenSize"] = reply
        context = _request_wires.get(external_id)
        if not _running_children(this, external_id):  # no other completion of it runs:
            _request_wires.pop(external_id)  # forget its context
        recorder.record_task(_expand_api_spans, (
            ("httpRes", start, start, attributes, tid, context, None),))
    if _detokenize_switch.on:
        recorder.record_task(_expand_detokenize, (end, tid, request_ids))


process_outputs = wrapping.AroundHandler(
    _outputs_before, _outputs_after, "process_outputs",
    "``OutputProcessor.process_outputs``: ``httpRes`` per finished request, one ``detokenize``.")


# ``detokenize`` crosses as one small record of plain values (end, thread id, the request
# ids); the span record is made where spans are built (handoff.register_expander).

def _detokenize_records(state: dict, wire: tuple) -> list:
    end, tid, request_ids = wire
    return [new_span_record(SpanRecord, (
        "detokenize", end, end, {contract.DOMAIN: DOMAIN, contract.RID: request_ids,
                                 contract.RECORD: contract.RECORD_EVENT},
        None, None, None, None, tid, None))]


_same_output_ids = handoff.Repeated()


def _detokenize_to_wire(wire: tuple) -> tuple:
    """The step's request ids swapped for the previous step's list when equal."""
    end, tid, request_ids = wire
    return end, tid, _same_output_ids(request_ids)


_expand_detokenize = handoff.register_expander("request.detokenize", _detokenize_to_wire,
                                               _detokenize_records)
