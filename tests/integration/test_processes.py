"""Real child processes, started by spawn and by fork, keep every span.

A parent process activates profiling the way plain ``vllm serve`` does (the vLLM plugin's
``register()`` with ``SERVICE_PROF_CONFIG_PATH`` set: our SDK provider, our SQLite exporter, the
hooks of a symbol YAML named by ``PROFILING_SYMBOLS_PATH``). It starts one child by spawn (which
runs ``register()`` itself, as every vLLM process does) and one by fork (which inherits the
hooks; multiprocessing ends it with ``os._exit``), each calling a hooked function N times. The
test then reads the ``ms_service_*.db`` files: every process wrote all of its records.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

CALLS = 25

WORKLOAD = """
def step(i):
    return i * 2


def child_main(method, calls):
    from otel_vllm_ascend.plugin import register
    register()   # vLLM calls this in every process; a no-op where already instrumented
    for i in range(calls):
        assert step(i) == i * 2
"""

PARENT = """
import multiprocessing, os, sys
sys.path.insert(0, {folder!r})
from otel_vllm_ascend.plugin import register
register()
import workload_mod
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
assert len(VllmServiceInstrumentor().hooks) == 1, VllmServiceInstrumentor().problems
for i in range({calls}):
    workload_mod.step(i)
for method in ("spawn", "fork"):
    ctx = multiprocessing.get_context(method)
    child = ctx.Process(target=workload_mod.child_main, args=(method, {calls}), name=method)
    child.start()
    child.join(120)
    assert child.exitcode == 0, (method, child.exitcode)
    print(method, child.pid, flush=True)
print("parent", os.getpid(), flush=True)
"""


def test_spawn_and_fork_children_keep_every_span(tmp_path):
    (tmp_path / "workload_mod.py").write_text(textwrap.dedent(WORKLOAD))
    (tmp_path / "symbols.yaml").write_text(
        "- symbol: workload_mod:step\n  domain: Test\n  name: stepSpan\n"
        "  attributes:\n    - name: i\n      expr: i\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"enable": 1, "prof_dir": str(tmp_path / "prof"), "profiler_level": "INFO"}))
    session = tmp_path / "prof" / "session"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path),
        "SERVICE_PROF_CONFIG_PATH": str(tmp_path / "config.json"),
        "PROFILING_SYMBOLS_PATH": str(tmp_path / "symbols.yaml"),
        "OTEL_VLLM_SESSION_DIR": str(session),
        "OTEL_TRACES_EXPORTER": "ms_service",
        "HOME": str(tmp_path),
    }
    script = PARENT.format(folder=str(tmp_path), calls=CALLS)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pids = {}
    for line in done.stdout.splitlines():
        role, pid = line.split()
        pids[role] = int(pid)
    assert set(pids) == {"spawn", "fork", "parent"}

    databases = sorted(session.glob("ms_service_*.db"))
    per_pid = {}
    for db in databases:
        with sqlite3.connect(db) as conn:
            for message, pid in conn.execute("SELECT message, pid FROM Mstx"):
                record = json.loads(message)
                if record.get("name") == "stepSpan":
                    per_pid.setdefault(pid, []).append(record)
    assert set(per_pid) == set(pids.values())
    for role, pid in pids.items():
        records = per_pid[pid]
        assert len(records) == CALLS, (role, len(records), done.stderr[-2000:])
        assert sorted(r["i"] for r in records) == list(range(CALLS))
        assert all(r["domain"] == "Test" for r in records)
    # One INFO line per process says how many hooks it installed.
    assert done.stderr.count("hooks installed now") >= 2


INSTRUMENTED = """
import os, sys
sys.path.insert(0, {folder!r})
from otel_vllm_ascend.plugin import register
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
assert VllmServiceInstrumentor().is_instrumented_by_opentelemetry  # by opentelemetry-instrument
register()   # the vLLM plugin in the same process: must not instrument again
register()
import workload_mod
assert len(VllmServiceInstrumentor().hooks) == 1
for i in range({calls}):
    workload_mod.step(i)
print("parent", os.getpid(), flush=True)
"""


def test_opentelemetry_instrument_and_plugin_do_not_double_instrument(tmp_path):
    import os
    import shutil

    launcher = shutil.which("opentelemetry-instrument",
                            path=os.path.dirname(sys.executable))
    if launcher is None:
        pytest.fail("opentelemetry-instrument is not installed next to the test interpreter")
    (tmp_path / "workload_mod.py").write_text(textwrap.dedent(WORKLOAD))
    (tmp_path / "symbols.yaml").write_text(
        "- symbol: workload_mod:step\n  domain: Test\n  name: stepSpan\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"enable": 1, "prof_dir": str(tmp_path / "prof")}))
    session = tmp_path / "prof" / "session"
    env = {
        "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path),
        "SERVICE_PROF_CONFIG_PATH": str(tmp_path / "config.json"),
        "PROFILING_SYMBOLS_PATH": str(tmp_path / "symbols.yaml"),
        "OTEL_VLLM_SESSION_DIR": str(session),
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "",
        "HOME": str(tmp_path),
    }
    script = INSTRUMENTED.format(folder=str(tmp_path), calls=CALLS)
    done = subprocess.run([launcher, sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pid = int(done.stdout.split()[1])
    names = []
    for db in session.glob("ms_service_*.db"):
        with sqlite3.connect(db) as conn:
            names += [json.loads(m).get("name") for (m,) in
                      conn.execute("SELECT message FROM Mstx WHERE pid = ?", (pid,))]
    assert names.count("stepSpan") == CALLS


WATCHER = """
import json, multiprocessing, os, sys, time
from otel_vllm_ascend import control
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
VllmServiceInstrumentor().instrument(specs=(), config_path={config!r})
assert not control.is_recording()

def child(path):
    # The parent's watcher thread does not exist in a fork child: ours must have restarted.
    with open(path, "w") as f:
        json.dump({{"enable": 1}}, f)
    stamp = time.time_ns() + 50_000_000
    os.utime(path, ns=(stamp, stamp))
    deadline = time.monotonic() + 5
    while not control.is_recording() and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(0 if control.is_recording() else 3)

process = multiprocessing.get_context("fork").Process(target=child, args=({config!r},))
process.start()
process.join(30)
print(process.exitcode)
"""


def test_fork_child_keeps_watching_the_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"enable": 0, "prof_dir": str(tmp_path / "prof")}))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OTEL_VLLM_SESSION_DIR": str(tmp_path / "session")}
    done = subprocess.run([sys.executable, "-c", WATCHER.format(config=str(config))], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0", done.stderr[-2000:]
