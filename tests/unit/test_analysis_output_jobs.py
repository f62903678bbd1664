"""The output writer forked beside the trace's build, or the same jobs run in this process
first (this process holding ``FORK_BELOW_BYTES`` or more): the same files, byte for byte, and
the same summary lines."""

import os
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import simulate_service  # noqa: E402

from otel_vllm_ascend.analysis import cli, output_jobs  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the writer forks")

_NEVER = 1 << 62  # FORK_BELOW_BYTES: always fork
_ALWAYS = 0  # never fork


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.delenv("OTEL_VLLM_ANALYZE_SERIAL", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def _no_fork():
    raise AssertionError("forked")


def _outcome(monkeypatch, fork_below):
    monkeypatch.setattr(output_jobs, "FORK_BELOW_BYTES", fork_below)
    run = output_jobs._Run(Path("out"))
    run.wrote(Path("before"))
    ran_in = []

    def jobs(job_run):
        ran_in.append(job_run.forked)
        job_run.wrote(Path("job"))
        job_run.failed.append("failed job")

    join = output_jobs._in_background(jobs, run, "jobs")
    run.wrote(Path("after"))
    join()
    return run.written, run.failed, ran_in


def test_the_jobs_outcome_is_joined_after_this_process_s_either_way(monkeypatch):
    forked = _outcome(monkeypatch, _NEVER)
    monkeypatch.setattr(os, "fork", _no_fork)
    here = _outcome(monkeypatch, _ALWAYS)
    want = [Path("before"), Path("after"), Path("job")], ["failed job"]
    assert forked[:2] == want and forked[2] == []  # ran in the child: nothing seen here
    assert here[:2] == want and here[2] == [False]  # ran here: the records are kept


def test_resident_memory_is_read():
    if sys.platform.startswith("linux"):
        assert 10 * 2**20 < output_jobs._resident_bytes() < 64 * 2**30
    else:
        assert output_jobs._resident_bytes() >= 0


def _files(folder):
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*"))
            if path.is_file()}


def _dump(path):
    db = sqlite3.connect(path)
    try:
        schema = list(db.execute("select type, name, sql from sqlite_master order by name"))
        return schema + [(name, sorted(map(repr, db.execute(f'select * from "{name}"'))))
                         for kind, name, _ in schema if kind == "table"]
    finally:
        db.close()


@pytest.mark.parametrize("formats", [["csv", "json", "db", "html"], ["csv", "json", "db"]])
def test_outputs_written_here_are_those_of_the_forked_writer(tmp_path, monkeypatch, capsys,
                                                               formats):
    sim = simulate_service(30, seed=5, max_batch=5, max_output=6)
    sim.capture.write(tmp_path / "in")
    printed = {}
    for name, fork_below in (("forked", _NEVER), ("here", _ALWAYS)):
        with monkeypatch.context() as patch:
            patch.setattr(output_jobs, "FORK_BELOW_BYTES", fork_below)
            if fork_below == _ALWAYS:
                patch.setattr(os, "fork", _no_fork)
            out = tmp_path / name
            status = cli.main(["--input-path", str(tmp_path / "in"), "--output-path", str(out),
                               "--format", *formats, "--log-level", "warning"])
        assert status == 0
        printed[name] = capsys.readouterr().out.replace(str(out), "OUT")
    assert printed["forked"] == printed["here"]
    assert "written to OUT: chrome_tracing.json" in printed["here"]
    forked, here = _files(tmp_path / "forked"), _files(tmp_path / "here")
    assert list(forked) == list(here) and "request.csv" in here
    for name, path in forked.items():
        if name == "profiler.db":
            assert _dump(path) == _dump(here[name])
        else:
            assert path.read_bytes() == here[name].read_bytes(), name


@pytest.mark.parametrize("formats", [["csv", "json", "db", "html"], ["csv", "json", "db"]])
def test_the_tables_are_written_and_let_go_before_the_trace_is_built(tmp_path, monkeypatch,
                                                                      capsys, formats):
    # The path above FORK_BELOW_BYTES (a large capture), with and without the report: the
    # tables' files are on disk and the tables no longer passed on when the trace is built.
    from otel_vllm_ascend.analysis import trace

    sim = simulate_service(30, seed=5, max_batch=5, max_output=6)
    sim.capture.write(tmp_path / "in")
    out = tmp_path / "out"
    seen = {}
    build = trace.build_chrome_trace

    def build_and_look(frame, requests=None, batches=None, kvcache=None):
        seen["files"] = sorted(path.name for path in out.iterdir())
        seen["batch columns"] = None if batches is None else len(batches.columns)
        seen["kvcache"] = kvcache
        return build(frame, requests, batches, kvcache)

    monkeypatch.setattr(trace, "build_chrome_trace", build_and_look)
    monkeypatch.setattr(output_jobs, "FORK_BELOW_BYTES", _ALWAYS)
    monkeypatch.setattr(os, "fork", _no_fork)
    status = cli.main(["--input-path", str(tmp_path / "in"), "--output-path", str(out),
                       "--format", *formats, "--log-level", "warning"])
    assert status == 0
    assert {"request.csv", "batch.csv", "kvcache.csv", "profiler.db.tmp"} <= set(seen["files"])
    assert "chrome_tracing.json" not in seen["files"]
    assert ("report.html" in seen["files"]) == ("html" in formats)
    assert seen["batch columns"] == 0 and seen["kvcache"] is None
    listed = capsys.readouterr().out.split("written to ")[1].split(": ", 1)[1].split("\n")[0]
    names = listed.split(", ")
    assert names[0] == "chrome_tracing.json"
    # profiler.db is listed where it was when one job wrote all of it: this process's part
    # with the report, after the CSV files without it.
    assert names.index("profiler.db") == (1 if "html" in formats else len(names) - 1)


@pytest.mark.parametrize("fork_below", [_ALWAYS, _NEVER])
@pytest.mark.parametrize("formats", [["csv", "json", "db", "html"], ["csv", "json", "db"]])
def test_the_trace_json_is_written_whole_when_profiler_db_fails_reading_it(
        tmp_path, monkeypatch, capsys, formats, fork_below):
    # chrome_tracing.json is written as profiler.db's trace tables read the events (above
    # FORK_BELOW_BYTES into profiler.db, below it into a file of their own beside the forked
    # writer's tables): if those fail half way, the JSON file is written on its own, byte for
    # byte the file of a run where nothing failed, and listed where it always is.
    from otel_vllm_ascend.analysis import writers

    sim = simulate_service(30, seed=5, max_batch=5, max_output=6)
    sim.capture.write(tmp_path / "in")
    monkeypatch.setattr(output_jobs, "FORK_BELOW_BYTES", fork_below)
    if fork_below == _ALWAYS:
        monkeypatch.setattr(os, "fork", _no_fork)

    def analyse(name):
        out = tmp_path / name
        status = cli.main(["--input-path", str(tmp_path / "in"), "--output-path", str(out),
                           "--format", *formats, "--log-level", "critical"])
        return status, out, capsys.readouterr().out.replace(str(out), "OUT")

    whole_status, whole, whole_printed = analyse("whole")

    def fail_half_way(conn, events, origin_us):
        for count, _ in enumerate(events.plain()):
            if count == 50:
                raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(writers, "_write_trace_tables", fail_half_way)
    status, failed, printed = analyse("failed")
    assert (whole_status, status) == (0, 1)
    assert (failed / "chrome_tracing.json").read_bytes() \
        == (whole / "chrome_tracing.json").read_bytes()
    assert not (failed / "profiler.db").exists()
    assert not (failed / "profiler.db.trace.tmp").exists()  # the trace tables apart: gone
    assert "not written: profiler.db" in printed
    assert printed.split("written to OUT: ")[1].split("\n")[0] \
        == whole_printed.split("written to OUT: ")[1].split("\n")[0].replace(
            ", profiler.db", "")


def _records_and_requests(tmp_path):
    """The records frame and request table of a small simulated capture."""
    from otel_vllm_ascend.analysis.readers import read_captures
    from otel_vllm_ascend.analysis.requests import build_requests
    from otel_vllm_ascend.analysis.steps import engine_steps, step_requests

    sim = simulate_service(25, seed=9, max_batch=4, max_output=5)
    sim.capture.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    steps = engine_steps(frame)
    return frame, build_requests(frame, steps, step_requests(steps))


def _trace_bytes(path, frame, requests):
    from otel_vllm_ascend.analysis import trace

    trace.write_chrome_trace(path, trace.build_chrome_trace(frame, requests))
    return path.read_bytes()


def test_the_trace_of_the_request_columns_it_reads_is_that_of_the_whole_table(tmp_path):
    # While the trace is built the CLI keeps only trace.REQUEST_COLUMNS of the request table
    # (and the summary lines' columns).
    from otel_vllm_ascend.analysis import trace

    frame, requests = _records_and_requests(tmp_path)
    narrow = cli._columns_of(requests, trace.REQUEST_COLUMNS)
    assert 0 < len(narrow.columns) < len(requests.columns) and len(narrow) == len(requests)
    assert _trace_bytes(tmp_path / "whole.json", frame, requests) \
        == _trace_bytes(tmp_path / "narrow.json", frame, narrow)


def test_the_trace_of_the_record_columns_it_reads_is_that_of_the_whole_frame(tmp_path):
    # From the writing on the CLI keeps only trace.RECORD_COLUMNS of the records frame.
    from otel_vllm_ascend.analysis import trace

    frame, requests = _records_and_requests(tmp_path)
    narrow = cli._columns_of(frame, trace.RECORD_COLUMNS)
    assert 0 < len(narrow.columns) < len(frame.columns) and len(narrow) == len(frame)
    assert _trace_bytes(tmp_path / "whole.json", frame, requests) \
        == _trace_bytes(tmp_path / "narrow.json", narrow, requests)
