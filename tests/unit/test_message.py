"""Span -> msserviceprofiler record translation (exporters/message.py), on real SDK spans."""

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vllm_ascend import contract
from otel_vllm_ascend.contract_message import RESERVED_KEYS
from otel_vllm_ascend.exporters import message
from otel_vllm_ascend.exporters.message import FLAG_EVENT, FLAG_SPAN


@pytest.fixture(scope="module")
def make_span():
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))

    def make(name, attributes, start=1_000, end=2_000, events=(), scope="otel_vllm_ascend"):
        tracer = provider.get_tracer(scope)
        span = tracer.start_span(name, attributes=attributes, start_time=start)
        for event_name, ts, attrs in events:
            span.add_event(event_name, attrs, ts)
        span.end(end_time=end)
        return memory.get_finished_spans()[-1]

    yield make
    provider.shutdown()


def loads(row):
    return json.loads(row.message)


def test_span_with_events_gives_event_rows_first_then_span_row(make_span):
    span = make_span("batchFrameworkProcessing", {
        contract.DOMAIN: "Schedule", contract.RID: ("r1", "r2"), "batch_type": "Decode",
        "batch_size": 2, contract.METRIC_PREFIX + "num_scheduled_tokens": 2,
        contract.THREAD_ID: 777,
    }, start=10, end=50, events=[
        ("Enqueue", 20, {contract.RID: "r1", contract.METRIC_PREFIX + "QueueSize": 1,
                         contract.SCOPE_PREFIX + "QueueName": "WAITING"}),
        ("Free", 30, {contract.DOMAIN: "Schedule.KVCache", contract.RID: "r2"}),
    ])
    records = message.span_to_records(span)
    assert [r.flag for r in records.mstx] == [FLAG_EVENT, FLAG_EVENT, FLAG_SPAN]
    enqueue, free, batch = records.mstx
    assert (enqueue.timestamp, enqueue.end_timestamp, enqueue.tid) == (20, 20, 777)
    assert enqueue.message == ('{"domain": "Schedule", "name": "Enqueue", "type": 0, "rid": "r1", '
                               '"QueueSize=": 1, "scope#QueueName": "WAITING"}')
    assert loads(free)["domain"] == "Schedule.KVCache"  # its own domain wins over the span's
    assert (batch.timestamp, batch.end_timestamp, batch.tid) == (10, 50, 777)
    assert batch.message == ('{"domain": "Schedule", "name": "batchFrameworkProcessing", '
                             '"type": 2, "rid": ["r1", "r2"], "batch_type": "Decode", '
                             '"batch_size": 2, "num_scheduled_tokens=": 2}')
    assert records.meta == []


def test_zero_duration_records(make_span):
    event = message.span_to_records(make_span("httpReq", {
        contract.RECORD: contract.RECORD_EVENT, contract.DOMAIN: "Engine", contract.RID: "x",
        "gen_ai.request.id": "x", contract.THREAD_ID: 5}, start=7, end=7)).mstx
    assert len(event) == 1 and event[0].flag == FLAG_EVENT
    assert (event[0].timestamp, event[0].end_timestamp) == (7, 7)
    assert event[0].message == '{"domain": "Engine", "name": "httpReq", "type": 0, "rid": "x"}'

    link = message.span_to_records(make_span(contract.LINK_NAME, {
        contract.RECORD: contract.RECORD_LINK, contract.DOMAIN: "Engine",
        contract.LINK_FROM: "cmpl-a-0", contract.LINK_TO: "cmpl-a-0-ff"})).mstx
    # msserviceprofiler's link(): type 3, from, to, and no name.
    assert link[0].message == (
        '{"domain": "Engine", "type": 3, "from": "cmpl-a-0", "to": "cmpl-a-0-ff"}')
    assert link[0].flag == FLAG_EVENT

    metric = message.span_to_records(make_span("sample", {
        contract.RECORD: contract.RECORD_METRIC, contract.DOMAIN: "Schedule",
        contract.METRIC_INC_PREFIX + "WAITING": -1, contract.METRIC_PREFIX + "usage": 0.25})).mstx
    # launch(): the dict as it is, no name, no type.
    assert metric[0].message == '{"domain": "Schedule", "WAITING+": -1, "usage=": 0.25}'


def test_meta_record_goes_to_meta_only(make_span):
    records = message.span_to_records(make_span(contract.META_NAME, {
        contract.RECORD: contract.RECORD_META, contract.META_PREFIX + "dpRankId": "1",
        contract.META_PREFIX + "role": "engine_core", contract.DOMAIN: "ignored"}))
    assert records.mstx == []
    assert records.meta == [("dpRankId", "1"), ("role", "engine_core")]


def test_rid_detail_is_the_rid_and_stays_a_list_of_dicts(make_span):
    detail = [{"rid": "a", "iter": 0, "type": 0, "num_scheduled_tokens": 5,
               "num_prompt_tokens": 5, "num_computed_tokens": 0}]
    span = make_span("modelExec", {contract.DOMAIN: "Execute", contract.RID: ("a",),
                                   contract.RID_DETAIL: json.dumps(detail), "batch_size": 5})
    msg = loads(message.span_to_records(span).mstx[0])
    assert msg["rid"] == detail
    assert list(msg) == ["domain", "name", "type", "rid", "batch_size"]


def test_unreadable_rid_detail_falls_back_to_rid(make_span):
    for bad in ("[not json", "not json", "[1, 2"):
        span = make_span("modelExec", {contract.DOMAIN: "Execute", contract.RID: "a",
                                       contract.RID_DETAIL: bad})
        assert loads(message.span_to_records(span).mstx[0])["rid"] == "a", bad


def test_type_override_and_namespaced_attributes(make_span):
    span = make_span("custom", {contract.DOMAIN: "D", contract.TYPE: 1, "code.function": "f",
                                "vllm.x": 1, "otel.y": 2, "exception.type": "E",
                                "thread.id": 9, contract.META_PREFIX + "k": "v", "ms.unknown": 1,
                                "flags": [True, False], "ratio": 0.5})
    msg = loads(message.span_to_records(span).mstx[0])
    assert msg == {"domain": "D", "name": "custom", "type": 1, "flags": [True, False],
                   "ratio": 0.5}


def test_reserved_names_are_left_out_and_reported(make_span):
    span = make_span("s", {contract.DOMAIN: "D", "pid": 1, "hostname": "h", "name": "other",
                           "keep": 1})
    records = message.span_to_records(span)
    assert loads(records.mstx[0]) == {"domain": "D", "name": "s", "type": 2, "keep": 1}
    assert sorted(records.rejected_keys) == ["hostname", "pid"]


def test_tid_fallback_when_thread_id_missing(make_span):
    span = make_span("s", {contract.DOMAIN: "D"})
    assert message.span_to_records(span, fallback_tid=4321).mstx[0].tid == 4321
    assert message.span_to_records(span).mstx[0].tid == threading.get_native_id()
    bad = make_span("s", {contract.DOMAIN: "D", contract.THREAD_ID: "12"})
    assert message.span_to_records(bad, fallback_tid=3).mstx[0].tid == 3


def test_foreign_spans_are_not_contract_spans(make_span):
    vllm_span = make_span("llm_request", {"gen_ai.request.id": "x"}, scope="vllm.llm_engine")
    ours_elsewhere = make_span("x", {contract.DOMAIN: "D"}, scope="someone")
    ours = make_span("x", {}, scope="otel_vllm_ascend.handlers")
    assert not message.is_contract_span(vllm_span)
    assert message.is_contract_span(ours_elsewhere)
    assert message.is_contract_span(ours)
    mstx, meta, _ = message.translate_batch([vllm_span, ours], fallback_tid=1)
    assert len(mstx) == 1 and meta == []


def test_translate_batch_matches_span_to_records(make_span):
    spans = [
        make_span("a", {contract.DOMAIN: "D", contract.THREAD_ID: 1},
                  events=[("e", 1_500, {"k": 1})]),
        make_span("Meta", {contract.RECORD: contract.RECORD_META, contract.META_PREFIX + "x": 1}),
        make_span("b", {contract.RECORD: contract.RECORD_EVENT, contract.THREAD_ID: 2}),
    ]
    mstx, meta, rejected = message.translate_batch(spans, fallback_tid=0)
    expected = [tuple(row) for span in spans for row in message.span_to_records(span, 0).mstx]
    assert mstx == expected
    assert meta == [("x", "1")] and rejected == []


attr_names = st.text(alphabet="abcdefghXYZ_#=+ ", min_size=1, max_size=8)
attr_values = st.one_of(
    st.text(max_size=12), st.integers(-2**62, 2**62), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=5), max_size=3).map(tuple),
    st.lists(st.integers(0, 9), max_size=3).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(plain=st.dictionaries(attr_names, attr_values, max_size=6),
       metrics=st.dictionaries(attr_names, st.integers(0, 1000), max_size=3),
       detail=st.none() | st.lists(st.fixed_dictionaries(
           {"rid": st.text(max_size=6), "iter": st.integers(0, 9)}), max_size=3))
def test_messages_are_json_objects_with_mapped_keys(make_span, plain, metrics, detail):
    attrs = {contract.DOMAIN: "Dom", contract.RID: "r"}
    attrs.update(plain)
    attrs.update({contract.METRIC_PREFIX + k: v for k, v in metrics.items()})
    if detail is not None:
        attrs[contract.RID_DETAIL] = json.dumps(detail)
    span = make_span("n", attrs)
    msg = json.loads(message.span_to_records(span, fallback_tid=1).mstx[0].message)
    assert list(msg)[:4] == ["domain", "name", "type", "rid"]
    assert msg["rid"] == (detail if detail is not None else "r")
    metric_keys = {k + "=" for k in metrics}
    for key, value in plain.items():
        if key in RESERVED_KEYS or key in ("domain", "name", "type", "rid"):
            assert key in ("domain", "name", "type", "rid") or key not in msg
            continue
        if key in metric_keys:
            continue  # same message key as a metric: the later attribute wins
        expected = list(value) if isinstance(value, tuple) else value
        assert msg[key] == expected
    for key, value in metrics.items():
        assert msg[key + "="] == value
