"""Finished spans built directly, for the recorder's thread.

A record already knows its start, end, attributes, events, parent and links, so the live-span
machinery of ``tracer.start_span`` / ``Span.end`` (a context, locks, bounded containers, the
span-start callbacks) is pure cost for it. :class:`FastSpanBuilder` makes the SDK's
``ReadableSpan`` at once, with what the tracer would have used: the provider's resource,
instrumentation scope, id generator and sampler decision, and hands it to the ``on_end`` of
each of the provider's span processors, so every configured exporter receives the same span.

It applies only where the result is provably the same as the slow way (tests compare both),
and the recorder falls back to ``start_span`` otherwise:

* the sampler is ``always_on`` / ``always_off`` / ``parentbased_*`` with those delegates
  (the default); the decision is then a function of the parent alone, with no call per
  record. A record whose decision needs another sampler (``traceidratio``, a user's; for
  ``parentbased_traceidratio`` only the roots) is built the slow way, which asks it;
* every span processor does nothing at span start and before end (the SDK's batch and simple
  processors, our ``thread.id`` stamper, which the record carries already);
* no attribute length limit is configured and the record fits the attribute count limit;
* the SDK's own span metrics are off (their default);
* the record carries no exception (a rare record; the slow way adds the exception event).

Record sinks are fed without spans. A batch or simple span processor whose exporter is a
:class:`record_sink.RecordSink` (our ``ms_service`` exporter) does nothing with a span but turn
it into rows, so the builder gives that exporter the record itself as a
:class:`records.SpanRow` (``RecordSink.write_rows``: the same rows, one SQLite transaction per
drain or per ``recorder.ROWS_PER_WRITE`` records) and builds a ``ReadableSpan`` only when some
other processor (OTLP, console, a user's) is there to receive it. Which records are written is
the sampler's decision as before: the sampled ones, exactly what the processor would have exported.

This is the one module that reads the SDK's private attributes (``_span_processors``,
``_span_limits``, ``_instrumentation_scope``, the samplers' ``_decision`` / ``_root`` ...). They
may change in any SDK release: if setting a builder up or building raises, the recorder gives
the fast way up with one WARNING and builds plain SDK spans (``recorder._give_up_fast_path``).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler
from opentelemetry.trace import Link, SpanContext, TraceFlags

from otel_vllm_ascend import contract
from otel_vllm_ascend.record_sink import RecordSink
from otel_vllm_ascend.records import SpanRecord, SpanRow
from otel_vllm_ascend.thread_id import ThreadIdSpanProcessor

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)


def _sdk_keeps_none() -> bool:
    # SDK >= 1.45 keeps an attribute whose value is None; older ones drop it.
    return "k" in BoundedAttributes(attributes={"k": None}, immutable=False)


_NONE_TYPE = type(None)
_KEEPS_NONE = _sdk_keeps_none()
_PLAIN_TYPES = (str, int, float, bool) + ((_NONE_TYPE,) if _KEEPS_NONE else ())
_new_row = tuple.__new__  # SpanRow without the generated constructor's keyword handling


def _quiet_start_hooks(processor: Any) -> bool:
    """True when ``processor`` does nothing at span start and before span end."""
    kind = type(processor)
    if isinstance(processor, ThreadIdSpanProcessor):
        quiet_start = True  # stamps thread.id, which every record carries already
    else:
        quiet_start = kind.on_start in (SpanProcessor.on_start, BatchSpanProcessor.on_start,
                                        SimpleSpanProcessor.on_start)
    quiet_ending = getattr(kind, "_on_ending", None) in (
        None, getattr(SpanProcessor, "_on_ending", None),
        getattr(BatchSpanProcessor, "_on_ending", None),
        getattr(SimpleSpanProcessor, "_on_ending", None))
    return quiet_start and quiet_ending


def _static_decision(sampler: Any) -> Optional[Decision]:
    return sampler._decision if type(sampler) is StaticSampler else None


class FastSpanBuilder:
    """Builds one record's span directly; :meth:`build` returns False to ask for the slow way."""

    def __init__(self, tracer: SdkTracer, deferred_type: type) -> None:
        self.tracer = tracer
        self.deferred_type = deferred_type
        self.resource = tracer.resource
        self.scope = tracer._instrumentation_scope
        self.info = tracer.instrumentation_info
        self.row_exporters: List[RecordSink] = []
        self.span_consumers: List[Callable[[ReadableSpan], None]] = []
        for processor in tracer.span_processor._span_processors:
            exporter = _record_sink(processor)
            if exporter is not None:
                self.row_exporters.append(exporter)
            elif type(processor).on_end is not SpanProcessor.on_end:
                self.span_consumers.append(processor.on_end)
        self.rows: List[SpanRow] = []
        limits = tracer._span_limits
        # One slot of the span's limit is thread.id's.
        self.max_attributes = _limit(limits.max_span_attributes) - 1
        self.max_event_attributes = _limit(limits.max_event_attributes)
        sampler = tracer.sampler
        self.root_decision: Optional[Decision]
        if isinstance(sampler, ParentBased) and (
                type(sampler).should_sample is ParentBased.should_sample):
            self.root_decision = _static_decision(sampler._root)
            self.parent_decisions = (
                _static_decision(sampler._remote_parent_sampled),
                _static_decision(sampler._remote_parent_not_sampled),
                _static_decision(sampler._local_parent_sampled),
                _static_decision(sampler._local_parent_not_sampled))
        else:
            self.root_decision = _static_decision(sampler)
            self.parent_decisions = (self.root_decision,) * 4

    def finish(self) -> None:
        """Write the records gathered so far to the record sinks."""
        rows, self.rows = self.rows, []
        if rows:
            for sink in self.row_exporters:
                sink.write_rows(rows)

    @classmethod
    def for_tracer(cls, tracer: Any, deferred_type: type) -> Optional[FastSpanBuilder]:
        """A builder for this SDK tracer's pipeline, or None when only the slow way is right."""
        if not isinstance(tracer, SdkTracer) or not tracer._is_enabled():
            return None
        if type(getattr(tracer, "_tracer_metrics", None)) is not NoOpTracerMetrics:
            return None
        limits = tracer._span_limits
        if limits.max_span_attribute_length is not None or limits.max_attribute_length is not None:
            return None
        processors = getattr(tracer.span_processor, "_span_processors", None)
        if processors is None or not all(_quiet_start_hooks(p) for p in processors):
            return None
        return cls(tracer, deferred_type)

    def build(self, rec: SpanRecord) -> bool:
        name, start_ns, end_ns, attributes, events, parent, links, exception, tid, own = rec
        if exception is not None:
            return False
        if parent is not None and parent.is_valid:
            flags = parent.trace_flags
            index = (0 if flags.sampled else 1) if parent.is_remote else (
                2 if flags.sampled else 3)
            decision = self.parent_decisions[index]
            trace_id = parent.trace_id
            random_id = flags & _RANDOM if _RANDOM else 0
            trace_state = parent.trace_state
        else:
            parent = None
            decision = self.root_decision
            trace_state = None
            trace_id = None
        if decision is None:
            return False  # a sampler that must be asked: the slow way asks it
        if not decision.is_recording():
            return True  # dropped by the sampler, as start_span would
        deferred = self.deferred_type
        if links.__class__ is deferred:
            links = links.func(links.arg)
        attrs = _clean(attributes, self.max_attributes, deferred)
        if attrs is None:
            return False
        cleaned_events: list = []
        if events:
            for event_name, timestamp, event_attributes in events:
                cleaned = _clean(event_attributes, self.max_event_attributes, deferred)
                if cleaned is None:
                    return False
                cleaned_events.append((event_name, timestamp, cleaned))
        sampled = decision.is_sampled()
        if sampled and self.row_exporters:
            self.rows.append(_new_row(SpanRow, (name, start_ns, end_ns, attrs, cleaned_events,
                                                tid)))
        if not self.span_consumers:
            return True
        ids = self.tracer.id_generator
        if parent is None:
            if own is not None:
                trace_id, span_id = own.trace_id, own.span_id
            else:
                trace_id, span_id = ids.generate_trace_id(), None
            random_id = _RANDOM if _RANDOM and ids.is_trace_id_random() else 0
        else:
            span_id = None
        if span_id is None:
            span_id = ids.generate_span_id()
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        if random_id:
            flags = TraceFlags(flags | random_id)
        span_attrs = dict(attrs) if self.row_exporters else attrs  # the rows keep theirs
        span_attrs[contract.THREAD_ID] = tid
        span = ReadableSpan(
            name=name,
            context=SpanContext(trace_id, span_id, False, flags, trace_state),
            parent=parent,
            resource=self.resource,
            attributes=span_attrs,
            events=tuple(Event(event_name, event_attrs, timestamp)
                         for event_name, timestamp, event_attrs in cleaned_events),
            links=tuple(Link(ctx) for ctx in links) if links else (),
            instrumentation_info=self.info,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self.scope,
        )
        for on_end in self.span_consumers:
            on_end(span)
        return True


def _record_sink(processor: Any) -> Optional[RecordSink]:
    """The exporter when ``processor`` only hands spans to a record sink, else None."""
    if not isinstance(processor, (BatchSpanProcessor, SimpleSpanProcessor)):
        return None
    exporter = getattr(processor, "span_exporter", None)
    return exporter if isinstance(exporter, RecordSink) else None


def _limit(value: Optional[int]) -> int:
    return (1 << 30) if value is None else value


def _clean(attributes: Any, limit: int, deferred: type) -> Optional[dict]:
    """A copy the exporters can read as the SDK would store it (lists as tuples, deferred
    values computed); None when something needs the SDK's own validation."""
    if not attributes:
        return {}
    if len(attributes) > limit:
        return None
    out = {}
    for key, value in attributes.items():
        kind = type(value)
        if kind is deferred:
            value = value.func(value.arg)
            kind = type(value)
        if kind in _PLAIN_TYPES:
            out[key] = value
        elif kind is list or kind is tuple:
            out[key] = tuple(value)
        elif kind is _NONE_TYPE:
            continue  # dropped, as this SDK's attribute cleaning drops it
        else:
            return None
    return out
