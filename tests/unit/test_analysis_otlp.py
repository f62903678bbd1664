"""OTLP JSON input: the same run read from OTLP JSON lines and from ms_service_*.db agrees."""

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import simulate_service, write_otlp_json  # noqa: E402

from otel_vllm_ascend.analysis.batches import CSV_COLUMNS as BATCH_CSV  # noqa: E402
from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.requests import CSV_COLUMNS as REQUEST_CSV  # noqa: E402
from otel_vllm_ascend.analysis.requests import build_requests  # noqa: E402

T0 = 1_767_225_600_000_000_000  # ns


def test_otlp_json_equals_db_capture(tmp_path):
    sim = simulate_service(15, seed=21, max_batch=4)
    sim.capture.write(tmp_path / "db")
    write_otlp_json(sim.capture, tmp_path / "otlp" / "spans.jsonl")
    db_frame, db_procs, db_report = read_captures(tmp_path / "db")
    ot_frame, ot_procs, ot_report = read_captures(tmp_path / "otlp")
    assert ot_report.problems == [] and ot_report.files == [str(tmp_path / "otlp/spans.jsonl")]
    assert len(ot_frame) == len(db_frame)
    assert [(p.host, p.pid, p.role) for p in ot_procs] == \
        [(p.host, p.pid, p.role) for p in db_procs]
    pd.testing.assert_frame_equal(build_requests(ot_frame)[list(REQUEST_CSV)],
                                  build_requests(db_frame)[list(REQUEST_CSV)])
    columns = [c for c in BATCH_CSV if c != "prof_id"]
    pd.testing.assert_frame_equal(build_batches(ot_frame)[columns],
                                  build_batches(db_frame)[columns])


def span(name, start_ms, end_ms, attrs, events=()):
    def value(v):
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        if isinstance(v, list):
            return {"arrayValue": {"values": [value(x) for x in v]}}
        return {"stringValue": v}

    def attributes(d):
        return [{"key": k, "value": value(v)} for k, v in d.items()]

    return {"name": name, "startTimeUnixNano": str(T0 + int(start_ms * 1e6)),
            "endTimeUnixNano": str(T0 + int(end_ms * 1e6)), "attributes": attributes(attrs),
            "events": [{"name": n, "timeUnixNano": str(T0 + int(t * 1e6)),
                        "attributes": attributes(a)} for n, t, a in events]}


def test_span_events_meta_and_otel_only_attributes(tmp_path):
    resource = {"attributes": [{"key": "host.name", "value": {"stringValue": "h"}},
                               {"key": "process.pid", "value": {"intValue": "42"}}]}
    spans = [
        span("Meta", 0, 0, {"ms.record": "meta", "ms.meta.role": "engine_core",
                            "ms.meta.dpRankId": "1"}),
        span("batchFrameworkProcessing", 1, 2,
             {"ms.domain": "Schedule", "thread.id": 7, "batch_type": "Decode",
              "ms.rid_detail": json.dumps([{"rid": "r", "iter": 3, "type": 1}]),
              "ms.rid": ["r"], "gen_ai.request.id": "hidden", "ms.metric.num_scheduled_tokens": 1},
             events=[("KVCacheStatus", 1.5, {"ms.domain": "Schedule.KVCache",
                                             "ms.metric.UsedBlocks": 3}),
                     ("Dequeue", 1.6, {"ms.scope.QueueName": "WAITING", "ms.rid": ["r"]})]),
    ]
    path = tmp_path / "in" / "otlp.json"
    path.parent.mkdir()
    # One pretty-printed object (not JSON lines) is accepted too.
    path.write_text(json.dumps({"resourceSpans": [{"resource": resource, "scopeSpans": [
        {"spans": spans}]}]}, indent=2))
    frame, procs, report = read_captures(tmp_path / "in")
    assert report.problems == []
    assert [(p.pid, p.role, p.dp_rank) for p in procs] == [(42, "engine_core", 1)]
    rows = frame.set_index("name")
    assert list(frame["name"]) == ["batchFrameworkProcessing", "KVCacheStatus", "Dequeue"]
    assert rows.loc["KVCacheStatus", "domain"] == "Schedule.KVCache"
    assert rows.loc["Dequeue", "domain"] == "Schedule"  # inherited from its span
    assert rows.loc["Dequeue", "tid"] == 7 and rows.loc["Dequeue", "type"] == 0
    assert rows.loc["Dequeue", "scopes"] == {"QueueName": "WAITING"}
    sched = rows.loc["batchFrameworkProcessing"]
    assert sched["type"] == 2 and sched["dur_us"] == 1000.0
    assert sched["rid_detail"] == [{"rid": "r", "iter": 3, "type": 1}]
    assert sched["attrs"] == {}  # batch_type has its own column
    assert sched["batch_type"] == "Decode"
    assert sched["metrics"] == {"num_scheduled_tokens": 1.0}
    assert all("gen_ai.request.id" not in a for a in frame["attrs"])
    assert (frame["dp_rank"] == 1).all()


def test_broken_otlp_lines_are_counted(tmp_path):
    sim = simulate_service(3, seed=2)
    path = write_otlp_json(sim.capture, tmp_path / "in" / "t.jsonl")
    with open(path, "a") as handle:
        handle.write('{"resourceSpans": [ broken\n')
    frame, _, report = read_captures(tmp_path / "in")
    assert report.unparsable == 1
    assert report.problems == [f"{path}: 1 line(s) are not JSON; those lines were skipped"]
    assert len(build_requests(frame)) == 3
