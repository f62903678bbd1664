"""``forward.csv`` and ``request_status.csv`` from real capture files, values worked out by hand.

Forward capture (ms after T0), EngineCore h1/200, Workers h1/300 and h1/301 (``dpRankId`` 0),
and a Worker on another host h2/300:

    step 0  schedule 0.0-0.5 [r1 prefill 10 tok]            modelExec 1.0-5.0
    step 1  schedule 6.0-6.4 [r1 decode 1, r2 prefill 6]    modelExec 7.0-9.0
    step 2  schedule 10.0-10.2 [r1, r2 decode 1 each]       modelExec 11.0-12.0
    h1/300 forward 1.2-4.0 [r1], 7.1-8.5 [r1 r2], 11.1-11.8 [r1 r2]
    h1/301 forward 1.3-4.2 [r1], 7.2-8.6 [r1 r2], 20.0-21.0 [r1 r2] (no modelExec holds it)
    h2/300 forward 2.0-3.0 (no request ids, no step on h2)
"""

import csv
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture  # noqa: E402

from otel_vllm_ascend.analysis import forwards, request_status  # noqa: E402
from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.writers import write_csv  # noqa: E402

T0 = 1_767_225_600_000_000.0
NA = None


def ms(value):
    return T0 + value * 1000.0


def detail(rid, it, rtype, nst, npt, nct):
    return {"rid": rid, "iter": it, "type": rtype, "num_scheduled_tokens": nst,
            "num_prompt_tokens": npt, "num_computed_tokens": nct}


STEPS = (
    (0.0, 0.5, 1.0, 5.0, [detail("r1", 0, 0, 10, 10, 0)], "Prefill"),
    (6.0, 6.4, 7.0, 9.0, [detail("r1", 1, 1, 1, 10, 10), detail("r2", 0, 0, 6, 6, 0)],
     "Prefill,Decode"),
    (10.0, 10.2, 11.0, 12.0, [detail("r1", 2, 1, 1, 10, 11), detail("r2", 1, 1, 1, 6, 6)],
     "Decode"),
)


def engine_core(cap, runner_name=None, pid=200, **meta):
    ec = cap.process("h1", pid, "engine_core", **meta)
    for s0, s1, e0, e1, items, kind in STEPS:
        tokens = sum(d["num_scheduled_tokens"] for d in items)
        ec.span("batchFrameworkProcessing", ms(s0), ms(s1), "Schedule", items,
                batch_type=kind, batch_size=len(items), **{"num_scheduled_tokens=": tokens})
        ec.span("modelExec", ms(e0), ms(e1), "Execute", items, batch_type=kind,
                batch_size=tokens)
        if runner_name:
            ec.span(runner_name, ms(e0 + 0.25), ms(e1 - 0.25), "Execute")
    return ec


def forward_capture(tmp_path):
    cap = Capture()
    engine_core(cap)
    w300 = cap.process("h1", 300, "worker")
    for start, end, rids in ((1.2, 4.0, ["r1"]), (7.1, 8.5, ["r1", "r2"]),
                             (11.1, 11.8, ["r1", "r2"])):
        w300.span("forward", ms(start), ms(end), "Execute", rids)
    w301 = cap.process("h1", 301, "worker", dpRankId="0")
    for start, end, rids in ((1.3, 4.2, ["r1"]), (7.2, 8.6, ["r1", "r2"]),
                             (20.0, 21.0, ["r1", "r2"])):
        w301.span("forward", ms(start), ms(end), "Execute", rids)
    other = cap.process("h2", 300, "worker")
    other.span("forward", ms(2.0), ms(3.0), "Execute")
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    return frame


def test_forward_rows_by_hand(tmp_path):
    frame = forward_capture(tmp_path)
    table = forwards.build_forwards(frame, build_batches(frame))
    assert list(table.columns) == list(forwards.CSV_COLUMNS) + ["start_us", "end_us"]
    expected = [
        # host, pid, relative start, duration, bubble, batch size, type, iter, dp, tokens, step
        ("h1", 300, 0.0, 2.8, NA, 1, "Prefill", 1, NA, 10, 0),
        ("h1", 301, 0.1, 2.9, NA, 1, "Prefill", 1, 0, 10, 0),
        ("h2", 300, 0.0, 1.0, NA, NA, "", 1, NA, NA, NA),
        ("h1", 300, 5.9, 1.4, 3.1, 2, "Prefill,Decode", 2, NA, 7, 1),
        ("h1", 301, 6.0, 1.4, 3.0, 2, "Prefill,Decode", 2, 0, 7, 1),
        ("h1", 300, 9.9, 0.7, 2.6, 2, "Decode", 3, NA, 2, 2),
        # no modelExec holds it: the batch size is the ids it carries, the step stays empty
        ("h1", 301, 18.8, 1.0, 11.4, 2, "", 3, 0, NA, NA),
    ]
    assert len(table) == len(expected)
    for row, want in zip(table.to_dict("records"), expected):
        host, pid, rel, dur, bubble, size, kind, it, dp, tokens, step = want
        assert (row["hostname"], row["pid"], row["name"]) == (host, pid, "forward")
        assert row["relative_start_time(ms)"] == pytest.approx(rel, abs=1e-3)
        assert row["during_time(ms)"] == pytest.approx(dur, abs=1e-3)
        if bubble is None:
            assert np.isnan(row["bubble_time(ms)"])
        else:
            assert row["bubble_time(ms)"] == pytest.approx(bubble, abs=1e-3)
        for column, value in (("batch_size", size), ("dp_rank", dp),
                              ("scheduled_tokens", tokens), ("step_id", step)):
            assert pd.isna(row[column]) if value is None else row[column] == value, column
        assert (row["batch_type"], row["forward_iter"]) == (kind, it)
        assert row["prof_id"] == f"ms_service_{host}-{pid}"
    assert table["start_time"].iloc[0] == "2026-01-01 00:00:00.001200+00:00"
    assert table["end_time"].iloc[0] == "2026-01-01 00:00:00.004000+00:00"


def test_forward_csv_leaves_missing_values_empty(tmp_path):
    frame = forward_capture(tmp_path)
    path = write_csv(tmp_path / "forward.csv",
                     forwards.build_forwards(frame, build_batches(frame)),
                     forwards.CSV_COLUMNS)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    third = rows[2]  # the h2 forward: nothing known beyond its own times
    assert [third[c] for c in ("bubble_time(ms)", "batch_size", "batch_type", "dp_rank",
                               "scheduled_tokens", "step_id")] == [""] * 6
    assert (third["forward_iter"], third["during_time(ms)"]) == ("1", "1.0")
    assert rows[3]["bubble_time(ms)"] == "3.1"


@pytest.mark.parametrize("runner", [None, "modelRunnerExec"])
def test_without_forward_records_the_runner_or_model_exec_is_used(tmp_path, runner):
    cap = Capture()
    engine_core(cap, runner)
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    table = forwards.build_forwards(frame, build_batches(frame))
    name = runner or "modelExec"
    assert table["name"].tolist() == [name] * 3
    assert table["step_id"].tolist() == [0, 1, 2]
    assert table["batch_size"].tolist() == [1, 2, 2]
    assert table["scheduled_tokens"].tolist() == [10, 7, 2]
    shrink = 0.5 if runner else 0.0  # the runner span is 0.25 ms inside modelExec at each end
    assert table["during_time(ms)"].tolist() == pytest.approx(
        [4.0 - shrink, 2.0 - shrink, 1.0 - shrink], abs=1e-3)
    # modelExec 7.0 - 5.0, 11.0 - 9.0; the runner spans are 0.5 ms further apart
    assert table["bubble_time(ms)"].tolist()[1:] == pytest.approx([2.0 + shrink] * 2, abs=1e-3)


def test_no_forward_at_all_gives_the_header_only(tmp_path):
    cap = Capture()
    cap.process("h1", 100, "api_server").event("httpReq", ms(0.0), rid="a")
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    table = forwards.build_forwards(frame, build_batches(frame))
    assert table.empty and list(table.columns) == list(forwards.CSV_COLUMNS)


# --- request_status.csv -------------------------------------------------------------------------
#
#   h2/500 (MindIE)  0.5 Queue status=waiting QueueSize 7
#   h1/200 (V1)      1.0 Enqueue a WAITING 1     1.5 Enqueue b WAITING 2
#                    2.0 Dequeue a,b WAITING 0 + Enqueue a,b RUNNING 2 (same instant: one row)
#                    5.0 Dequeue a RUNNING 1, then Enqueue d RUNNING 2 (the later one counts)
#                    6.0 Enqueue without QueueSize, 6.5 Enqueue into PENDING (both ignored)
#   h1/400 (V0, dpRankId 1)  3.0 Enqueue c WAITING 1   4.0 Dequeue c RUNNING 0 + Enqueue c SWAPPED 1

def queue(proc, name, at, rids, queue_name, size, domain="Schedule"):
    keys = {"scope#QueueName": queue_name}
    if size is not None:
        keys["QueueSize="] = size
    proc.event(name, ms(at), domain, rids, **keys)


def status_frame(tmp_path):
    cap = Capture()
    mindie = cap.process("h2", 500)
    mindie.event("Queue", ms(0.5), "Schedule", status="waiting", **{"QueueSize=": 7})
    v1 = cap.process("h1", 200, "engine_core")
    queue(v1, "Enqueue", 1.0, ["a"], "WAITING", 1)
    queue(v1, "Enqueue", 1.5, ["b"], "WAITING", 2)
    queue(v1, "Dequeue", 2.0, ["a", "b"], "WAITING", 0)
    queue(v1, "Enqueue", 2.0, ["a", "b"], "RUNNING", 2)
    v1.event("KVCacheStatus", ms(2.0), "Schedule.KVCache", ["a", "b"], **{"UsedBlocks=": 2})
    queue(v1, "Dequeue", 5.0, ["a"], "RUNNING", 1)
    queue(v1, "Enqueue", 5.0, ["d"], "RUNNING", 2)
    queue(v1, "Enqueue", 6.0, ["e"], "WAITING", None)
    queue(v1, "Enqueue", 6.5, ["e"], "PENDING", 3)
    v0 = cap.process("h1", 400, "engine_core", dpRankId="1")
    queue(v0, "Enqueue", 3.0, ["c"], "WAITING", 1, "BatchSchedule")
    queue(v0, "Dequeue", 4.0, ["c"], "RUNNING", 0, "BatchSchedule")
    queue(v0, "Enqueue", 4.0, ["c"], "SWAPPED", 1, "BatchSchedule")
    v0.event("ReqState", ms(4.0), "BatchSchedule", "c", **{"RUNNING+": -1, "SWAPPED+": 1})
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    return frame


def test_request_status_rows_by_hand(tmp_path):
    table = request_status.build_request_status(status_frame(tmp_path))
    assert list(table.columns) == list(request_status.CSV_COLUMNS) + ["start_us"]  # internal last
    expected = [
        # host, pid, at (ms), relative, waiting, running, swapped, dp
        ("h2", 500, 0.5, 0.0, 7, NA, NA, NA),
        ("h1", 200, 1.0, 0.0, 1, NA, NA, NA),
        ("h1", 200, 1.5, 0.5, 2, NA, NA, NA),
        ("h1", 200, 2.0, 1.0, 0, 2, NA, NA),
        ("h1", 400, 3.0, 0.0, 1, NA, NA, 1),
        ("h1", 400, 4.0, 1.0, NA, 0, 1, 1),
        ("h1", 200, 5.0, 4.0, NA, 2, NA, NA),
    ]
    assert len(table) == len(expected)
    for row, want in zip(table.to_dict("records"), expected):
        host, pid, at, rel, waiting, running, swapped, dp = want
        assert (row["hostuid"], row["pid"]) == (host, pid)
        assert row["timestamp(ms)"] == pytest.approx(ms(at) / 1000.0, abs=1e-3)
        assert row["relative_timestamp(ms)"] == pytest.approx(rel, abs=1e-3)
        for column, value in (("waiting", waiting), ("running", running),
                              ("swapped", swapped), ("dp_rank", dp)):
            assert pd.isna(row[column]) if value is None else row[column] == value, column
    assert table["start_datetime"].iloc[0] == "2026-01-01 00:00:00.000500+00:00"


def test_request_status_without_queue_records(tmp_path):
    cap = Capture()
    engine_core(cap)
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    table = request_status.build_request_status(frame)
    assert table.empty and list(table.columns) == list(request_status.CSV_COLUMNS)
    path = write_csv(tmp_path / "request_status.csv", table, request_status.CSV_COLUMNS)
    assert path.read_text().strip() == ",".join(request_status.CSV_COLUMNS)


def test_profiler_db_stores_both_tables_and_the_queue_curve(tmp_path):
    """``--format db`` alone: forward and request_status tables, and Insight's queue curve."""
    import sqlite3

    from otel_vllm_ascend.analysis.cli import main

    status_frame(tmp_path)  # writes the queue capture into tmp_path / "in"
    out = tmp_path / "out"
    assert main(["--input-path", str(tmp_path / "in"), "--output-path", str(out),
                 "--format", "db"]) == 0
    conn = sqlite3.connect(out / "profiler.db")
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"forward", "request_status", "Request_Status_curve"} <= names
        columns = [row[1] for row in conn.execute("PRAGMA table_info(request_status)")]
        assert columns == list(request_status.CSV_COLUMNS)
        rows = conn.execute('SELECT waiting, running, swapped FROM "Request_Status_curve"'
                            ).fetchall()
        assert len(rows) == 7 and rows[0] == (7, None, None) and rows[3] == (0, 2, None)
    finally:
        conn.close()


def test_queue_names_equal_the_per_record_reading():
    # scope#QueueName, else the status attribute, in capitals; "" without either; any value
    # made text (dict columns as plain dicts here).
    def per_record(scopes, attrs):
        name = scopes.get("QueueName") if scopes else None
        if name is None and attrs:
            name = attrs.get("status")
        return str(name).upper() if name is not None else ""

    scopes = [{"QueueName": "waiting"}, {}, {"QueueName": None}, {"QueueName": 1},
              {"QueueName": 1.0}, {"QueueName": "Running"}, {}, {"other": "x"}]
    attrs = [{}, {"status": "swapped"}, {"status": "RUNNING"}, {"status": "x"}, {}, {},
             {}, {"status": True}]
    candidates = pd.DataFrame({"scopes": scopes, "attrs": attrs})
    got = request_status._queue_names(candidates).tolist()
    assert got == [per_record(s, a) for s, a in zip(scopes, attrs)]
    assert got == ["WAITING", "SWAPPED", "RUNNING", "1", "1.0", "RUNNING", "", "TRUE"]


def test_a_worker_without_a_rank_gets_its_engine_cores(tmp_path):
    """A dense model's DP ranks are independent engines: the EngineCore records its rank, its
    Worker (configured as DP size 1) none; the Worker's rows carry its parent's rank. A Worker
    whose parent is not in the capture, or not an EngineCore, stays without one."""
    cap = Capture()
    engine = cap.process("h1", 200, "engine_core", dpRankId="1")
    engine.event("Enqueue", ms(0.0), "Schedule", ["r1"])
    api = cap.process("h1", 100, "api_server")
    api.event("httpReq", ms(0.0), rid="r1")
    for pid, ppid in ((300, "200"), (301, "7"), (302, "100")):
        worker = cap.process("h1", pid, "worker", ppid=ppid)
        worker.span("forward", ms(1.0), ms(2.0), "Execute", ["r1"])
    cap.write(tmp_path / "in")
    frame, processes, _ = read_captures(tmp_path / "in")
    assert {p.pid: p.dp_rank for p in processes} == {100: None, 200: 1, 300: 1, 301: None,
                                                     302: None}
    table = forwards.build_forwards(frame, build_batches(frame))
    ranks = dict(zip(table["pid"], table["dp_rank"]))
    assert ranks[300] == 1 and pd.isna(ranks[301]) and pd.isna(ranks[302])


def test_dp_summary_by_hand(tmp_path):
    """Two ranks: h1/200 (rank 0) runs STEPS (tokens 10, 7, 2; execution 4, 2, 1 ms), h1/210
    (rank 1) one step of 3 requests, 3 tokens, 20.0-20.3 scheduled, executed 21.0-23.0.
    The window: 0.0 (first schedule) to 23.0 (last execution end) = 23 ms."""
    from otel_vllm_ascend.analysis.summaries import DP_COLUMNS, dp_summary

    cap = Capture()
    engine_core(cap, dpRankId="0")
    rank1 = cap.process("h1", 210, "engine_core", dpRankId="1")
    items = [detail(f"q{i}", 3, 1, 1, 5, 8) for i in range(3)]
    rank1.span("batchFrameworkProcessing", ms(20.0), ms(20.3), "Schedule", items,
               batch_type="Decode", batch_size=3, **{"num_scheduled_tokens=": 3})
    rank1.span("modelExec", ms(21.0), ms(23.0), "Execute", items, batch_type="Decode",
               batch_size=3)
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    table = dp_summary(build_batches(frame))
    assert list(table.columns) == list(DP_COLUMNS)
    rows = table.to_dict("records")
    assert [(r["hostname"], r["dp_rank"], r["engine_step_num"]) for r in rows] == [
        ("h1", 0, 3), ("h1", 1, 1)]
    assert [(r["scheduled_tokens"], r["prefill_tokens"], r["decode_tokens"]) for r in rows] == [
        (19, 16, 3), (3, 0, 3)]
    assert [r["token_share"] for r in rows] == pytest.approx([19 / 22, 3 / 22], abs=1e-4)
    assert [(r["batch_size_mean"], r["batch_size_max"]) for r in rows] == [
        (pytest.approx(5 / 3, abs=1e-4), 2), (3.0, 3)]
    assert [r["exec_time (ms)"] for r in rows] == pytest.approx([7.0, 2.0], abs=1e-3)
    assert [r["busy_rate"] for r in rows] == pytest.approx([7 / 23, 2 / 23], abs=1e-4)


def test_no_dp_summary_without_ranks(tmp_path):
    from otel_vllm_ascend.analysis.summaries import dp_summary

    frame = forward_capture(tmp_path)  # its EngineCore has no rank
    assert dp_summary(build_batches(frame)) is None
