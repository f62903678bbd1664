"""Collector -> exporter -> analyzer: records made through the recorder as real SDK spans, written
by this project's ``MsServiceSpanExporter`` *and* encoded as OTLP JSON by OpenTelemetry's own
OTLP encoder, give the same, hand-checked request and batch tables."""

import json
import os

import pytest
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vllm_ascend import contract, recorder
from otel_vllm_ascend.analysis.batches import build_batches
from otel_vllm_ascend.analysis.readers import read_captures
from otel_vllm_ascend.analysis.requests import build_requests
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

T0 = 1_767_225_600_000_000_000  # ns, 2026-01-01T00:00:00Z


def ns(ms):
    return T0 + int(round(ms * 1_000_000))


def detail(rid, it, rtype, nst, npt, nct):
    return {"rid": rid, "iter": it, "type": rtype, "num_scheduled_tokens": nst,
            "num_prompt_tokens": npt, "num_computed_tokens": nct}


def step(start, end, exec_start, exec_end, dicts, batch_type, events):
    attrs = {contract.DOMAIN: "Schedule", contract.RID_DETAIL: json.dumps(dicts),
             contract.RID: [d["rid"] for d in dicts], "batch_type": batch_type,
             "batch_size": len(dicts),
             contract.METRIC_PREFIX + "num_scheduled_tokens":
                 sum(d["num_scheduled_tokens"] for d in dicts)}
    recorder.record_span("batchFrameworkProcessing", ns(start), ns(end), attrs,
                         events=[(name, ns(t), a) for name, t, a in events])
    recorder.record_span("modelExec", ns(exec_start), ns(exec_end),
                         {**attrs, contract.DOMAIN: "Execute",
                          "batch_size": sum(d["num_scheduled_tokens"] for d in dicts)})


def event(name, t, domain, rid, **metrics):
    attrs = {contract.DOMAIN: domain, contract.RID: rid}
    for key, value in metrics.items():
        attrs[(contract.SCOPE_PREFIX if key == "QueueName" else contract.METRIC_PREFIX)
              + key] = value
    recorder.record_event(name, attrs, timestamp_ns=ns(t))


@pytest.fixture
def captured(tmp_path):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "vllm", "host.name": "h1", "process.pid": os.getpid()}))
    provider.add_span_processor(SimpleSpanProcessor(MsServiceSpanExporter(tmp_path / "db", "h1")))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    recorder.set_tracer_provider(provider)
    try:
        event("httpReq", 0.0, "Engine", "A")
        recorder.record_link("A", "A-x")
        event("Enqueue", 1.0, "Schedule", ["A-x"], QueueSize=1, QueueName="WAITING")
        step(2.0, 2.5, 3.0, 8.0, [detail("A-x", 0, 0, 10, 10, 0)], "Prefill", [
            ("Dequeue", 2.4, {contract.RID: ["A-x"], contract.SCOPE_PREFIX + "QueueName":
                              "WAITING"}),
            ("KVCacheStatus", 2.45, {contract.DOMAIN: "Schedule.KVCache",
                                     contract.RID: ["A-x"],
                                     contract.METRIC_PREFIX + "TotalBlocks": 100,
                                     contract.METRIC_PREFIX + "UsedBlocks": 2,
                                     contract.METRIC_PREFIX + "FreeBlocks": 98,
                                     contract.METRIC_PREFIX + "UsagePercent": 0.02})])
        event("detokenize", 9.0, "Engine", ["A"])
        event("httpReq", 4.0, "Engine", "B")
        recorder.record_link("B", "B-y")
        event("Enqueue", 5.0, "Schedule", ["B-y"], QueueSize=1, QueueName="WAITING")
        step(10.0, 10.4, 11.0, 15.0,
             [detail("A-x", 1, 1, 1, 10, 10), detail("B-y", 0, 0, 6, 6, 0)],
             "Prefill,Decode", [("Dequeue", 10.3, {contract.RID: ["B-y"],
                                                   contract.SCOPE_PREFIX + "QueueName":
                                                   "WAITING"})])
        event("httpRes", 16.0, "Engine", "A", recvTokenSize=10, replyTokenSize=2)
        event("detokenize", 16.5, "Engine", ["A", "B"])
        step(17.0, 17.2, 18.0, 20.0, [detail("B-y", 1, 1, 1, 6, 6)], "Decode", [])
        event("httpRes", 21.0, "Engine", "B", recvTokenSize=6, replyTokenSize=2)
        event("detokenize", 21.5, "Engine", ["B"])
        recorder.flush()
        provider.force_flush()
    finally:
        recorder.set_tracer_provider(None)
        provider.shutdown()
    spans = memory.get_finished_spans()
    otlp = tmp_path / "otlp" / "spans.jsonl"
    otlp.parent.mkdir()
    otlp.write_text(MessageToJson(encode_spans(spans), indent=None) + "\n")
    return tmp_path


@pytest.mark.parametrize("kind", ["db", "otlp"])
def test_roundtrip_tables(captured, kind):
    frame, processes, report = read_captures(captured / kind)
    assert report.problems == [] and len(report.files) == 1
    assert [(p.host, p.pid) for p in processes] == [("h1", os.getpid())]
    req = build_requests(frame).set_index("http_rid")
    assert list(req.index) == ["A", "B"]
    for rid, (e2e, wait, ttft, prompt, reply) in {"A": (16.0, 1.4, 9.0, 10, 2),
                                                  "B": (17.0, 5.3, 12.5, 6, 2)}.items():
        row = req.loc[rid]
        assert row["execution_time(ms)"] == pytest.approx(e2e, abs=1e-3)
        assert row["queue_wait_time(ms)"] == pytest.approx(wait, abs=1e-3)
        assert row["first_token_latency(ms)"] == pytest.approx(ttft, abs=1e-3)
        assert (row["recv_token_size"], row["reply_token_size"]) == (prompt, reply)
        assert not row["partial"]
    batches = build_batches(frame)
    assert batches["total_batch_size"].tolist() == [1, 2, 1]
    assert batches["total_scheduled_tokens"].tolist() == [10, 7, 1]
    assert batches["model_exec_time(ms)"].tolist() == pytest.approx([5.0, 4.0, 2.0])
    assert batches.loc[0, "used_blocks"] == 2 and batches.loc[0, "kvcache_usage_rate"] == 0.02
