"""``--since`` / ``--until`` (analysis/time_window.py): only the records that start inside the
window are read; requests keep their client ids and are complete or partial by what the window
holds of them."""

import argparse
import csv
import logging
import multiprocessing
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture, simulate_service, write_otlp_json  # noqa: E402

from otel_vllm_ascend.analysis import read_parallel  # noqa: E402
from otel_vllm_ascend.analysis.cli import main  # noqa: E402
from otel_vllm_ascend.analysis.every_window import cut, folder_name  # noqa: E402
from otel_vllm_ascend.analysis.readers import find_captures, read_captures  # noqa: E402
from otel_vllm_ascend.analysis.requests import build_requests  # noqa: E402
from otel_vllm_ascend.analysis.time_window import (  # noqa: E402
    Relative,
    TimeWindow,
    parse_duration,
    parse_time,
    text_of,
    window_of,
)


def _utc(us: float) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat()


@pytest.fixture(autouse=True)
def serial(monkeypatch):
    monkeypatch.setenv("OTEL_VLLM_ANALYZE_SERIAL", "1")


def test_parse_time_forms():
    moment = datetime(2026, 12, 7, 14, 0, tzinfo=timezone.utc).timestamp() * 1e6
    assert parse_time("2026-12-07T14:00:00") == moment  # no offset: UTC, as the outputs
    assert parse_time("2026-12-07 14:00") == moment
    assert parse_time("2026-12-07T14:00:00Z") == moment
    assert parse_time("2026-12-07T22:00:00.250+08:00") == moment + 250_000
    assert parse_time(str(moment / 1e6)) == moment  # epoch seconds
    # the same on every Python version (fromisoformat reads fewer forms before 3.11)
    assert parse_time("2026-12-07T22:00:00,25+0800") == moment + 250_000
    assert parse_time("2026-12-07 14:00:00.123456789z") == moment + 123_456  # below µs: dropped
    assert parse_time("2026-12-07 14:00:00 UTC") == moment
    for bad in ("", "soon", "nan", "inf", "2026-13-01", "2026-02-30T00:00"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
            parse_time(bad)
    for far in ("1796652000000", "1e303", "-1e12", "1e1000000000"):  # ms by mistake, or no date
        with pytest.raises(argparse.ArgumentTypeError, match="out of range"):
            parse_time(far)
    assert text_of(1e25) == "10000000000000000000.000000 s since the epoch"
    assert text_of(moment) == "2026-12-07 14:00:00+00:00"


def test_relative_times():
    assert parse_time("start+10m") == Relative("start", 600e6)
    assert parse_time("END - 1.5h") == Relative("end", -5400e6)
    assert parse_time("start+90") == Relative("start", 90e6)  # seconds without a unit
    assert parse_time("end") == Relative("end", 0.0)
    for bad in ("start10m", "start+10x", "middle+1m"):
        with pytest.raises(argparse.ArgumentTypeError, match="relative to the capture"):
            parse_time(bad)
    asked = []

    def span():
        asked.append(1)
        return 1e15, 2e15

    assert window_of(1.0, 2.0, span) == TimeWindow(1.0, 2.0) and not asked  # only when needed
    # "end" is just after the last record's start: --until end keeps the last record
    assert window_of(Relative("start", 10e6), Relative("end", 0.0), span) == \
        TimeWindow(1e15 + 10e6, 2e15 + 1)
    assert window_of(Relative("end", -60e6), None, span) == TimeWindow(2e15 + 1 - 60e6)
    with pytest.raises(ValueError, match="needs its ms_service_\\*.db files"):
        window_of(Relative("start", 0.0), None, lambda: None)
    with pytest.raises(ValueError, match="--since must be before --until"):
        window_of(Relative("end", 0.0), Relative("start", 0.0), span)


def test_window_of():
    assert window_of(None, None) is None
    assert window_of(5.0, None) == TimeWindow(5.0, float("inf"))
    assert window_of(None, 5.0) == TimeWindow(float("-inf"), 5.0)
    with pytest.raises(ValueError, match="--since must be before --until"):
        window_of(5.0, 5.0)


def _truth(n=30, seed=3):
    sim = simulate_service(n, seed=seed, max_batch=3)
    arrivals = sorted(r.arrival_us for r in sim.requests)
    # from the 10th arrival to just before the 20th: requests cut on both sides
    return sim, TimeWindow(arrivals[9], arrivals[19])


def test_records_outside_the_window_are_not_read(tmp_path):
    sim, window = _truth()
    sim.capture.write(tmp_path / "db")
    whole, _, _ = read_captures(tmp_path / "db")
    frame, procs, report = read_captures(tmp_path / "db", window=window)
    assert report.problems == []
    inside = whole[(whole["start_us"] >= window.since_us) & (whole["start_us"] < window.until_us)]
    assert 0 < len(frame) == len(inside) < len(whole)
    assert frame["start_us"].tolist() == inside["start_us"].tolist()
    assert frame["name"].astype(str).tolist() == inside["name"].astype(str).tolist()
    # a request that arrived before the window: its link row is not kept, its id mapping is
    early = {r.internal: r.external for r in sim.requests if r.arrival_us < window.since_us}
    named = {rid for rids in frame["rids"] for rid in rids}
    assert named & set(early.values()) and not named & set(early)
    assert {p.role for p in procs} == {"api_server", "engine_core"}
    kept_records = sum(p.records for p in procs)
    assert kept_records == len(frame)


@pytest.mark.parametrize("layout, encoding", [("per_process", "json"),
                                              ("per_thread", "caret")])  # the C library's
def test_requests_complete_or_partial_by_what_the_window_holds(tmp_path, layout, encoding):
    sim, window = _truth()
    sim.capture.write(tmp_path / "db", layout=layout, encoding=encoding)
    whole = build_requests(read_captures(tmp_path / "db")[0]).set_index("http_rid")
    cut = build_requests(read_captures(tmp_path / "db", window=window)[0]).set_index("http_rid")
    by_id = {r.external: r for r in sim.requests}
    assert set(cut.index) <= set(by_id)  # client ids only: every link was read
    for rid, row in cut.iterrows():
        truth = by_id[rid]
        arrived, ended = truth.arrival_us >= window.since_us, truth.end_us < window.until_us
        assert bool(row["has_arrival"]) == arrived, rid
        assert bool(row["has_end"]) == ended, rid
        assert bool(row["partial"]) == (not (arrived and ended)), rid
        if arrived and ended:  # whole inside: the same row as without a window
            for column in ("e2e_ms", "ttft_ms", "reply_tokens", "recv_token_size"):
                assert row[column] == whole.loc[rid, column], (rid, column)
    expected = {r.external for r in sim.requests
                if r.arrival_us < window.until_us and r.end_us >= window.since_us}
    assert set(cut.index) == expected
    complete = [r for r in sim.requests
                if r.arrival_us >= window.since_us and r.end_us < window.until_us]
    assert 0 < len(complete) < len(expected)  # the window cuts some requests, not all


def test_otlp_and_parallel_readers_keep_the_same_window(tmp_path, monkeypatch):
    sim, window = _truth(40, seed=5)
    sim.capture.write(tmp_path / "db")
    write_otlp_json(sim.capture, tmp_path / "otlp" / "spans.jsonl")
    serial, _, _ = read_captures(tmp_path / "db", window=window)
    otlp, _, _ = read_captures(tmp_path / "otlp", window=window)
    assert otlp["start_us"].tolist() == serial["start_us"].tolist()
    if "fork" not in multiprocessing.get_all_start_methods() or sys.version_info < (3, 11):
        return  # the parallel reader needs fork and Python 3.11 (test_analysis_read_parallel)
    monkeypatch.delenv("OTEL_VLLM_ANALYZE_SERIAL")
    monkeypatch.setattr(read_parallel, "MIN_ROWS", 1)
    monkeypatch.setattr(read_parallel, "RANGE_ROWS", 7)
    monkeypatch.setattr(read_parallel, "worker_count", lambda: 2)
    paths = [capture.path for capture in find_captures(tmp_path / "db")]
    parallel = read_parallel.read_files(paths, 2, window=window)
    assert parallel is not None
    frame = parallel[0]
    assert frame["start_us"].tolist() == serial["start_us"].tolist()
    assert frame["rids"].tolist() == serial["rids"].tolist()  # client ids there too


def test_cli_window(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="otel_vllm_ascend.analysis")
    sim, window = _truth()
    sim.capture.write(tmp_path / "db")
    out = tmp_path / "out"
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(out),
                 "--format", "csv", "html", "--since", _utc(window.since_us),
                 "--until", str(window.until_us / 1e6)]) == 0
    with open(out / "request.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {r.external for r in sim.requests
                if r.arrival_us < window.until_us and r.end_us >= window.since_us}
    assert {row["http_rid"] for row in rows} == expected
    assert f"(time window {window.describe()})" in caplog.text
    page = (out / "report.html").read_text()
    assert f"<title>vLLM service profile · records starting {window.describe()}" in page

    # the same window relative to the capture's first record
    first = min(r.arrival_us for r in sim.requests)
    relative = tmp_path / "relative"
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(relative),
                 "--format", "csv", "--since", f"start+{(window.since_us - first) / 1e6}",
                 "--until", f"start+{(window.until_us - first) / 1e6}"]) == 0
    with open(relative / "request.csv", newline="") as handle:
        assert {row["http_rid"] for row in csv.DictReader(handle)} == expected

    caplog.clear()
    late = max(r.end_us for r in sim.requests) / 1e6 + 60
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(tmp_path / "o2"),
                 "--since", str(late)]) == 1
    first = min(r.arrival_us for r in sim.requests)
    assert "no record starts in the time window" in caplog.text
    assert f"(their records start from {_utc(first).replace('T', ' ')} to " in caplog.text


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "argument --since: 'yesterday' is not a time"),
    (["--since", "2026-12-07T15:00", "--until", "2026-12-07T14:00"],
     "--since must be before --until"),
])
def test_cli_bad_window(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stopped:
        main(["--input-path", str(tmp_path)] + args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_rows_outside_the_window_are_not_decoded_unless_their_time_is_no_number(tmp_path):
    sim, window = _truth()
    api = sim.capture.processes[0]
    api.raw("not a message", window.since_us - 5_000_000)  # outside: never decoded
    api.raw("not a message either", window.since_us + 1)  # inside: undecodable, counted
    paths = sim.capture.write(tmp_path / "db")
    with sqlite3.connect(paths[0]) as conn:  # a time that is text: no window can place it
        conn.execute("INSERT INTO Mstx (message, flag, markId, timestamp, endTimestamp, pid,"
                     " tid) VALUES ('{}', 1, 99999, 'noon', 'noon', 100, 100)")
    _, _, whole = read_captures(tmp_path / "db")
    _, _, cut = read_captures(tmp_path / "db", window=window)
    assert whole.unparsable == 3
    assert cut.unparsable == 2


def test_a_window_starting_at_a_printed_time_keeps_that_record(tmp_path, caplog):
    """A start is placed by its µs as the outputs print it (rounded), from its exact ns: a
    request's printed start_datetime given as --since keeps its arrival."""
    sim = simulate_service(6, seed=13)
    api = sim.capture.processes[0]
    for record in api.records:  # sub-µs parts that the printed time rounds up
        if record.message.get("name") == "httpReq":
            record.start_ns = record.end_ns = record.start_ns + 700
    sim.capture.write(tmp_path / "db")
    out = tmp_path / "whole"
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(out),
                 "--format", "csv"]) == 0
    with open(out / "request.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["partial"] == "False":
            cut = tmp_path / row["http_rid"]
            assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(cut),
                         "--format", "csv", "--since", row["start_datetime"]]) == 0
            with open(cut / "request.csv", newline="") as handle:
                again = {r["http_rid"]: r for r in csv.DictReader(handle)}
            assert again[row["http_rid"]]["partial"] == "False", row
    # a whole µs that float division puts 0.25 µs low (ns -> float -> µs rounds twice)
    exact = Capture()
    exact.process("h", 7, "api_server").event("httpReq", 1765569789636944.0, rid="r")
    exact.write(tmp_path / "exact")
    assert 1765569789636944000 / 1000.0 < 1765569789636944
    frame, _, _ = read_captures(tmp_path / "exact", window=TimeWindow(1765569789636944))
    assert len(frame) == 1


def test_no_window_and_a_time_no_date_can_hold(tmp_path):
    """A REAL timestamp far beyond the year 9999 (a damaged row): the log line about the
    records' times does not stop the analysis."""
    paths = simulate_service(5, seed=2).capture.write(tmp_path / "db")
    with sqlite3.connect(paths[0]) as conn:
        conn.execute("INSERT INTO Mstx (message, flag, markId, timestamp, endTimestamp, pid,"
                     " tid) VALUES ('{\"name\": \"x\", \"type\": 0}', 1, 999, 1e25, 1e25,"
                     " 100, 100)")
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(tmp_path / "o"),
                 "--format", "csv"]) == 0
    with sqlite3.connect(paths[0]) as conn:  # an infinite time: in no window
        conn.execute("INSERT INTO Mstx (message, flag, markId, timestamp, endTimestamp, pid,"
                     " tid) VALUES ('{\"name\": \"y\", \"type\": 0}', 1, 998, 9e999, 9e999,"
                     " 100, 100)")
    frame, _, _ = read_captures(tmp_path / "db", window=TimeWindow(0))
    assert "y" not in set(frame["name"].astype(str)) and "x" in set(frame["name"].astype(str))


def test_damaged_file_read_with_a_window(tmp_path):
    sim, window = _truth(60, seed=4)
    paths = sim.capture.write(tmp_path / "db")
    engine = next(p for p in paths if p.name.endswith("-200.db"))
    data = engine.read_bytes()
    engine.write_bytes(data[:len(data) * 6 // 10])  # the last pages cut off
    _, _, whole = read_captures(tmp_path / "db")
    frame, _, cut = read_captures(tmp_path / "db", window=window)
    [line] = [p for p in cut.problems if p.startswith(str(engine))]
    kept = int(line.split("kept the ")[1].split()[0])
    assert "rows of the time window read before the damage" in line, line
    assert kept == sum(1 for pid in frame["pid"] if pid == 200)
    assert any("rows read before the damage" in p for p in whole.problems)


def test_cut_and_folder_names():
    hour = 3600 * 10**6
    assert cut(TimeWindow(0, 2 * hour + 5), hour) == [
        TimeWindow(0, hour), TimeWindow(hour, 2 * hour), TimeWindow(2 * hour, 2 * hour + 5)]
    assert folder_name(parse_time("2026-12-07T14:00:00")) == "20261207-140000"
    assert folder_name(parse_time("2026-12-07T14:00:00.5")) == "20261207-140000.500000"
    assert parse_duration("10m") == 600 * 10**6 and parse_duration("90") == 90 * 10**6
    for bad, message in (("soon", "not a duration"), ("0.5", "at least one second")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_duration(bad)


def test_every_window_its_own_analysis(tmp_path):
    """Two short runs an hour apart, cut into windows of ten minutes: the two windows that hold
    a run each have its 60 requests, complete; the five between have none and no folder."""
    start = 1_764_400_000_000_000.0  # 07:06:40 UTC
    scheduled = []
    for session, shift, pids in (("first", 0, (100, 200)), ("second", 3600e6, (300, 400))):
        sim = simulate_service(60, seed=1, start_us=start + shift, api_pid=pids[0],
                               engine_pid=pids[1])
        sim.capture.write(tmp_path / "db", session=session)
        scheduled.append(sum(sim.step_tokens))
    out = tmp_path / "every"
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(out),
                 "--format", "csv", "--every", "10m"]) == 0
    with open(out / "windows.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["window_start"][11:19] for row in rows] == [
        "07:00:00", "07:10:00", "07:20:00", "07:30:00", "07:40:00", "07:50:00", "08:00:00"]
    assert all(a["window_end"] == b["window_start"] for a, b in zip(rows, rows[1:]))
    full = [row for row in rows if row["folder"]]
    assert [row["folder"] for row in full] == ["20251129-070000", "20251129-080000"]
    assert [row["complete_requests"] for row in full] == ["60", "60"]
    # the steps' tokens over the window's length (the last one ends just after the last
    # record), whatever the requests the edges cut
    lengths = [(parse_time(row["window_end"]) - parse_time(row["window_start"])) / 1e6
               for row in full]
    assert lengths[0] == 600 and 400 < lengths[1] < 401
    assert [float(row["scheduled_tokens_per_s"]) for row in full] == \
        [pytest.approx(tokens / length, abs=1e-4) for tokens, length in zip(scheduled, lengths)]
    assert all(row["requests"] == "0" and row["status"] == "0" for row in rows
               if not row["folder"])
    assert sorted(path.name for path in out.iterdir()) == [
        "20251129-070000", "20251129-080000", "windows.csv"]
    # the figures come from the tables, whichever outputs are written
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(tmp_path / "json"),
                 "--format", "json", "--every", "10m"]) == 0
    with open(tmp_path / "json" / "windows.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == rows
    # a window's row is what analysing that window alone gives
    alone = tmp_path / "alone"
    assert main(["--input-path", str(tmp_path / "db"), "--output-path", str(alone),
                 "--format", "csv", "--since", "2025-11-29T08:00", "--until",
                 "2025-11-29T08:10"]) == 0
    with open(alone / "request.csv", newline="") as handle:
        ttft = [float(r["first_token_latency(ms)"]) for r in csv.DictReader(handle)]
    assert float(full[1]["ttft_p50_ms"]) == pytest.approx(np.percentile(ttft, 50), abs=1e-3)


def test_every_without_sqlite_files_needs_both_ends(tmp_path, capsys):
    sim, window = _truth()
    write_otlp_json(sim.capture, tmp_path / "otlp" / "spans.jsonl")
    with pytest.raises(SystemExit) as stopped:
        main(["--input-path", str(tmp_path / "otlp"), "--every", "1m"])
    assert stopped.value.code == 2
    assert "--every needs the capture's ms_service_*.db files" in capsys.readouterr().err
    out = tmp_path / "out"  # with both ends given, OTLP files are cut too
    assert main(["--input-path", str(tmp_path / "otlp"), "--output-path", str(out),
                 "--format", "csv", "--every", "1", "--since", _utc(window.since_us),
                 "--until", _utc(window.since_us + 2.5e6)]) == 0
    with open(out / "windows.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
