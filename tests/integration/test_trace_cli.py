"""otel-vllm-analyze in a real subprocess: the Chrome trace and the report it writes.

Captures come from the benchmark generator (the project's recorder + ms_service exporter, two
real child processes) and from the analyzer fixtures (per-thread files, caret messages, two
hosts), so the trace is checked on what real capture files turn into.
"""

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from analysis_fixtures import simulate_service  # noqa: E402
from analysis_trace_checker import check_trace_file, events_of  # noqa: E402

pytestmark = pytest.mark.subprocess

DECODE_STEPS = 100  # benchmarks/gen_capture.py: every request runs 1 prefill + 100 decode steps


def analyze(capture, out, *formats):
    result = subprocess.run(
        [sys.executable, "-m", "otel_vllm_ascend.analysis", "--input-path", str(capture),
         "--output-path", str(out), "--format", *formats],
        capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    capture = tmp_path_factory.mktemp("generated")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gen_capture.py"),
                          str(capture), "--requests", "60", "--seed", "3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = tmp_path_factory.mktemp("out")
    result = analyze(capture, out, "csv", "json", "html")
    assert result.returncode == 0, result.stderr
    return capture, out


def _flows(events):
    flows = {}
    for event in events:
        if event["ph"] in ("s", "t", "f"):
            flows.setdefault(event["id"], []).append(event)
    return flows


def test_trace_of_an_exporter_capture_obeys_perfetto_rules(generated):
    _, out = generated
    assert check_trace_file(out / "chrome_tracing.json") == []


def test_one_flow_per_request_through_all_its_engine_steps(generated):
    _, out = generated
    events = events_of(json.loads((out / "chrome_tracing.json").read_text()))
    with open(out / "request.csv", newline="") as handle:
        rids = [row["http_rid"] for row in csv.DictReader(handle)]
    assert len(rids) == 60
    flows = _flows(events)
    assert len(flows) == len(rids)
    # each flow starts 1 ns inside its request's slice (ts in µs with 3 decimals)
    lanes = {e["args"]["rid"]: (e["pid"], e["tid"], round(e["ts"] + 0.001, 3)) for e in events
             if e["ph"] == "X" and e["name"].startswith("request ")}
    assert sorted(lanes) == sorted(rids)
    starts = {}
    for members in flows.values():
        phases = [e["ph"] for e in members]
        assert (phases.count("s"), phases.count("f")) == (1, 1)
        assert phases.count("t") == 1 + DECODE_STEPS
        start = next(e for e in members if e["ph"] == "s")
        starts[(start["pid"], start["tid"], round(start["ts"], 3))] = True
    assert set(starts) == set(lanes.values())  # every flow starts at its request's slice


def test_processes_are_named_after_the_capture_files(generated):
    capture, out = generated
    events = events_of(json.loads((out / "chrome_tracing.json").read_text()))
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    expected = {"Requests"}
    for path in capture.glob("ms_service_*.db"):
        pid = int(path.stem.rsplit("-", 1)[1])
        with sqlite3.connect(path) as conn:
            names_in_file = {row[0] for row in conn.execute("SELECT message FROM Mstx LIMIT 50")}
        role = "API server" if any('"httpReq"' in m for m in names_in_file) else "EngineCore"
        expected.add(f"{role} bench-host {pid}")
    assert names == expected


def test_kv_counters_are_real_values(generated):
    _, out = generated
    events = events_of(json.loads((out / "chrome_tracing.json").read_text()))
    usage = [e["args"]["usage %"] for e in events if e["ph"] == "C" and e["name"] == "KV cache"]
    assert usage and max(usage) > 0
    assert all(0 <= u <= 100 for u in usage)


def test_report_is_written_next_to_the_trace(generated):
    _, out = generated
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count("<svg") == 4 and "<script" not in text


def test_per_thread_caret_capture_of_two_hosts(tmp_path):
    capture = tmp_path / "capture"
    for seed, host in ((1, "node-a"), (2, "node-b")):
        sim = simulate_service(12, seed=seed, host=host, api_pid=100, engine_pid=200)
        sim.capture.write(capture / host, layout="per_thread", encoding="caret")
    out = tmp_path / "out"
    result = analyze(capture, out, "json")
    assert result.returncode == 0, result.stderr
    assert check_trace_file(out / "chrome_tracing.json") == []
    events = events_of(json.loads((out / "chrome_tracing.json").read_text()))
    names = sorted(e["args"]["name"] for e in events
                   if e["ph"] == "M" and e["name"] == "process_name")
    assert names == ["API server node-a 100", "API server node-b 100", "EngineCore node-a 200",
                     "EngineCore node-b 200", "Requests"]
    assert len(_flows(events)) == 24
