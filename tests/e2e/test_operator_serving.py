"""A real ``vllm serve`` on CPU with operator collection on (``acl_task_time: 3``).

One server, driven through the live switch like a user would:

========== ======================================================= ============================
phase      config while it runs                                    expected operator data
========== ======================================================= ============================
off        ``enable 0``                                            none
limited    ``enable 1``, ``torch_prof_step_num 4``                 exactly 4 profiled steps
unlimited  ``enable 1`` again, ``torch_prof_step_num 0``           every step until switched off
after      ``enable 0``                                            none (nothing after the sed)
========== ======================================================= ============================

Then the capture is analysed: the operators must sit under the Worker's process in
``chrome_tracing.json``, inside a ``modelRunnerExec`` of that Worker and inside a ``modelExec``
of EngineCore, and ``op_summary.csv`` / ``op_statistic.csv`` must describe the profiled steps.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import time
from pathlib import Path

import profiling_workdir
import pytest
import workload
from serve import VllmServer

from otel_vllm_ascend import operator_profiler

PICKUP_S = 3.0
LIMITED_STEPS = 4
# The trace's µs are printed with 3 decimals and the clock offset is estimated to within the
# mark's opening latency: a few µs of slack when checking containment.
SLACK_US = 50.0


@dataclasses.dataclass
class OperatorRun:
    work: Path
    prof_dir: Path
    output: Path
    phases: dict
    switched_off_ns: int
    unlimited_on_ns: int
    analyzer_rc: int
    analyzer_output: str
    server_log: Path


def _write_config(path: Path, prof_dir: Path) -> None:
    fields = {"enable": 0, "prof_dir": str(prof_dir), "profiler_level": "INFO",
              "acl_task_time": 3, "torch_prof_step_num": LIMITED_STEPS, "timelimit": 0}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def _set_step_num(path: Path, value: int) -> None:
    subprocess.run(["sed", "-i", f's/"torch_prof_step_num":\\s*[0-9]*/"torch_prof_step_num": '
                    f'{value}/', str(path)], check=True)


def _requests(prefix: str, count: int, seed: int):
    return workload.make_requests(count, seed=seed, prompt_words=(4, 12), output_tokens=(8, 16),
                                  id_prefix=prefix)


@pytest.fixture(scope="module")
def operator_run(tiny_model, e2e_root):
    work = e2e_root / "operators"
    files = profiling_workdir.prepare(work, enable=0)
    _write_config(files.config, files.prof_dir)
    server = VllmServer(tiny_model, work, env=files.env())
    phases = {}
    try:
        server.start()
        run = lambda specs: workload.run(server.url, server.model_name, specs, 2,  # noqa: E731
                                         timeout_s=300)
        phases["off"] = run(_requests("opoff", 3, 1))
        profiling_workdir.set_enable(files.config, True)
        time.sleep(PICKUP_S)
        phases["limited"] = run(_requests("oplim", 4, 2))
        profiling_workdir.set_enable(files.config, False)
        time.sleep(PICKUP_S)
        _set_step_num(files.config, 0)
        profiling_workdir.set_enable(files.config, True)
        time.sleep(PICKUP_S)
        unlimited_on = time.time_ns()
        phases["unlimited"] = run(_requests("opall", 3, 3))
        profiling_workdir.set_enable(files.config, False)
        time.sleep(PICKUP_S)
        switched_off = time.time_ns()
        phases["after"] = run(_requests("opafter", 3, 4))
    finally:
        server.stop()
    time.sleep(1.0)
    output = work / "analysis"
    rc, text = profiling_workdir.run_analyzer(files.prof_dir, output)
    return OperatorRun(work, files.prof_dir, output, phases, switched_off, unlimited_on, rc,
                       text, server.log_path)


def _worker_pid(run: OperatorRun) -> int:
    roles = profiling_workdir.read_roles(run.prof_dir)
    workers = [pid for pid, role in roles.items() if role == "worker"]
    assert len(workers) == 1, roles
    return workers[0]


def _sidecar(run: OperatorRun) -> tuple[Path, dict]:
    folders = sorted(run.prof_dir.rglob(f"{operator_profiler.FOLDER_PREFIX}*"))
    assert len(folders) == 1, (folders, run.server_log.read_text()[-3000:])
    return folders[0], json.loads((folders[0] / operator_profiler.SIDECAR_NAME).read_text())


def _marks(folder: Path) -> list:
    marks = []
    for path in sorted(folder.glob("*.pt.trace.json")):
        for event in json.loads(path.read_text())["traceEvents"]:
            name = str(event.get("name", ""))
            if name.startswith(operator_profiler.MARKER_PREFIX):
                marks.append((path.name, int(name.split("#")[1].split("@")[0]),
                              int(name.split("@")[1])))
    return marks


def test_requests_succeeded_and_analysed(operator_run):
    for phase, results in operator_run.phases.items():
        assert all(r.ok for r in results), (phase, [r.error for r in results if not r.ok])
    assert operator_run.analyzer_rc == 0, operator_run.analyzer_output[-3000:]


def test_one_operator_folder_written_by_the_worker(operator_run):
    folder, sidecar = _sidecar(operator_run)
    assert sidecar["pid"] == _worker_pid(operator_run)
    assert folder.name.endswith(f"-{sidecar['pid']}") and sidecar["role"] == "worker"
    assert sidecar["plan"]["device"] == "cpu" and sidecar["plan"]["backend"] == "torch"


def test_step_limit_then_enable_off_bound_the_profiled_steps(operator_run):
    folder, sidecar = _sidecar(operator_run)
    windows = sidecar["windows"]
    assert windows[0]["steps"] == LIMITED_STEPS
    assert windows[0]["reason"] == f"{LIMITED_STEPS} steps profiled"
    assert len(windows) == 2 and windows[1]["reason"] == "collection stopped"
    marks = _marks(folder)
    first = [m for m in marks if m[0] == windows[0]["file"]]
    second = [m for m in marks if m[0] == windows[1]["file"]]
    assert len(first) == LIMITED_STEPS  # the steps requested and no others
    assert len(second) == windows[1]["steps"] > 0
    assert all(wall >= operator_run.unlimited_on_ns - 1e9 * PICKUP_S for *_, wall in second)
    # Switching enable off stops them: no step mark after the switch was picked up.
    assert max(wall for *_, wall in marks) < operator_run.switched_off_ns


def test_operators_inside_the_steps_of_the_worker_in_the_trace(operator_run):
    trace = json.loads(next(operator_run.output.rglob("chrome_tracing.json")).read_text())
    events = trace["traceEvents"]
    worker = _worker_pid(operator_run)
    ops = [e for e in events if e.get("cat") == "operator"]
    assert ops and {e["pid"] for e in ops} == {worker}
    stepped = [e for e in ops if "step" in e["args"]]
    assert {e["name"] for e in stepped} >= {"aten::linear", "aten::mm"} or \
        any(e["name"].startswith("aten::") for e in stepped)
    runner = [(e["ts"], e["ts"] + e["dur"]) for e in events
              if e.get("ph") == "X" and e.get("name") == "modelRunnerExec" and
              e.get("pid") == worker]
    model_exec = [(e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("ph") == "X" and e.get("name") == "modelExec"]
    assert runner and model_exec

    def inside(op, spans):
        return any(s - SLACK_US <= op["ts"] and op["ts"] + op["dur"] <= f + SLACK_US
                   for s, f in spans)

    outside_runner = [e for e in stepped if not inside(e, runner)]
    outside_exec = [e for e in stepped if not inside(e, model_exec)]
    assert not outside_runner, outside_runner[:3]
    assert not outside_exec, outside_exec[:3]
    names = {e["args"]["name"] for e in events if e.get("ph") == "M" and
             e.get("name") == "thread_name" and e.get("pid") == worker}
    assert any(n.startswith("operators thread") for n in names)


def test_op_tables_describe_the_profiled_steps(operator_run):
    folder, sidecar = _sidecar(operator_run)
    steps = sum(w["steps"] for w in sidecar["windows"])
    with open(next(operator_run.output.rglob("op_statistic.csv")), newline="") as handle:
        statistic = list(csv.DictReader(handle))
    assert len(statistic) == steps
    for row in statistic:
        step_us, operator_us = float(row["step_us"]), float(row["operator_us"])
        assert 0 < operator_us <= step_us
        assert abs(float(row["host_overhead_us"]) - (step_us - operator_us)) < 0.01
    with open(next(operator_run.output.rglob("op_summary.csv")), newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert summary and all(int(r["calls"]) > 0 for r in summary)
    html = next(operator_run.output.rglob("report.html")).read_text()
    assert "Top operators" in html
