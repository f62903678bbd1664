"""A capture of vLLM's V0 engine, read into the same tables as V1's (values worked out by hand).

V0 records as ``handlers/v0_*.py`` write them: domains ``Request`` / ``BatchSchedule`` /
``KVCache`` / ``ModelExecute``, no link records (V0 keeps the API server's ids), ``ReqState``
transitions, per-request KV records. Timeline (ms after T0), API server pid 100, engine pid 200,
a pool of 4 blocks:

    0.0 httpReq A   0.1 httpReq B   0.5/0.6 ReqState WAITING+1 and Enqueue WAITING (A, B)
    step 1 schedule 1.0-1.5 [A, B prefill 4 tok]  Allocate A 1.1 (free 3), B 1.2 (free 2),
           RUNNING transitions, Dequeue WAITING, KVCacheStatus 1.5 (used 2)  exec 2.0-3.0
    3.5 detokenize [A, B]
    step 2 schedule 4.0-4.5 [A decode]  AppendSlot A 4.1 (free 1), B swapped out 4.2
           (SwapOut, free 2), KVCacheStatus 4.5 (used 2)  exec 5.0-6.0
    6.5 detokenize [A]  7.0 Free A (free 4), ReqState FINISHED  7.5 httpRes A (4 in, 2 out)
    step 3 schedule 8.0-8.5 [B decode]  SwapIn B 8.1 (free 3), KVCacheStatus 8.5 (used 1)
           exec 9.0-10.0
    10.5 detokenize [B]  11.0 Free B (free 4), ReqState FINISHED  11.5 httpRes B (4 in, 2 out)
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture  # noqa: E402

from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.kvcache import build_kvcache  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.request_states import request_state_counts  # noqa: E402
from otel_vllm_ascend.analysis.requests import build_requests  # noqa: E402
from otel_vllm_ascend.analysis.summaries import service_summary  # noqa: E402

T0 = 1_767_225_600_000_000.0
BS, KV = "BatchSchedule", "KVCache"


def ms(value):
    return T0 + value * 1000.0


def detail(rid, it, rtype, nst, nct):
    return {"rid": rid, "iter": it, "type": rtype, "num_scheduled_tokens": nst,
            "num_prompt_tokens": 4, "num_computed_tokens": nct}


def pool(free, **extra):
    return {"TotalBlocks=": 4, "FreeBlocks=": free, "UsedBlocks=": 4 - free,
            "UsagePercent=": (4 - free) / 4, **extra}


def state(ec, at, rid, **changes):
    ec.event("ReqState", ms(at), BS, rid, **{f"{k}+": v for k, v in changes.items()})


def queue(ec, name, at, rids, queue_name, size):
    ec.event(name, ms(at), BS, rids, **{"QueueSize=": size, "scope#QueueName": queue_name})


def v0_capture():
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    ec = cap.process("h1", 200, "engine_core")
    api.event("httpReq", ms(0.0), "Request", "A")
    api.event("httpReq", ms(0.1), "Request", "B")
    for at, rid, size in ((0.5, "A", 1), (0.6, "B", 2)):
        state(ec, at, rid, WAITING=1)
        queue(ec, "Enqueue", at, [rid], "WAITING", size)
    # step 1
    for at, rid, free in ((1.1, "A", 3), (1.2, "B", 2)):
        state(ec, at, rid, WAITING=-1, RUNNING=1)
        ec.event("Allocate", ms(at), KV, rid, **pool(free, **{"AllocatedBlocks=": 1}))
    queue(ec, "Dequeue", 1.5, ["A", "B"], "WAITING", 0)
    ec.event("KVCacheStatus", ms(1.5), KV, ["A", "B"], **pool(2, **{"AllocatedBlocks=": 2}))
    d1 = [detail("A", 0, 0, 4, 0), detail("B", 0, 0, 4, 0)]
    ec.span("batchFrameworkProcessing", ms(1.0), ms(1.5), BS, d1, batch_type="Prefill",
            batch_size=2, **{"num_scheduled_tokens=": 8, "preempted=": 0})
    ec.span("modelExec", ms(2.0), ms(3.0), "ModelExecute", d1, batch_type="Prefill",
            batch_size=8)
    api.event("detokenize", ms(3.5), "Request", ["A", "B"])
    # step 2: B swapped out to make room for A
    ec.event("AppendSlot", ms(4.1), KV, "A", **pool(1, **{"AllocatedBlocks=": 1}))
    state(ec, 4.2, "B", RUNNING=-1, SWAPPED=1)
    ec.event("SwapOut", ms(4.2), KV, "B", swap="swap_out",
             **pool(2, **{"SwappedBlocks=": 1, "AllocatedBlocks=": 0}))
    queue(ec, "Dequeue", 4.5, ["B"], "RUNNING", 1)
    queue(ec, "Enqueue", 4.5, ["B"], "SWAPPED", 1)
    ec.event("KVCacheStatus", ms(4.5), KV, ["A"], **pool(2, **{"AllocatedBlocks=": 0}))
    d2 = [detail("A", 1, 1, 1, 4)]
    ec.span("batchFrameworkProcessing", ms(4.0), ms(4.5), BS, d2, batch_type="Decode",
            batch_size=1, **{"num_scheduled_tokens=": 1, "preempted=": 1})
    ec.span("modelExec", ms(5.0), ms(6.0), "ModelExecute", d2, batch_type="Decode",
            batch_size=1)
    api.event("detokenize", ms(6.5), "Request", ["A"])
    ec.event("Free", ms(7.0), KV, "A", **pool(4, **{"deviceBlock=": 4}))
    state(ec, 7.0, "A", RUNNING=-1, FINISHED=1)
    api.event("httpRes", ms(7.5), "Request", "A", **{"recvTokenSize=": 4, "replyTokenSize=": 2})
    # step 3: B back
    state(ec, 8.1, "B", SWAPPED=-1, RUNNING=1)
    ec.event("SwapIn", ms(8.1), KV, "B", swap="swap_in",
             **pool(3, **{"SwappedBlocks=": 1, "AllocatedBlocks=": 1}))
    ec.event("KVCacheStatus", ms(8.5), KV, ["B"], **pool(3, **{"AllocatedBlocks=": 1}))
    d3 = [detail("B", 1, 1, 1, 4)]
    ec.span("batchFrameworkProcessing", ms(8.0), ms(8.5), BS, d3, batch_type="Decode",
            batch_size=1, **{"num_scheduled_tokens=": 1, "preempted=": 0})
    ec.span("modelExec", ms(9.0), ms(10.0), "ModelExecute", d3, batch_type="Decode",
            batch_size=1)
    api.event("detokenize", ms(10.5), "Request", ["B"])
    ec.event("Free", ms(11.0), KV, "B", **pool(4, **{"deviceBlock=": 4}))
    state(ec, 11.0, "B", RUNNING=-1, FINISHED=1)
    api.event("httpRes", ms(11.5), "Request", "B", **{"recvTokenSize=": 4, "replyTokenSize=": 2})
    return cap


@pytest.fixture(params=["json", "caret"])
def frame(request, tmp_path):
    v0_capture().write(tmp_path, encoding=request.param)
    frame, _, report = read_captures(tmp_path)
    assert report.problems == []
    return frame


def test_requests_with_preemptions_and_swaps(frame):
    requests = build_requests(frame).set_index("http_rid")
    assert list(requests.index) == ["A", "B"]
    assert requests.loc["A", "first_token_latency(ms)"] == pytest.approx(3.5, abs=1e-3)
    assert requests.loc["B", "first_token_latency(ms)"] == pytest.approx(3.4, abs=1e-3)
    assert requests.loc["A", "execution_time(ms)"] == pytest.approx(7.5, abs=1e-3)
    assert requests.loc["A", "queue_wait_time(ms)"] == pytest.approx(1.0, abs=1e-3)
    assert list(requests["recv_token_size"]) == [4, 4]
    assert list(requests["reply_token_size"]) == [2, 2]
    assert (requests.loc["A", "preemptions"], requests.loc["A", "swaps"]) == (0, 0)
    assert (requests.loc["B", "preemptions"], requests.loc["B", "swaps"]) == (1, 1)
    service = dict(zip(*service_summary(requests.reset_index()).to_dict("list").values()))
    assert service["preemption_num"] == 1 and service["swap_out_num"] == 1
    assert service["complete_request_num"] == 2


def test_state_counts_by_kind():
    import pandas as pd

    rows = pd.DataFrame({
        "name": ["ReqState"] * 5 + ["Enqueue"],
        "rids": [["a"], ["a"], ["b"], ["b"], ["c"], ["c"]],
        "metric_incs": [{"RUNNING": -1, "WAITING": 1}, {"RUNNING": -1, "SWAPPED": 1},
                        {"SWAPPED": -1, "RUNNING": 1}, {"WAITING": -1, "FINISHED_ABORTED": 1},
                        {"RUNNING": -1, "FINISHED": 1}, {"RUNNING": -1, "WAITING": 1}],
    })
    counts = request_state_counts(rows)
    assert counts.loc["a"].tolist() == [2, 1, 0]  # recompute, then swap
    assert counts.loc["b"].tolist() == [0, 0, 1]  # swapped in (no new preemption), aborted
    assert "c" not in counts.index  # finishing is not a preemption; Enqueue is no ReqState


def test_kvcache_rows_of_the_v0_engine(frame):
    kv = build_kvcache(frame)
    assert list(kv["name"]) == ["Allocate", "Allocate", "KVCacheStatus", "AppendSlot",
                                "SwapOut", "KVCacheStatus", "Free", "SwapIn", "KVCacheStatus",
                                "Free"]
    assert list(kv["free_blocks"]) == [3, 2, 2, 1, 2, 2, 4, 3, 3, 4]
    assert list(kv["blocks_allocated"]) == [1, 1, 2, 1, 0, 0, 0, 1, 1, 0]
    assert list(kv["blocks_freed"]) == [0, 0, 0, 0, 1, 0, 2, 0, 0, 1]
    assert set(kv["total_blocks"]) == {4}


def test_batches_take_the_step_pool_from_kvcache_status(frame):
    batches = build_batches(frame)
    steps = batches.loc[batches["name"] == "batchFrameworkProcessing"].reset_index(drop=True)
    assert list(steps["batch_type"]) == ["Prefill", "Decode", "Decode"]
    assert list(steps["total_batch_size"]) == [2, 1, 1]
    assert list(steps["used_blocks"]) == [2, 2, 1]
    assert list(steps["blocks_allocated"]) == [2, 0, 1]
    # A's blocks come back between step 2 and step 3; B's swap-out is inside step 2.
    assert list(steps["blocks_freed"]) == [0, 2, 1]
    assert list(steps["model_exec_time(ms)"]) == pytest.approx([1.0, 1.0, 1.0])
