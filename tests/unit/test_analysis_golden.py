"""Golden test: a two-request capture whose every output value is worked out by hand below.

(µs since the epoch as float64 resolve 0.25 µs, hence tolerances of 1 µs.)

Timeline (ms after T0 = 2026-01-01T00:00:00Z), API server pid 100, EngineCore pid 200:

    0.0  httpReq A                      4.0  httpReq B (+ link B -> B-y)
    0.1  link A -> A-x                  5.0  Enqueue B-y WAITING, CacheHitRate B-y 0.5
    1.0  Enqueue A-x WAITING
    step 1  schedule 2.0-2.5 [A-x prefill 10 tok]  Dequeue A-x 2.4  KV used 2/100  exec 3.0-8.0
    9.0  detokenize [A]
    step 2  schedule 10.0-10.4 [A-x decode 1, B-y prefill 6]  Dequeue B-y 10.3  KV used 3
            exec 11.0-15.0
    15.5 Free A-x (free 99)   16.0 httpRes A (10 in, 2 out)   16.5 detokenize [A, B]
    step 3  schedule 17.0-17.2 [B-y decode 1]  KV used 1  exec 18.0-20.0
    20.5 Free B-y (free 100)  21.0 httpRes B (6 in, 2 out)    21.5 detokenize [B]
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture  # noqa: E402

from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.kvcache import build_kvcache  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.requests import build_requests  # noqa: E402
from otel_vllm_ascend.analysis.summaries import (  # noqa: E402
    batch_summary,
    request_summary,
    service_summary,
)

T0 = 1_767_225_600_000_000.0


def ms(value):
    return T0 + value * 1000.0


def detail(rid, it, rtype, nst, npt, nct):
    return {"rid": rid, "iter": it, "type": rtype, "num_scheduled_tokens": nst,
            "num_prompt_tokens": npt, "num_computed_tokens": nct}


def golden_capture():
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    ec = cap.process("h1", 200, "engine_core")
    # Attributes named like frame columns or reference columns must not break loading.
    api.event("httpReq", ms(0.0), rid="A", pid=999, start_time="x", start_us=1)
    api.link(ms(0.1), "A", "A-x")
    ec.event("Enqueue", ms(1.0), "Schedule", ["A-x"],
             **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    d1 = [detail("A-x", 0, 0, 10, 10, 0)]
    ec.event("Dequeue", ms(2.4), "Schedule", ["A-x"],
             **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    ec.event("KVCacheStatus", ms(2.45), "Schedule.KVCache", ["A-x"],
             **{"TotalBlocks=": 100, "UsedBlocks=": 2, "FreeBlocks=": 98,
                "UsagePercent=": 0.02, "AllocatedBlocks=": 2})
    ec.span("batchFrameworkProcessing", ms(2.0), ms(2.5), "Schedule", d1, batch_type="Prefill")
    ec.span("modelExec", ms(3.0), ms(8.0), "Execute", d1, batch_type="Prefill", batch_size=10)
    api.event("detokenize", ms(9.0), rid=["A"])
    api.event("httpReq", ms(4.0), rid="B")
    api.link(ms(4.1), "B", "B-y")
    ec.event("Enqueue", ms(5.0), "Schedule", ["B-y"],
             **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    ec.event("CacheHitRate", ms(5.0), "Schedule.KVCache", "B-y", hitCache=0.5)
    d2 = [detail("A-x", 1, 1, 1, 10, 10), detail("B-y", 0, 0, 6, 6, 0)]
    ec.event("Dequeue", ms(10.3), "Schedule", ["B-y"],
             **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    ec.event("KVCacheStatus", ms(10.35), "Schedule.KVCache", ["A-x", "B-y"],
             **{"TotalBlocks=": 100, "UsedBlocks=": 3, "FreeBlocks=": 97,
                "UsagePercent=": 0.03, "AllocatedBlocks=": 1})
    ec.span("batchFrameworkProcessing", ms(10.0), ms(10.4), "Schedule", d2,
            batch_type="Prefill,Decode")
    ec.span("modelExec", ms(11.0), ms(15.0), "Execute", d2, batch_type="Prefill,Decode",
            batch_size=7)
    ec.event("Free", ms(15.5), "Schedule.KVCache", "A-x",
             **{"deviceBlock=": 99, "UsagePercent=": 0.01})
    api.event("httpRes", ms(16.0), rid="A", **{"recvTokenSize=": 10, "replyTokenSize=": 2})
    api.event("detokenize", ms(16.5), rid=["A", "B"])
    d3 = [detail("B-y", 1, 1, 1, 6, 6)]
    ec.event("KVCacheStatus", ms(17.1), "Schedule.KVCache", ["B-y"],
             **{"TotalBlocks=": 100, "UsedBlocks=": 1, "FreeBlocks=": 99,
                "UsagePercent=": 0.01, "AllocatedBlocks=": 0})
    ec.span("batchFrameworkProcessing", ms(17.0), ms(17.2), "Schedule", d3, batch_type="Decode")
    ec.span("modelExec", ms(18.0), ms(20.0), "Execute", d3, batch_type="Decode", batch_size=1)
    ec.event("Free", ms(20.5), "Schedule.KVCache", "B-y",
             **{"deviceBlock=": 100, "UsagePercent=": 0.0})
    api.event("httpRes", ms(21.0), rid="B", **{"recvTokenSize=": 6, "replyTokenSize=": 2})
    api.event("detokenize", ms(21.5), rid=["B"])
    return cap


@pytest.fixture(params=[("per_process", "json"), ("per_thread", "caret"),
                        ("trace_service", "caret"), ("per_process", "caret")])
def golden(request, tmp_path):
    layout, encoding = request.param
    golden_capture().write(tmp_path, layout=layout, encoding=encoding)
    frame, processes, report = read_captures(tmp_path)
    assert report.problems == []
    return frame, processes


def test_frame_keeps_column_named_attributes(golden):
    frame, processes = golden
    req = frame.loc[frame["name"] == "httpReq"].iloc[0]
    assert req["pid"] == 100
    assert req["attrs"]["pid"] == 999 and req["attrs"]["start_time"] == "x"
    assert {p.role for p in processes} == {"api_server", "engine_core"}


def test_request_table(golden):
    frame, _ = golden
    req = build_requests(frame).set_index("http_rid")
    assert list(req.index) == ["A", "B"]
    assert req.loc["A", "start_datetime"] == "2026-01-01 00:00:00.000000+00:00"
    assert req.loc["B", "start_datetime"] == "2026-01-01 00:00:00.004000+00:00"
    expected = {
        # e2e, queue wait, TTFT, TPOT, prompt, reply, exec
        "A": (16.0, 1.4, 9.0, 7.0, 10, 2, 9.0),
        "B": (17.0, 5.3, 12.5, 4.5, 6, 2, 6.0),
    }
    for rid, (e2e, wait, ttft, tpot, prompt, reply, exec_ms) in expected.items():
        row = req.loc[rid]
        assert row["execution_time(ms)"] == pytest.approx(e2e, abs=1e-3)
        assert row["queue_wait_time(ms)"] == pytest.approx(wait, abs=1e-3)
        assert row["first_token_latency(ms)"] == pytest.approx(ttft, abs=1e-3)
        assert row["time_per_output_token(ms)"] == pytest.approx(tpot, abs=1e-3)
        assert row["recv_token_size"] == prompt and row["reply_token_size"] == reply
        assert row["exec_ms"] == pytest.approx(exec_ms, abs=1e-3)
        assert not row["partial"]
    assert req.loc["A", "cache_hit_rate"] == "N/A"
    assert req.loc["B", "cache_hit_rate"] == 0.5


def test_batch_table(golden):
    frame, _ = golden
    b = build_batches(frame)
    assert len(b) == 3
    assert list(b["name"]) == ["batchFrameworkProcessing"] * 3
    assert list(b["batch_type"]) == ["Prefill", "Prefill,Decode", "Decode"]
    assert list(b["total_batch_size"]) == [1, 2, 1]
    assert list(b["total_scheduled_tokens"]) == [10, 7, 1]
    assert list(b["Prefill_batch_size"]) == [1, 1, 0]
    assert list(b["Decode_batch_size"]) == [0, 1, 1]
    assert list(b["Prefill_scheduled_tokens"]) == [10, 6, 0]
    assert list(b["Decode_scheduled_tokens"]) == [0, 1, 1]
    np.testing.assert_allclose(b["during_time(ms)"], [0.5, 0.4, 0.2], atol=1e-3)
    np.testing.assert_allclose(b["model_exec_time(ms)"], [5.0, 4.0, 2.0], atol=1e-3)
    assert list(b["total_blocks"]) == [100, 100, 100]
    assert list(b["used_blocks"]) == [2, 3, 1]
    assert list(b["free_blocks"]) == [98, 97, 99]
    assert list(b["blocks_allocated"]) == [2, 1, 0]
    assert list(b["blocks_freed"]) == [0, 2, 1]
    np.testing.assert_allclose(b["kvcache_usage_rate"], [0.02, 0.03, 0.01])
    assert b.loc[0, "start_time"] == "2026-01-01 00:00:00.002000+00:00"
    assert b.loc[0, "model_exec_end_time"] == "2026-01-01 00:00:00.008000+00:00"
    assert list(b["prof_id"]) == ["ms_service_h1-200"] * 3 or \
        all(p.startswith("ms_service_h1-200") for p in b["prof_id"])


def test_kvcache_table(golden):
    frame, _ = golden
    kv = build_kvcache(frame)
    assert list(kv["name"]) == ["KVCacheStatus", "KVCacheStatus", "Free", "KVCacheStatus",
                                "Free"]
    assert list(kv["total_blocks"]) == [100] * 5
    assert list(kv["free_blocks"]) == [98, 97, 99, 99, 100]
    assert list(kv["used_blocks"]) == [2, 3, 1, 1, 0]
    assert list(kv["blocks_allocated"]) == [2, 1, 0, 0, 0]
    assert list(kv["blocks_freed"]) == [0, 0, 2, 0, 1]
    np.testing.assert_allclose(kv["kvcache_usage_rate"], [0.02, 0.03, 0.01, 0.01, 0.0])
    assert kv.loc[2, "start_time"] == "2026-01-01 00:00:00.015500+00:00"


def stats(table, metric):
    row = table.set_index("Metric").loc[metric]
    return [row[c] for c in ("Average", "Max", "Min", "P50", "P90", "P99")]


def test_summaries(golden):
    frame, _ = golden
    req = build_requests(frame)
    b = build_batches(frame)
    rs = request_summary(frame, req)
    assert stats(rs, "first_token_latency (ms)") == pytest.approx(
        [10.75, 12.5, 9.0, 10.75, 12.15, 12.465])
    # output gaps: A 9.0 -> 16.5, B 16.5 -> 21.5
    assert stats(rs, "subsequent_token_latency (ms)") == pytest.approx(
        [6.25, 7.5, 5.0, 6.25, 7.25, 7.475])
    assert stats(rs, "total_time (ms)")[:3] == pytest.approx([16.5, 17.0, 16.0])
    assert stats(rs, "exec_time (ms)")[:3] == pytest.approx([7.5, 9.0, 6.0])
    assert stats(rs, "waiting_time (ms)")[:3] == pytest.approx([3.35, 5.3, 1.4])
    assert stats(rs, "input_token_num")[:3] == pytest.approx([8, 10, 6])
    assert stats(rs, "generated_token_num")[:3] == pytest.approx([2, 2, 2])
    bs = batch_summary(b)
    assert stats(bs, "prefill_batch_num")[:3] == pytest.approx([1, 1, 1])
    assert stats(bs, "decode_batch_num")[:3] == pytest.approx([1, 1, 1])
    assert stats(bs, "prefill_exec_time (ms)") == pytest.approx([4.5, 5, 4, 4.5, 4.9, 4.99])
    assert stats(bs, "decode_exec_time (ms)")[:3] == pytest.approx([2, 2, 2])
    assert stats(bs, "scheduled_tokens")[:3] == pytest.approx([6, 10, 1])
    ss = service_summary(req, b).set_index("Metric")["Value"]
    assert ss["total_input_token_num"] == 16
    assert ss["total_generated_token_num"] == 4
    assert ss["duration (s)"] == pytest.approx(0.021)
    assert ss["generate_token_speed (token/s)"] == pytest.approx(round(4 / 0.021, 4))
    assert ss["generate_all_token_speed (token/s)"] == pytest.approx(round(20 / 0.021, 4))
    assert ss["engine_step_num"] == 3 and ss["partial_request_num"] == 0


def test_summary_of_metric_without_values_is_empty_not_zero():
    table = batch_summary(pd.DataFrame())
    assert table.set_index("Metric").loc["prefill_exec_time (ms)"].isna().all()


def test_request_of_n_completions_is_one_row(tmp_path):
    """A request asking for ``n`` = 2 completions: vLLM V1 runs two child requests, linked to
    the one external id; each child ends with its own ``httpRes``. One request.csv row: the
    tokens of both (what the client's ``usage`` counts), the end of the later, TPOT per
    completion. Q (one completion) beside it is unchanged."""
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    ec = cap.process("h1", 200, "engine_core")
    api.event("httpReq", ms(0.0), rid="P")
    api.link(ms(0.1), "P", "0_P-z")
    api.link(ms(0.1), "P", "1_P-z")
    api.event("httpReq", ms(1.0), rid="Q")
    api.link(ms(1.1), "Q", "Q-w")
    for child in ("0_P-z", "1_P-z", "Q-w"):
        ec.event("Enqueue", ms(2.0), "Schedule", [child],
                 **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    ec.event("Dequeue", ms(3.0), "Schedule", ["0_P-z", "1_P-z", "Q-w"],
             **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    api.event("detokenize", ms(5.0), rid=["P", "P", "Q"])
    api.event("httpRes", ms(20.0), rid="P", **{"recvTokenSize=": 7, "replyTokenSize=": 4})
    api.event("httpRes", ms(25.0), rid="P", **{"recvTokenSize=": 7, "replyTokenSize=": 4})
    api.event("httpRes", ms(21.0), rid="Q", **{"recvTokenSize=": 5, "replyTokenSize=": 4})
    cap.write(tmp_path, layout="per_process", encoding="json")
    frame, _, report = read_captures(tmp_path)
    assert report.problems == []
    req = build_requests(frame).set_index("http_rid")
    assert list(req.index) == ["P", "Q"]  # no row of its own for a child
    p, q = req.loc["P"], req.loc["Q"]
    assert (p["recv_token_size"], p["reply_token_size"]) == (7, 8)
    assert p["execution_time(ms)"] == pytest.approx(25.0, abs=1e-3)
    assert p["first_token_latency(ms)"] == pytest.approx(5.0, abs=1e-3)
    assert p["queue_wait_time(ms)"] == pytest.approx(1.0, abs=1e-3)
    assert p["time_per_output_token(ms)"] == pytest.approx((25.0 - 5.0) / (8 / 2 - 1), abs=1e-3)
    assert (q["recv_token_size"], q["reply_token_size"]) == (5, 4)
    assert q["time_per_output_token(ms)"] == pytest.approx((20.0 - 4.0) / 3, abs=1e-3)
    assert not p["partial"] and not q["partial"]


def test_v0_request_of_n_completions_is_one_row(tmp_path):
    """V0 runs each completion of an ``n`` = 2 request as a sequence group
    ``<id>_parallel_sample_<i>``, linked to the request by the engine, and the API server
    writes one ``httpRes`` with the tokens of both. One row: the groups' queue wait, TPOT per
    completion (the completions counted from the links, not from the one ``httpRes``)."""
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    engine = cap.process("h1", 200, "engine_core")
    api.event("httpReq", ms(0.0), rid="P")
    children = ["P_parallel_sample_0", "P_parallel_sample_1"]
    for child in children:
        engine.link(ms(0.5), "P", child)
        engine.event("Enqueue", ms(1.0), "BatchSchedule", [child],
                     **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    engine.event("Dequeue", ms(3.0), "BatchSchedule", children,
                 **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    api.event("detokenize", ms(6.0), rid=["P"])
    api.event("httpRes", ms(30.0), rid="P", **{"recvTokenSize=": 7, "replyTokenSize=": 10})
    cap.write(tmp_path, layout="per_process", encoding="json")
    frame, _, report = read_captures(tmp_path)
    assert report.problems == []
    req = build_requests(frame).set_index("http_rid")
    assert list(req.index) == ["P"]  # no row of its own for a completion
    p = req.loc["P"]
    assert (p["recv_token_size"], p["reply_token_size"]) == (7, 10)
    assert p["queue_wait_time(ms)"] == pytest.approx(2.0, abs=1e-3)
    assert p["time_per_output_token(ms)"] == pytest.approx((30.0 - 6.0) / (10 / 2 - 1),
                                                           abs=1e-3)
    assert not p["partial"]


@pytest.mark.parametrize("engine", ["V1", "V0"])
def test_v1_preemption_is_a_dequeue_from_running(tmp_path, engine):
    """vLLM V1 has no ``ReqState`` records: a request taken out of RUNNING during a schedule
    call was preempted (put back into WAITING, recomputed later). R is preempted once, S never;
    R's queue wait is still its first scheduling's. On V0 (``ReqState`` records, here none that
    preempt) a Dequeue from RUNNING is a request finishing: no preemption."""
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    ec = cap.process("h1", 200, "engine_core")
    for rid, at in (("R", 0.0), ("S", 0.5)):
        api.event("httpReq", ms(at), rid=rid)
        api.link(ms(at + 0.1), rid, rid + "-i")
        ec.event("Enqueue", ms(at + 0.2), "Schedule", [rid + "-i"],
                 **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    ec.event("Dequeue", ms(2.0), "Schedule", ["R-i", "S-i"],
             **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    ec.event("Dequeue", ms(5.0), "Schedule", ["R-i"],
             **{"QueueSize=": 1, "scope#QueueName": "RUNNING"})
    ec.event("Enqueue", ms(5.0), "Schedule", ["R-i"],
             **{"QueueSize=": 1, "scope#QueueName": "WAITING"})
    ec.event("Dequeue", ms(9.0), "Schedule", ["R-i"],
             **{"QueueSize=": 0, "scope#QueueName": "WAITING"})
    for rid, at in (("S", 12.0), ("R", 15.0)):
        api.event("httpRes", ms(at), rid=rid, **{"recvTokenSize=": 5, "replyTokenSize=": 3})
    if engine == "V0":
        for rid in ("R-i", "S-i"):
            ec.event("ReqState", ms(0.3), "Request", rid, **{"WAITING+": 1})
    cap.write(tmp_path, layout="per_process", encoding="json")
    frame, _, report = read_captures(tmp_path)
    assert report.problems == []
    req = build_requests(frame).set_index("http_rid")
    expected = (1, 0) if engine == "V1" else (0, 0)
    assert (req.loc["R", "preemptions"], req.loc["S", "preemptions"]) == expected
    assert (req.loc["R", "swaps"], req.loc["S", "swaps"]) == (0, 0)
    assert req.loc["R", "queue_wait_time(ms)"] == pytest.approx(1.8, abs=1e-3)
