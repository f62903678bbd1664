"""Spans built directly equal the spans tracer.start_span / Span.end builds from the same record."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from otel_vllm_ascend import contract, recorder
from otel_vllm_ascend.span_builder import FastSpanBuilder
from otel_vllm_ascend.thread_id import ThreadIdSpanProcessor

REMOTE_SAMPLED = SpanContext(0xA1, 0xB1, True, TraceFlags(1), TraceState([("k", "v")]))
REMOTE_UNSAMPLED = SpanContext(0xA2, 0xB2, True, TraceFlags(0))
LOCAL_SAMPLED = SpanContext(0xA3, 0xB3, False, TraceFlags(1))
OWN_IDS = SpanContext(0xC1, 0xD1, False, TraceFlags(1))
NOW = time.time_ns()


def _records():
    """One of every record shape the handlers queue: (kwargs of record_span)."""
    now = NOW
    return [
        dict(name="batchFrameworkProcessing", start_ns=now, end_ns=now + 5000,
             attributes={contract.DOMAIN: "Schedule", contract.RID: ["a", "b"],
                         contract.RID_DETAIL: recorder.Deferred(str, [1, 2]),
                         "batch_type": "Decode", "batch_size": 2, "ratio": 0.5,
                         "skipped": None},
             events=[("Enqueue", now + 10, {contract.RID: "a", contract.METRIC_PREFIX + "q": 1}),
                     ("KVCacheStatus", now + 20, {contract.DOMAIN: "Schedule.KVCache"})],
             links=[REMOTE_SAMPLED, LOCAL_SAMPLED], thread_id=1234),
        dict(name="httpReq", start_ns=now, end_ns=now, attributes={contract.RID: "r1"},
             span_context=OWN_IDS),
        dict(name="tokenize", start_ns=now, end_ns=now + 7, attributes={contract.RID: "r1"},
             parent=REMOTE_SAMPLED),
        dict(name="httpRes", start_ns=now, end_ns=now + 9, attributes={}, parent=REMOTE_UNSAMPLED),
        dict(name="modelExec", start_ns=now, end_ns=now + 11, attributes={"x": (1, 2)},
             parent=LOCAL_SAMPLED),
    ]


def _capture(sampler, fast: bool):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(ThreadIdSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder.set_tracer_provider(provider)
    recorder.set_fast_path(fast)
    try:
        for record in _records():
            recorder.record_span(**record)
        recorder.flush()
    finally:
        recorder.set_fast_path(True)
        recorder.set_tracer_provider(None)
    return exporter.get_finished_spans()


def _view(span):
    """Everything an exporter reads, except the randomly generated ids."""
    own = span.name == "httpReq"
    return (
        span.name, dict(span.attributes), span.start_time, span.end_time, span.kind,
        span.status.status_code, span.parent, span.resource, span.instrumentation_scope,
        [(e.name, dict(e.attributes), e.timestamp) for e in span.events],
        [(link.context, dict(link.attributes or {})) for link in span.links],
        span.context.trace_flags, span.context.trace_state, span.context.is_remote,
        span.context.trace_id if (span.parent is not None or own) else None,
        span.context.span_id if own else None,
        span.dropped_attributes, span.dropped_events, span.dropped_links,
    )


@pytest.mark.parametrize("sampler", [DEFAULT_ON, DEFAULT_OFF, ALWAYS_ON, ALWAYS_OFF],
                         ids=["parentbased_on", "parentbased_off", "always_on", "always_off"])
def test_fast_spans_equal_slow_spans(sampler):
    slow = _capture(sampler, fast=False)
    fast = _capture(sampler, fast=True)
    assert [s.name for s in fast] == [s.name for s in slow]
    for fast_span, slow_span in zip(fast, slow):
        assert _view(fast_span) == _view(slow_span), fast_span.name


def test_sampler_respected():
    names = {s.name for s in _capture(DEFAULT_ON, fast=True)}
    assert "httpRes" not in names  # its remote parent is not sampled
    assert {"batchFrameworkProcessing", "httpReq", "tokenize", "modelExec"} <= names
    assert _capture(ALWAYS_OFF, fast=True) == ()
    # parentbased_off: only records under a sampled parent survive
    assert {s.name for s in _capture(DEFAULT_OFF, fast=True)} == {"tokenize", "modelExec"}


def test_ratio_sampler_is_asked_per_record():
    asked = []

    class Recording(TraceIdRatioBased):
        def should_sample(self, parent_context, trace_id, name, *args, **kwargs):
            asked.append(name)
            return super().should_sample(parent_context, trace_id, name, *args, **kwargs)

    spans = _capture(ParentBasedTraceIdRatio(1.0), fast=True)
    assert len(spans) == 4
    sampler = ParentBasedTraceIdRatio(1.0)
    sampler._root = Recording(0.0)  # drop every root, keep parented records
    spans = _capture(sampler, fast=True)
    assert sorted(asked) == ["batchFrameworkProcessing", "httpReq"]
    assert {s.name for s in spans} == {"tokenize", "modelExec"}


def test_fast_path_only_where_provably_same():
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("t")
    assert FastSpanBuilder.for_tracer(tracer, recorder.Deferred) is not None

    class Stamping(SpanProcessor):
        def on_start(self, span, parent_context=None):
            span.set_attribute("stamped", True)

    provider.add_span_processor(Stamping())
    assert FastSpanBuilder.for_tracer(provider.get_tracer("t"), recorder.Deferred) is None
    provider.shutdown()

    # A processor that writes at span start still sees every record (the slow way).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(Stamping())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder.set_tracer_provider(provider)
    try:
        recorder.record_span("x", 1, 2, {"a": 1})
        recorder.flush()
    finally:
        recorder.set_tracer_provider(None)
    assert [dict(s.attributes)["stamped"] for s in exporter.get_finished_spans()] == [True]


def test_exception_record_keeps_the_exception_event():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder.set_tracer_provider(provider)
    try:
        recorder.record_span("boom", 1, 2, {"a": 1}, exception=ValueError("bad"))
        recorder.flush()
    finally:
        recorder.set_tracer_provider(None)
    (span,) = exporter.get_finished_spans()
    assert [e.name for e in span.events] == ["exception"]
    assert span.status.status_code.name == "ERROR"


def _file_rows(tmp_path, sampler, fast: bool, with_spans: bool):
    """Mstx and Meta rows the file exporter writes for every record shape (plus a meta and a
    link record), and the spans a second exporter receives next to it."""
    import sqlite3

    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    folder = tmp_path / f"{fast}-{with_spans}-{id(sampler)}"
    file_exporter = MsServiceSpanExporter(folder, hostname="h")
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(ThreadIdSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(file_exporter))
    if with_spans:
        provider.add_span_processor(SimpleSpanProcessor(memory))
    recorder.set_tracer_provider(provider)
    recorder.set_fast_path(fast)
    try:
        for record in _records():
            recorder.record_span(**record)
        recorder.record_meta("role", "engine_core")
        recorder.record_event(contract.LINK_NAME, {contract.DOMAIN: "Engine",
                                                   contract.LINK_FROM: "ext",
                                                   contract.LINK_TO: "int"},
                              timestamp_ns=NOW + 1, record=contract.RECORD_LINK)
        recorder.record_span("failing", NOW, NOW + 3, {contract.DOMAIN: "Execute"},
                             exception=ValueError("bad"), thread_id=7)  # always the slow way
        recorder.flush()
        provider.force_flush()
    finally:
        recorder.set_fast_path(True)
        recorder.set_tracer_provider(None)
    provider.shutdown()
    if not file_exporter.path.exists():
        return [], [], memory.get_finished_spans()
    with sqlite3.connect(file_exporter.path) as conn:
        mstx = conn.execute("SELECT message, flag, timestamp, endTimestamp, pid, tid FROM Mstx "
                            "ORDER BY timestamp, message").fetchall()
        meta = conn.execute("SELECT name, value FROM Meta ORDER BY name").fetchall()
    return mstx, meta, memory.get_finished_spans()


@pytest.mark.parametrize("sampler", [DEFAULT_ON, DEFAULT_OFF, ALWAYS_OFF],
                         ids=["parentbased_on", "parentbased_off", "always_off"])
@pytest.mark.parametrize("with_spans", [False, True], ids=["file_only", "file_and_other"])
def test_file_exporter_fed_directly_writes_the_rows_its_spans_would(tmp_path, sampler,
                                                                     with_spans):
    slow_mstx, slow_meta, slow_spans = _file_rows(tmp_path, sampler, False, with_spans)
    fast_mstx, fast_meta, fast_spans = _file_rows(tmp_path, sampler, True, with_spans)
    assert fast_mstx == slow_mstx
    assert fast_meta == slow_meta
    if sampler is DEFAULT_ON:
        assert len(fast_mstx) == 9 and ("role", "engine_core") in fast_meta
    elif sampler is DEFAULT_OFF:  # only records under a sampled parent
        assert len(fast_mstx) == 2 and fast_meta[0][0] == "hostname"
    # the other exporter still receives every sampled record as a span
    assert sorted(s.name for s in fast_spans) == sorted(s.name for s in slow_spans)
    assert bool(fast_spans) == (with_spans and sampler is not ALWAYS_OFF)


def test_file_only_builds_no_span():
    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(ThreadIdSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(MsServiceSpanExporter("/nonexistent")))
    builder = FastSpanBuilder.for_tracer(provider.get_tracer("t"), recorder.Deferred)
    assert builder is not None and len(builder.row_exporters) == 1
    assert builder.span_consumers == []  # the thread-id stamper does nothing at span end
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    builder = FastSpanBuilder.for_tracer(provider.get_tracer("t"), recorder.Deferred)
    assert len(builder.row_exporters) == 1 and len(builder.span_consumers) == 1
    provider.shutdown()


def test_a_long_drain_writes_as_it_goes(tmp_path, monkeypatch):
    import sqlite3

    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    exporter = MsServiceSpanExporter(tmp_path, hostname="h")
    batches = []
    real_export = exporter.write_rows
    monkeypatch.setattr(exporter, "write_rows",
                        lambda records: batches.append(len(records)) or real_export(records))
    monkeypatch.setattr(recorder, "ROWS_PER_WRITE", 3)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    recorder.set_tracer_provider(provider)
    try:
        for index in range(10):
            recorder.record_span("step", NOW + index, NOW + index + 1, {contract.DOMAIN: "X"})
        recorder.flush()
    finally:
        recorder.set_tracer_provider(None)
    provider.shutdown()
    # held rows stay bounded however busy the queue is (the recorder's own thread may have
    # drained part of them first)
    assert sum(batches) == 10 and max(batches) == 3 and len(batches) >= 4
    with sqlite3.connect(exporter.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM Mstx").fetchone() == (10,)
