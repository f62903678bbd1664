"""Data parallelism: ``vllm serve --data-parallel-size 2`` on a dense model.

vLLM 0.32 runs the two ranks as independent engines (EngineCore_DP0 and EngineCore_DP1, each
with its Worker) behind two API servers, which the main process starts and stops. Found serving
this way: the ranks were never named (the engines run with a DP size of 1 and no
``DPEngineCoreProc``), and the main process killed the API servers at shutdown before they
wrote the ``httpRes`` of the last requests. vLLM up to 0.13 (the version matrix) runs the ranks
as ``DPEngineCoreProc`` behind one API server.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sqlite3
from pathlib import Path

import pytest
import scenario
import workload

from otel_vllm_ascend import engine as engine_module

RANKS = 2
pytestmark = pytest.mark.skipif(engine_module.detect().engine == engine_module.V0,
                                reason="data parallelism serves with vLLM's V1 engine only")


def _csv(folder: Path, name: str) -> list:
    with open(folder / name, newline="") as handle:
        return list(csv.DictReader(handle))


def _meta(prof_dir: Path) -> list:
    """Each capture file's Meta rows as a dict."""
    found = []
    for path in sorted(prof_dir.rglob("ms_service_*.db")):
        with contextlib.closing(sqlite3.connect(path)) as db:
            found.append(dict(db.execute("SELECT name, value FROM Meta").fetchall()))
    return found


@pytest.fixture(scope="module")
def data_parallel(tiny_model, e2e_root):
    specs = workload.make_requests(24, seed=5, prompt_words=(10, 40), output_tokens=(8, 24),
                                   id_prefix="dp")
    # One core per rank, named: vLLM's automatic binding wants a NUMA node per rank on some
    # releases (0.23), which a one-node machine has not.
    cpus = sorted(os.sched_getaffinity(0))
    bind = "|".join(str(cpus[rank % len(cpus)]) for rank in range(RANKS))
    results, prof_dir, analysis, _ = scenario.serve_once(
        tiny_model, e2e_root / "data_parallel", specs, 8,
        ["--data-parallel-size", str(RANKS)], env={"VLLM_CPU_OMP_THREADS_BIND": bind})
    return results, prof_dir, analysis


def test_every_request_whole_after_the_api_servers_stopped(data_parallel):
    results, _, analysis = data_parallel
    assert all(result.ok for result in results), [r.error for r in results if not r.ok]
    by_id = {row["http_rid"]: row for row in _csv(analysis, "request.csv")}
    for result in results:
        row = by_id[result.external_rid]
        assert row["partial"] == "False", row
        assert float(row["reply_token_size"]) == result.completion_tokens, row


def test_each_engine_names_its_rank(data_parallel):
    _, prof_dir, _ = data_parallel
    roles = [meta.get("role") for meta in _meta(prof_dir)]
    # vLLM 0.32 starts one API server per rank; older releases one for both.
    assert roles.count("api_server") >= 1 and roles.count("engine_core") == RANKS, roles
    ranks = sorted(int(meta["dpRankId"]) for meta in _meta(prof_dir)
                   if meta.get("role") == "engine_core")
    assert ranks == list(range(RANKS))


def test_steps_and_forwards_carry_their_rank(data_parallel):
    results, _, analysis = data_parallel
    steps = [row for row in _csv(analysis, "batch.csv")
             if row["name"] == "batchFrameworkProcessing"]
    rank_of_pid = {}
    for row in steps:
        rank_of_pid.setdefault(row["pid"], set()).add(row["dp_rank"])
    assert sorted(rank for ranks in rank_of_pid.values() for rank in ranks) == \
        [str(rank) for rank in range(RANKS)], rank_of_pid  # one rank per engine, each once
    # From vLLM 0.14 the Workers record no rank of their own (their configuration says DP size
    # 1): they carry their EngineCore's.
    forwards = _csv(analysis, "forward.csv")
    assert forwards and {row["dp_rank"] for row in forwards} == \
        {str(rank) for rank in range(RANKS)}
    # Both ranks served: every request had its first step (iter 0) on one of them.
    requests_per_rank = {rank: 0 for rank in range(RANKS)}
    for row in steps:
        if "'iter': 0" in row["res_list"]:
            requests_per_rank[int(row["dp_rank"])] += row["res_list"].count("'iter': 0")
    assert sum(requests_per_rank.values()) == len(results) and all(requests_per_rank.values())


def test_dp_summary_one_row_per_rank(data_parallel):
    _, _, analysis = data_parallel
    rows = _csv(analysis, "dp_summary.csv")
    assert [row["dp_rank"] for row in rows] == [str(rank) for rank in range(RANKS)]
    steps = [row for row in _csv(analysis, "batch.csv")
             if row["name"] == "batchFrameworkProcessing"]
    for row in rows:
        assert int(row["engine_step_num"]) == sum(s["dp_rank"] == row["dp_rank"] for s in steps)
        assert 0 < float(row["busy_rate"]) <= 1, row
    assert sum(float(row["token_share"]) for row in rows) == pytest.approx(1, abs=1e-3)


def test_streamed_tables_equal_the_whole_analysis(data_parallel, tmp_path):
    """--stream over two engines' capture, dp_summary.csv included, read 1 s at a time with
    0.5 s margins: the tables of one analysis of the whole capture."""
    _, prof_dir, analysis = data_parallel
    assert scenario.streamed_tables_differ(prof_dir, analysis, tmp_path, 1_000_000,
                                           500_000) == []
