"""``--stream`` (analysis/stream_tables.py): the whole capture's tables, read a window of
records at a time, are byte for byte those one analysis of the whole capture writes."""

import json
import logging
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis_fixtures import (  # noqa: E402
    TRACE_TABLES,
    db_contents,
    simulate_service,
    write_otlp_json,
)
from test_analysis_spec_decode import spec_capture  # noqa: E402

from otel_vllm_ascend.analysis import batches as batches_mod  # noqa: E402
from otel_vllm_ascend.analysis import kvcache as kvcache_mod  # noqa: E402
from otel_vllm_ascend.analysis import requests as requests_mod  # noqa: E402
from otel_vllm_ascend.analysis import stream_tables, summaries, writers  # noqa: E402
from otel_vllm_ascend.analysis.cli import html_writer, main  # noqa: E402
from otel_vllm_ascend.analysis.detail_outputs import DetailOptions  # noqa: E402
from otel_vllm_ascend.analysis.readers import capture_span  # noqa: E402
from otel_vllm_ascend.analysis.stages import StageSelection  # noqa: E402
from otel_vllm_ascend.analysis.stream_db import StreamedDb  # noqa: E402
from otel_vllm_ascend.analysis.stream_trace import StreamedTrace  # noqa: E402
from otel_vllm_ascend.analysis.time_window import closed, text_of  # noqa: E402
from otel_vllm_ascend.analysis.trace_tracks import OVERLAP_TID_STRIDE  # noqa: E402

TABLES = ("request.csv", "batch.csv", "kvcache.csv", "spec_decode.csv", "forward.csv",
          "request_status.csv", "request_summary.csv", "batch_summary.csv",
          "service_summary.csv", "prefill.csv", "decode.csv")


@pytest.fixture(autouse=True)
def serial(monkeypatch):
    monkeypatch.setenv("OTEL_VLLM_ANALYZE_SERIAL", "1")


STREAMED = ("csv", "json", "db", "html")


def _whole(capture: Path, out: Path, formats=STREAMED) -> Path:
    assert main(["--input-path", str(capture), "--output-path", str(out),
                 "--format", *formats]) == 0
    return out


def _stream(capture: Path, out: Path, every_us: int, margin_us: int,
            formats=STREAMED) -> Path:
    out.mkdir()
    span = closed(None, lambda: capture_span([capture]))
    assert stream_tables.run_stream(capture, out, span, every_us, margin_us, formats,
                                    html_writer(out, None)) == 0
    return out


def _assert_same_tables(whole: Path, streamed: Path, formats=STREAMED) -> None:
    if "csv" in formats:
        for name in TABLES:
            assert (streamed / name).read_bytes() == (whole / name).read_bytes(), name
    if "json" in formats:
        assert (streamed / "chrome_tracing.json").read_bytes() == (
            whole / "chrome_tracing.json").read_bytes()
    if "db" in formats:
        assert db_contents(streamed / "profiler.db") == db_contents(
            whole / "profiler.db", leave_out=frozenset() if "json" in formats else TRACE_TABLES)
    if "html" in formats:
        assert (streamed / "report.html").read_text() == (whole / "report.html").read_text()
    assert not list(streamed.glob("*.part")) and not list(streamed.glob("*.tmp"))
    assert not (streamed / ".chrome_tracing.parts").exists()


def _two_hosts(root: Path, layout: str = "per_process", encoding: str = "json",
               apart_us: float = 0.0, one_server: bool = False) -> Path:
    """Two servers on two hosts, side by side or ``apart_us`` one after the other; or
    (``one_server``) one server busy twice, ``apart_us`` apart, idle in between: a step's next
    step and a forward's previous one lie beyond any margin."""
    start = 1_764_400_000_000_000.0
    for session, shift, host, seed in (("first", 0.0, "node-a", 1),
                                       ("second", apart_us + 1500.0, "node-b", 2)):
        pids = 101 if one_server else 100 + seed, 201 if one_server else 200 + seed
        sim = simulate_service(120, seed=seed, start_us=start + shift,
                               host="node-a" if one_server else host, max_batch=6,
                               max_output=30, api_pid=pids[0], engine_pid=pids[1])
        if one_server and session == "second":  # blocks freed before the first step: its
            engine = sim.capture.processes[1]  # total is the one known an idle hour before
            engine.event("Free", start + shift - 100, domain="Schedule.KVCache",
                         **{"deviceBlock=": 990, "UsagePercent=": 0.01})
        sim.capture.write(root, layout=layout, encoding=encoding, session=session)
    return root


@pytest.mark.parametrize("layout, encoding", [("per_process", "json"),
                                              ("per_thread", "caret")])  # the C library's
@pytest.mark.parametrize("every_us, margin_us, apart_us, one_server", [
    # windows shorter than a request: most are read again, their margins doubled
    (20_000, 40_000, 0.0, False),
    (7_000, 50_000, 0.0, False),  # margins longer than the windows
    # the default margin, windows of ten minutes, the runs an hour apart
    (600_000_000, 60_000_000, 3600e6, False),
    # one server idle between its two runs for longer than the margins
    (600_000_000, 60_000_000, 3600e6, True),
    (200_000, 100_000, 2e6, True),
])
def test_streamed_tables_equal_one_whole_analysis(tmp_path, layout, encoding, every_us,
                                                  margin_us, apart_us, one_server, caplog):
    capture = _two_hosts(tmp_path / "db", layout, encoding, apart_us, one_server)
    whole = _whole(capture, tmp_path / "whole")
    caplog.set_level(logging.INFO, "otel_vllm_ascend.analysis")
    streamed = _stream(capture, tmp_path / "stream", every_us, margin_us)
    _assert_same_tables(whole, streamed)
    if margin_us == 40_000:  # requests outlive a margin: windows are read again
        assert "reading it again with 0.08 s after it" in caplog.text
        assert "read no further" not in caplog.text


def test_cli_stream(tmp_path, capsys):
    capture = _two_hosts(tmp_path / "db", apart_us=3600e6)
    whole = _whole(capture, tmp_path / "whole")
    capsys.readouterr()
    out = tmp_path / "stream"
    assert main(["--input-path", str(capture), "--output-path", str(out),
                 "--stream", "10m"]) == 0
    _assert_same_tables(whole, out)
    outputs = TABLES + ("profiler.db", "report.html", "chrome_tracing.json")
    assert sorted(path.name for path in out.iterdir()) == sorted(outputs)
    # into a folder holding an earlier analysis: none of its other CSV files is left there
    again = tmp_path / "again"
    shutil.copytree(whole, again)
    (again / "op_summary.csv").write_text("an earlier capture's operators\n")  # not streamed
    (again / "span_info").mkdir()  # not a table: left alone
    assert main(["--input-path", str(capture), "--output-path", str(again),
                 "--stream", "10m"]) == 0
    assert sorted(path.name for path in again.iterdir()) == sorted(outputs + ("span_info",))
    captured = capsys.readouterr()
    assert "requests: 240 (240 complete, 0 partial)" in captured.out
    assert ("request.csv, batch.csv, kvcache.csv, spec_decode.csv, forward.csv,"
            " request_status.csv, request_summary.csv") in captured.out
    _assert_same_tables(whole, again)
    # --format csv: the tables alone (and span_info/ with --span); --format json: the trace
    # alone, written on its own
    only = tmp_path / "only"
    assert main(["--input-path", str(capture), "--output-path", str(only), "--stream", "10m",
                 "--format", "csv", "--span", "modelExec"]) == 0
    assert sorted(path.name for path in only.iterdir()) == sorted(TABLES + ("span_info",))
    assert (only / "span_info" / "modelExec.csv").exists()
    trace_only = tmp_path / "trace-only"
    assert main(["--input-path", str(capture), "--output-path", str(trace_only), "--stream",
                 "10m", "--format", "json"]) == 0
    assert [path.name for path in trace_only.iterdir()] == ["chrome_tracing.json"]
    _assert_same_tables(whole, trace_only, ("json",))
    # --since / --until (here cutting requests of the first run): the outputs of one analysis
    # of that window, the report's title saying which
    first_run = ["--since", "2025-11-29T07:06:40.3", "--until", "2025-11-29T07:06:41.5"]
    assert main(["--input-path", str(capture), "--output-path", str(tmp_path / "w-whole"),
                 "--format", *STREAMED, *first_run]) == 0
    assert main(["--input-path", str(capture), "--output-path", str(tmp_path / "w-stream"),
                 "--stream", "1", *first_run]) == 0
    _assert_same_tables(tmp_path / "w-whole", tmp_path / "w-stream")
    assert "records starting 2025-11-29" in (tmp_path / "w-stream" / "report.html").read_text()


@pytest.mark.parametrize("every_us", [2_000, 3_400, 6_000])
def test_stream_of_speculative_decoding_and_tensor_parallel_ranks(tmp_path, every_us):
    """spec_decode.csv's hand-worked capture (two tensor-parallel Workers writing the same
    records, a draft check planned before the step it belongs to, data-parallel rank 1):
    windows of 2 to 6 ms with 3 ms margins (a step's drafts are checked up to 2.5 ms after it
    starts) give one analysis's tables, dp_summary.csv too."""
    spec_capture().write(tmp_path / "db")
    whole = _whole(tmp_path / "db", tmp_path / "whole")
    assert len((whole / "spec_decode.csv").read_text().splitlines()) == 5  # header, 4 rows
    streamed = _stream(tmp_path / "db", tmp_path / "stream", every_us, 3_000)
    _assert_same_tables(whole, streamed)
    assert (streamed / "dp_summary.csv").read_bytes() == (whole / "dp_summary.csv").read_bytes()


def test_stream_of_otlp_files(tmp_path):
    """OTLP JSON files (no SQLite file to find the span in): --since and --until given, the
    tables are those of one analysis of that window."""
    sim = simulate_service(60, seed=5, max_batch=4, max_output=20)
    write_otlp_json(sim.capture, tmp_path / "otlp" / "spans.jsonl")
    first = min(r.arrival_us for r in sim.requests)
    window = ["--since", text_of(first - first % 1e6), "--until", text_of(first + 2e6)]
    whole, streamed = tmp_path / "whole", tmp_path / "stream"
    assert main(["--input-path", str(tmp_path / "otlp"), "--output-path", str(whole),
                 "--format", *STREAMED, *window]) == 0
    assert main(["--input-path", str(tmp_path / "otlp"), "--output-path", str(streamed),
                 "--stream", "1", *window]) == 0
    _assert_same_tables(whole, streamed)


def _whole_and_streamed(tmp_path, sim, every_us, margin_us, caplog) -> tuple:
    """One analysis of ``sim``'s capture and its --stream reading, whose log ``caplog`` holds."""
    sim.capture.write(tmp_path / "db")
    whole = _whole(tmp_path / "db", tmp_path / "whole")
    caplog.set_level(logging.INFO, "otel_vllm_ascend.analysis")
    return whole, _stream(tmp_path / "db", tmp_path / "stream", every_us, margin_us)


def test_a_request_running_past_every_margin_is_said(tmp_path, caplog):
    """A request that outlives sixteen margins after its window: the window is not read
    further, one warning says so, and that request is left without its end."""
    whole, streamed = _whole_and_streamed(
        tmp_path, simulate_service(40, seed=4, max_batch=2, max_output=40), 10_000, 300, caplog)
    assert "read no further, so their rows may lack what they did later" in caplog.text
    ours = (streamed / "request.csv").read_text().splitlines()
    theirs = (whole / "request.csv").read_text().splitlines()
    assert len(ours) == len(theirs)
    differing = [a for a, b in zip(ours, theirs) if a != b]
    assert differing and all(",True," in row for row in differing)  # partial, not wrong


def test_a_step_longer_than_the_margins_keeps_its_requests_read(tmp_path, caplog):
    """A first step that runs for eight margins (vLLM's cold compile can take 16 s): its
    request is named only at the step's start, yet the window is read on until it ends."""
    whole, streamed = _whole_and_streamed(
        tmp_path, simulate_service(1, seed=6, max_output=10, first_exec_us=40_000), 20_000,
        5_000, caplog)
    assert "window 1: 1 request(s) still running" in caplog.text
    assert "read no further" not in caplog.text
    _assert_same_tables(whole, streamed)


@pytest.mark.parametrize("extra, message", [
    (["--every", "1m"], "--stream and --every exclude each other"),
    ([], "--stream needs the capture's ms_service_*.db files"),  # the folder holds none
])
def test_stream_refuses_what_it_cannot_write(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        main(["--input-path", str(tmp_path), "--stream", "1m", *extra])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("sizes", [(1,), (2,), (0, 3, 0), (1000, 1, 5000, 17)])
def test_gap_counts_give_the_pooled_gaps_statistics(sizes):
    rng = np.random.default_rng(len(sizes))
    parts = []
    for size in sizes:
        part = summaries.PooledGaps(size)
        # quarter µs as a real capture's gaps are, many of them equal
        part.put(np.arange(size), rng.integers(400, 90_000, size) * 0.25)
        parts.append(part)
    pooled = summaries.PooledGaps(sum(sizes))
    pooled.values = np.concatenate([part.values for part in parts])
    counts = summaries.GapCounts()
    for part in parts:
        counts.add(part)
    assert counts.statistics_row("gap") == pooled.statistics_row("gap")
    if sum(sizes) > 100:
        assert len(counts.values) < sum(sizes)  # held as counts, not one value a gap
    # a part not in quarter µs: every gap pooled as float64
    odd = summaries.PooledGaps(2)
    odd.put(np.arange(2), np.array([0.1, 7.3]))
    counts.add(odd)
    pooled.values = np.concatenate([pooled.us(), odd.us()])
    assert counts.statistics_row("gap") == pooled.statistics_row("gap")


@pytest.mark.parametrize("windows", [
    [{"x": [None, None]}, {"x": [1.5, 2.5]}],  # empty until then: TEXT, then REAL
    [{"x": [1, 2]}, {"x": [1.5, np.nan]}],  # INTEGER, then REAL: 1 and 2 stored as reals
    [{"x": ["a", None]}, {"x": [1.0, 2.0]}],  # text, then numbers: TEXT throughout
    [{"x": []}, {"x": [3, 4]}, {"x": [True, None]}],  # no rows first, then mixed kinds
    [{"x": [1.25, 2.0]}, {"x": [3.5]}],  # one type throughout: nothing made again
])
def test_streamed_db_types_are_the_whole_tables(tmp_path, windows):
    """A column's SQLite type and stored values, its rows added a window at a time, are what
    storing the whole table at once gives, also when a later window's values change it."""
    tables = [pd.DataFrame({"step_id": range(len(w["x"])), **w}) for w in windows]
    whole = pd.concat(tables, ignore_index=True)
    conn = sqlite3.connect(tmp_path / "whole.db")
    writers.store_table(conn, "forward", whole)
    conn.commit()
    conn.close()
    db = StreamedDb(tmp_path / "profiler.db")
    for table in tables:
        db.add("forward", table, ["step_id", "x"])
    db.finish({}, None, None, {"request": requests_mod.CSV_COLUMNS,
                               "batch": batches_mod.CSV_COLUMNS,
                               "kvcache": kvcache_mod.KVCACHE_COLUMNS})
    ours = db_contents(tmp_path / "profiler.db")["forward"]
    assert ours == db_contents(tmp_path / "whole.db")["forward"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("every_us", [15_000, 40_000, 600_000_000])
def test_streamed_trace_of_shared_pids_and_overlapping_spans(tmp_path, every_us):
    """Two hosts whose processes have the same pids (the trace gives the second host's new
    ones, and the Requests process the next free pid: known only when every process is) and
    a thread whose spans overlap (interleaved coroutines: overlap tracks), streamed a few ms
    at a time: chrome_tracing.json and profiler.db are one analysis's, byte for byte and row
    for row."""
    start = 1_764_400_000_000_000.0
    for seed, host in ((1, "node-a"), (2, "node-b")):
        sim = simulate_service(40, seed=seed, start_us=start + seed * 700.0, host=host,
                               max_batch=4, max_output=20, api_pid=300, engine_pid=400)
        api = sim.capture.processes[0]
        for index in range(30):  # each span sticks out of the one before: never nested
            begin = start + index * 3_000.0
            api.span("handle", begin, begin + 4_500.0, "Coroutine", tid=77)
        sim.capture.write(tmp_path / "db", session=host)
    whole = _whole(tmp_path / "db", tmp_path / "whole")
    trace = json.loads((whole / "chrome_tracing.json").read_text())["traceEvents"]
    threads = {(e["pid"], e["tid"]) for e in trace if e.get("name") == "thread_name"}
    assert any(tid == 77 + OVERLAP_TID_STRIDE for _, tid in threads)  # an overlap track
    assert len({e["pid"] for e in trace if e.get("name") == "process_name"}) == 5
    streamed = _stream(tmp_path / "db", tmp_path / "stream", every_us, 20_000)
    _assert_same_tables(whole, streamed)


@pytest.mark.parametrize("part, fail_at, error, message", [
    # profiler.db failing in the third window (six tables a window)
    ("db", 13, sqlite3.OperationalError("disk I/O error"),
     "could not produce profiler.db: OperationalError: disk I/O error"),
    ("trace", 3, MemoryError("no room"),  # the trace failing in the third window
     "could not produce chrome_tracing.json: MemoryError: no room"),
])
def test_a_failing_output_leaves_the_others(tmp_path, monkeypatch, caplog, part, fail_at,
                                            error, message):
    """One message, exit status 1, no half-written file or part files left, every other
    output in full: without profiler.db the tables, the trace and the report; without the
    trace profiler.db too, without its trace tables (as one analysis's when its trace
    fails)."""
    capture = _two_hosts(tmp_path / "db")
    whole = _whole(capture, tmp_path / "whole")
    failing = StreamedDb if part == "db" else StreamedTrace
    calls = []
    real_add = failing.add

    def add(self, *args):
        calls.append(1)
        if len(calls) == fail_at:
            raise error
        real_add(self, *args)

    monkeypatch.setattr(failing, "add", add)
    out = tmp_path / "stream"
    out.mkdir()
    span = closed(None, lambda: capture_span([capture]))
    assert stream_tables.run_stream(capture, out, span, 300_000, 60_000, STREAMED,
                                    html_writer(out, None)) == 1
    assert message in caplog.text
    assert not list(out.glob("*.tmp")) and not (out / ".chrome_tracing.parts").exists()
    if part == "db":
        assert not (out / "profiler.db").exists()
        _assert_same_tables(whole, out, ("csv", "json", "html"))
    else:
        assert not (out / "chrome_tracing.json").exists()
        assert db_contents(out / "profiler.db") == db_contents(whole / "profiler.db",
                                                               TRACE_TABLES)
        _assert_same_tables(whole, out, ("csv", "html"))


@pytest.mark.parametrize("every_us, margin_us", [(20_000, 40_000), (600_000_000, 60_000_000)])
def test_stream_writes_span_info_and_the_stage_selections(tmp_path, every_us, margin_us):
    """--span and --split-*: span_info/ (a file per span, span_summary.csv with a span the
    capture lacks) and prefill.csv / decode.csv with the selections (batch sizes, request
    ids whose steps lie in several windows, the first N steps) are one analysis's."""
    capture = _two_hosts(tmp_path / "db")
    details = ["--span", "modelExec", "noSuchSpan", "--split-batch-size", "1", "3",
               "--split-rid", "cmpl-00010005-0", "cmpl-00020050-0", "--split-number", "7"]
    whole = tmp_path / "whole"
    assert main(["--input-path", str(capture), "--output-path", str(whole), *details]) == 0
    streamed = tmp_path / "stream"
    streamed.mkdir()
    span = closed(None, lambda: capture_span([capture]))
    options = DetailOptions(("modelExec", "noSuchSpan"), StageSelection(
        (1, 3), ("cmpl-00010005-0", "cmpl-00020050-0"), 7))
    assert stream_tables.run_stream(capture, streamed, span, every_us, margin_us, STREAMED,
                                    html_writer(streamed, None), options) == 0
    _assert_same_tables(whole, streamed)
    folder = streamed / "span_info"
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted(path.name for path in (whole / "span_info").iterdir())
    assert names == ["batchFrameworkProcessing.csv", "modelExec.csv", "span_summary.csv"]
    for name in names:
        assert (folder / name).read_bytes() == (whole / "span_info" / name).read_bytes(), name
    decode = (streamed / "decode.csv").read_text()
    assert "rid=cmpl-00010005-0" in decode and "batch_size=3" in decode
