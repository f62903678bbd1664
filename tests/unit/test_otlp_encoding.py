"""The direct OTLP encoder writes byte for byte what the SDK's encoder serialises."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from otel_vllm_ascend.exporters import otlp_encoding

_text = st.text(max_size=12)
_scalars = st.one_of(
    _text, st.booleans(), st.none(), st.binary(max_size=6),
    st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True))
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4), st.tuples(_text, _text),
                    st.dictionaries(_text, _scalars, max_size=2),
                    st.lists(st.sampled_from([f"cmpl-{i:016x}-0" for i in range(40)]),
                             max_size=40))
_attributes = st.dictionaries(_text, _values, max_size=5)
_ids = st.integers(1, (1 << 64) - 1)
_contexts = st.builds(
    lambda trace_id, span_id, remote, sampled, state: SpanContext(
        trace_id, span_id, remote, TraceFlags(sampled), TraceState(state)),
    st.integers(1, (1 << 128) - 1), _ids, st.booleans(), st.integers(0, 1),
    st.lists(st.tuples(st.sampled_from(["a", "k1", "vendor"]), st.sampled_from(["1", "x"])),
             max_size=2, unique_by=lambda kv: kv[0]))
_statuses = st.one_of(
    st.just(Status()), st.builds(Status, st.just(StatusCode.OK)),
    st.builds(Status, st.just(StatusCode.ERROR), st.one_of(st.none(), _text)))
_resources = st.sampled_from([
    Resource({"service.name": "vllm", "process.pid": 1}),
    Resource({"service.name": "vllm", "vllm.process.role": "engine_core"}, "https://schema/1"),
    Resource({}),
])
_scopes = st.sampled_from([
    None, InstrumentationScope("otel_vllm_ascend"),
    InstrumentationScope("other", "1.2", "https://schema/2", {"k": "v", "n": 3}),
])


def _bounded(attributes: dict, maxlen: int) -> BoundedAttributes:
    """Attributes the way the SDK keeps them, with drops beyond ``maxlen``."""
    bounded = BoundedAttributes(maxlen=maxlen, immutable=False)
    for key, value in attributes.items():
        bounded[key] = value if not isinstance(value, dict) else str(value)
    return bounded


def _maybe_bounded(draw, attributes: dict):
    return _bounded(attributes, 2) if draw(st.booleans()) else attributes


def _maybe_bounded_list(draw, items: list):
    if not draw(st.booleans()):
        return items
    bounded = BoundedList(maxlen=1)
    bounded.extend(items)
    return bounded


@st.composite
def _spans(draw):
    events = [Event(draw(_text), _maybe_bounded(draw, draw(_attributes)),
                    draw(st.integers(0, 1 << 62)))
              for _ in range(draw(st.integers(0, 2)))]
    links = [Link(draw(_contexts), _maybe_bounded(draw, draw(_attributes)))
             for _ in range(draw(st.integers(0, 2)))]
    return ReadableSpan(
        name=draw(_text), context=draw(_contexts),
        parent=draw(st.one_of(st.none(), _contexts)), resource=draw(_resources),
        attributes=_maybe_bounded(draw, draw(_attributes)),
        events=_maybe_bounded_list(draw, events), links=_maybe_bounded_list(draw, links),
        kind=draw(st.sampled_from(list(SpanKind))), status=draw(_statuses),
        start_time=draw(st.one_of(st.none(), st.integers(0, 1 << 62))),
        end_time=draw(st.one_of(st.none(), st.integers(0, 1 << 62))),
        instrumentation_scope=draw(_scopes))


@settings(max_examples=300, deadline=None)
@given(st.lists(_spans(), max_size=6))
def test_same_bytes_as_the_sdk_encoder(spans):
    assert otlp_encoding.encode_request(spans) == encode_spans(spans).SerializeToString()


def _tool_spans():
    """The built-in handlers' record shapes, as the recorder turns them into SDK spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_vllm_ascend import contract, recorder

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "vllm"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    ids = [f"cmpl-{i:016x}-0" for i in range(32)]
    parent = SpanContext(7, 8, True, TraceFlags(1))
    recorder.set_tracer_provider(provider)
    try:
        for step in range(3):
            now = 1_700_000_000_000_000_000 + step
            recorder.record_span(
                "batchFrameworkProcessing", now, now + 50,
                {contract.DOMAIN: "Schedule", contract.RID: ids, "batch_type": "Decode",
                 contract.RID_DETAIL: '[{"rid":"a","iter":1}]', "batch_size": 32,
                 contract.METRIC_PREFIX + "num_scheduled_tokens": 32},
                events=[("KVCacheStatus", now + 40, {
                    contract.DOMAIN: "Schedule.KVCache", contract.RID: ids,
                    contract.METRIC_PREFIX + "UsagePercent": 0.25})],
                links=[parent], thread_id=11)
            recorder.record_span("sample", now, now + 9, {contract.DOMAIN: "Execute"}, thread_id=12)
            recorder.record_event("Free", {contract.DOMAIN: "Schedule.KVCache",
                                           contract.RID: ids[0]}, timestamp_ns=now, parent=parent)
        recorder.flush()
    finally:
        recorder.set_tracer_provider(None)
    return list(memory.get_finished_spans())


def test_typical_tool_spans_and_caches():
    tool_spans = _tool_spans()
    assert len(tool_spans) == 9
    expected = encode_spans(tool_spans).SerializeToString()
    assert otlp_encoding.encode_request(tool_spans) == expected
    assert otlp_encoding.encode_request(tool_spans) == expected  # from the caches this time


def test_unencodable_values_are_left_out_like_the_sdk():
    class Odd:
        pass

    span = ReadableSpan("x", SpanContext(1, 2, False), attributes={
        "ok": 1, "odd": Odd(), "big": 1 << 64, "bad_text": "\ud800", "nan": math.nan})
    assert otlp_encoding.encode_request([span]) == encode_spans([span]).SerializeToString()


def test_installed_only_into_the_sdk_otlp_exporters(monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_module
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    monkeypatch.setattr(http_module, "encode_spans", http_module.encode_spans)  # restored after
    grpc = GrpcExporter(endpoint="localhost:1", insecure=True)
    try:
        assert otlp_encoding.install(grpc)
        spans = _tool_spans()
        assert grpc._translate_data(spans) == encode_spans(spans)
        assert otlp_encoding.install(http_module.OTLPSpanExporter(endpoint="http://localhost:1"))
        encoded = http_module.encode_spans(spans)
        assert encoded.SerializePartialToString() == encode_spans(spans).SerializeToString()
        assert len(encoded.resource_spans) == 1  # anything else reads the parsed message
        assert not otlp_encoding.install(InMemorySpanExporter())

        class Custom(GrpcExporter):  # somebody's subclass: theirs to encode
            pass

        assert not otlp_encoding.install(Custom(endpoint="localhost:1", insecure=True))
        monkeypatch.setenv(otlp_encoding.ENV, "0")
        assert not otlp_encoding.install(GrpcExporter(endpoint="localhost:1", insecure=True))
    finally:
        grpc.shutdown()
