"""The ms_service exporter on real SQLite files: format, numbering, durability, failure cases."""

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vllm_ascend import contract
from otel_vllm_ascend.exporters import session
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter, db_file_name
from otel_vllm_ascend.exporters.processors import CountingBatchSpanProcessor

# The tables exactly as msserviceprofiler's C library creates them.
MSTX_SQL = ("CREATE TABLE Mstx(message TEXT, flag INTEGER, markId INTEGER, timestamp INTEGER, "
            "endTimestamp INTEGER, pid INTEGER, tid INTEGER)")
META_SQL = "CREATE TABLE Meta(name TEXT, value TEXT)"


@pytest.fixture(scope="module")
def spans_of():
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("otel_vllm_ascend")

    def make(count, name="modelExec", **extra):
        memory.clear()
        for i in range(count):
            attrs = {contract.DOMAIN: "Execute", contract.RID: f"r{i}", contract.THREAD_ID: 99,
                     "batch_size": i}
            attrs.update(extra)
            span = tracer.start_span(name, attributes=attrs, start_time=1_000 + i)
            span.end(end_time=2_000 + i)
        return list(memory.get_finished_spans())

    yield make
    provider.shutdown()


def rows(path, sql="SELECT markId, message, flag, timestamp, endTimestamp, pid, tid FROM Mstx "
                   "ORDER BY markId"):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_file_name_schema_modes_and_meta(tmp_path, spans_of):
    folder = tmp_path / "prof" / "1129-1230"
    exporter = MsServiceSpanExporter(folder=folder)
    assert not folder.exists()  # created lazily, at the first write
    assert exporter.export(spans_of(3)) is SpanExportResult.SUCCESS
    path = folder / f"ms_service_{socket.gethostname()}-{os.getpid()}.db"
    assert exporter.path == path and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o750
    wal = folder / (path.name + "-wal")
    assert stat.S_IMODE(wal.stat().st_mode) == 0o640  # WAL mode, side files as private
    exporter.shutdown()
    conn = sqlite3.connect(path)
    schema = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
    assert schema == {"Mstx": MSTX_SQL, "Meta": META_SQL}
    meta = dict(conn.execute("SELECT name, value FROM Meta"))
    assert meta == {"hostname": socket.gethostname(), "ppid": str(os.getppid())}
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA page_size").fetchone() == (65536,)  # fewer, larger WAL frames
    conn.close()
    # after shutdown the file stands alone: checkpointed, no WAL left beside it
    assert not (folder / (path.name + "-wal")).exists()


def test_rows_numbered_in_emission_order_across_batches(tmp_path, spans_of):
    exporter = MsServiceSpanExporter(folder=tmp_path)
    first, second = spans_of(4), spans_of(3, name="sample")
    exporter.export(first)
    exporter.export(second)
    exporter.shutdown()
    got = rows(exporter.path)
    assert [r[0] for r in got] == list(range(7))
    assert [json.loads(r[1])["name"] for r in got] == ["modelExec"] * 4 + ["sample"] * 3
    assert {(r[2], r[5], r[6]) for r in got} == {(2, os.getpid(), 99)}
    assert [(r[3], r[4]) for r in got[:4]] == [(1_000 + i, 2_000 + i) for i in range(4)]
    assert exporter.written_rows == 7 and exporter.dropped_spans == 0


def test_reference_analyzer_query_and_message_normalisation(tmp_path, spans_of):
    """What the Ascend analyzer does with a file: its query, its `^`->`"` and brace rule."""
    exporter = MsServiceSpanExporter(folder=tmp_path)
    exporter.export(spans_of(5, **{contract.METRIC_PREFIX + "QueueSize": 3}))
    exporter.shutdown()
    conn = sqlite3.connect(exporter.path)
    got = conn.execute("SELECT markId,message,pid,tid,timestamp,endTimestamp FROM mstx "
                       "ORDER BY markId").fetchall()
    conn.close()
    assert len(got) == 5
    for _, text, *_ in got:
        normalised = text.replace("^", '"')
        assert normalised.startswith("{") and normalised.endswith("}")
        assert json.loads(normalised)["QueueSize="] == 3


def test_meta_records_and_process_meta(tmp_path):
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    span = provider.get_tracer("otel_vllm_ascend").start_span(contract.META_NAME, attributes={
        contract.RECORD: contract.RECORD_META, contract.META_PREFIX + "dpRankId": "3"})
    span.end()
    exporter = MsServiceSpanExporter(folder=tmp_path)
    exporter.export(memory.get_finished_spans())
    exporter.shutdown()
    assert rows(exporter.path) == []
    assert ("dpRankId", "3") in rows(exporter.path, "SELECT name, value FROM Meta")


def test_foreign_spans_are_not_written(tmp_path):
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("vllm.llm_engine").start_span("llm_request").end()
    exporter = MsServiceSpanExporter(folder=tmp_path)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    assert not exporter.path.exists() and exporter.dropped_spans == 0


def test_symlink_is_refused_counted_and_logged_once(tmp_path, spans_of, caplog):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    exporter = MsServiceSpanExporter(folder=tmp_path / "s")
    (tmp_path / "s").mkdir()
    exporter.path.symlink_to(victim)
    with caplog.at_level(logging.ERROR, logger="otel_vllm_ascend.exporters.ms_service"):
        assert exporter.export(spans_of(3)) is SpanExportResult.FAILURE
        assert exporter.export(spans_of(2)) is SpanExportResult.FAILURE
    assert victim.read_text() == "precious"
    assert exporter.dropped_spans == 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert "symbolic link" in text and str(exporter.path) in text


def test_deleted_folder_drops_and_counts_then_recovers(tmp_path, spans_of, caplog):
    folder = tmp_path / "session"
    exporter = MsServiceSpanExporter(folder=folder)
    assert exporter.export(spans_of(2)) is SpanExportResult.SUCCESS
    shutil.rmtree(folder)
    with caplog.at_level(logging.ERROR, logger="otel_vllm_ascend.exporters.ms_service"):
        assert exporter.export(spans_of(4)) is SpanExportResult.FAILURE
    assert exporter.dropped_spans == 4
    assert sum("removed" in r.getMessage() for r in caplog.records) == 1
    # the next batch goes to a new file: serving and collection go on
    assert exporter.export(spans_of(1)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(rows(exporter.path)) == 1


def test_export_after_shutdown_is_refused(tmp_path, spans_of):
    exporter = MsServiceSpanExporter(folder=tmp_path)
    exporter.shutdown()
    assert exporter.export(spans_of(1)) is SpanExportResult.FAILURE


def test_batch_processor_shutdown_writes_everything_queued(tmp_path):
    exporter = MsServiceSpanExporter(folder=tmp_path)
    provider = TracerProvider()
    provider.add_span_processor(CountingBatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("otel_vllm_ascend")
    for i in range(300):
        tracer.start_span("s", attributes={contract.DOMAIN: "D", "i": i}).end()
    provider.shutdown()
    got = rows(exporter.path)
    assert sorted(json.loads(r[1])["i"] for r in got) == list(range(300))


class _BlockingExporter(SpanExporter):
    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()
        self.count = 0

    def export(self, spans):
        self.entered.set()
        self.release.wait(30)
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def test_queue_overflow_is_counted(caplog):
    blocking = _BlockingExporter()
    processor = CountingBatchSpanProcessor(blocking, max_queue_size=16, max_export_batch_size=4,
                                           schedule_delay_millis=10)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    tracer.start_span("first").end()
    assert blocking.entered.wait(10)  # the worker is now stuck inside export()
    with caplog.at_level(logging.ERROR, logger="otel_vllm_ascend.exporters.processors"):
        for _ in range(100):
            tracer.start_span("s").end()
    blocking.release.set()
    provider.shutdown()
    assert processor.dropped_spans == 100 - 16
    assert blocking.count == 1 + 16
    assert sum("OTEL_BSP_MAX_QUEUE_SIZE" in r.getMessage() for r in caplog.records) == 2


def test_fork_child_writes_its_own_file(tmp_path, spans_of):
    exporter = MsServiceSpanExporter(folder=tmp_path)
    exporter.export(spans_of(2))
    pid = os.fork()
    if pid == 0:  # child: its own file, its own numbering, the parent's connection untouched
        code = 1
        try:
            code = 0 if exporter.export(spans_of(3)) is SpanExportResult.SUCCESS else 2
            exporter.shutdown()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    exporter.export(spans_of(1))
    exporter.shutdown()
    child = tmp_path / db_file_name(socket.gethostname(), pid)
    assert [r[0] for r in rows(child)] == [0, 1, 2]
    assert {r[5] for r in rows(child)} == {pid}
    assert [r[0] for r in rows(exporter.path)] == [0, 1, 2]
    assert dict(rows(child, "SELECT name, value FROM Meta"))["ppid"] == str(os.getpid())


def test_session_folder_chosen_once_and_inherited(tmp_path, monkeypatch):
    config = tmp_path / "ms_service_profiler_config.json"
    config.write_text(json.dumps({"enable": 1, "prof_dir": str(tmp_path / "root")}))
    monkeypatch.setenv(session.CONFIG_ENV, str(config))
    monkeypatch.delenv(session.SESSION_ENV, raising=False)
    chosen = session.session_dir()
    assert chosen.parent == tmp_path / "root"
    name = chosen.name
    assert len(name) == 9 and name[4] == "-" and name.replace("-", "").isdigit()
    assert os.environ[session.SESSION_ENV] == str(chosen)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from otel_vllm_ascend.exporters.session import session_dir
        print(session_dir())
    """)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(chosen)


DURABILITY_CHILD = """
import os, sys, time
from otel_vllm_ascend import contract, recorder
from otel_vllm_ascend.tracing_setup import ensure_tracer_provider
ensure_tracer_provider()
for i in range(2000):
    t = time.time_ns()
    recorder.record_span("modelExec", t, t + 1000, {contract.DOMAIN: "Execute", "i": i})
time.sleep(1.5)  # older than about a second: must be on disk with the default batching
print("ready", flush=True)
for i in range(2000, 1000000):  # keep writing while being killed
    t = time.time_ns()
    recorder.record_span("modelExec", t, t + 1000, {contract.DOMAIN: "Execute", "i": i})
    time.sleep(0.0005)
"""


@pytest.mark.subprocess
def test_kill_9_keeps_what_was_exported(tmp_path):
    env = dict(os.environ, OTEL_VLLM_SESSION_DIR=str(tmp_path / "s"))
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY"):
        env.pop(name, None)
    child = subprocess.Popen([sys.executable, "-c", DURABILITY_CHILD], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.7)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    path = tmp_path / "s" / db_file_name(socket.gethostname(), child.pid)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    got = [json.loads(m)["i"] for (m,) in conn.execute("SELECT message FROM Mstx ORDER BY markId")]
    conn.close()
    assert set(range(2000)) <= set(got)
    assert got == sorted(got) and len(got) == len(set(got))


FAILING_DISK_CHILD = """
import logging, sys, time
logging.basicConfig(level=logging.INFO)
from opentelemetry.sdk.trace import TracerProvider
from otel_vllm_ascend import contract
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter
from otel_vllm_ascend.exporters.processors import CountingBatchSpanProcessor
exporter = MsServiceSpanExporter(folder=sys.argv[1])
provider = TracerProvider()
provider.add_span_processor(CountingBatchSpanProcessor(exporter, schedule_delay_millis=50,
                                                      max_queue_size=10000))
tracer = provider.get_tracer("otel_vllm_ascend")
served = 0
for i in range(int(sys.argv[2])):
    tracer.start_span("s", attributes={contract.DOMAIN: "D", "pad": "x" * 400}).end()
    served += 1  # the "server" goes on regardless of the exporter
provider.force_flush()
print("served", served, "written", exporter.written_rows, "dropped", exporter.dropped_spans,
      flush=True)
provider.shutdown()
"""


def _run_in_mount_namespace(shell: str, tmp_path):
    """Run ``shell`` in a private mount namespace (root with unshare), else skip."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a read-only / full filesystem")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare --mount is not permitted here")
    script = tmp_path / "child.py"
    script.write_text(FAILING_DISK_CHILD)
    return subprocess.run(["unshare", "--mount", "sh", "-c", shell.format(
        py=sys.executable, script=script, dir=tmp_path / "mnt")],
        capture_output=True, text=True, timeout=120)


def _counts(stdout):
    words = stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


@pytest.mark.subprocess
def test_read_only_filesystem(tmp_path):
    (tmp_path / "mnt").mkdir()
    if os.geteuid() != 0:  # permissions bind a non-root user: a read-only folder will do
        script = tmp_path / "child.py"
        script.write_text(FAILING_DISK_CHILD)
        os.chmod(tmp_path / "mnt", 0o555)
        try:
            done = subprocess.run([sys.executable, str(script), str(tmp_path / "mnt" / "s"),
                                   "500"], capture_output=True, text=True, timeout=120)
        finally:
            os.chmod(tmp_path / "mnt", 0o755)
        assert done.returncode == 0, done.stderr
        assert _counts(done.stdout) == {"served": 500, "written": 0, "dropped": 500}
        assert done.stderr.count("ms_service exporter: cannot write") == 1
        return
    done = _run_in_mount_namespace(
        "mount --bind {dir} {dir} && mount -o remount,bind,ro {dir} && {py} {script} {dir}/s 500",
        tmp_path)
    assert done.returncode == 0, done.stderr
    counts = _counts(done.stdout)
    assert counts == {"served": 500, "written": 0, "dropped": 500}
    assert done.stderr.count("ms_service exporter: cannot write") == 1
    assert "Read-only file system" in done.stderr


@pytest.mark.subprocess
def test_full_disk(tmp_path):
    (tmp_path / "mnt").mkdir()
    done = _run_in_mount_namespace(
        "mount -t tmpfs -o size=1m tmpfs {dir} && {py} {script} {dir}/s 5000", tmp_path)
    assert done.returncode == 0, done.stderr
    counts = _counts(done.stdout)
    assert counts["served"] == 5000
    assert counts["written"] > 0 and counts["dropped"] > 0
    assert counts["written"] + counts["dropped"] == 5000
    assert done.stderr.count("ms_service exporter: cannot write") == 1
    assert "full" in done.stderr
