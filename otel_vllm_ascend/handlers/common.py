"""What the built-in handlers share: process role, request trace contexts, batch details.

* Process role: the first record a process emits from a built-in handler is preceded by a Meta
  record ``role`` (``api_server``, ``engine_core``, ``worker``) so the analyzer can name tracks.
* Request trace contexts: the API server gives every request a trace context (the incoming
  ``traceparent`` or a new trace) and carries it to EngineCore in the request's
  ``trace_headers``; EngineCore keeps a small map request id -> context so engine spans can link
  to the requests of their batch.
* Batch details (:class:`BatchClassifier`): per request of a ``SchedulerOutput`` the step
  counter ``iter``, ``type`` (0 prefill, 1 decode) and token counts, as the span contract says.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_vllm_ascend import contract, handoff, native_thread, recorder
from otel_vllm_ascend.process_role import detect_process_role
from otel_vllm_ascend.records import SpanRecord, new_span_record

MAX_TRACKED_REQUESTS = 65536
MAX_LINKS = 128

# -- process role -----------------------------------------------------------------------------

_role_recorded: Optional[str] = None


def ensure_role(hint: str) -> None:
    """Record the Meta row ``role`` once per process, before its first handler record."""
    global _role_recorded
    if _role_recorded is None:
        _role_recorded = detect_process_role(hint) or hint
        recorder.record_meta("role", _role_recorded)


# -- trace contexts ---------------------------------------------------------------------------

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent + tracestate
_IDS = RandomIdGenerator()


class _HeaderGetter(Getter):
    """Header names are case-insensitive; plain dicts of headers are not."""

    def get(self, carrier: Any, key: str) -> Optional[List[str]]:
        try:
            value = carrier.get(key)
            if value is None:
                value = next((v for k, v in carrier.items() if k.lower() == key), None)
        except Exception:
            return None
        if value is None:
            return None
        return [value] if isinstance(value, str) else list(value)

    def keys(self, carrier: Any) -> List[str]:
        try:
            return list(carrier.keys())
        except Exception:
            return []


_GETTER = _HeaderGetter()


# A traceparent of exactly 55 characters: what the propagator's pattern accepts at that length.
_TRACEPARENT_55 = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def parse_traceparent(headers: Optional[Mapping[str, str]]) -> Optional[SpanContext]:
    """The remote SpanContext (with its ``tracestate``) of W3C trace headers, or None."""
    if not headers:
        return None
    if type(headers) is dict and len(headers) == 1:
        # What trace_headers_of() sends to EngineCore: the propagator's result, without
        # building its Context (a fifth of the cost); anything else goes the propagator's way.
        value = headers.get("traceparent")
        if type(value) is str and len(value) == 55 and _TRACEPARENT_55.fullmatch(value):
            trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
            if value[:2] == "ff" or not trace_id or not span_id:
                return None
            return SpanContext(trace_id, span_id, is_remote=True,
                               trace_flags=TraceFlags(int(value[53:], 16)))
    context = get_current_span(_PROPAGATOR.extract(headers, getter=_GETTER)).get_span_context()
    return context if context.is_valid else None


def new_request_context() -> SpanContext:
    """A fresh trace for a request that arrived without ``traceparent``."""
    return SpanContext(_IDS.generate_trace_id(), _IDS.generate_span_id(), is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))


def trace_headers_of(context: SpanContext) -> Dict[str, str]:
    """``traceparent`` (and ``tracestate`` when there is one) that carry ``context``: the
    propagator's text, formatted here for a valid context (a fifth of the cost)."""
    if not context.is_valid:
        headers: Dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=set_span_in_context(NonRecordingSpan(context)))
        return headers
    return trace_headers_of_wire(handoff.context_to_wire(context))


def trace_headers_of_wire(wire: tuple) -> Dict[str, str]:
    """:func:`trace_headers_of` of a valid context in its wire form
    (``handoff.context_to_wire``), no SpanContext needed."""
    trace_id, span_id, _, flags, state = wire
    headers = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}
    if state:
        headers["tracestate"] = state
    return headers


class ContextMap:
    """Bounded request id -> SpanContext map (oldest entries go first)."""

    def __init__(self, limit: int = MAX_TRACKED_REQUESTS) -> None:
        self._items: OrderedDict[str, SpanContext] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def put(self, request_id: str, context: SpanContext) -> None:
        with self._lock:
            self._items[request_id] = context
            if len(self._items) > self._limit:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> Optional[SpanContext]:
        return self._items.get(request_id)

    def pop(self, request_id: str) -> Optional[SpanContext]:
        with self._lock:
            return self._items.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._items)


# API server: external id -> request context. EngineCore: internal id -> request context.
request_contexts = ContextMap()


def engine_context(request: Any) -> Optional[SpanContext]:
    """The trace context a request carried into EngineCore (cached by request id)."""
    request_id = getattr(request, "request_id", None)
    if request_id is None:
        return None
    context = request_contexts.get(request_id)
    if context is None:
        context = parse_traceparent(getattr(request, "trace_headers", None))
        if context is not None:
            request_contexts.put(request_id, context)
    return context


# -- EngineCore's request events: the trace context parsed where the spans are built ----------
#
# ``Enqueue``, ``Free`` and ``CacheHitRate`` are children of their request's trace context. The
# hook queues the request id and a reference to the request's ``trace_headers`` (vLLM never
# changes them); the expander (in the writer, or on the recorder's thread without one) parses
# the ``traceparent`` once per request and keeps the context per EngineCore process, where the
# step's links (:meth:`RemoteBatches.resolve`) find it too.

# EngineCore: ids of requests whose headers went with a queued request event, so the writer
# knows their context; a step's new request not among them (added before recording started, or
# its event dropped) has its headers read from the scheduler by the step's hand-off instead.
_headers_sent: Dict[str, None] = {}


def record_request_event(name: str, attributes: dict, request: Any, request_id: str) -> None:
    """Queue one EngineCore request event (``attributes`` without ``ms.record``, not mutated
    afterwards) as the child of the request's trace context."""
    attributes[contract.RECORD] = contract.RECORD_EVENT
    now, tid = native_thread.stamp()
    if recorder.record_task(_expand_request_event, (
            name, now, attributes, tid, request_id, getattr(request, "trace_headers", None))):
        sent = _headers_sent
        if request_id not in sent:
            sent[request_id] = None
            if len(sent) > MAX_TRACKED_REQUESTS:
                del sent[next(iter(sent))]


def _plain_headers(headers: Any) -> Optional[dict]:
    """``trace_headers`` as a dict of strings (what marshal takes), or None."""
    if not headers:
        return None
    if type(headers) is not dict:
        try:
            headers = dict(headers)
        except Exception:
            return None
    for key, value in headers.items():
        if type(key) is not str or type(value) is not str:
            return {str(key): str(value) for key, value in headers.items()
                    if isinstance(value, str)} or None
    return headers


def _request_event_to_wire(captured: tuple) -> tuple:
    headers = captured[5]
    if headers is None or type(headers) is dict and len(headers) == 1 \
            and type(headers.get("traceparent")) is str:
        return captured  # the usual shape: as it is
    return captured[:5] + (_plain_headers(headers),)


def context_of(state: dict, request_id: str, headers: Optional[dict]) -> Optional[SpanContext]:
    """The trace context of an EngineCore request where the spans are built: parsed from its
    headers once, then kept per producer process (until the request finishes)."""
    contexts = state.get("request_contexts")
    if contexts is None:
        contexts = state["request_contexts"] = OrderedDict()
    context = contexts.get(request_id)
    if context is None and headers:
        context = parse_traceparent(headers)
        if context is not None:
            contexts[request_id] = context
            if len(contexts) > MAX_TRACKED_REQUESTS:
                contexts.popitem(last=False)
    return context


def _request_event_records(state: dict, wire: tuple) -> list:
    name, timestamp, attributes, tid, request_id, headers = wire
    return [new_span_record(SpanRecord, (
        name, timestamp, timestamp, attributes, None, context_of(state, request_id, headers),
        None, None, tid, None))]


_expand_request_event = handoff.register_expander(
    "engine.request_event", _request_event_to_wire, _request_event_records)


# -- queues -----------------------------------------------------------------------------------

def queue_changes(before: Iterable[Any], after: Iterable[Any]) -> Tuple[list, list]:
    """(left, joined) request ids between two snapshots of a scheduler queue. Its members (V1
    Requests, V0 SequenceGroups) compare by identity and are in a queue at most once."""
    before = before if type(before) is list else list(before)
    after = after if type(after) is list else list(after)
    if before == after:  # the common case of a steady decode step (identity, compared in C)
        return [], []
    # The usual change of a step: members left from the front (WAITING: scheduled) and joined
    # at the end (RUNNING: newly scheduled), i.e. after == before[k:] + new. Checked with slice
    # comparisons in C; anything else goes the set way below (same result either way).
    if after:
        try:
            k = before.index(after[0])
        except ValueError:
            k = -1
    else:
        k = len(before)
    if k >= 0:
        kept = len(before) - k
        if after[:kept] == before[k:]:
            left, joined = before[:k], after[kept:]
            # a member that left the front and came back at the end did not change queues
            if not left or not joined or set(left).isdisjoint(joined):
                return ([member.request_id for member in left],
                        [member.request_id for member in joined])
    # Set operations run in C; under load a step changes a queue by a member or two, whose
    # order needs no pass over the queue.
    members = set(before)
    changed = members.symmetric_difference(after)
    left = changed & members
    return _ids_in_order(left, before), _ids_in_order(changed - left, after)


def _ids_in_order(members: set, queue: list) -> list:
    """Request ids of ``members``, in their order in ``queue``."""
    if len(members) < 2:
        return [member.request_id for member in members]
    return [member.request_id for member in filter(members.__contains__, queue)]


# -- batch details ----------------------------------------------------------------------------

PREFILL, DECODE = 0, 1
_batch_numbers = itertools.count()


DETAIL_KEYS = ("rid", "iter", "type", "num_scheduled_tokens", "num_prompt_tokens",
               "num_computed_tokens")


class BatchInputs(NamedTuple):
    """Copies of what the classifier reads from one SchedulerOutput, taken on EngineCore's
    thread (a few C-level copies); the classification itself runs on the recorder's."""

    finished: tuple  # request ids vLLM finished before this step
    new: list  # (request id, prompt length or None, computed tokens) of newly scheduled ones
    cached_ids: list
    cached_computed: list
    scheduled: dict  # request id -> tokens scheduled this step, in vLLM's order

    @classmethod
    def of(cls, scheduler_output: Any) -> BatchInputs:
        new = []
        for request in getattr(scheduler_output, "scheduled_new_reqs", None) or ():
            prompt = getattr(request, "prompt_token_ids", None)
            new.append((request.req_id, len(prompt) if prompt is not None else None,
                        int(getattr(request, "num_computed_tokens", 0) or 0)))
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        if type(getattr(cached, "req_ids", None)) is list \
                and type(getattr(cached, "num_computed_tokens", None)) is list:
            # vLLM 0.10 and later: two list copies in C, no call
            cached_ids, cached_computed = cached.req_ids[:], cached.num_computed_tokens[:]
        else:
            cached_ids, cached_computed = cached_requests(cached)
        finished = getattr(scheduler_output, "finished_req_ids", None)
        # tuple.__new__ skips the generated constructor's keyword handling (records.py)
        return tuple.__new__(cls, (tuple(finished) if finished else (), new, cached_ids,
                                   cached_computed,
                                   dict(scheduler_output.num_scheduled_tokens)))


def cached_requests(cached: Any) -> Tuple[list, list]:
    """(request ids, computed tokens) of a step's already-seen requests, in either shape vLLM
    has used: one object of parallel lists (0.10 and later) or a list of per-request objects
    (0.9.x)."""
    if cached is None:
        return [], []
    if isinstance(cached, (list, tuple)):
        return ([request.req_id for request in cached],
                [int(request.num_computed_tokens) for request in cached])
    return (list(getattr(cached, "req_ids", ()) or ()),
            list(getattr(cached, "num_computed_tokens", ()) or ()))


class BatchClassifier:
    """Per-request step counters and prompt lengths across engine steps.

    ``iter`` counts the steps a request was scheduled in, from 0; ``type`` is 0 (prefill) while
    its computed tokens are fewer than its prompt, else 1 (decode). Steps must be classified in
    the order vLLM scheduled them.
    """

    def __init__(self) -> None:
        self._iterations: Dict[str, int] = {}
        self._prompt_lengths: Dict[str, int] = {}

    def classify(self, inputs: BatchInputs) -> Tuple[List[tuple], str]:
        """(one row per request in DETAIL_KEYS order, batch_type) for one step."""
        iterations = self._iterations
        prompt_lengths = self._prompt_lengths
        for request_id in inputs.finished:
            iterations.pop(request_id, None)
            prompt_lengths.pop(request_id, None)
        computed: Dict[str, int] = {}
        for request_id, prompt_length, num_computed in inputs.new:
            if prompt_length is not None:
                prompt_lengths[request_id] = prompt_length
            computed[request_id] = num_computed
        computed.update(zip(inputs.cached_ids, inputs.cached_computed))
        rows: List[tuple] = []
        has_prefill = has_decode = False
        get_iteration = iterations.get
        get_prompt = prompt_lengths.get
        get_computed = computed.get
        for request_id, num_tokens in inputs.scheduled.items():
            iteration = get_iteration(request_id, -1) + 1
            iterations[request_id] = iteration
            prompt_length = get_prompt(request_id)
            num_computed = get_computed(request_id, 0)
            if prompt_length is not None and num_computed < prompt_length:
                kind = PREFILL
                has_prefill = True
            else:
                kind = DECODE
                has_decode = True
            rows.append((request_id, iteration, kind, num_tokens, prompt_length, num_computed))
        if has_prefill and has_decode:
            return rows, "Prefill,Decode"
        return rows, "Prefill" if has_prefill else ("Decode" if has_decode else "")


_ROW_TEXT = "{" + ",".join(f'"{key}":%s' for key in DETAIL_KEYS) + "}"
_encode_text = json.encoder.encode_basestring_ascii  # what json.dumps uses for str


def details_json(rows: List[tuple]) -> str:
    """``ms.rid_detail`` text of request rows, the same text as ``json.dumps`` of the dicts.

    Formatted row by row (a third of the cost of building dicts for ``json.dumps``, the
    largest part of building a batch span); a row with anything but a string id and plain
    ints / ``None`` goes through ``json.dumps``.
    """
    parts = []
    append = parts.append
    for row in rows:
        rid, iteration, kind, scheduled, prompt, computed = row
        if (type(rid) is str and type(iteration) is int and type(kind) is int
                and type(scheduled) is int and type(computed) is int
                and (prompt is None or type(prompt) is int)):
            append(_ROW_TEXT % (_encode_text(rid), iteration, kind, scheduled,
                                "null" if prompt is None else prompt, computed))
        else:
            append(json.dumps(dict(zip(DETAIL_KEYS, row)), separators=(",", ":")))
    return "[" + ",".join(parts) + "]"


class StepBatch:
    """One SchedulerOutput (one engine step) as the batch hooks saw it: copies of its inputs,
    taken on EngineCore's thread; ``schedule`` and ``modelExec`` share one.

    Its classification (rows, ``batch_type``, the ``ms.rid_detail`` text, links) is worked out
    from those copies where the step's spans are expanded (:class:`RemoteBatches`: in the
    writer, or on the recorder's thread without one), carried there by the step's first record.

    Made by :func:`describe_batch` (no type call, no ``__init__`` frame: it runs once per step
    with cold caches): ``seq`` names the step to the expanders, ``requests`` is the scheduler's
    request map (for link lookups), ``classified`` says a record carrying the classification
    is queued.
    """

    __slots__ = ("output", "inputs", "requests", "seq", "classified")


_last_batch: Optional[StepBatch] = None
_new_batch = object.__new__


# -- one record per engine-step span, expanded where the spans are built ----------------------
#
# A hook queues one step record per span: ``(batch, classify, span)``, the step (its
# copied inputs travel with the step's first record only, ``classify`` True) and the span's own
# plain values (None: only the classification). A plain tuple, as a task is (records.py). The
# expander (registered with handoff.register_expander) classifies the step, per EngineCore
# process and in step order, and turns the values into the span record. It runs in the writer
# process, or, without one, on the recorder's thread: the same code either way.

_RETAINED_STEPS = 64  # a step's results outlive it this many steps (modelExec comes later)


def _classification_to_wire(batch: StepBatch) -> tuple:
    """The step's inputs, and the trace headers of its new requests whose headers did not go
    with a request event (their contexts are parsed where the step is expanded)."""
    inputs = batch.inputs
    sent = _headers_sent
    contexts = []
    requests = batch.requests
    for request_id, _, _ in inputs.new:
        if request_id in sent or requests is None:
            continue
        request = requests.get(request_id)
        headers = _plain_headers(getattr(request, "trace_headers", None)) \
            if request is not None else None
        if headers:
            contexts.append((request_id, headers))
    for request_id in inputs.finished:
        sent.pop(request_id, None)
    finished, new, cached_ids, cached_computed, scheduled = inputs
    return batch.seq, (finished, new, _same_cached_ids(cached_ids), cached_computed,
                       scheduled), contexts


# A running batch sends the same request ids step after step (handoff.Repeated).
_same_cached_ids = handoff.Repeated()


def _step_to_wire(record: tuple) -> tuple:
    batch, classify, span = record  # the span's values are plain as the hooks took them
    return (batch.seq, _classification_to_wire(batch) if classify else None, span)


class RemoteBatches:
    """The classified steps of one EngineCore process, where its spans are expanded."""

    def __init__(self) -> None:
        self.classifier = BatchClassifier()
        self.steps: OrderedDict = OrderedDict()  # seq -> [rows, kind, links, json or None]

    def resolve(self, wire: tuple, state: Optional[dict] = None) -> None:
        seq, inputs, headers = wire
        inputs = BatchInputs(*inputs)
        rows, kind = self.classifier.classify(inputs)
        state = {} if state is None else state
        known = state.get("request_contexts")
        if known is not None:
            for request_id in inputs.finished:
                known.pop(request_id, None)
        headers = dict(headers)
        # One link per request, in its first step (``iter`` 0), not per step: a span link
        # costs the SDK about as much as a small span, and a request's later steps are found
        # through its first one (and through the ``ms.rid`` attributes).
        links = []
        for row in rows:
            if row[1] == 0:
                context = context_of(state, row[0], headers.get(row[0]))
                if context is not None:
                    links.append(context)
        links = links[:MAX_LINKS]
        steps = self.steps
        steps[seq] = [rows, kind, links or None, None]
        if len(steps) > _RETAINED_STEPS:
            steps.popitem(last=False)

    def details_json(self, seq: int) -> str:
        """``ms.rid_detail`` of a step, built once for both batch spans."""
        step = self.steps[seq]
        if step[3] is None:
            step[3] = details_json(step[0])
        return step[3]

    def batch_attributes(self, domain: str, seq: int, batch_size: Optional[int] = None
                         ) -> dict:
        """The attributes both batch spans start with, in the order they have had through the
        writer: ``ms.rid`` (the step's request ids in vLLM's order), ``batch_size`` (default:
        the number of requests)."""
        request_ids = [row[0] for row in self.steps[seq][0]]
        return {contract.DOMAIN: domain, contract.RID: request_ids,
                "batch_size": len(request_ids) if batch_size is None else batch_size}

    def add_details(self, attributes: dict, seq: int) -> dict:
        attributes[contract.RID_DETAIL] = self.details_json(seq)
        attributes["batch_type"] = self.steps[seq][1]
        return attributes

    def links(self, seq: int) -> Optional[List[SpanContext]]:
        return self.steps[seq][2]


def _remote(state: dict) -> RemoteBatches:
    batches = state.get("batches")
    if batches is None:
        batches = state["batches"] = RemoteBatches()
    return batches


def step_expander(name: str, expand_span: Callable[[RemoteBatches, int, tuple], Any]
                  ) -> Callable[[Any], Any]:
    """Register the expander of one kind of engine-step span: ``expand_span(batches, seq,
    span values)`` gives its SpanRecord once the step is classified. Returns the function
    :func:`record_step` queues."""

    def expand(state: dict, wire: tuple) -> Optional[list]:
        seq, classification, span = wire
        batches = _remote(state)
        if classification is not None:
            batches.resolve(classification, state)
        if span is None or seq not in batches.steps:  # nothing to build / a dropped step
            return None
        return [expand_span(batches, seq, span)]

    return handoff.register_expander(name, _step_to_wire, expand)


def record_step(expander: Callable[[Any], Any], batch: StepBatch,
                span: Optional[tuple]) -> None:
    """Queue one span of this step (``span`` None: only the step's classification, when no
    record of the step carried it yet)."""
    classify = not batch.classified
    if span is None and not classify:
        return
    batch.classified = True
    recorder.record_task(expander, (batch, classify, span))


def describe_batch(scheduler_output: Any, requests: Optional[Mapping[str, Any]] = None
                   ) -> StepBatch:
    """The batch of this SchedulerOutput; ``schedule`` and ``modelExec`` share one result.

    ``requests``: the scheduler's request map, for links to requests whose context was not seen
    at ``add_request``. The first record of the step (:func:`record_step`) carries its
    classification, so steps are classified in the order vLLM scheduled them.
    """
    global _last_batch
    last = _last_batch
    if last is not None and last.output is scheduler_output:
        return last
    batch = _new_batch(StepBatch)
    batch.seq = next(_batch_numbers)
    batch.output = scheduler_output
    batch.inputs = BatchInputs.of(scheduler_output)
    batch.requests = requests
    batch.classified = False
    _last_batch = batch
    return batch


def _after_fork_in_child() -> None:
    global _role_recorded, _last_batch
    _role_recorded = None
    _last_batch = None
    _headers_sent.clear()  # the parent's records are not the child's: its writer state is new


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
