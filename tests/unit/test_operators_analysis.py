"""Operator data in the analyzer: reading, clock alignment, op_summary / op_statistic, trace.

The golden trace below is written by hand: a profiler clock 500 µs ahead of the wall clock,
two step marks (the second opened 3 µs after its wall-clock reading), nested operators, a
stack frame and an operator between the steps. Every expected number is worked out in the
comments from those inputs, not from the code.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture  # noqa: E402

from otel_vllm_ascend.analysis import cli, operators  # noqa: E402

HOST, PID, TID = "nodeA", 4242, 4250
W1 = 1_700_000_000_000_000  # wall clock of step 1's mark, µs since the epoch
W2 = W1 + 2000
BASE_US = W1 - 10_000  # the trace's baseTimeNanoseconds, in µs
OFFSET = 500  # the profiler's clock runs 500 µs ahead of the wall clock


def _x(name, ts, dur, cat="cpu_op", tid=TID, pid=PID):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}


def golden_events():
    # ts are relative to BASE_US: profiler time of wall W is W - BASE_US + OFFSET.
    return [
        {"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": "python"}},
        _x(f"otel_vllm_ascend.step#1@{W1 * 1000}", 10_500, 1000, "user_annotation"),
        _x("aten::linear", 10_600, 400),      # W1+100 .. W1+500
        _x("aten::addmm", 10_650, 300),       # W1+150 .. W1+450 (inside linear)
        _x("forward (model.py:10)", 10_550, 900, "python_function"),  # a stack frame
        _x("aten::relu", 11_200, 100),        # W1+700 .. W1+800
        _x("aten::copy_", 11_700, 50),        # W1+1200: between the steps
        # step 2's mark opened 3 µs after its wall-clock reading: W2+3 .. W2+1003
        _x(f"otel_vllm_ascend.step#2@{W2 * 1000}", 12_503, 1000, "user_annotation"),
        _x("aten::linear", 12_603, 600),      # W2+103 .. W2+703
        _x("aten::addmm", 12_653, 500),       # W2+153 .. W2+653
        {"ph": "i", "name": "Record Window End", "pid": "", "tid": "", "ts": 13_600},
    ]


def write_trace(root: Path, events=None, name="window-1.pt.trace.json",
                base_ns=BASE_US * 1000) -> Path:
    folder = root / "1204-1800" / f"operators_{HOST}-{PID}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"schemaVersion": 1, "baseTimeNanoseconds": base_ns,
                                "traceEvents": events if events is not None
                                else golden_events()}))
    return path


def test_alignment_and_step_attribution(tmp_path):
    write_trace(tmp_path)
    capture = operators.read_operators(tmp_path)
    assert capture.problems == []
    events = capture.events.set_index(["name", "start_us"])
    # The smallest mark delta (500 µs, step 1) is the offset: aligned = profiler time - 500.
    assert capture.steps["start_us"].tolist() == [W1, W2 + 3]
    assert capture.steps["end_us"].tolist() == [W1 + 1000, W2 + 1003]
    assert (capture.events["host"] == HOST).all() and (capture.events["pid"] == PID).all()
    assert events.loc[("aten::linear", W1 + 100), "end_us"] == W1 + 500
    assert events.loc[("aten::relu", W1 + 700), "step"] == 1
    assert events.loc[("aten::linear", W2 + 103), "step"] == 2
    assert math.isnan(events.loc[("aten::copy_", W1 + 1200), "step"])


def test_op_summary_golden(tmp_path):
    write_trace(tmp_path)
    table = operators.build_op_summary(operators.read_operators(tmp_path))
    # Step time in total: 1000 + 1000 µs. copy_ ran between steps, the stack frame is no
    # operator: neither is counted.
    expected = pd.DataFrame({
        "name": ["aten::linear", "aten::addmm", "aten::relu"],
        "kind": ["host"] * 3,
        "calls": [2, 2, 1],
        "total_us": [1000.0, 800.0, 100.0],   # 400+600, 300+500, 100
        "mean_us": [500.0, 400.0, 100.0],
        "max_us": [600.0, 500.0, 100.0],
        "min_us": [400.0, 300.0, 100.0],
        "step_share_pct": [50.0, 40.0, 5.0],  # total / 2000
    })
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)


def test_op_statistic_golden(tmp_path):
    write_trace(tmp_path)
    table = operators.build_op_statistic(operators.read_operators(tmp_path))
    assert list(table.columns) == list(operators.OP_STATISTIC_COLUMNS)
    rows = table.to_dict("records")
    # Step 1: union of [100,500] (addmm nested inside) and [700,800] = 500 µs of 1000.
    assert rows[0] == pytest.approx({
        "host": HOST, "pid": PID, "step": 1, "start_us": W1, "step_us": 1000.0,
        "operator_us": 500.0, "device_us": math.nan, "operator_calls": 3,
        "host_overhead_us": 500.0, "host_overhead_pct": 50.0}, nan_ok=True)
    # Step 2: union of [103,703] and [153,653] = 600 µs of 1000.
    assert rows[1] == pytest.approx({
        "host": HOST, "pid": PID, "step": 2, "start_us": W2 + 3, "step_us": 1000.0,
        "operator_us": 600.0, "device_us": math.nan, "operator_calls": 2,
        "host_overhead_us": 400.0, "host_overhead_pct": 40.0}, nan_ok=True)


def test_device_kernels_define_operator_time(tmp_path):
    events = golden_events() + [
        # a GPU kernel on stream 7 during step 1: W1+200 .. W1+650 (device pid 0)
        _x("void gemm_kernel", 10_700, 450, "kernel", tid=7, pid=0),
    ]
    write_trace(tmp_path, events)
    capture = operators.read_operators(tmp_path)
    kernel = capture.events[capture.events["kind"] == "device"].iloc[0]
    assert (kernel["pid"], kernel["step"], kernel["start_us"]) == (PID, 1, W1 + 200)
    rows = operators.build_op_statistic(capture).to_dict("records")
    assert rows[0]["device_us"] == 450.0 and rows[0]["operator_us"] == 450.0
    assert rows[0]["host_overhead_us"] == 550.0
    assert math.isnan(rows[1]["device_us"])


def test_bad_inputs_are_named(tmp_path):
    bad_ts = golden_events()
    bad_ts[2] = dict(bad_ts[2], ts="soon")
    write_trace(tmp_path, bad_ts, name="window-2.pt.trace.json")
    cut = write_trace(tmp_path, name="window-3.pt.trace.json")
    cut.write_text(cut.read_text()[:200])
    mark = golden_events()
    mark[1] = dict(mark[1], name="otel_vllm_ascend.step#x@1")
    write_trace(tmp_path, mark, name="window-4.pt.trace.json")
    write_trace(tmp_path)  # one good file still counts
    pt = tmp_path / "1204-1800" / "operators_nodeA-4242" / "nodeA-4242_1700000000_ascend_pt"
    (pt / "FRAMEWORK").mkdir(parents=True)
    capture = operators.read_operators(tmp_path)
    problems = "\n".join(capture.problems)
    assert "window-2.pt.trace.json: traceEvents[2]: ts 'soon' is not a number" in problems
    assert "window-3.pt.trace.json: not JSON" in problems
    assert "window-4.pt.trace.json: traceEvents[1]: step mark" in problems
    assert f"{pt}: torch_npu data not parsed yet" in problems and "analyse(" in problems
    assert len(capture.problems) == 4
    assert sorted(capture.steps["step"].tolist()) == [1, 2]


def test_ascend_pt_trace_view_is_read(tmp_path):
    pt = tmp_path / "nodeB-77_1700000000_ascend_pt"
    (pt / "ASCEND_PROFILER_OUTPUT").mkdir(parents=True)
    wall = W1
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "Python"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "Ascend Hardware"}},
        # torch_npu writes ts as µs-since-epoch strings; here 2 µs after the wall reading
        {"ph": "X", "cat": "cpu_op", "name": f"otel_vllm_ascend.step#1@{wall * 1000}",
         "pid": 1, "tid": 9, "ts": str(wall + 2), "dur": 100},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 9,
         "ts": str(wall + 12), "dur": 30},
        {"ph": "X", "name": "MatMul", "pid": 2, "tid": 3, "ts": str(wall + 40), "dur": 20,
         "args": {"Task Type": "AI_CORE"}},
    ]
    (pt / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").write_text(json.dumps(events))
    capture = operators.read_operators(tmp_path)
    assert capture.problems == []
    by_name = capture.events.set_index("name")
    assert (by_name.loc["aten::mm", "host"], by_name.loc["aten::mm", "pid"]) == ("nodeB", 77)
    assert by_name.loc["aten::mm", "start_us"] == wall + 10
    assert by_name.loc["MatMul", "kind"] == "device" and by_name.loc["MatMul", "step"] == 1


def test_ascend_pt_filtered_by_the_collection_settings(tmp_path):
    folder = tmp_path / "operators_nodeB-77"
    pt = folder / "nodeB-77_1700000000_ascend_pt"
    (pt / "ASCEND_PROFILER_OUTPUT").mkdir(parents=True)
    (folder / "operator_profile.json").write_text(json.dumps(
        {"settings": {"api_filter": ["mm"], "kernel_filter": ["Add"]}}))
    events = [
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "Ascend Hardware"}},
        {"ph": "X", "cat": "cpu_op", "name": f"otel_vllm_ascend.step#1@{W1 * 1000}",
         "pid": 1, "tid": 9, "ts": str(W1), "dur": 100},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 9,
         "ts": str(W1 + 1), "dur": 5},
        {"ph": "X", "cat": "cpu_op", "name": "aten::relu", "pid": 1, "tid": 9,
         "ts": str(W1 + 7), "dur": 5},
        {"ph": "X", "name": "MatMul", "pid": 2, "tid": 3, "ts": str(W1 + 20), "dur": 5},
        {"ph": "X", "name": "Add", "pid": 2, "tid": 3, "ts": str(W1 + 30), "dur": 5},
    ]
    (pt / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").write_text(json.dumps(events))
    capture = operators.read_operators(tmp_path)
    assert sorted(capture.events["name"]) == ["Add", "aten::mm"]


def _capture_with_worker(root: Path) -> None:
    """A Worker whose modelRunnerExec spans hold the golden marks (known on both sides)."""
    capture = Capture()
    worker = capture.process(HOST, PID, role="worker")
    worker.main_tid = TID
    worker.span("modelRunnerExec", W1 - 5, W1 + 1010, "Execute", rid=["r1"])
    worker.span("modelRunnerExec", W2 - 5, W2 + 1010, "Execute", rid=["r1"])
    worker.span("sample", W1 + 1100, W1 + 1300, "Execute")
    capture.write(root, session="1204-1800")


def test_operators_in_chrome_trace_on_the_span_clock(tmp_path):
    root = tmp_path / "prof"
    _capture_with_worker(root)
    write_trace(root)
    out = tmp_path / "out"
    assert cli.main(["--input-path", str(root), "--output-path", str(out)]) == 0
    trace = json.loads((out / "chrome_tracing.json").read_text())
    origin = trace["otherData"]["time_origin_unix_us"]
    events = trace["traceEvents"]
    ops = [e for e in events if e.get("cat") == "operator"]
    assert sorted(e["name"] for e in ops) == sorted(
        ["aten::linear", "aten::addmm", "aten::relu", "aten::copy_", "aten::linear",
         "aten::addmm", "forward (model.py:10)"])
    assert {e["pid"] for e in ops} == {PID}
    linear = min((e for e in ops if e["name"] == "aten::linear"), key=lambda e: e["ts"])
    assert linear["ts"] == pytest.approx(W1 + 100 - origin, abs=0.001)
    assert linear["dur"] == pytest.approx(400, abs=0.001) and linear["args"]["step"] == 1
    spans = [e for e in events if e.get("name") == "modelRunnerExec" and e.get("ph") == "X"]
    for op in ops:
        if "step" in op["args"]:
            assert any(s["ts"] <= op["ts"] and op["ts"] + op["dur"] <= s["ts"] + s["dur"]
                       for s in spans), op
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    assert names[(PID, operators.OPERATOR_TID_BASE + TID)] == f"operators thread {TID}"
    summary = pd.read_csv(out / "op_summary.csv")
    assert summary["name"].tolist()[:3] == ["aten::linear", "aten::addmm", "aten::relu"]
    assert len(pd.read_csv(out / "op_statistic.csv")) == 2
    html = (out / "report.html").read_text()
    assert "Operators" in html and "Top operators" in html and "aten::addmm" in html
    import sqlite3

    with sqlite3.connect(out / "profiler.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM op_summary").fetchone()[0] == 3


def test_capture_without_operator_data_is_unchanged(tmp_path):
    root = tmp_path / "prof"
    _capture_with_worker(root)
    out = tmp_path / "out"
    assert cli.main(["--input-path", str(root), "--output-path", str(out)]) == 0
    assert not (out / "op_summary.csv").exists() and not (out / "op_statistic.csv").exists()
    assert "Top operators" not in (out / "report.html").read_text()


def test_several_input_folders_are_read_together(tmp_path):
    """``--input-path A B``: the operator traces of both folders, as one capture."""
    write_trace(tmp_path / "a")
    write_trace(tmp_path / "b", name="window-2.pt.trace.json")
    one = operators.read_operators(tmp_path / "a")
    both = operators.read_operators([tmp_path / "a", tmp_path / "b"])
    assert both.problems == [] and len(both.sources) == 2
    assert len(both.events) == 2 * len(one.events) and len(both.steps) == 2 * len(one.steps)


def test_stream_writes_the_operator_tables(tmp_path):
    """--stream reads the operator data once, beside the windows: op_summary.csv,
    op_statistic.csv, their profiler.db tables, the operators in the trace and the report's
    operator section are one analysis's."""
    from analysis_fixtures import db_contents

    root = tmp_path / "prof"
    _capture_with_worker(root)
    write_trace(root)
    whole, streamed = tmp_path / "whole", tmp_path / "stream"
    assert cli.main(["--input-path", str(root), "--output-path", str(whole)]) == 0
    assert cli.main(["--input-path", str(root), "--output-path", str(streamed),
                     "--stream", "1"]) == 0
    for name in ("op_summary.csv", "op_statistic.csv", "report.html", "chrome_tracing.json"):
        assert (streamed / name).read_bytes() == (whole / name).read_bytes(), name
    assert "Top operators" in (streamed / "report.html").read_text()
    assert '"cat":"operator"' in (streamed / "chrome_tracing.json").read_text()
    ours = db_contents(streamed / "profiler.db")
    assert ours == db_contents(whole / "profiler.db")
    assert len(ours["op_summary"][2]) == 3
