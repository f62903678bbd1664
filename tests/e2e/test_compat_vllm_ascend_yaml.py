"""An msserviceprofiler user's setup, unchanged, on a real ``vllm serve`` (plugin activation).

The symbol file is the one vllm-ascend writes for msserviceprofiler, placed where vllm-ascend
puts it (``~/.config/vllm_ascend/service_profiling_symbols.<vLLM version>.yaml``, with ``HOME``
pointed into the test folder); nothing names it, no file of this project is configured. The
capture must hold the records its entries stand for, and the analyzer must read it.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import profiling_workdir
import pytest
import workload
from serve import VllmServer

from otel_vllm_ascend.versions import installed_vllm_version

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures" / "ms_symbols" / "vllm_ascend"
           / "service_profiling_symbols.0.32.0.yaml")
REQUESTS = 6
# vLLM 0.32 stops EngineCore and Workers with SIGKILL right after SIGTERM (shutdown timeout 0),
# so spans still queued in a BatchSpanProcessor are lost: export often, and let it run once.
EXPORT_DELAY_MS = 500
SETTLE_S = 3.0


@pytest.fixture(scope="module")
def ascend_file_run(tiny_model, e2e_root):
    work = e2e_root / "vllm_ascend_yaml"
    home = work / "home"
    user_file = (home / ".config" / "vllm_ascend"
                 / f"service_profiling_symbols.{installed_vllm_version()}.yaml")
    user_file.parent.mkdir(parents=True)
    shutil.copyfile(FIXTURE, user_file)
    prof_dir = work / "prof"
    config = work / "ms_service_profiler_config.json"
    profiling_workdir.write_config(config, prof_dir, enable=1)
    env = {"SERVICE_PROF_CONFIG_PATH": str(config), "HOME": str(home),
           "PROFILING_SYMBOLS_PATH": "", "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_DELAY_MS)}
    server = VllmServer(tiny_model, work, env=env)
    try:
        server.start()
        specs = workload.make_requests(REQUESTS, seed=7, output_tokens=(4, 8), id_prefix="va")
        results = workload.run(server.url, server.model_name, specs, concurrency=3)
        time.sleep(SETTLE_S)
    finally:
        server.stop()
    analyzer_rc, analyzer_output = profiling_workdir.run_analyzer(prof_dir, work / "output")
    return {
        "results": results,
        "records": profiling_workdir.read_records(prof_dir),
        "log": server.log_path.read_text(errors="replace"),
        "output": work / "output",
        "analyzer": (analyzer_rc, analyzer_output),
    }


def test_requests_succeed(ascend_file_run):
    failed = [(r.request_id, r.error) for r in ascend_file_run["results"] if not r.ok]
    assert not failed, ascend_file_run["log"][-3000:]


def test_the_user_file_was_used_and_allocate_slots_reported(ascend_file_run):
    log = ascend_file_run["log"]
    assert "service_profiling_symbols." in log and "per-version file" in log, log[-3000:]
    # One WARNING per process (the INFO lines listing skipped entries repeat the reason).
    lines = [line for line in log.splitlines() if "allocate_slots" in line and "WARNING" in line]
    assert lines and all("entry skipped" in line for line in lines), lines


def test_each_request_has_its_reference_records(ascend_file_run):
    records = ascend_file_run["records"]
    names = {r.name for r in records}
    assert {"httpReq", "httpRes", "detokenize", "batchFrameworkProcessing", "KVCacheStatus",
            "Enqueue", "Free", "ReqState", "computing_logits", "sample"} <= names, names
    for result in ascend_file_run["results"]:
        rid = result.external_rid

        def about(record, rid=rid):
            value = record.message.get("rid")
            ids = value if isinstance(value, list) else [value]
            return any(isinstance(i, str) and (i == rid or i.startswith(rid + "-"))
                       for i in ids)

        mine = [r for r in records if about(r)]
        states = [r.message for r in mine if r.name == "ReqState"]
        assert [m.get("WAITING+") for m in states if "WAITING+" in m] == [1], (rid, states)
        assert [m.get("FINISHED+") for m in states if "FINISHED+" in m] == [1], (rid, states)
        for state in states:
            assert state["domain"] == "Schedule" and state["type"] == 0
        assert {"httpReq", "httpRes", "Enqueue", "Free"} <= {r.name for r in mine}, rid


def test_the_analyzer_reads_the_capture(ascend_file_run):
    rc, output = ascend_file_run["analyzer"]
    assert rc == 0, output[-3000:]
    (request_csv,) = sorted(ascend_file_run["output"].rglob("request.csv"))
    with open(request_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rids = sorted(row["http_rid"] for row in rows)
    assert rids == sorted(r.external_rid for r in ascend_file_run["results"])
