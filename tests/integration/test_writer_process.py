"""The node's writer process, for real: a "server" process sets the SDK up as the plugin does
(which starts the writer), its children connect to the same writer, and the capture files are
read back.

* every process's records reach its own file (its pid), through one writer, which exits after
  the server;
* a producer killed with SIGKILL keeps what it handed off, the others go on;
* a writer killed under the server: the server keeps running, says once that records are
  dropped, and counts them; a process started later builds its own spans;
* two servers on one host do not mix;
* SIGTERM to a producer, or to its process group, with records still queued: they are written;
* SIGTERM to the writer: it writes what it received and exits cleanly;
* a writer that cannot start: the processes build their spans themselves (one WARNING).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.subprocess

PRODUCER = '''
import os, signal, sys, time
from otel_vllm_ascend import recorder, tracing_setup


def produce(tag, count):
    now = time.time_ns()
    for i in range(count):
        recorder.record_span("rec", now + i, now + i + 1,
                             {"ms.domain": "Test", "i": i, "tag": tag, "ms.rid": [str(i)]})


def child_main(tag, count, mode):
    tracing_setup.ensure_tracer_provider()
    if mode == "sigterm":
        def stop(signum, frame):
            time.sleep(0.5)       # vLLM's shutdown takes a while before the last records go
            raise SystemExit(0)   # what vLLM's processes do with SIGTERM
        signal.signal(signal.SIGTERM, stop)
        produce(tag, count)
        print("ready", os.getpid(), flush=True)
        time.sleep(60)
    produce(tag, count)
    if mode == "kill":
        recorder.flush()          # handed off; then the process dies without any exit code
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
'''

SERVER = '''
import multiprocessing, os, signal, sys, time
sys.path.insert(0, {folder!r})
import producer_mod
from otel_vllm_ascend import recorder, tracing_setup
scenario = {scenario!r}
if scenario == "no_writer":
    tracing_setup.export_target = lambda name: "no_such_module_anywhere:main"
tracing_setup.ensure_tracer_provider()
client = recorder._state.handoff
writer = client.process if client is not None and client.process is not None else None
print("writer", writer.pid if writer else 0, flush=True)
producer_mod.produce("server", {count})
recorder.flush()
if scenario == "kill_writer":
    time.sleep(0.5)
    writer.kill()
    writer.wait()
    producer_mod.produce("server-after", {count})
    recorder.flush()
children = []
for index, (method, mode) in enumerate({children!r}):
    ctx = multiprocessing.get_context(method)
    child = ctx.Process(target=producer_mod.child_main, args=(f"child{{index}}", {count}, mode))
    child.start()
    child.join(120)
    print("child", child.pid, child.exitcode, flush=True)
print("server", os.getpid(), flush=True)
'''

COUNT = 300


def _env(tmp_path: Path, session: Path) -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path),
        "OTEL_VLLM_SESSION_DIR": str(session),
        "OTEL_TRACES_EXPORTER": "ms_service",
        "HOME": str(tmp_path),
    }


def _setup(tmp_path: Path) -> None:
    (tmp_path / "producer_mod.py").write_text(textwrap.dedent(PRODUCER))


def _start(tmp_path: Path, session: Path, scenario: str = "", children=(),
           count: int = COUNT) -> subprocess.Popen:
    script = SERVER.format(folder=str(tmp_path), scenario=scenario, count=count,
                           children=list(children))
    return subprocess.Popen([sys.executable, "-c", script], env=_env(tmp_path, session),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _lines(stdout: str, word: str) -> list:
    return [line.split()[1:] for line in stdout.splitlines() if line.startswith(word + " ")]


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def _records(session: Path) -> dict:
    """pid of the file -> (pids in its rows, tags and indices of its records)."""
    found = {}
    for path in sorted(session.glob("ms_service_*.db")):
        pid = int(path.stem.rsplit("-", 1)[1])
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT message, pid FROM Mstx").fetchall()
        found[pid] = ({row[1] for row in rows}, [row[0] for row in rows])
    return found


def _count(messages: list, tag: str) -> int:
    return sum(1 for message in messages if f'"tag": "{tag}"' in message)


def _run(tmp_path, session, **kwargs):
    server = _start(tmp_path, session, **kwargs)
    out, err = server.communicate(timeout=300)
    assert server.returncode == 0, err[-4000:]
    writer = int(_lines(out, "writer")[0][0])
    if writer:
        assert _wait_gone(writer), "the writer did not exit after the server"
    return out, err, writer


def test_every_process_reaches_its_own_file_through_one_writer(tmp_path):
    _setup(tmp_path)
    session = tmp_path / "session"
    out, err, writer = _run(tmp_path, session,
                            children=[("spawn", ""), ("fork", ""), ("spawn", "")])
    assert writer
    server = int(_lines(out, "server")[0][0])
    children = [int(pid) for pid, _ in _lines(out, "child")]
    found = _records(session)
    assert set(found) == {server, *children}  # one file per vLLM process, none for the writer
    assert found[server][0] == {server} and _count(found[server][1], "server") == COUNT
    for index, pid in enumerate(children):
        assert found[pid][0] == {pid}
        assert _count(found[pid][1], f"child{index}") == COUNT
    assert "the writer process did not answer" not in err


def test_killed_producer_keeps_what_it_handed_off(tmp_path):
    _setup(tmp_path)
    session = tmp_path / "session"
    out, err, writer = _run(tmp_path, session, children=[("spawn", "kill"), ("spawn", "")])
    (killed, code), (other, _) = _lines(out, "child")
    assert int(code) == -signal.SIGKILL
    found = _records(session)
    assert _count(found[int(killed)][1], "child0") == COUNT
    assert _count(found[int(other)][1], "child1") == COUNT


def test_killed_writer_server_keeps_serving_and_says_so_once(tmp_path):
    _setup(tmp_path)
    session = tmp_path / "session"
    out, err, writer = _run(tmp_path, session, scenario="kill_writer",
                            children=[("spawn", "")])
    assert err.count("the writer process is gone") == 1  # said once, by the server
    assert f"dropped {COUNT} records/spans: {COUNT} at the writer process (gone)" in err
    server = int(_lines(out, "server")[0][0])
    child = int(_lines(out, "child")[0][0])
    found = _records(session)
    assert _count(found[server][1], "server") == COUNT  # written before the writer died
    assert _count(found[server][1], "server-after") == 0
    # A process started after the writer died cannot reach it: it builds its spans itself.
    assert "the writer process did not answer" in err
    assert _count(found[child][1], "child0") == COUNT


def test_two_servers_on_one_host_do_not_mix(tmp_path):
    _setup(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    servers = [_start(tmp_path, first, children=[("spawn", "")]),
               _start(tmp_path, second, children=[("spawn", "")])]
    outputs = [server.communicate(timeout=300) for server in servers]
    assert [server.returncode for server in servers] == [0, 0], outputs[0][1][-3000:]
    writers = [int(_lines(out, "writer")[0][0]) for out, _ in outputs]
    assert writers[0] != writers[1]
    for (out, _), session, writer in zip(outputs, (first, second), writers):
        assert _wait_gone(writer)
        pids = {int(_lines(out, "server")[0][0]), int(_lines(out, "child")[0][0])}
        found = _records(session)
        assert set(found) == pids
        for pid in pids:
            assert found[pid][0] == {pid} and len(found[pid][1]) == COUNT


@pytest.mark.parametrize("to_group", [False, True], ids=["process", "process-group"])
def test_sigterm_writes_records_still_queued(tmp_path, to_group):
    """Also when the signal goes to the server's whole process group (a supervisor, ``kill --
    -<pgid>``): the writer, in a group of its own, is not stopped before the server's last
    records reach it (the producer would then build them itself, the slow way)."""
    _setup(tmp_path)
    session = tmp_path / "session"
    script = textwrap.dedent(f'''
        import faulthandler, signal, sys
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks, should it hang
        sys.path.insert(0, {str(tmp_path)!r})
        import producer_mod
        from otel_vllm_ascend import recorder
        recorder.DRAIN_INTERVAL_S = 3600   # nothing handed off before the signal
        producer_mod.child_main("term", 5000, "sigterm")
    ''')
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(tmp_path, session),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a group of its own, not the test's
    line = proc.stdout.readline()
    assert line.startswith("ready"), proc.stderr.read()[-3000:]
    pid = int(line.split()[1])
    writers = [child.pid for child in psutil.Process(pid).children()]
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    # communicate, not wait: a child blocked writing to a full stderr pipe would never exit
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # one CI run hung here: say where the producer was
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the producer did not exit after SIGTERM; its threads:\n{err[-6000:]}")
    for writer in writers:
        assert _wait_gone(writer)
    # written by the writer, not by the producer's own fallback after the writer had stopped
    assert "did not answer" not in err
    found = _records(session)
    assert _count(found[pid][1], "term") == 5000


def test_writer_that_cannot_start_leaves_building_here(tmp_path):
    _setup(tmp_path)
    session = tmp_path / "session"
    out, err, writer = _run(tmp_path, session, scenario="no_writer", children=[("spawn", "")])
    server = int(_lines(out, "server")[0][0])
    child = int(_lines(out, "child")[0][0])
    assert "the writer process did not answer" in err
    found = _records(session)
    assert _count(found[server][1], "server") == COUNT
    assert _count(found[child][1], "child0") == COUNT


def test_writer_off_switch(tmp_path):
    _setup(tmp_path)
    session = tmp_path / "session"
    server = subprocess.run(
        [sys.executable, "-c", SERVER.format(folder=str(tmp_path), scenario="", count=10,
                                             children=[])],
        env={**_env(tmp_path, session), "OTEL_VLLM_WRITER": "0"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert server.returncode == 0, server.stderr[-3000:]
    assert _lines(server.stdout, "writer") == [["0"]]
    assert os.listdir(session)


def test_sigterm_to_the_writer_writes_what_it_received(tmp_path):
    _setup(tmp_path)
    session = tmp_path / "session"
    script = textwrap.dedent(f'''
        import os, signal, sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        import producer_mod
        from otel_vllm_ascend import recorder, tracing_setup
        tracing_setup.ensure_tracer_provider()
        writer = recorder._state.handoff.process
        producer_mod.produce("before", {COUNT})
        recorder.flush()
        time.sleep(1.0)             # received by the writer, maybe not yet written
        writer.send_signal(signal.SIGTERM)
        writer.wait(30)
        print("writer", writer.pid, writer.returncode, flush=True)
        producer_mod.produce("after", 10)
        recorder.flush()
        print("server", os.getpid(), flush=True)
    ''')
    done = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path, session),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _lines(done.stdout, "writer")[0][1] == "0"  # a clean exit
    server = int(_lines(done.stdout, "server")[0][0])
    found = _records(session)
    assert _count(found[server][1], "before") == COUNT
    assert "the writer process is gone" in done.stderr


def test_writer_runs_at_a_low_priority(tmp_path):
    """The writer a server starts has its niceness (every thread) raised to the setting's, read
    from outside while the server runs; this tree's code first on the children's path."""
    _setup(tmp_path)
    session = tmp_path / "session"
    root = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(f'''
        import os, sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        import psutil, producer_mod
        from otel_vllm_ascend import recorder, tracing_setup
        tracing_setup.ensure_tracer_provider()
        writer = recorder._state.handoff.process
        producer_mod.produce("server", 10)
        recorder.flush()            # answered: the writer has set its priority
        time.sleep(0.5)             # and its export threads have started
        threads = [t.id for t in psutil.Process(writer.pid).threads()]
        print("nice", os.getpriority(os.PRIO_PROCESS, 0),
              *[os.getpriority(os.PRIO_PROCESS, t) for t in threads], flush=True)
        print("session", os.getsid(0), os.getsid(writer.pid), flush=True)
        print("group", os.getpgid(0), os.getpgid(writer.pid), writer.pid, flush=True)
        print("writer", writer.pid, flush=True)
    ''')
    env = {**_env(tmp_path, session), "OTEL_VLLM_WRITER_PRIORITY": "12",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    own, *writer_threads = (int(value) for value in _lines(done.stdout, "nice")[0])
    assert len(writer_threads) >= 2  # the main thread and at least one export thread
    assert writer_threads == [max(own, 12)] * len(writer_threads)
    assert own < 12  # the server itself is untouched
    # The server's session (one scheduling group under the kernel's autogroup, where the
    # niceness weighs against the server's processes), a process group of its own (a signal
    # to the server's group does not reach it).
    server_session, writer_session = _lines(done.stdout, "session")[0]
    assert writer_session == server_session
    server_group, writer_group, writer_pid = _lines(done.stdout, "group")[0]
    assert writer_group == writer_pid != server_group
    assert _wait_gone(int(_lines(done.stdout, "writer")[0][0]))
    found = _records(tmp_path / "session")
    assert sum(_count(messages, "server") for _, messages in found.values()) == 10
