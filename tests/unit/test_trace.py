"""Chrome trace builder and writer, checked with the Perfetto-rules checker.

Frames are built through the analyzer's own RecordBuilder from messages shaped exactly as the
vLLM V1 handlers write them (docs/span-contract.md), so the trace sees real frame rows.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_trace_checker import check_trace, check_trace_file, events_of  # noqa: E402

from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder  # noqa: E402
from otel_vllm_ascend.analysis.trace import build_chrome_trace, write_chrome_trace  # noqa: E402
from otel_vllm_ascend.analysis.trace_tracks import OVERLAP_TID_STRIDE  # noqa: E402

T0 = 1_767_225_600_000_000.0  # 2026-01-01T00:00:00Z in µs
API, ENGINE = 100, 200
API_TID, ENGINE_TID = 101, 201


class Capture:
    """Records of an API server and an EngineCore, added in time order."""

    def __init__(self):
        self.builder = RecordBuilder()
        self.mark = 0
        self.processes = [
            ProcessInfo("hostA", API, "api_server", None, ["ms_service_hostA-100"]),
            ProcessInfo("hostA", ENGINE, "engine_core", None, ["ms_service_hostA-200"]),
        ]

    def add(self, pid, start_ms, end_ms, message, tid=None):
        self.mark += 1
        tid = tid if tid is not None else (API_TID if pid == API else ENGINE_TID)
        self.builder.add(f"ms_service_hostA-{pid}", pid, tid, self.mark, T0 + start_ms * 1000,
                         T0 + end_ms * 1000, dict(message))

    def event(self, pid, at_ms, name, domain, **keys):
        self.add(pid, at_ms, at_ms, {"domain": domain, "name": name, "type": 0, **keys})

    def step(self, start_ms, exec_start_ms, end_ms, detail, kv_usage):
        batch_type = ",".join(sorted({"Prefill" if d["type"] == 0 else "Decode" for d in detail},
                                     key=["Prefill", "Decode"].index))
        tokens = sum(d["num_scheduled_tokens"] for d in detail)
        self.add(ENGINE, start_ms, exec_start_ms - 0.1,
                 {"domain": "Schedule", "name": "batchFrameworkProcessing", "type": 2,
                  "rid": detail, "batch_type": batch_type, "batch_size": len(detail),
                  "num_scheduled_tokens=": tokens})
        self.event(ENGINE, exec_start_ms - 0.2, "KVCacheStatus", "Schedule.KVCache",
                   rid=[d["rid"] for d in detail], **{"TotalBlocks=": 100,
                                                      "UsedBlocks=": kv_usage * 100,
                                                      "FreeBlocks=": 100 - kv_usage * 100,
                                                      "UsagePercent=": kv_usage})
        self.add(ENGINE, exec_start_ms, end_ms,
                 {"domain": "Execute", "rid": detail, "batch_type": batch_type,
                  "name": "modelExec", "type": 2, "batch_size": tokens})

    def frame(self):
        return self.builder.build(self.processes)


def two_request_capture():
    """r1 and r2 (internal ids i1, i2): r1 prefill at step 1, r2 at step 2, both decode at 3."""
    cap = Capture()
    for rid, internal, at in (("r1", "i1", 0.0), ("r2", "i2", 1.0)):
        cap.event(API, at, "httpReq", "Engine", rid=rid)
        cap.add(API, at + 0.1, at + 0.1, {"domain": "Engine", "type": 3, "from": rid,
                                          "to": internal, "name": "link"})
        cap.event(ENGINE, at + 0.5, "Enqueue", "Schedule", rid=internal,
                  **{"QueueSize=": 1, "scope#QueueName": "WAITING"})

    def item(rid, it, kind, tokens, prompt=8):
        return {"rid": rid, "iter": it, "type": kind, "num_scheduled_tokens": tokens,
                "num_prompt_tokens": prompt, "num_computed_tokens": 0 if kind == 0 else prompt}

    cap.event(ENGINE, 2.0, "Dequeue", "Schedule", rid=["i1"],
              **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    cap.step(2.0, 3.0, 10.0, [item("i1", 0, 0, 8)], 0.04)
    cap.event(ENGINE, 11.0, "Dequeue", "Schedule", rid=["i2"],
              **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    cap.event(ENGINE, 11.0, "Enqueue", "Schedule", rid=["i2"],
              **{"QueueSize=": 2, "scope#QueueName": "RUNNING"})
    cap.step(11.0, 12.0, 20.0, [item("i1", 1, 1, 1), item("i2", 0, 0, 8)], 0.08)
    cap.step(21.0, 22.0, 30.0, [item("i1", 2, 1, 1), item("i2", 1, 1, 1)], 0.1)
    cap.event(ENGINE, 31.0, "Free", "Schedule.KVCache", rid="i1",
              **{"deviceBlock=": 95, "UsagePercent=": 0.05})
    for rid in ("r1", "r2"):
        cap.event(API, 32.0, "httpRes", "Engine", rid=rid,
                  **{"recvTokenSize=": 8, "replyTokenSize=": 3})
    return cap


def requests_table():
    # What build_requests reports for the capture above (times in µs since the epoch).
    return pd.DataFrame({
        "http_rid": ["r1", "r2"],
        "arrival_us": [T0, T0 + 1000],
        "first_scheduled_us": [T0 + 2000, T0 + 11000],
        "first_token_us": [T0 + 10000, T0 + 20000],
        "end_us": [T0 + 32000, T0 + 32000],
        "ttft_ms": [10.0, 19.0],
        "partial": [False, False],
    })


def by_ph(events, ph, name=None):
    return [e for e in events if e["ph"] == ph and (name is None or e["name"] == name)]


def test_trace_of_a_two_request_capture_obeys_perfetto_rules(tmp_path):
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    path = write_chrome_trace(tmp_path / "chrome_tracing.json", events)
    assert check_trace_file(path) == []
    data = json.loads(path.read_text())
    assert data["otherData"]["time_origin_unix_us"] == T0
    assert data["otherData"]["time_origin_utc"].startswith("2026-01-01T00:00:00")
    assert len(events_of(data)) == len(events)


def test_processes_and_threads_are_named():
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    names = {e["pid"]: e["args"]["name"] for e in by_ph(events, "M", "process_name")}
    assert names[API] == "API server hostA 100"
    assert names[ENGINE] == "EngineCore hostA 200"
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in by_ph(events, "M", "thread_name")}
    assert threads[(ENGINE, ENGINE_TID)] == "Execute/Schedule/Schedule.KVCache thread 201"
    assert threads[(API, API_TID)] == "Engine thread 101"


def test_one_flow_per_request_through_each_of_its_steps():
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    flows = {}
    for e in events:
        if e["ph"] in "stf":
            flows.setdefault(e["id"], []).append(e)
    assert len(flows) == 2
    lanes_pid = next(e["pid"] for e in by_ph(events, "M", "process_name")
                     if e["args"]["name"] == "Requests")
    execs = sorted(e["ts"] for e in by_ph(events, "X", "modelExec"))
    steps_of = {"request r1": execs, "request r2": execs[1:]}
    for members in flows.values():
        phases = [e["ph"] for e in members]
        assert phases.count("s") == 1 and phases.count("f") == 1
        start = next(e for e in members if e["ph"] == "s")
        # the start lies 1 ns inside its request's slice on the lane
        request = next(e for e in by_ph(events, "X") if e["pid"] == lanes_pid
                       and e["tid"] == start["tid"]
                       and e["ts"] == pytest.approx(start["ts"] - 0.001, abs=1e-9)
                       and e["name"].startswith("request "))
        steps = sorted(e["ts"] for e in members if e["ph"] == "t")
        # each step point lies 1 ns inside its modelExec slice, on the EngineCore thread
        assert steps == pytest.approx([t + 0.001 for t in steps_of[request["name"]]])
        assert {(e["pid"], e["tid"]) for e in members if e["ph"] == "t"} == {(ENGINE, ENGINE_TID)}


def test_request_lanes_split_queued_prefill_decode_from_the_request_table():
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    lanes_pid = next(e["pid"] for e in by_ph(events, "M", "process_name")
                     if e["args"]["name"] == "Requests")
    lane_slices = [e for e in by_ph(events, "X") if e["pid"] == lanes_pid]
    r2 = next(e for e in lane_slices if e["name"] == "request r2")
    assert (r2["ts"], r2["dur"]) == (1000.0, 31000.0)  # arrival 1 ms .. end 32 ms
    assert r2["args"]["ttft_ms"] == 19.0 and r2["args"]["partial"] is False
    phases = sorted((e["ts"], e["dur"], e["name"]) for e in lane_slices
                    if e["tid"] == r2["tid"] and not e["name"].startswith("request"))
    assert phases == [(1000.0, 10000.0, "queued"), (11000.0, 9000.0, "prefill"),
                      (20000.0, 12000.0, "decode")]
    # both requests are in flight together, so they need two lanes
    assert len({e["tid"] for e in lane_slices}) == 2


def test_counters_carry_kv_queue_batch_and_token_values():
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    kv = by_ph(events, "C", "KV cache")
    assert [e["ts"] for e in kv] == pytest.approx([2800.0, 11800.0, 21800.0, 31000.0])
    assert [e["args"]["usage %"] for e in kv] == pytest.approx([4.0, 8.0, 10.0, 5.0])
    blocks = [e["args"] for e in by_ph(events, "C", "KV blocks")]
    assert blocks[0] == {"used": 4.0, "free": 96.0}
    assert blocks[-1] == {"used": 5.0, "free": 95.0}  # Free: used = last TotalBlocks - free
    assert [e["args"]["requests"] for e in by_ph(events, "C", "batch size")] == [1, 2, 2]
    assert [e["args"]["tokens"] for e in by_ph(events, "C", "scheduled tokens")] == [8, 9, 2]
    waiting = [e["args"]["requests"] for e in by_ph(events, "C", "waiting queue")]
    assert waiting == [1, 1, 1, 0]
    assert [e["args"]["requests"] for e in by_ph(events, "C", "running queue")] == [2]
    assert all(e["pid"] == ENGINE for e in by_ph(events, "C"))


def test_slices_keep_record_args_and_batch_counts():
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    bfp = by_ph(events, "X", "batchFrameworkProcessing")[1]
    assert bfp["args"]["rid"] == ["r1", "r2"]  # internal ids mapped through the links
    assert bfp["args"]["prefill_requests"] == 1 and bfp["args"]["decode_requests"] == 1
    assert bfp["args"]["prefill_tokens"] == 8 and bfp["args"]["decode_tokens"] == 1
    assert bfp["args"]["batch_type"] == "Prefill,Decode"
    http_res = by_ph(events, "i", "httpRes")[0]
    assert http_res["args"]["recvTokenSize"] == 8 and http_res["s"] == "t"
    assert not [e for e in events if e["name"] in ("link", "KVCacheStatus", "Free")]


def test_large_batches_give_a_count_instead_of_the_id_list():
    cap = Capture()
    detail = [{"rid": f"q{i}", "iter": 0, "type": 0, "num_scheduled_tokens": 4}
              for i in range(40)]
    cap.step(0.0, 1.0, 2.0, detail, 0.5)
    events = build_chrome_trace(cap.frame())
    exec_slice = by_ph(events, "X", "modelExec")[0]
    assert exec_slice["args"]["requests"] == 40 and "rid" not in exec_slice["args"]
    assert len([e for e in events if e["ph"] == "s"]) == 40
    assert check_trace(list(events)) == []


def test_overlapping_spans_on_one_thread_move_to_an_overlap_track():
    cap = Capture()
    # interleaved coroutines on one thread: a [0, 10], b [5, 15] (not nested), c [6, 7] in b
    cap.add(API, 0.0, 10.0, {"domain": "Engine", "name": "a", "type": 2})
    cap.add(API, 5.0, 15.0, {"domain": "Engine", "name": "b", "type": 2})
    cap.add(API, 6.0, 7.0, {"domain": "Engine", "name": "c", "type": 2})
    events = build_chrome_trace(cap.frame())
    tids = {e["name"]: e["tid"] for e in by_ph(events, "X")}
    assert tids["a"] == API_TID
    assert tids["b"] == API_TID + OVERLAP_TID_STRIDE
    assert tids["c"] == API_TID  # nests inside a
    threads = {e["tid"]: e["args"]["name"] for e in by_ph(events, "M", "thread_name")}
    assert threads[API_TID + OVERLAP_TID_STRIDE] == "Engine thread 101 (overlap 1)"
    assert check_trace(list(events)) == []
    # the checker would have caught the same spans left on one track
    naive = [dict(e, tid=API_TID) if e["ph"] == "X" else e for e in events]
    assert any("overlaps" in p for p in check_trace(naive))


def test_nested_child_ending_with_its_parent_stays_nested_at_epoch_scale():
    cap = Capture()
    # µs since 1970 as doubles: 0.1 µs steps are not exact, the ns rounding must keep nesting
    cap.add(ENGINE, 0.0001, 5.0003, {"domain": "Execute", "name": "modelExec", "type": 2})
    cap.add(ENGINE, 1.0002, 5.0003, {"domain": "Execute", "name": "sample", "type": 2})
    events = build_chrome_trace(cap.frame())
    assert check_trace(list(events)) == []
    parent, child = sorted(by_ph(events, "X"), key=lambda e: e["ts"])
    assert parent["ts"] + parent["dur"] == pytest.approx(child["ts"] + child["dur"], abs=1e-9)
    assert parent["tid"] == child["tid"] == ENGINE_TID


def test_request_missing_its_first_records_still_gets_a_lane_and_a_flow():
    cap = two_request_capture()
    frame = cap.frame()
    frame = frame[~((frame["name"] == "httpReq") & frame["rids"].map(lambda r: r == ["r2"]))]
    table = requests_table()
    table.loc[1, ["arrival_us", "first_scheduled_us", "first_token_us"]] = float("nan")
    table["partial"] = [False, True]
    events = build_chrome_trace(frame, table)
    assert check_trace(list(events)) == []
    r2 = next(e for e in by_ph(events, "X") if e["name"] == "request r2")
    assert r2["args"]["partial"] is True
    assert r2["ts"] == pytest.approx(12000.0)  # from its first engine step (modelExec, 12 ms)
    flows = [e for e in events if e["ph"] in "sf"]
    assert len(flows) == 4


def test_without_a_request_table_requests_are_timed_from_their_records():
    events = build_chrome_trace(two_request_capture().frame())
    assert check_trace(list(events)) == []
    r1 = next(e for e in by_ph(events, "X") if e["name"] == "request r1")
    assert (r1["ts"], r1["dur"]) == (0.0, 32000.0)
    phases = {e["name"]: (e["ts"], e["dur"]) for e in by_ph(events, "X")
              if e["tid"] == r1["tid"] and e["pid"] == r1["pid"] and e["ts"] < 32000.0
              and e["name"] in ("queued", "prefill", "decode")}
    assert phases["queued"] == (0.0, 2000.0)  # up to the first schedule span
    assert phases["prefill"] == (2000.0, 8000.0)  # to the end of the first modelExec


def test_same_pid_on_two_hosts_gets_two_processes():
    cap = Capture()
    cap.processes.append(ProcessInfo("hostB", API, "api_server", None, ["ms_service_hostB-100"]))
    cap.add(API, 0.0, 1.0, {"domain": "Engine", "name": "a", "type": 2})
    cap.mark += 1
    cap.builder.add("ms_service_hostB-100", API, API_TID, cap.mark, T0, T0 + 1000,
                    {"domain": "Engine", "name": "a", "type": 2})
    events = build_chrome_trace(cap.frame())
    names = sorted(e["args"]["name"] for e in by_ph(events, "M", "process_name"))
    assert names == ["API server hostA 100", "API server hostB 100"]
    assert len({e["pid"] for e in by_ph(events, "X")}) == 2
    assert check_trace(list(events)) == []


def test_empty_frame_gives_an_empty_valid_trace(tmp_path):
    events = build_chrome_trace(Capture().frame())
    assert list(events) == []
    path = write_chrome_trace(tmp_path / "t.json", events)
    assert check_trace_file(path) == []


# The checker itself: each rule must be able to fail.

def _named(pid=1, tid=1):
    return [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": "p"}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": "t"}}]


def _x(ts, dur, name="x", tid=1):
    return {"ph": "X", "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur}


def test_checker_accepts_both_top_level_forms():
    events = _named() + [_x(0, 5)]
    assert check_trace(list(events)) == [] and check_trace({"traceEvents": events}) == []
    assert check_trace({"events": events}) != []


@pytest.mark.parametrize("event, fragment", [
    ({"ph": "X", "name": "x", "pid": 1, "tid": 1, "ts": "5", "dur": 1}, "ts must be"),
    ({"ph": "X", "name": "x", "pid": 1, "tid": 1, "ts": 5}, "dur must be"),
    ({"ph": "X", "name": "x", "pid": 1, "tid": 1, "ts": 5, "dur": -1}, "dur must be"),
    ({"ph": "X", "pid": 1, "tid": 1, "ts": 5, "dur": 1}, "name must be"),
    ({"ph": "C", "name": "c", "pid": 1, "ts": 5, "args": {"v": "3"}}, "non-numeric"),
    ({"ph": "C", "name": "c", "pid": 1, "ts": 5, "args": {"v": float("nan")}}, "non-numeric"),
    ({"ph": "Q", "pid": 1, "ts": 5}, "unknown or missing ph"),
    ({"ph": "s", "name": "f", "pid": 1, "tid": 1, "ts": 5}, "id is required"),
    ({"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {}}, "non-empty args.name"),
])
def test_checker_rejects_bad_fields(event, fragment):
    problems = check_trace(_named() + [event])
    assert any(fragment in p for p in problems), problems


def test_checker_requires_process_and_thread_names():
    problems = check_trace([_x(0, 5)])
    assert any("no process_name" in p for p in problems)
    assert any("no thread_name" in p for p in problems)


def test_checker_accepts_nesting_and_rejects_partial_overlap():
    assert check_trace(_named() + [_x(0, 10), _x(2, 3), _x(10, 5)]) == []
    assert any("overlaps" in p for p in check_trace(_named() + [_x(0, 10), _x(5, 10)]))
    # the same two slices on different tracks are fine
    assert check_trace(_named() + _named(1, 2) + [_x(0, 10), _x(5, 10, tid=2)]) == []


def _flow(ph, ts, fid=7):
    return {"ph": ph, "name": "f", "cat": "c", "id": fid, "pid": 1, "tid": 1, "ts": ts,
            "bp": "e"}


def test_checker_flow_rules():
    base = _named() + [_x(0, 100)]
    assert check_trace(base + [_flow("s", 1), _flow("t", 5), _flow("f", 9)]) == []
    two_finishes = check_trace(base + [_flow("s", 1), _flow("f", 5), _flow("f", 9)])
    assert any("2 finish" in p for p in two_finishes)
    unordered = check_trace(base + [_flow("s", 6), _flow("t", 5), _flow("f", 9)])
    assert any("start must come first" in p for p in unordered)
    unbound = check_trace(base + [_flow("s", 1), _flow("t", 500), _flow("f", 501)])
    assert any("lies in no X slice" in p for p in unbound)


def test_checker_async_pairs_must_match():
    def ev(ph, ts):
        return {"ph": ph, "name": "r", "cat": "c", "id": 1, "pid": 1, "tid": 1, "ts": ts}
    assert check_trace(_named() + [ev("b", 0), ev("e", 5)]) == []
    assert any("never end" in p for p in check_trace(_named() + [ev("b", 0)]))
    assert any("no open b" in p for p in check_trace(_named() + [ev("e", 0)]))


def test_written_file_holds_exactly_the_built_events(tmp_path):
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    path = write_chrome_trace(tmp_path / "t.json", events)
    loaded = events_of(json.loads(path.read_text()))
    built = list(events)
    assert len(loaded) == len(built) == len(events)
    # flows are written from columns as text, the rest by the JSON encoder: both must match
    # the dicts the sequence yields (ts exactly: whole ns printed with 3 decimals)
    assert loaded == built
    assert events[-1] == built[-1] and events[-len(events)] == built[0]
    assert events[2:5] == built[2:5]
    with pytest.raises(IndexError):
        events[len(events)]


def test_sampler_metrics_become_counters_and_roles_name_processes():
    cap = Capture()
    cap.processes = [
        ProcessInfo("hostA", ENGINE, "engine_core", 1, ["ms_service_hostA-200"]),
        ProcessInfo("hostA", 300, "worker", None, ["ms_service_hostA-300"]),
    ]
    # metric records carry no message type (the exporter writes none for ms.record=metric)
    cap.add(ENGINE, 1.0, 1.0, {"domain": "host", "name": "hostUsage", "cpuPercent=": 42.5,
                               "memPercent=": 10.0})
    cap.add(300, 2.0, 2.0, {"domain": "npu", "name": "deviceMemory", "usage=": 512,
                            "scope#device": 0}, tid=301)
    cap.add(300, 3.0, 4.0, {"domain": "Execute", "name": "sample", "type": 2}, tid=301)
    events = build_chrome_trace(cap.frame())
    assert check_trace(list(events)) == []
    counters = {e["name"]: (e["pid"], e["args"]) for e in by_ph(events, "C")}
    assert counters["hostUsage"] == (ENGINE, {"cpuPercent": 42.5, "memPercent": 10.0})
    assert counters["deviceMemory (device=0)"] == (300, {"usage": 512.0})
    assert not [e for e in events if e["ph"] == "i"]  # samples are not instants
    names = {e["pid"]: e["args"]["name"] for e in by_ph(events, "M", "process_name")}
    assert names == {ENGINE: "EngineCore DP1 hostA 200", 300: "Worker hostA 300"}


@pytest.mark.parametrize("detail", [
    [{"type": 0, "num_scheduled_tokens": 8}, {"type": 1, "num_scheduled_tokens": 1}],
    [{"type": 1, "num_scheduled_tokens": 1}],
    [{"iter": 0}, {"iter": 3}],
    [{"type": 0, "num_scheduled_tokens": "x"}],
    [{"type": None, "iter": 0, "num_scheduled_tokens": 5}],
    ["not a dict", {"type": 1, "num_scheduled_tokens": 2}],
    [{"type": 0, "num_scheduled_tokens": True}],
    [],
    [{"type": 0, "num_scheduled_tokens": 2.5}, {"type": 1, "num_scheduled_tokens": 1}],
])
def test_batch_counts_fast_path_agrees_with_the_item_by_item_count(detail):
    from otel_vllm_ascend.analysis.trace_records import _detail_counts, _detail_counts_checked

    assert _detail_counts(detail) == _detail_counts_checked(detail)


@pytest.mark.parametrize("size", [1, 2, 3, 10_000])
def test_request_flow_steps_are_the_same_whatever_the_chunk_size(tmp_path, monkeypatch, size):
    # The flows through the steps are made a chunk at a time when the trace is read; chunks
    # that cut through a request's steps must give the events of one whole pass.
    from otel_vllm_ascend.analysis import trace_file

    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    monkeypatch.setattr(trace_file, "WRITE_CHUNK_EVENTS", size)
    written = write_chrome_trace(tmp_path / "chunked.json", events).read_text()
    built = list(events)
    assert events_of(json.loads(written)) == built
    # r1 is in steps 1-3, r2 in steps 2 and 3: one t per (request, step), at 1 ns inside
    # the step's modelExec (3.0, 12.0, 22.0 ms after the origin), in the request's flow.
    starts = {e["id"]: e["ts"] for e in built if e["ph"] == "s"}
    steps = [(e["id"], e["ts"]) for e in built if e["ph"] == "t"]
    first, second = sorted(starts, key=starts.get)
    assert steps == [(first, 3000.001), (first, 12000.001), (first, 22000.001),
                     (second, 12000.001), (second, 22000.001)]


@pytest.mark.parametrize("size", [1, 2, 10_000])
def test_request_slices_made_a_chunk_of_requests_at_a_time(monkeypatch, size):
    # The request slices are made each time the trace is read, DEFERRED_CHUNK_ROWS requests
    # at a time (their args read from those rows of the request table): whatever the chunk
    # size, the events of the request table's r1 and of r2 (not in the table: timed from its
    # steps, args its id only) in start order, and read twice alike.
    from otel_vllm_ascend.analysis import trace_file

    monkeypatch.setattr(trace_file, "DEFERRED_CHUNK_ROWS", size)
    table = requests_table().iloc[:1]
    events = build_chrome_trace(two_request_capture().frame(), table)
    lanes_pid = next(e["pid"] for e in by_ph(events, "M", "process_name")
                     if e["args"]["name"] == "Requests")

    def lane(tid, ts, dur, name):
        return {"ph": "X", "name": name, "cat": "request", "pid": lanes_pid, "tid": tid,
                "ts": ts, "dur": dur}

    expected = [
        {**lane(1, 0.0, 32000.0, "request r1"),
         "args": {"rid": "r1", "ttft_ms": 10.0, "partial": False}},
        lane(1, 0.0, 2000.0, "queued"), lane(1, 2000.0, 8000.0, "prefill"),
        lane(1, 10000.0, 22000.0, "decode"),
        {**lane(2, 12000.0, 18000.0, "request r2"), "args": {"rid": "r2"}},
        lane(2, 12000.0, 8000.0, "prefill"), lane(2, 20000.0, 10000.0, "decode"),
    ]
    for _ in range(2):
        assert [e for e in events if e["pid"] == lanes_pid and e["ph"] == "X"] == expected


@pytest.mark.parametrize("tid_dtype", ["int8", "int16", "int32", "int64"])
def test_slice_tids_from_narrow_tids_are_those_of_int64_tids(tid_dtype):
    """Random spans, many overlapping on a few threads: the tracks from the frame's narrow
    tids are those the int64 tids give (an overlap lane adds a stride no narrow type holds)."""
    from otel_vllm_ascend.analysis.trace_tracks import _slice_tids

    rng = np.random.default_rng(len(tid_dtype))
    n = 500
    pids = rng.choice([3, 9], n).astype("int64")
    tids = rng.choice([1, 2, min(int(np.iinfo(tid_dtype).max), 2**40)], n).astype("int64")
    start = rng.integers(0, 1000, n)
    end = start + rng.choice([0, 5, 50, 400], n)
    wide = _slice_tids(pids, tids, start, end, [], [])
    narrow = _slice_tids(pids.astype("int16"), tids.astype(tid_dtype), start, end, [], [])
    assert narrow.tolist() == wide.tolist()
    assert (wide != tids).any()  # some spans did go to overlap lanes
    assert narrow.dtype.itemsize <= 8


def test_metric_samples_are_a_bool_array_of_the_rows_with_no_type_no_duration_and_metrics():
    from otel_vllm_ascend.analysis.trace_records import _metric_samples

    frame = pd.DataFrame({
        "type": pd.array([None, None, 2, None, None], dtype="Int8"),
        "metrics": [{"a": 1.0}, {}, {"a": 1.0}, {"b": 2.0}, {"c": 3.0}]})
    start = np.array([0, 0, 0, 0, 5])
    end = np.array([0, 0, 0, 1, 5])
    samples = _metric_samples(frame, start, end)
    assert samples.dtype == bool
    assert samples.tolist() == [True, False, False, False, True]


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_track_names_read_a_chunk_of_records_at_a_time_are_the_same(monkeypatch, rows):
    """The tracks' metadata events (names and sort order of every thread and overlap lane)
    do not depend on how many records are read at a time."""
    import otel_vllm_ascend.analysis.trace_tracks as tracks

    cap = two_request_capture()
    cap.add(API, 0.0, 10.0, {"domain": "Engine", "name": "a", "type": 2})
    cap.add(API, 5.0, 15.0, {"domain": "Other", "name": "b", "type": 2})
    cap.add(API, 6.0, 7.0, {"domain": "", "name": "c", "type": 2})
    frame = cap.frame()
    want = [e for e in build_chrome_trace(frame, requests_table()) if e["ph"] == "M"]
    monkeypatch.setattr(tracks, "_TRACK_ROWS", rows)
    got = [e for e in build_chrome_trace(frame, requests_table()) if e["ph"] == "M"]
    assert got == want
    assert any("(overlap 1)" in e["args"].get("name", "") for e in got)


def test_ns_times_of_any_rows_are_those_of_the_whole_conversion():
    """The records' times made for the rows read (trace._NsTimes) are the whole int64
    conversion's at those rows: slices, index arrays, masks, one row; NaN and ends before
    their start included."""
    from otel_vllm_ascend.analysis.trace import _NsTimes, _to_ns

    rng = np.random.default_rng(7)
    n = 1_000
    origin = 1.7e15
    start = origin + rng.random(n) * 1e9
    start[rng.random(n) < 0.05] = np.nan
    end = start + rng.choice([-3.0, 0.0, 0.25, 1e6], n)
    end[rng.random(n) < 0.05] = np.nan
    whole_start = _to_ns(start, origin)
    whole_end = np.maximum(_to_ns(end, origin), whole_start)
    starts, ends = _NsTimes(start, origin), _NsTimes(end, origin, start)
    assert len(starts) == len(ends) == n
    picks = rng.integers(0, n, 300)
    for rows in (slice(None), slice(10, 700), slice(5, 900, 7), picks, picks.astype(np.int32),
                 rng.random(n) < 0.3, 17):
        assert np.array_equal(starts[rows], whole_start[rows])
        assert np.array_equal(ends[rows], whole_end[rows])
    assert (_to_ns(end, origin) < whole_start).any()  # ends before their start: floored


def _arrays_held(value, seen=None):
    """Every numpy array reachable from ``value`` through objects' attributes, closures, lists
    and tuples (not into DataFrames: the records frame is the trace's to read)."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (pd.DataFrame, pd.Series, type, str, bytes)):
        return []
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return [value]
    found = []
    for cell in getattr(value, "__closure__", None) or ():
        try:
            found += _arrays_held(cell.cell_contents, seen)
        except ValueError:  # an empty cell
            pass
    if isinstance(value, (list, tuple)):
        for item in value:
            found += _arrays_held(item, seen)
    elif hasattr(value, "__dict__") and not callable(value):
        for item in vars(value).values():
            found += _arrays_held(item, seen)
    return found


def test_the_built_trace_holds_no_time_per_record():
    # The records' ns times (int64, 16 bytes a record) are made for the rows read when the
    # trace is written; the request steps keep their steps' times, one per step.
    capture = two_request_capture()
    for at in range(40):  # more records than any per-request or per-step array has rows
        capture.event(API, 0.5 + at * 0.01, "sample", "Other", **{"x=": float(at)})
    frame = capture.frame()
    events = build_chrome_trace(frame, requests_table())
    held = _arrays_held(events)
    assert held  # the walk reaches the trace's arrays
    per_record = [a for a in held if a.dtype == np.int64 and len(a) == len(frame)]
    assert per_record == []
    assert list(events) == list(build_chrome_trace(frame, requests_table()))


def _trace_db_dump(path):
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return [list(db.execute(f"select * from {table} order by rowid"))
                for table in ("process", "thread", "slice", "counter", "flow")]
    finally:
        db.close()


def _trace_db(path, events):
    import sqlite3

    from otel_vllm_ascend.analysis.writers import _write_trace_tables

    db = sqlite3.connect(path)
    try:
        _write_trace_tables(db, events, events.origin_us)
        db.commit()
    finally:
        db.close()
    return _trace_db_dump(path)


@pytest.mark.parametrize("size", [1, 3, 10_000])
def test_json_written_as_profiler_db_reads_the_events_is_the_json_written_alone(
        tmp_path, monkeypatch, size):
    # One reading of the events for chrome_tracing.json and profiler.db's trace tables: the
    # same file byte for byte, and the same tables, whatever the chunk size.
    from otel_vllm_ascend.analysis import trace_file
    from otel_vllm_ascend.analysis.trace import WrittenAsRead

    monkeypatch.setattr(trace_file, "WRITE_CHUNK_EVENTS", size)
    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    alone = write_chrome_trace(tmp_path / "alone.json", events).read_bytes()
    tables = _trace_db(tmp_path / "alone.db", events)
    teed = WrittenAsRead(events, tmp_path / "teed.json")
    assert _trace_db(tmp_path / "teed.db", teed) == tables
    assert teed.result() == tmp_path / "teed.json"
    assert (tmp_path / "teed.json").read_bytes() == alone
    assert tables[-1]  # the flows were read and written


def test_json_not_read_to_the_end_is_no_result_and_a_file_error_never_stops_the_reader(
        tmp_path):
    from otel_vllm_ascend.analysis.trace import WrittenAsRead

    events = build_chrome_trace(two_request_capture().frame(), requests_table())
    partial = WrittenAsRead(events, tmp_path / "partial.json")
    next(iter(partial.plain()))
    assert partial.result() is None
    out_of_order = WrittenAsRead(events, tmp_path / "order.json")
    assert sum(len(chunk.phase) for chunk in out_of_order.flows.chunks(10)) == len(events.flows)
    assert list(out_of_order.plain())
    assert out_of_order.result() is None  # flows read before the plain events: not written
    (tmp_path / "a folder.json").mkdir()
    broken = WrittenAsRead(events, tmp_path / "a folder.json")
    tables = _trace_db(tmp_path / "broken.db", broken)
    assert tables == _trace_db(tmp_path / "whole.db", events)
    with pytest.raises(OSError):
        broken.result()
