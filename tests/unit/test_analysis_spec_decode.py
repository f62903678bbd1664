"""``spec_decode.csv`` and the acceptance columns of ``batch.csv``, from real capture files.

Hand-worked capture (ms after T0), EngineCore pid 200 (DP rank 1), Workers 300 and 301 (two
tensor-parallel ranks of DP rank 1, writing the same records), API server pid 100:

    step 0  schedule 1.0-1.2  r-a computed 20 (2 drafts), r-b computed 30 (3 drafts),
            r-c computed 40 (none)                                   exec 1.5-3.0
            specDecoding 3.5-3.8 (both workers): r-b 3 drafted / 2 accepted, r-a 2 / 1
    step 1  schedule 5.0-5.2  r-a computed 22, r-b computed 33, r-c 41        exec 5.5-6.5
    step 2  schedule 7.0-7.2  r-a computed 26 (async scheduling: planned before step 1's
            drafts were checked)                                     exec 7.5-8.5
            specDecoding 7.3-7.6 (worker 300, step 1's): r-a 2 / 2, r-b 3 / 0
    r-a is the API server's request A (link A -> r-a).

Step 0: 5 drafted, 3 accepted, ratio 0.6; per position [2/2, 1/2, 0/1] = [1.0, 0.5, 0.0].
Step 1: 5 drafted, 2 accepted, ratio 0.4; per position [1/2, 1/2, 0/1] = [0.5, 0.5, 0.0].
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture  # noqa: E402

from otel_vllm_ascend.analysis.batches import CSV_COLUMNS, build_batches  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.spec_decode import build_spec_decode  # noqa: E402
from otel_vllm_ascend.analysis.steps import engine_steps, step_requests  # noqa: E402

T0 = 1_767_225_600_000_000.0


def ms(value):
    return T0 + value * 1000.0


def detail(rid, it, computed, scheduled):
    return {"rid": rid, "iter": it, "type": 1, "num_scheduled_tokens": scheduled,
            "num_prompt_tokens": 10, "num_computed_tokens": computed}


def spec_item(rid, computed, drafted, accepted):
    return {"rid": rid, "num_computed_tokens": computed, "num_spec_output_tokens": drafted,
            "num_spec_accepted_tokens": accepted}


def spec_record(proc, start, end, items):
    drafted = sum(i["num_spec_output_tokens"] for i in items)
    accepted = sum(i["num_spec_accepted_tokens"] for i in items)
    proc.span("specDecoding", ms(start), ms(end), "Execute", items,
              **{"num_spec_output_tokens=": drafted, "num_spec_accepted_tokens=": accepted,
                 "accepted_ratio": round(accepted / drafted, 4)})


def spec_capture():
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    api.event("httpReq", ms(0.0), rid="A")
    api.link(ms(0.1), "A", "r-a")
    ec = cap.process("h1", 200, "engine_core", dpRankId="1")
    for start, dicts in ((1.0, [detail("r-a", 5, 20, 3), detail("r-b", 5, 30, 4),
                                detail("r-c", 5, 40, 1)]),
                         (5.0, [detail("r-a", 6, 22, 3), detail("r-b", 6, 33, 4),
                                detail("r-c", 6, 41, 1)]),
                         (7.0, [detail("r-a", 7, 26, 3)])):
        ec.span("batchFrameworkProcessing", ms(start), ms(start + 0.2), "Schedule", dicts,
                batch_type="Decode")
        ec.span("modelExec", ms(start + 0.5), ms(start + 1.5 if start != 1.0 else 3.0),
                "Execute", dicts, batch_type="Decode")
    workers = [cap.process("h1", pid, "worker", dpRankId="1") for pid in (300, 301)]
    for worker in workers:
        spec_record(worker, 3.5, 3.8, [spec_item("r-b", 30, 3, 2), spec_item("r-a", 20, 2, 1)])
    spec_record(workers[0], 7.3, 7.6, [spec_item("r-a", 22, 2, 2), spec_item("r-b", 33, 3, 0)])
    return cap


@pytest.fixture
def tables(tmp_path):
    spec_capture().write(tmp_path)
    frame, _, report = read_captures(tmp_path)
    assert report.problems == []
    steps = engine_steps(frame)
    per_request = step_requests(steps)
    spec = build_spec_decode(frame, steps, per_request)
    return frame, steps, per_request, spec


def test_spec_decode_rows(tables):
    _, _, _, spec = tables
    assert list(spec["rid"]) == ["r-b", "A", "A", "r-b"]  # one copy per (step, request)
    assert list(spec["step_id"]) == [0, 0, 1, 1]
    assert list(spec["iter"]) == [5, 5, 6, 6]
    assert list(spec["spec_tokens"]) == [3, 2, 2, 3]
    assert list(spec["accepted_tokens"]) == [2, 1, 2, 0]
    assert list(spec["accepted_ratio"]) == pytest.approx([0.6667, 0.5, 1.0, 0.0])
    assert list(spec["during_time(ms)"]) == pytest.approx([0.3, 0.3, 0.3, 0.3])
    assert list(spec["draft_model_time_ms"]) == list(spec["during_time(ms)"])
    assert list(spec["dp_rank"]) == [1, 1, 1, 1]
    assert set(spec["pid"]) <= {300, 301}
    assert spec["start_datetime"][0] == "2026-01-01 00:00:00.003500+00:00"


def test_batch_acceptance_columns(tables):
    frame, steps, per_request, spec = tables
    batches = build_batches(frame, steps, per_request, spec_decode=spec)
    assert list(CSV_COLUMNS[-4:]) == ["num_spec_output_tokens", "num_spec_accepted_tokens",
                                      "accepted_ratio", "accepted_ratio_per_pos"]
    assert list(batches["num_spec_output_tokens"][:2]) == [5, 5]
    assert list(batches["num_spec_accepted_tokens"][:2]) == [3, 2]
    assert list(batches["accepted_ratio"][:2]) == [0.6, 0.4]
    assert [json.loads(t) for t in batches["accepted_ratio_per_pos"][:2]] == [
        [1.0, 0.5, 0.0], [0.5, 0.5, 0.0]]
    assert np.isnan(batches["num_spec_output_tokens"][2])
    assert batches["accepted_ratio_per_pos"][2] == ""
    # The same table computed by build_batches itself.
    again = build_batches(frame)
    assert again["accepted_ratio"].tolist()[:2] == [0.6, 0.4]


def test_unknown_acceptance_stays_empty(tmp_path):
    cap = Capture()
    ec = cap.process("h1", 200, "engine_core")
    ec.span("batchFrameworkProcessing", ms(1.0), ms(1.2), "Schedule", [detail("r-a", 0, 20, 3)])
    worker = cap.process("h1", 300, "worker")
    worker.span("specDecoding", ms(3.0), ms(3.1), "Execute",
                [{"rid": "r-a", "num_computed_tokens": 20, "num_spec_output_tokens": 2}],
                **{"num_spec_output_tokens=": 2})
    cap.write(tmp_path)
    frame, _, _ = read_captures(tmp_path)
    spec = build_spec_decode(frame, engine_steps(frame), step_requests(engine_steps(frame)))
    assert (spec["spec_tokens"][0], spec["step_id"][0]) == (2, 0)
    assert pd.isna(spec["accepted_tokens"][0]) and np.isnan(spec["accepted_ratio"][0])
    batches = build_batches(frame)
    assert batches["num_spec_output_tokens"][0] == 2
    assert np.isnan(batches["num_spec_accepted_tokens"][0])
    assert np.isnan(batches["accepted_ratio"][0]) and batches["accepted_ratio_per_pos"][0] == ""


def test_reference_draft_time_records_take_the_next_runner_counts(tmp_path):
    # msserviceprofiler 26.x: specDecoding while drafting with 0 accepted and an empty mapping,
    # the counts on the next modelRunnerExec of the process.
    cap = Capture()
    worker = cap.process("h1", 400)
    items = [{"rid": "r-x", "iter": 3, "type": 1, "num_scheduled_tokens": 2,
              "num_prompt_tokens": 5, "num_computed_tokens": 2, "num_spec_output_tokens": 2,
              "num_spec_accepted_tokens": 0}]
    worker.span("specDecoding", ms(1.0), ms(1.5), "Execute", items, batch_type="Decode",
                accepted_ratio=0.0, accepted_ratio_per_pos={})
    worker.span("modelRunnerExec", ms(0.0), ms(0.9), "Execute", ["r-x"],
                spec_decode_accepted_by_req={"r-x": 2})  # before: not the one
    worker.span("modelRunnerExec", ms(2.0), ms(4.0), "Execute", ["r-x"],
                spec_decode_accepted_by_req={"r-x": 1})
    cap.write(tmp_path)
    frame, _, _ = read_captures(tmp_path)
    spec = build_spec_decode(frame)
    assert spec[["rid", "iter", "spec_tokens", "accepted_tokens", "accepted_ratio"]].to_dict(
        "records") == [{"rid": "r-x", "iter": 3.0, "spec_tokens": 2.0, "accepted_tokens": 1.0,
                        "accepted_ratio": 0.5}]
    assert pd.isna(spec["step_id"][0])


def test_trace_service_layout_with_the_2026_tables(tmp_path):
    paths = spec_capture().write(tmp_path, layout="trace_service", session="0612-1030")
    for path in paths:  # the 2026 library also creates these in every file
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,"
                         " pid TEXT, timestamp INTEGER, cat TEXT, args TEXT)")
            conn.execute("CREATE TABLE flow (id INTEGER PRIMARY KEY AUTOINCREMENT, flow_id TEXT,"
                         " name TEXT, cat TEXT, track_id INTEGER, timestamp INTEGER, type TEXT)")
    assert all(p.parent.name == "Trace_Service" and p.parent.parent.name == "0612-1030"
               for p in paths)
    frame, processes, report = read_captures(tmp_path)
    assert report.problems == [] and len(report.files) == 4
    assert {p.pid: p.dp_rank for p in processes} == {100: None, 200: 1, 300: 1, 301: 1}
    spec = build_spec_decode(frame, engine_steps(frame), step_requests(engine_steps(frame)))
    assert list(spec["accepted_tokens"]) == [2, 1, 2, 0]


def test_no_speculative_decoding(tmp_path):
    cap = Capture()
    ec = cap.process("h1", 200, "engine_core")
    ec.span("batchFrameworkProcessing", ms(1.0), ms(1.2), "Schedule", [detail("r-a", 0, 0, 3)])
    cap.write(tmp_path)
    frame, _, _ = read_captures(tmp_path)
    spec = build_spec_decode(frame)
    assert spec.empty and "accepted_tokens" in spec.columns
    assert np.isnan(build_batches(frame)["accepted_ratio"][0])
