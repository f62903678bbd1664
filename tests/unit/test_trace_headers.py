"""W3C trace headers read and written as OpenTelemetry's propagator does: through it, or, for
the one header shape vLLM's processes pass each other, parsed directly and checked against it."""

from __future__ import annotations

from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from otel_vllm_ascend.handlers import common

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def test_valid_traceparent_with_tracestate_is_kept():
    context = common.parse_traceparent({"traceparent": f"00-{TRACE}-{SPAN}-01",
                                        "tracestate": "vendor=abc,other=1"})
    assert f"{context.trace_id:032x}" == TRACE and f"{context.span_id:016x}" == SPAN
    assert context.is_remote and context.trace_flags.sampled
    assert dict(context.trace_state) == {"vendor": "abc", "other": "1"}
    headers = common.trace_headers_of(context)
    assert headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"
    assert headers["tracestate"] == "vendor=abc,other=1"


def test_header_names_are_case_insensitive():
    context = common.parse_traceparent({"Traceparent": f"00-{TRACE}-{SPAN}-00"})
    assert context is not None and not context.trace_flags.sampled


def test_invalid_traceparents_are_refused():
    for value in (f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
                  f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
                  f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01",
                  f"00-{TRACE[:-1]}-{SPAN}-01", "garbage", ""):
        assert common.parse_traceparent({"traceparent": value}) is None, value
    assert common.parse_traceparent(None) is None
    assert common.parse_traceparent({}) is None


def test_new_request_contexts_are_valid_and_distinct():
    first, second = common.new_request_context(), common.new_request_context()
    assert first.is_valid and second.is_valid and first.trace_id != second.trace_id
    assert "tracestate" not in common.trace_headers_of(first)


def _propagator_parse(headers):
    context = get_current_span(TraceContextTextMapPropagator().extract(
        headers, getter=common._GETTER)).get_span_context()
    return context if context.is_valid else None


def _propagator_headers(context):
    headers = {}
    TraceContextTextMapPropagator().inject(
        headers, context=set_span_in_context(NonRecordingSpan(context)))
    return headers


def _fields(context):
    if context is None:
        return None
    return (context.trace_id, context.span_id, context.is_remote, type(context.trace_flags),
            int(context.trace_flags), context.trace_state.to_header())


def test_direct_paths_give_what_the_propagator_gives():
    """The common shapes (one ``traceparent`` of 55 characters; a valid context) are parsed and
    formatted without the propagator's Context; the results must be the propagator's."""
    for value in (f"00-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-00", f"01-{TRACE}-{SPAN}-09",
                  f"ff-{TRACE}-{SPAN}-01", f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01",
                  f"00-{TRACE.upper()}-{SPAN}-01", f"00-{TRACE}-{SPAN}-0g", f" 00-{TRACE}-{SPAN}-1",
                  f"00-{TRACE}-{SPAN}-01 ", f"00_{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-01-x"):
        headers = {"traceparent": value}
        context = common.parse_traceparent(headers)
        assert _fields(context) == _fields(_propagator_parse(headers)), value
        if context is not None:
            assert common.trace_headers_of(context) == _propagator_headers(context), value
    for context in (SpanContext(5, 6, True, TraceFlags(1), TraceState([("a", "b")])),
                    SpanContext(0, 6, True, TraceFlags(1)), common.new_request_context()):
        assert common.trace_headers_of(context) == _propagator_headers(context)
