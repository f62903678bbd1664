"""The newest symbol file vllm-ascend writes (msserviceprofiler 26.x layout, 76 entries with a
wildcard and chained entries), unchanged, on a real ``vllm serve`` with n-gram speculative
decoding, against our default file on the same workload.

The file sits where vllm-ascend puts it (``~/.config/vllm_ascend/service_profiling_symbols.
<vLLM version>.yaml`` with ``HOME`` in the test folder) and nothing names it. Both servers get
the same requests; their tables must agree: the same requests with the same token counts, the
same columns, engine steps of both kinds, KV rows, model-runner phase spans and speculative
decoding rows.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import profiling_workdir
import pytest
import workload
from serve import VllmServer

from otel_vllm_ascend.versions import installed_vllm_version

NEWEST = (Path(__file__).resolve().parents[1] / "fixtures" / "ms_symbols" / "vllm_ascend"
          / "vllm-ascend-0.25.1rc1.yaml")
SPECULATIVE = json.dumps({"method": "ngram", "num_speculative_tokens": 2,
                          "prompt_lookup_max": 3, "prompt_lookup_min": 1})
PHASES = {"prepare input", "forward", "post process"}
SETTLE_S = 3.0


def _serve(tiny_model, work: Path, symbols_file: Path | None) -> dict:
    home = work / "home"
    home.mkdir(parents=True)
    env = {"HOME": str(home), "PROFILING_SYMBOLS_PATH": ""}
    if symbols_file is not None:
        target = (home / ".config" / "vllm_ascend"
                  / f"service_profiling_symbols.{installed_vllm_version()}.yaml")
        target.parent.mkdir(parents=True)
        shutil.copyfile(symbols_file, target)
    prof_dir = work / "prof"
    config = work / "ms_service_profiler_config.json"
    profiling_workdir.write_config(config, prof_dir, enable=1)
    env["SERVICE_PROF_CONFIG_PATH"] = str(config)
    server = VllmServer(tiny_model, work, env=env, extra_args=["--speculative-config",
                                                               SPECULATIVE])
    try:
        server.start()
        specs = workload.make_requests(8, seed=11, prompt_words=(12, 24, 40),
                                       output_tokens=(16, 32), id_prefix=work.name[:6])
        results = workload.run(server.url, server.model_name, specs, concurrency=4)
        time.sleep(SETTLE_S)
    finally:
        stop_rc = server.stop()
    rc, output = profiling_workdir.run_analyzer(prof_dir, work / "output")
    return {"results": results, "records": profiling_workdir.read_records(prof_dir),
            "log": server.log_path.read_text(errors="replace"), "output": work / "output",
            "analyzer": (rc, output), "stop_rc": stop_rc}


@pytest.fixture(scope="module")
def runs(tiny_model, e2e_root):
    return {"ascend": _serve(tiny_model, e2e_root / "ascend_newest", NEWEST),
            "default": _serve(tiny_model, e2e_root / "default_spec", None)}


def _table(run, name):
    (path,) = sorted(run["output"].rglob(name))
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_both_servers_served_and_were_analysed(runs):
    for label, run in runs.items():
        assert all(r.ok for r in run["results"]), (label, run["log"][-3000:])
        assert run["analyzer"][0] == 0, (label, run["analyzer"][1][-3000:])
        assert run["stop_rc"] == 0, label
    assert "per-version file" in runs["ascend"]["log"], runs["ascend"]["log"][-3000:]


def test_the_file_uses_our_handlers_not_timers(runs):
    log = runs["ascend"]["log"]
    assert "using the default timer instead" not in log, [
        line for line in log.splitlines() if "default timer" in line][:5]
    assert "ms_service_profiler" not in " ".join(
        line for line in log.splitlines() if "cannot be imported" in line)


@pytest.mark.parametrize("name", ["request.csv", "batch.csv", "kvcache.csv", "spec_decode.csv"])
def test_tables_have_the_same_columns(runs, name):
    assert _table(runs["ascend"], name)[0] == _table(runs["default"], name)[0]


def test_requests_and_token_counts_agree_with_the_client_on_both(runs):
    for label, run in runs.items():
        _, rows = _table(run, "request.csv")
        by_rid = {row["http_rid"]: row for row in rows}
        assert sorted(by_rid) == sorted(r.external_rid for r in run["results"]), label
        for result in run["results"]:
            row = by_rid[result.external_rid]
            assert float(row["recv_token_size"]) == result.prompt_tokens, (label, row)
            assert float(row["reply_token_size"]) == result.completion_tokens, (label, row)


def test_engine_steps_kv_rows_phases_and_speculative_decoding_on_both(runs):
    for label, run in runs.items():
        _, steps = _table(run, "batch.csv")
        kinds = {row["batch_type"] for row in steps}
        assert any("Prefill" in k for k in kinds) and any("Decode" in k for k in kinds), label
        assert all(float(row["model_exec_time(ms)"]) > 0 for row in steps), label
        assert _table(run, "kvcache.csv")[1], label
        names = {r.name for r in run["records"]}
        assert PHASES <= names, (label, names)
        assert "specDecoding" in names and "modelRunnerExec" in names, (label, names)
        _, drafts = _table(run, "spec_decode.csv")
        assert drafts, label
        assert sum(int(row["accepted_tokens"]) for row in drafts) > 0, label
        assert all(0 <= float(row["accepted_ratio"]) <= 1 for row in drafts), label


def test_the_file_gives_every_record_the_default_does(runs):
    ascend = {r.name for r in runs["ascend"]["records"]}
    default = {r.name for r in runs["default"]["records"]}
    assert default <= ascend, default - ascend
