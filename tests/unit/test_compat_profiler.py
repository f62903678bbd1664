"""The reference's fluent Profiler API on our recorder: records, attributes, message keys.

Spans go through the real SDK (TracerProvider + in-memory exporter) and are translated with the
exporter's own message translation, so the assertions are on the message keys a
msserviceprofiler analyzer reads; one test writes a real ms_service_*.db with our exporter.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vllm_ascend import contract, control, recorder
from otel_vllm_ascend.compat import Level, Profiler
from otel_vllm_ascend.compat.profiler import message_to_attributes, parse_level
from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.exporters import message
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter


def _config(**overrides) -> ProfilerConfig:
    return ProfilerConfig(**{"enable": True, **overrides})


@pytest.fixture()
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder.set_tracer_provider(provider)
    control.start(config=_config())

    def finished():
        recorder.flush()
        return list(exporter.get_finished_spans())

    yield finished
    control.stop()
    recorder.flush()
    recorder.set_tracer_provider(None)


def _rows(span_list):
    """(flag, message dict) of every Mstx row the exporter would write, in emission order."""
    rows = []
    for span in span_list:
        records = message.span_to_records(span)
        rows.extend((row.flag, json.loads(row.message)) for row in records.mstx)
    return rows


def test_event_keys_match_the_reference(spans):
    Profiler(Level.INFO).domain("Schedule").res("req-1").metric("QueueSize", 3) \
        .metric_scope("QueueName", "WAITING").event("Enqueue")
    (flag, msg), = _rows(spans())
    assert flag == 1
    assert msg == {"domain": "Schedule", "name": "Enqueue", "type": 0, "rid": "req-1",
                   "QueueSize=": 3, "scope#QueueName": "WAITING"}


def test_metric_inc_attr_and_scope_as_req_id(spans):
    Profiler(Level.INFO).domain("Schedule").res("r").metric_inc("FINISHED", 1) \
        .attr("hitCache", 0.5).metric_scope_as_req_id().event("ReqState")
    (_, msg), = _rows(spans())
    assert msg["FINISHED+"] == 1
    assert msg["hitCache"] == 0.5
    assert msg["scope#"] == "req"


def test_span_start_end_writes_one_span_row_with_late_attributes(spans):
    prof = Profiler(Level.INFO).domain("Execute").res(["a", "b"]).span_start("modelExec")
    prof.attr("batch_size", 7)
    prof.span_end()
    prof.span_end()  # a second end writes nothing more
    finished = spans()
    assert [s.name for s in finished] == ["modelExec"]
    assert finished[0].end_time >= finished[0].start_time
    (flag, msg), = _rows(finished)
    assert flag == 2
    assert msg == {"domain": "Execute", "name": "modelExec", "type": 2, "rid": ["a", "b"],
                   "batch_size": 7}


def test_context_manager_ends_the_span_even_when_the_body_raises(spans):
    with pytest.raises(KeyError):
        with Profiler(Level.INFO).domain("Execute").span_start("sample"):
            raise KeyError("boom")
    assert [s.name for s in spans()] == ["sample"]


def test_rid_dict_list_goes_to_rid_detail_and_comes_back_as_the_list(spans):
    batch = [{"rid": "r1", "iter": 0, "type": 0}, {"rid": "r2", "iter": 3, "type": 1}]
    with Profiler(Level.INFO).domain("Schedule").res(batch).span_start("batchFrameworkProcessing") \
            as prof:
        prof.attr("batch_type", "Prefill,Decode")
    finished = spans()
    assert finished[0].attributes[contract.RID] == ("r1", "r2")
    (_, msg), = _rows(finished)
    assert msg["rid"] == batch
    assert msg["batch_type"] == "Prefill,Decode"


def test_event_inside_an_open_span_is_written_as_its_own_row(spans):
    with Profiler(Level.INFO).domain("Schedule").span_start("batchFrameworkProcessing"):
        Profiler(Level.INFO).domain("Schedule.KVCache").res(["r1"]).metric("UsedBlocks", 4) \
            .event("KVCacheStatus")
    finished = spans()
    assert len(finished) == 1  # the event is a span event, not a span of its own
    assert [e.name for e in finished[0].events] == ["KVCacheStatus"]
    rows = _rows(finished)
    assert [(flag, msg["name"]) for flag, msg in rows] == [
        (1, "KVCacheStatus"), (2, "batchFrameworkProcessing")]
    assert rows[0][1]["domain"] == "Schedule.KVCache"
    assert rows[0][1]["UsedBlocks="] == 4


def test_events_of_a_span_never_ended_are_still_written(spans):
    prof = Profiler(Level.INFO).domain("Schedule").span_start("lost")
    Profiler(Level.INFO).domain("Schedule").res("r").event("Dequeue")
    del prof
    gc.collect()
    rows = _rows(spans())
    assert [(flag, msg["name"]) for flag, msg in rows] == [(1, "Dequeue")]


def test_event_on_another_thread_is_not_attached_to_this_threads_span(spans):
    with Profiler(Level.INFO).domain("Schedule").span_start("outer"):
        worker = threading.Thread(
            target=lambda: Profiler(Level.INFO).domain("Engine").res("x").event("httpReq"))
        worker.start()
        worker.join()
    names = sorted(s.name for s in spans())
    assert names == ["httpReq", "outer"]


def test_link_record(spans):
    Profiler(Level.INFO).domain("Engine").link("cmpl-1", "cmpl-1-abcd")
    finished = spans()
    assert finished[0].attributes[contract.RECORD] == contract.RECORD_LINK
    (flag, msg), = _rows(finished)
    assert msg == {"domain": "Engine", "type": 3, "from": "cmpl-1", "to": "cmpl-1-abcd"}


def test_launch_writes_a_metric_sample_without_name_or_type(spans):
    Profiler(Level.INFO).domain("npu").metric("usage", 28004).metric_scope("device", 0).launch()
    (flag, msg), = _rows(spans())
    assert msg == {"domain": "npu", "usage=": 28004, "scope#device": 0}


def test_add_meta_info_writes_a_meta_pair_only(spans):
    Profiler(Level.INFO).add_meta_info("dpRankId", 1)
    finished = spans()
    records = message.span_to_records(finished[0])
    assert records.mstx == []
    assert records.meta == [("dpRankId", "1")]


def test_level_above_the_configured_one_records_nothing(spans):
    Profiler(Level.DETAILED).domain("Execute").span_start("detail").span_end()
    Profiler(Level.VERBOSE).event("verbose")
    Profiler(Level.ERROR).event("kept")
    assert [s.name for s in spans()] == ["kept"]


def test_domain_outside_the_allow_list_records_nothing(spans):
    control.start(config=_config(domain=frozenset({"Engine"})))
    Profiler(Level.INFO).domain("Schedule").res("r").event("Enqueue")
    Profiler(Level.INFO).domain("Engine").res("r").event("httpReq")
    assert [s.name for s in spans()] == ["httpReq"]


def test_nothing_is_recorded_while_collection_is_off(spans):
    control.start(config=_config(enable=False))
    prof = Profiler(Level.INFO).domain("Engine")
    assert prof.enable is False
    prof.res("r").event("httpReq")
    with Profiler(Level.INFO).domain("Execute").span_start("s"):
        pass
    Profiler(Level.INFO).link("a", "b")
    Profiler(Level.INFO).metric("m", 1).launch()
    Profiler(Level.INFO).add_meta_info("k", "v")
    assert spans() == []


def test_values_opentelemetry_cannot_hold_are_kept_as_json_text_or_left_out():
    attrs = message_to_attributes({"cfg": {"a": 1}, "mixed": [1, "x"], "none": None,
                                   "ints": (1, 2), "name": "ignored", "type": 5})
    assert attrs == {"cfg": '{"a": 1}', "mixed": '[1, "x"]', "ints": [1, 2], contract.TYPE: 5}


@pytest.mark.parametrize("given, expected", [
    (Level.INFO, 20), (Level.L0, 10), (Level.LEVEL_DETAILED_TRACE, 30), (40, 40),
    ("INFO", 20), ("verbose", 40), ("l2", 30), ("25", 25),
])
def test_parse_level(given, expected):
    assert parse_level(given) == expected


def test_reference_level_values():
    assert (Level.ERROR, Level.INFO, Level.DETAILED, Level.VERBOSE) == (10, 20, 30, 40)
    assert Level.L1 is Level.INFO and Level.LEVEL_NORMAL_TRACE is Level.INFO
    assert Level.L0 is Level.ERROR and Level.LEVEL_OUTLIER_ENENT is Level.ERROR
    assert Level.L2 is Level.DETAILED


def test_unknown_level_name_is_a_clear_error():
    with pytest.raises(ValueError, match="profiler level 'LOUD': unknown level name"):
        Profiler("LOUD")


def test_a_real_capture_file_holds_the_reference_rows(tmp_path):
    exporter = MsServiceSpanExporter(folder=tmp_path, hostname="node1")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder.set_tracer_provider(provider)
    control.start(config=_config())
    try:
        with Profiler(Level.INFO).domain("Schedule").res([{"rid": "r1", "iter": 0, "type": 0}]) \
                .span_start("batchFrameworkProcessing") as prof:
            Profiler(Level.INFO).domain("Schedule").res(["r1"]).metric("QueueSize", 0) \
                .metric_scope("QueueName", "WAITING").event("Dequeue")
            prof.attr("batch_type", "Prefill")
        Profiler(Level.INFO).domain("Engine").link("cmpl-1", "cmpl-1-0-ab")
        Profiler(Level.INFO).add_meta_info("dpRankId", 0)
        recorder.flush()
        provider.shutdown()
    finally:
        control.stop()
        recorder.set_tracer_provider(None)
    with sqlite3.connect(exporter.path) as db:
        rows = db.execute("SELECT flag, message, timestamp, endTimestamp FROM Mstx "
                          "ORDER BY markId").fetchall()
        meta = dict(db.execute("SELECT name, value FROM Meta").fetchall())
    decoded = [(flag, json.loads(text)) for flag, text, _, _ in rows]
    assert decoded == [
        (1, {"domain": "Schedule", "name": "Dequeue", "type": 0, "rid": ["r1"], "QueueSize=": 0,
             "scope#QueueName": "WAITING"}),
        (2, {"domain": "Schedule", "name": "batchFrameworkProcessing", "type": 2,
             "rid": [{"rid": "r1", "iter": 0, "type": 0}], "batch_type": "Prefill"}),
        (1, {"domain": "Engine", "type": 3, "from": "cmpl-1", "to": "cmpl-1-0-ab"}),
    ]
    span_start, span_end = rows[1][2], rows[1][3]
    assert span_start <= rows[0][2] <= span_end  # the event lies inside its span
    assert meta["dpRankId"] == "0"


def test_concurrent_tasks_attach_events_to_their_own_spans(spans):
    import asyncio

    async def request(rid, pause):
        with Profiler(Level.INFO).domain("Engine").res(rid).span_start(f"handle-{rid}"):
            await asyncio.sleep(pause)
            Profiler(Level.INFO).domain("Engine").res(rid).event("step")
            await asyncio.sleep(pause)

    async def both():
        await asyncio.gather(request("a", 0.005), request("b", 0.02))

    asyncio.run(both())
    by_name = {s.name: s for s in spans()}
    assert set(by_name) == {"handle-a", "handle-b"}
    for rid in ("a", "b"):
        (event,) = by_name[f"handle-{rid}"].events
        assert event.attributes[contract.RID] == rid
