"""Cheap capture on vLLM's threads; span building off them.

Handlers call :func:`record_span` / :func:`record_event` with plain values (timestamps, ids, a
few numbers). The call appends one :class:`records.SpanRecord` to a bounded queue and returns:
no OpenTelemetry work happens on the serving thread. A daemon thread per process (every 0.2 s)
turns queued records into real SDK spans: finished spans handed straight to the provider's span
processors (``span_builder.py``; same resource, scope, ids and sampler decision), or through
``tracer.start_span`` / ``end`` wherever that could differ. Every configured span processor and
exporter receives them and the configured sampler still applies; our file exporter gets the
sampled records as they are (the rows their spans would give, through the
:class:`record_sink.RecordSink` interface) when the record takes the fast way.

The fast way reads private parts of the SDK (``span_builder.py``). When it cannot be set up, or
a drain fails, the recorder says so once as a WARNING naming the cause and goes on with plain
SDK spans (``tracer.start_span``), which every exporter receives as well.

When the queue is full the record is dropped and counted (:mod:`drops`, :func:`dropped_count`),
the first drop is logged and the total at exit; vLLM is never blocked. :func:`flush` drains the
queue synchronously (used at exit and in tests).
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import threading
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode

from otel_vllm_ascend import contract, drops, native_thread, selfmeter
from otel_vllm_ascend.process_role import detect_process_role
from otel_vllm_ascend.records import (
    CapturedException,
    EventTuple,
    SpanRecord,
    new_span_record,
)
from otel_vllm_ascend.selfmeter import REQUEST_RECORD, STEP_RECORD
from otel_vllm_ascend.selfmeter import meter as _meter

_builder_import_error: Optional[BaseException] = None
try:  # the SDK-private code: an SDK that moved what it imports must not stop collection
    from otel_vllm_ascend.span_builder import FastSpanBuilder
except Exception as exc:  # reported, once, at the first drain
    FastSpanBuilder = None  # type: ignore[assignment,misc]
    _builder_import_error = exc

_logger = logging.getLogger(__name__)

MAX_QUEUE = int(os.environ.get("OTEL_VLLM_RECORD_QUEUE_SIZE", "65536"))
DRAIN_INTERVAL_S = 0.2
ROWS_PER_WRITE = 4096  # the most records a drain holds for the file exporter before writing
_TRACER_NAME = "otel_vllm_ascend"


class Deferred:
    """An attribute value computed on the recorder's thread, not on vLLM's: ``func(arg)``.

    For work that only formats data already captured (e.g. JSON text of a batch's request
    details); ``arg`` must not change after the record is queued.
    """

    __slots__ = ("func", "arg")

    def __init__(self, func: Any, arg: Any) -> None:
        self.func = func
        self.arg = arg


class SpanBuilding:
    """Turns records into SDK spans for one tracer provider: directly where it can
    (``span_builder.py``), the plain SDK way otherwise. The serving process has one (the
    in-process path); the writer process has one per producer process."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer_provider = tracer_provider
        # Off only to compare with the slow way (tests, benchmarks): OTEL_VLLM_FAST_SPANS=0.
        self.fast_path = os.environ.get("OTEL_VLLM_FAST_SPANS", "1") != "0"
        self.fast_path_failure: Optional[str] = None  # why the fast way was given up, if it was

    def give_up_fast_path(self, what: str, exc: BaseException) -> None:
        """Plain SDK spans from now on, said once as a WARNING naming the cause."""
        self.fast_path = False
        if self.fast_path_failure is None:
            self.fast_path_failure = f"{what} ({type(exc).__name__}: {exc})"
            _logger.warning("otel-vllm-ascend: %s (%s: %s); building spans the plain SDK way "
                            "from now on (slower, same spans for every exporter). Usually an "
                            "opentelemetry-sdk version this release was not tested with: see "
                            "the supported range in pyproject.toml.", what, type(exc).__name__,
                            exc, exc_info=_logger.isEnabledFor(logging.DEBUG))
        else:
            _logger.debug("recorder: %s", what, exc_info=True)

    def build(self, records: Iterable[Any]) -> int:
        """Build every record (run every task, building the span records a task expands into)
        of ``records``, in order; returns how many records were built (sampled out or not)."""
        tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=self.tracer_provider)
        fast = None
        if self.fast_path and FastSpanBuilder is None:
            self.give_up_fast_path("the direct span builder could not be imported",
                                   _builder_import_error or ImportError("span_builder"))
        elif self.fast_path:
            try:
                fast = FastSpanBuilder.for_tracer(tracer, Deferred)
            except Exception as exc:
                self.give_up_fast_path("the direct span builder could not be set up", exc)
        built = 0
        for rec in records:
            if rec.__class__ is tuple:  # a task: (func, arg)
                try:
                    produced = rec[0](rec[1])  # an expander's span records (handoff.py)
                except Exception:
                    _logger.debug("recorder task failed", exc_info=True)
                    continue
                if produced:
                    for span_record in produced:
                        fast = self._build_one(tracer, fast, span_record)
                        built += 1
                continue
            fast = self._build_one(tracer, fast, rec)
            built += 1
        if fast is not None:
            self._finish_and_drop(fast)  # the file exporter's rows of this drain, one transaction
        return built

    def _build_one(self, tracer: Any, fast: Any, rec: SpanRecord) -> Any:
        """Build one record; returns the direct builder to go on with (None once given up)."""
        if _meter.on:
            if rec.name == STEP_RECORD:
                _meter.steps += 1
            elif rec.name == REQUEST_RECORD:
                _meter.requests += 1
        if fast is not None:
            try:
                if fast.build(rec):
                    if len(fast.rows) >= ROWS_PER_WRITE:
                        fast.finish()  # a producer that keeps the queue busy still gets written
                    return fast
            except Exception as exc:
                # The record goes the plain way below; rows gathered so far are written first.
                fast = self._finish_and_drop(fast)
                self.give_up_fast_path(
                    f"the direct span builder failed on a {rec.name!r} record", exc)
        try:
            _build(tracer, rec)
        except Exception:
            _logger.debug("could not build span %r", rec.name, exc_info=True)
        return fast

    def _finish_and_drop(self, fast: Any) -> None:
        try:
            fast.finish()
        except Exception as exc:  # a sink must not raise; if one does, plain spans from now on
            self.give_up_fast_path("a record sink failed to write a drain's rows", exc)
        return None


class _State(SpanBuilding):
    def __init__(self) -> None:
        super().__init__()
        self.queue: collections.deque = collections.deque()
        self.thread: Optional[threading.Thread] = None
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.atexit_registered = False
        # The writer process's client (writer_client.WriterClient) when records go there.
        self.handoff: Any = None


_state = _State()


def set_tracer_provider(provider: Any) -> None:
    """Use this provider instead of the global one (tests, explicit set-up)."""
    _state.tracer_provider = provider


def set_fast_path(on: bool) -> None:
    """Build spans directly (default) or through ``tracer.start_span`` (to compare)."""
    _state.fast_path = on


def record_span(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    events: Optional[Sequence[EventTuple]] = None,
    parent: Optional[SpanContext] = None,
    links: Optional[Sequence[SpanContext]] = None,
    exception: Optional[BaseException] = None,
    thread_id: Optional[int] = None,
    span_context: Optional[SpanContext] = None,
) -> None:
    """Queue one span record. ``attributes`` must not be mutated afterwards; attribute values
    and ``links`` may be :class:`Deferred`.

    ``span_context`` gives the span its own trace and span id (a request's root record, whose
    ids were handed out before the span exists); used only when ``parent`` is None.
    """
    queue = _state.queue
    if len(queue) >= MAX_QUEUE:
        _queue_full()
        return
    queue.append(new_span_record(SpanRecord, (
        name, start_ns, end_ns, attributes, events, parent, links, exception,
        thread_id or native_thread.current.id, span_context)))
    if _state.thread is None:
        _start_thread()


def _queue_full() -> None:
    """A record dropped: counted, and said once."""
    if drops.add(drops.RECORD_QUEUE) == 1:
        _logger.warning("otel-vllm-ascend: record queue full (%d records, pid %d): dropping "
                        "records until the recorder catches up; raise "
                        "OTEL_VLLM_RECORD_QUEUE_SIZE if this recurs (the total is logged at "
                        "exit)%s", MAX_QUEUE, os.getpid(), _failure_note())


def record_task(func: Any, arg: Any) -> bool:
    """Queue ``func(arg)`` to run on the recorder's thread, in order with the records (work a
    handler can leave there, e.g. classifying an engine step before its spans are built).
    False when the queue was full (the task dropped and counted)."""
    queue = _state.queue
    if len(queue) < MAX_QUEUE:  # else dropped: whatever needs the result computes it itself
        queue.append((func, arg))
        if _state.thread is None:
            _start_thread()
        return True
    _queue_full()
    return False


def record_event(name: str, attributes: Mapping[str, Any], timestamp_ns: Optional[int] = None,
                 record: str = contract.RECORD_EVENT, parent: Optional[SpanContext] = None,
                 links: Optional[Sequence[SpanContext]] = None) -> None:
    """Queue one event record that has no span around it (a zero-duration span).

    ``parent`` places it in a request's trace (OTLP viewers); ``links`` points at other traces.
    """
    ts = timestamp_ns or time.time_ns()
    attrs = dict(attributes)
    attrs[contract.RECORD] = record
    record_span(name, ts, ts, attrs, parent=parent, links=links)


def record_link(from_rid: str, to_rid: str, domain: str = "Engine") -> None:
    record_event(contract.LINK_NAME, {contract.DOMAIN: domain, contract.LINK_FROM: from_rid,
                                      contract.LINK_TO: to_rid}, record=contract.RECORD_LINK)


def record_meta(key: str, value: Any) -> None:
    record_event(contract.META_NAME, {contract.META_PREFIX + key: str(value)},
                 record=contract.RECORD_META)


def dropped_count() -> int:
    """Records this process dropped because the queue was full."""
    return drops.count(drops.RECORD_QUEUE)


def fast_path_failure() -> Optional[str]:
    """Why the recorder gave up building spans directly (None while it has not)."""
    return _state.fast_path_failure


def pending_count() -> int:
    return len(_state.queue)


def flush() -> None:
    """Turn every queued record into a span now, on the calling thread."""
    with _state.lock:
        _drain()


def _start_thread() -> None:
    with _state.lock:
        if _state.thread is not None:
            return
        thread = threading.Thread(target=_run, name="otel-vllm-recorder", daemon=True)
        _state.thread = thread
        thread.start()
        if not _state.atexit_registered:
            # Registered after the SDK provider's own atexit hook, so it runs before it.
            atexit.register(flush_at_exit)
            _state.atexit_registered = True


def _run() -> None:
    while True:
        _state.wake.wait(DRAIN_INTERVAL_S)
        _state.wake.clear()
        try:
            if _meter.on and selfmeter.due():
                record_self_meter_report(False)
            with _state.lock:
                _drain()
        except Exception as exc:  # never let the thread die; one bad record must not stop the rest
            _give_up_fast_path("a recorder drain failed", exc)


def _failure_note() -> str:
    failure = _state.fast_path_failure
    return f"; note: {failure}" if failure else ""


def _give_up_fast_path(what: str, exc: BaseException) -> None:
    _state.give_up_fast_path(what, exc)


def _drain() -> None:
    queue = _state.queue
    if not queue:
        return
    metering = _meter.on
    if metering:
        cpu_start = time.thread_time_ns()
    handoff = _state.handoff
    if handoff is not None and handoff.send(queue):
        built = 0  # handed to the writer process (the sender counts steps and records)
    else:
        built = _state.build(_popped(queue))
    if metering:
        _meter.drain_ns += time.thread_time_ns() - cpu_start
        _meter.drained += built


def _popped(queue: collections.deque) -> Iterator[Any]:
    """The queue's records, oldest first, until it is empty (producers may keep adding)."""
    popleft = queue.popleft
    while queue:
        try:
            yield popleft()
        except IndexError:
            return


def use_handoff(client: Any) -> None:
    """Send records to the writer process through ``client`` (None: build them here again)."""
    _state.handoff = client


def record_self_meter_report(log: bool = False) -> None:
    """Queue the Meta row ``selfMeter`` with this process's figures (and log them)."""
    figures = selfmeter.take_report(detect_process_role() or "other")
    record_meta(selfmeter.META_KEY, json.dumps(figures, separators=(",", ":")))
    if log:
        _logger.info("%s", selfmeter.report_text(figures))


def flush_at_exit() -> None:
    """Exit: the self meter's last report (when on), then every queued record."""
    if _meter.on:
        try:
            flush()  # so the report counts the records still queued
            record_self_meter_report(True)
        except Exception:  # exit paths must not raise
            _logger.debug("self meter report failed", exc_info=True)
    flush()
    handoff = _state.handoff
    if handoff is not None:
        handoff.close()
    drops.report()


class _PresetIds:
    """The tracer's id generator, except for the one span the recorder is building with ids
    chosen in advance (only on the thread that set them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pending: Optional[SpanContext] = None
        self.owner: Optional[int] = None

    def _preset(self) -> Optional[SpanContext]:
        pending = self.pending
        if pending is not None and self.owner == threading.get_ident():
            return pending
        return None

    def generate_trace_id(self) -> int:
        preset = self._preset()
        return preset.trace_id if preset is not None else self.inner.generate_trace_id()

    def generate_span_id(self) -> int:
        preset = self._preset()
        if preset is not None:
            self.pending = None  # one span only
            return preset.span_id
        return self.inner.generate_span_id()

    def __getattr__(self, name: str) -> Any:  # is_trace_id_random() and whatever comes next
        return getattr(self.inner, name)


def _with_preset_ids(tracer: Any) -> Optional[_PresetIds]:
    generator = getattr(tracer, "id_generator", None)
    if generator is None:
        return None  # not an SDK tracer: ids cannot be chosen
    if not isinstance(generator, _PresetIds):
        generator = _PresetIds(generator)
        tracer.id_generator = generator
    return generator


def _build(tracer: Any, rec: SpanRecord) -> None:
    name, start_ns, end_ns, attributes, events, parent, links, exception, tid, own = rec
    if type(links) is Deferred:
        links = links.func(links.arg)
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
    if own is not None and parent is None:
        ids = _with_preset_ids(tracer)
        if ids is not None:
            ids.pending, ids.owner = own, threading.get_ident()
            # An explicit empty context: the span must be a root, whatever is current here.
            context = trace.set_span_in_context(trace.INVALID_SPAN)
    attrs = dict(attributes)
    for key, value in attrs.items():
        if type(value) is Deferred:
            attrs[key] = value.func(value.arg)
    attrs[contract.THREAD_ID] = tid
    span = tracer.start_span(
        name,
        context=context,
        attributes=attrs,
        links=[Link(ctx) for ctx in links] if links else None,
        start_time=start_ns,
    )
    if own is not None and parent is None:
        ids = getattr(tracer, "id_generator", None)
        if isinstance(ids, _PresetIds):
            ids.pending = None
    if events:
        for event_name, ts, event_attrs in events:
            span.add_event(event_name, event_attrs, ts)
    if exception.__class__ is CapturedException:  # recorded in another process
        span.add_event("exception", {"exception.type": exception.type,
                                     "exception.message": exception.message,
                                     "exception.stacktrace": exception.stacktrace,
                                     "exception.escaped": "False"}, end_ns)
        span.set_status(Status(StatusCode.ERROR, f"{exception.name}: {exception.message}"))
    elif exception is not None:
        span.record_exception(exception, timestamp=end_ns)
        span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))
    span.end(end_time=end_ns)


def _after_fork_in_child() -> None:
    # The parent's drain thread does not exist here and its queued records are the parent's.
    _state.queue = collections.deque()
    _state.thread = None
    _state.wake = threading.Event()
    _state.lock = threading.Lock()
    if _state.handoff is not None:
        _state.handoff = _state.handoff.for_fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

