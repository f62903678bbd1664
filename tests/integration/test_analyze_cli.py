"""``otel-vllm-analyze`` run as a real subprocess on real capture files, good and bad.

Every bad-input case checks: its one clear message, what output is still written, the exit
status, and that no Python traceback reaches the user.
"""

import csv
import os
import pty
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture, simulate_service  # noqa: E402

pytestmark = pytest.mark.subprocess

CSVS = ["request.csv", "request_summary.csv", "batch.csv", "batch_summary.csv", "kvcache.csv",
        "service_summary.csv", "spec_decode.csv", "forward.csv", "request_status.csv",
        "prefill.csv", "decode.csv"]


def run_cli(*args, module=False, env=None):
    if module:
        cmd = [sys.executable, "-m", "otel_vllm_ascend.analysis", *map(str, args)]
    else:
        cmd = [str(Path(sys.executable).with_name("otel-vllm-analyze")), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    return done


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def capture(tmp_path):
    sim = simulate_service(12, seed=7, max_batch=4)
    folder = tmp_path / "in"
    sim.capture.write(folder)
    return sim, folder


def test_all_outputs_and_summary(capture, tmp_path):
    sim, folder = capture
    out = tmp_path / "out"
    done = run_cli("--input-path", folder, "--output-path", out)
    for name in CSVS + ["chrome_tracing.json", "profiler.db"]:
        assert (out / name).stat().st_size > 0, name
    assert "requests: 12 (12 complete, 0 partial)" in done.stdout
    assert "TTFT ms: p50" in done.stdout and "end-to-end ms: p50" in done.stdout
    assert f"written to {out}" in done.stdout
    assert len(rows(out / "request.csv")) == 12
    assert len(rows(out / "batch.csv")) == sim.steps
    with sqlite3.connect(out / "profiler.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"request", "batch", "kvcache", "request_data", "batch_info", "kvcache_usage",
                "request_summary", "batch_summary", "service_summary", "slice", "flow",
                "counter", "process", "thread"} <= tables
        assert conn.execute("SELECT COUNT(*) FROM request_data").fetchone()[0] == 12
        assert conn.execute("SELECT COUNT(*) FROM request WHERE cache_hit_rate IS NULL"
                            ).fetchone()[0] == 12  # the simulation writes no CacheHitRate
        phases = dict(conn.execute("SELECT type, COUNT(*) FROM flow GROUP BY type"))
        assert phases["s"] == 12 and phases["f"] == 12
        assert conn.execute("SELECT COUNT(*) FROM flow WHERE track_id NOT IN"
                            " (SELECT track_id FROM thread)").fetchone()[0] == 0
        # Flow times are integers (ns since the epoch) like the slices', never raw bytes.
        assert {r[0] for r in conn.execute("SELECT DISTINCT typeof(timestamp) FROM flow")
                } == {"integer"}
        first_flow_ns = conn.execute("SELECT MIN(timestamp) FROM flow").fetchone()[0]
        assert abs(first_flow_ns - min(r.arrival_us for r in sim.requests) * 1000) < 10e9
        assert conn.execute("SELECT COUNT(*) FROM batch_info").fetchone()[0] == sim.steps
        first_ts = conn.execute("SELECT MIN(timestamp) FROM slice").fetchone()[0]
        arrival_ns = min(r.arrival_us for r in sim.requests) * 1000
        assert abs(first_ts - arrival_ns) < 1e6  # ns since the epoch, same instant within 1 ms
        names = [r[1] for r in conn.execute("PRAGMA table_info(request_data)")]
        assert names[:8] == ["http_rid", "start_datetime", "recv_token_size",
                             "reply_token_size", "execution_time(ms)", "queue_wait_time(ms)",
                             "first_token_latency(ms)", "cache_hit_rate"]
    if (out / "report.html").exists():
        assert done.returncode == 0, done.stderr


def test_serial_run_writes_the_same_files(capture, tmp_path):
    _, folder = capture
    run_cli("--input-path", folder, "--output-path", tmp_path / "a", "--format", "csv", "html")
    done = run_cli("--input-path", folder, "--output-path", tmp_path / "b", "--format", "csv",
                   "html", env={"OTEL_VLLM_ANALYZE_SERIAL": "1"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in CSVS:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert "written to" in done.stdout


def test_module_entry_and_format_selection(capture, tmp_path):
    _, folder = capture
    out = tmp_path / "out"
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv",
                   module=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(CSVS)


def test_empty_folder(tmp_path):
    (tmp_path / "in").mkdir()
    done = run_cli("--input-path", tmp_path / "in", "--output-path", tmp_path / "out")
    assert done.returncode == 1
    assert "no capture found" in done.stderr
    assert not any((tmp_path / "out").iterdir())


def test_missing_input_folder(tmp_path):
    done = run_cli("--input-path", tmp_path / "nope", "--output-path", tmp_path / "out")
    assert done.returncode == 1
    assert "input folder does not exist" in done.stderr


def test_folder_without_db(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    (folder / "service.db").write_bytes(b"")  # not named ms_service_*
    done = run_cli("--input-path", folder, "--output-path", tmp_path / "out")
    assert done.returncode == 1
    assert "no capture found (expected ms_service_*.db files" in done.stderr


def test_truncated_db_keeps_rows_before_the_damage(tmp_path):
    sim = simulate_service(50, seed=3, max_batch=4)
    folder = tmp_path / "in"
    sim.capture.write(folder)
    engine = next(folder.rglob("ms_service_node-a-200.db"))
    data = engine.read_bytes()
    engine.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out"
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert f"{engine}: truncated or damaged database; kept the " in done.stderr
    assert "rows read before the damage" in done.stderr
    # The API server's file is intact: every request still gets its row; some steps survive.
    assert len(rows(out / "request.csv")) == 50
    assert 0 < len(rows(out / "batch.csv")) < sim.steps


def test_corrupt_db(capture, tmp_path):
    _, folder = capture
    bad = folder / "ms_service_node-b-300.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    out = tmp_path / "out"
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert f"{bad}: not a readable capture" in done.stderr
    assert "file skipped" in done.stderr
    assert len(rows(out / "request.csv")) == 12


def test_missing_tables(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    conn = sqlite3.connect(folder / "ms_service_h-1.db")
    conn.execute("CREATE TABLE Other (x INTEGER)")
    conn.commit()
    conn.close()
    done = run_cli("--input-path", folder, "--output-path", tmp_path / "out")
    assert done.returncode == 1
    assert "ms_service_h-1.db: table Mstx is missing (not a service capture); file skipped" \
        in done.stderr
    assert "nothing to analyse" in done.stderr


def test_unparsable_messages_are_counted(capture, tmp_path):
    sim, folder = capture
    cap = Capture()
    proc = cap.process("node-c", 400, "engine_core")
    proc.raw("{not json", sim.requests[0].arrival_us)
    proc.raw("^domain^:^x^,^broken", sim.requests[0].arrival_us + 1)
    proc.event("Enqueue", sim.requests[0].arrival_us + 2, "Schedule", ["zz"])
    (path,) = cap.write(folder, session="other")
    with sqlite3.connect(path) as conn:  # a time column holding text
        conn.execute("INSERT INTO Mstx VALUES ('{\"name\": \"x\"}', 1, 9, 'soon', 'later',"
                     " 400, 400)")
    out = tmp_path / "out"
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert f"{path}: 3 row(s) could not be decoded (first at markId 0)" in done.stderr
    assert "3 record(s) could not be decoded in total" in done.stderr
    assert {r["http_rid"] for r in rows(out / "request.csv")} >= {"zz"}


def test_requests_missing_first_or_last_record(tmp_path):
    sim = simulate_service(6, seed=11, max_batch=3)
    api = sim.capture.processes[0]
    first, last = sim.requests[0].external, sim.requests[-1].external
    api.records = [r for r in api.records
                   if not (r.message.get("name") == "httpReq" and r.message["rid"] == first)
                   and not (r.message.get("name") == "httpRes" and r.message["rid"] == last)]
    folder = tmp_path / "in"
    sim.capture.write(folder)
    out = tmp_path / "out"
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "1 request(s) have no httpReq record" in done.stderr
    assert "1 request(s) have no httpRes record" in done.stderr
    table = {r["http_rid"]: r for r in rows(out / "request.csv")}
    assert len(table) == 6
    assert table[first]["partial"] == "True" and table[first]["first_token_latency(ms)"] == ""
    assert table[last]["partial"] == "True" and table[last]["execution_time(ms)"] == ""
    assert table[last]["first_token_latency(ms)"] != ""
    assert sum(r["partial"] == "True" for r in table.values()) == 2


def test_unwritable_output_folder(capture, tmp_path):
    _, folder = capture
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("--input-path", folder, "--output-path", blocker / "out")
    assert done.returncode == 2
    assert f"cannot create output folder {blocker / 'out'}" in done.stderr
    done = run_cli("--input-path", folder, "--output-path", blocker)
    assert done.returncode == 2
    assert f"output path {blocker} exists and is not a folder" in done.stderr


def test_existing_outputs_are_replaced(capture, tmp_path):
    _, folder = capture
    out = tmp_path / "out"
    out.mkdir()
    (out / "request.csv").write_text("old\n")
    conn = sqlite3.connect(out / "profiler.db")
    conn.execute("CREATE TABLE stale_from_last_run (x INTEGER)")
    conn.commit()
    conn.close()
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv", "db")
    assert "replacing 2 existing output file(s)" in done.stderr
    assert "request.csv" in done.stderr and "profiler.db" in done.stderr
    assert len(rows(out / "request.csv")) == 12
    with sqlite3.connect(out / "profiler.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "stale_from_last_run" not in tables and "request" in tables
    assert not list(out.glob("*.tmp"))


def test_progress_bar_only_on_a_terminal(capture, tmp_path):
    _, folder = capture
    piped = run_cli("--input-path", folder, "--output-path", tmp_path / "a", "--format", "csv")
    assert "\r" not in piped.stderr and "reading captures" not in piped.stderr
    controller, terminal = pty.openpty()
    cmd = [str(Path(sys.executable).with_name("otel-vllm-analyze")), "--input-path",
           str(folder), "--output-path", str(tmp_path / "b"), "--format", "csv"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=terminal, timeout=300)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal side is closed and drained
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert done.returncode == 0
    assert b"\rreading captures [" in seen and b"2/2" in seen
    assert b"Traceback" not in seen


def test_analyzer_never_imports_vllm(capture, tmp_path):
    _, folder = capture
    code = ("import sys, runpy\n"
            f"sys.argv = ['otel-vllm-analyze', '--input-path', {str(folder)!r},"
            f" '--output-path', {str(tmp_path / 'out')!r}, '--format', 'csv', 'json', 'db']\n"
            "from otel_vllm_ascend.analysis import cli\n"
            "status = cli.main()\n"
            "assert status == 0, status\n"
            "leaked = sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.'))\n"
            "print('LEAKED', leaked)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LEAKED []" in done.stdout


def test_span_info_and_stage_selections(capture, tmp_path):
    sim, folder = capture
    out = tmp_path / "out"
    rid = sim.requests[0].external
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv", "html",
                   "--span", "modelExec", "nope", "--split-batch-size", "1", "99",
                   "--split-rid", rid, "--split-number", "3")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "span_info").iterdir()) == [
        "batchFrameworkProcessing.csv", "modelExec.csv", "span_summary.csv"]
    summary = {r["span_name"]: r for r in rows(out / "span_info" / "span_summary.csv")}
    assert summary["modelExec"]["count"] == str(sim.steps)
    assert summary["nope"]["count"] == "0" and summary["nope"]["mean(ms)"] == ""
    assert "--span: no span named 'nope' in the capture" in done.stderr
    assert "stage breakdown: no engine step matches batch_size=99" in done.stderr
    selections = {r["selection"] for r in rows(out / "prefill.csv")}
    assert selections == {"all", "batch_size=1", "batch_size=99", f"rid={rid}"}
    assert all(int(r["steps"]) <= 3 for r in rows(out / "prefill.csv"))
    page = (out / "report.html").read_text()
    assert "Stage breakdown" in page and f"rid={rid}" in page
    forward = rows(out / "forward.csv")
    assert len(forward) == sim.steps and {r["name"] for r in forward} == {"modelExec"}


def test_bad_split_number_is_one_usage_error(capture, tmp_path):
    _, folder = capture
    done = run_cli("--input-path", folder, "--output-path", tmp_path / "out",
                   "--split-number", "0")
    assert done.returncode == 2
    assert "must be 1 or more" in done.stderr


def test_operator_tables_of_an_earlier_run_do_not_outlive_it(capture, tmp_path):
    """The capture has no operator data: op_*.csv left by an earlier analysis are removed."""
    _, folder = capture
    out = tmp_path / "out"
    out.mkdir()
    for name in ("op_summary.csv", "op_statistic.csv"):
        (out / name).write_text("old\n")
    done = run_cli("--input-path", folder, "--output-path", out, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "op_summary.csv" in done.stderr  # named among the replaced files
    assert not (out / "op_summary.csv").exists() and not (out / "op_statistic.csv").exists()
    assert (out / "request.csv").exists()


def _two_hosts(tmp_path, engine_clock_ahead_ms):
    """The API server's capture in one folder, the engine's (another host) in a second."""
    sim = simulate_service(12, seed=7, max_batch=4)
    api, engine = sim.capture.processes
    engine.host = "node-b"
    shift = int(engine_clock_ahead_ms * 1_000_000)
    for record in engine.records:
        record.start_ns += shift
        record.end_ns += shift
    folders = []
    for proc in (api, engine):
        one = Capture()
        one.processes.append(proc)
        folder = tmp_path / proc.host
        one.write(folder)
        folders.append(folder)
    return folders


def test_two_hosts_folders_make_one_analysis(tmp_path):
    out = tmp_path / "out"
    done = run_cli("--input-path", *_two_hosts(tmp_path, 0), "--output-path", out,
                   "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "requests: 12 (12 complete, 0 partial)" in done.stdout
    assert {row["host"] for row in rows(out / "batch.csv")} == {"node-b"}
    assert "clocks of hosts node-a and node-b agree" in done.stderr


def test_two_hosts_clocks_apart_are_reported(tmp_path):
    done = run_cli("--input-path", *_two_hosts(tmp_path, 500), "--output-path",
                   tmp_path / "out", "--format", "csv")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "clock of host node-b" in line]
    assert len(lines) == 1 and "ms or more ahead of host node-a's" in lines[0]
