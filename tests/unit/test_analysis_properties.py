"""Property tests: generated vLLM runs, written as real captures, read back and analysed.

The simulator (tests/analysis_fixtures.py) knows what really happened to each request, so the
analyzer's numbers are compared with the truth, not only with each other.
"""

import json
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import simulate_service  # noqa: E402

from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.requests import build_requests  # noqa: E402

TOL = 1e-3  # ms: float µs since the epoch resolve 0.25 µs

runs = st.fixed_dictionaries({
    "n_requests": st.integers(1, 25),
    "seed": st.integers(0, 10_000),
    "max_batch": st.integers(1, 8),
    "max_output": st.integers(1, 6),
    "layout": st.sampled_from(["per_process", "per_thread", "trace_service"]),
    "encoding": st.sampled_from(["json", "caret"]),
})

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def analyse(sim, tmp_path, layout, encoding):
    folder = tmp_path / f"cap-{len(list(tmp_path.iterdir()))}"
    sim.capture.write(folder, layout=layout, encoding=encoding)
    frame, _, report = read_captures(folder)
    assert report.problems == []
    return frame, build_requests(frame), build_batches(frame)


@SETTINGS
@given(run=runs)
def test_requests_match_truth_and_order(run, tmp_path):
    sim = simulate_service(run["n_requests"], seed=run["seed"], max_batch=run["max_batch"],
                           max_output=run["max_output"])
    _, req, _ = analyse(sim, tmp_path, run["layout"], run["encoding"])
    assert len(req) == run["n_requests"]
    assert not req["partial"].any()
    by_rid = req.set_index("http_rid")
    for truth in sim.requests:
        row = by_rid.loc[truth.external]
        wait, ttft, e2e = (row["queue_wait_time(ms)"], row["first_token_latency(ms)"],
                           row["execution_time(ms)"])
        assert -TOL <= wait <= ttft + TOL <= e2e + 2 * TOL
        assert abs(wait - (truth.first_scheduled_us - truth.enqueue_us) / 1000) < TOL
        assert abs(ttft - (truth.first_token_us - truth.arrival_us) / 1000) < TOL
        assert abs(e2e - (truth.end_us - truth.arrival_us) / 1000) < TOL
        assert row["recv_token_size"] == truth.prompt_tokens
        assert row["reply_token_size"] == truth.output_tokens
        assert row["steps"] == truth.output_tokens


@SETTINGS
@given(run=runs)
def test_batches_are_engine_steps_and_tokens_add_up(run, tmp_path):
    sim = simulate_service(run["n_requests"], seed=run["seed"], max_batch=run["max_batch"],
                           max_output=run["max_output"])
    _, req, batches = analyse(sim, tmp_path, run["layout"], run["encoding"])
    assert len(batches) == sim.steps
    assert batches["total_scheduled_tokens"].tolist() == sim.step_tokens
    assert batches["total_batch_size"].tolist() == sim.step_sizes
    assert (batches["Prefill_batch_size"] + batches["Decode_batch_size"]).tolist() == \
        sim.step_sizes
    prompts = sum(r.prompt_tokens for r in sim.requests)
    outputs = sum(r.output_tokens for r in sim.requests)
    assert batches["Prefill_scheduled_tokens"].sum() == prompts
    assert batches["Decode_scheduled_tokens"].sum() == outputs - len(sim.requests)
    assert req["reply_token_size"].sum() == outputs
    assert req["recv_token_size"].sum() == prompts
    # every step's KV columns come from its own KVCacheStatus record
    assert batches["total_blocks"].eq(sim.kv_total).all()
    assert np.allclose(batches["used_blocks"] / batches["total_blocks"],
                       batches["kvcache_usage_rate"])
    assert batches["blocks_freed"].sum() == batches["blocks_allocated"].sum()


@SETTINGS
@given(run=runs, cut=st.tuples(st.floats(0, 0.6), st.floats(0.4, 1.0)))
def test_capture_window_keeps_partial_requests(run, cut, tmp_path):
    """Collection switched on/off while requests ran: every request still gets one row."""
    sim = simulate_service(run["n_requests"], seed=run["seed"], max_batch=run["max_batch"],
                           max_output=run["max_output"])
    records = [r for p in sim.capture.processes for r in p.records]
    first = min(r.start_ns for r in records)
    last = max(r.end_ns for r in records)
    lo = first + (last - first) * min(cut)
    hi = first + (last - first) * max(cut)
    for proc in sim.capture.processes:
        proc.records = [r for r in proc.records if lo <= r.start_ns and r.end_ns <= hi]
    if not any(p.records for p in sim.capture.processes):
        return
    frame, req, batches = analyse(sim, tmp_path, run["layout"], run["encoding"])
    seen = set()
    for rids in frame["rids"]:
        seen.update(rids)
    for detail in frame["rid_detail"].dropna():
        seen.update(d["rid"] for d in detail)
    assert set(req["http_rid"]) == seen
    assert req["http_rid"].is_unique
    complete = req.loc[~req["partial"]]
    assert complete["has_arrival"].all() and complete["has_end"].all()
    assert (complete["execution_time(ms)"] >= -TOL).all()
    partial = req.loc[req["partial"]]
    assert partial["execution_time(ms)"].isna().all()
    # The simulator's steps are told apart by their request dicts (iterations differ).
    step_rows = frame.loc[frame["name"].isin(["batchFrameworkProcessing", "modelExec"])]
    identities = {json.dumps(list(d), sort_keys=True) for d in step_rows["rid_detail"]}
    assert len(batches) == len(identities)


def test_two_services_on_two_hosts_with_equal_pids(tmp_path):
    a = simulate_service(8, seed=1, host="node-a", max_batch=3)
    b = simulate_service(9, seed=2, host="node-b", max_batch=2, engine_tid=777)
    a.capture.write(tmp_path, session="1129-1200", layout="per_thread")
    b.capture.write(tmp_path, session="1129-1300", encoding="caret")
    frame, processes, report = read_captures(tmp_path)
    assert report.problems == []
    assert sorted((p.host, p.pid, p.role) for p in processes) == [
        ("node-a", 100, "api_server"), ("node-a", 200, "engine_core"),
        ("node-b", 100, "api_server"), ("node-b", 200, "engine_core")]
    req = build_requests(frame)
    assert len(req) == 17 and not req["partial"].any()
    batches = build_batches(frame)
    for sim, host in ((a, "node-a"), (b, "node-b")):
        mine = batches.loc[batches["host"] == host]
        assert mine["total_scheduled_tokens"].tolist() == sim.step_tokens
        truth = {r.external: (r.end_us - r.arrival_us) / 1000 for r in sim.requests}
        got = req.set_index("http_rid").loc[list(truth), "execution_time(ms)"]
        assert np.allclose(got.to_numpy(), list(truth.values()), atol=TOL)
