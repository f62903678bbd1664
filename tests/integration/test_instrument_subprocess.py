"""``opentelemetry-instrument`` with our distro: a parent, a spawn child and a fork child.

The script records through ``otel_vllm_ascend.recorder`` (as vLLM's hooks do) in every process.
Expected: each process writes its own ``ms_service_<host>-<pid>.db`` in ONE shared session
folder, and each process's spans reach a real OTLP receiver with that process's pid.
"""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from otlp_receivers import HttpReceiver, wait_for

from otel_vllm_ascend.exporters.ms_service import db_file_name

pytestmark = pytest.mark.subprocess

SCRIPT = """
import multiprocessing, os, sys, time
from otel_vllm_ascend import contract, recorder

def work(role, out):
    for i in range(3):
        t = time.time_ns()
        recorder.record_span(role, t, t + 1000, {contract.DOMAIN: "Test", "i": i,
                                                 "writer": os.getpid()})
    recorder.record_meta("role", role)
    out.put((role, os.getpid(), os.environ.get("OTEL_VLLM_SESSION_DIR")))

if __name__ == "__main__":
    found = []
    for method in ("spawn", "fork"):
        context = multiprocessing.get_context(method)
        out = context.Queue()
        if method == "spawn":
            work("parent", out)
            found.append(out.get(timeout=30))
        child = context.Process(target=work, args=(method + "_child", out))
        child.start()
        found.append(out.get(timeout=60))
        child.join(120)
        assert child.exitcode == 0, (method, child.exitcode)
    for line in found:
        print(*line, flush=True)
"""


def _instrument_cli() -> str:
    cli = Path(sys.executable).with_name("opentelemetry-instrument")
    return str(cli) if cli.exists() else shutil.which("opentelemetry-instrument")


def test_parent_spawn_and_fork_children_under_opentelemetry_instrument(tmp_path):
    cli = _instrument_cli()
    assert cli, "opentelemetry-instrument is installed with opentelemetry-instrumentation"
    receiver = HttpReceiver()
    try:
        config = tmp_path / "ms_service_profiler_config.json"
        config.write_text(json.dumps({"enable": 1, "prof_dir": str(tmp_path / "prof")}))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OTEL_") and k != "PYTHONPATH"}
        env.update(SERVICE_PROF_CONFIG_PATH=str(config),
                   OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                   OTEL_EXPORTER_OTLP_PROTOCOL=receiver.protocol)
        script = tmp_path / "three_processes.py"
        script.write_text(SCRIPT)
        done = subprocess.run([cli, sys.executable, str(script)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        processes = {}
        for line in done.stdout.splitlines():
            role, pid, session = line.split()
            processes[role] = (int(pid), session)
        assert sorted(processes) == ["fork_child", "parent", "spawn_child"]
        sessions = {session for _, session in processes.values()}
        assert len(sessions) == 1  # one folder for the whole service
        folder = Path(sessions.pop())
        assert folder.parent == tmp_path / "prof"

        # the file: one per process, each holding exactly its own records
        files = sorted(p.name for p in folder.glob("ms_service_*.db"))
        host = socket.gethostname()
        assert files == sorted(db_file_name(host, pid) for pid, _ in processes.values())
        for role, (pid, _) in processes.items():
            conn = sqlite3.connect(folder / db_file_name(host, pid))
            rows = conn.execute("SELECT message, pid FROM Mstx ORDER BY markId").fetchall()
            meta = dict(conn.execute("SELECT name, value FROM Meta"))
            conn.close()
            assert [json.loads(m)["name"] for m, _ in rows] == [role] * 3, role
            assert [json.loads(m)["i"] for m, _ in rows] == [0, 1, 2]
            assert {p for _, p in rows} == {pid}
            assert meta["role"] == role and meta["hostname"] == host

        # OTLP: every process's spans, each with its own process.pid in the resource
        spans = wait_for(receiver, lambda s: len([x for x in s if x.name != "Meta"]) >= 9)
        for role, (pid, _) in processes.items():
            mine = [s for s in spans if s.name == role]
            assert len(mine) == 3, (role, [s.name for s in spans])
            assert {s.resource["process.pid"] for s in mine} == {pid}
            assert {s.attributes["writer"] for s in mine} == {pid}
            assert {s.resource["service.name"] for s in mine} == {"vllm"}
    finally:
        receiver.stop()
