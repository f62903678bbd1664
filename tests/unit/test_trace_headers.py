"""W3C trace headers read and written through OpenTelemetry's propagator, not by hand."""

from __future__ import annotations

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
