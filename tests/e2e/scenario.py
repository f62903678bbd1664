"""One profiled serving session, driven the way a user of the seed's quick start would.

The server starts with ``"enable": 0``; the driver then sends requests in phases and flips the
config file with ``sed`` between them:

========== ================================================= ==========================
phase      config while it runs                              expected in the capture
========== ================================================= ==========================
off_before ``enable 0``                                      nothing
on         ``enable 1`` (main mix, concurrent, traceparent,  every request, once
           a third of it chat completions)
identity   ``enable 1`` (sequential, compared with baseline; every request, once
           a third of it chat)
stop       ``enable 1`` (identity's prompts with stop        every request, once
           strings: ended by the API server, not EngineCore)
parallel   ``enable 1`` (``n`` = 2 completions a request,    every request, once
           one of the three a chat request)
off_after  back to ``enable 0``                              nothing
timed      ``enable 1`` with ``timelimit`` (early requests)  every request, once
expired    same file, after the time limit has passed        nothing
========== ================================================= ==========================

The server is then stopped while recording again (``timelimit`` 0): with SIGINT (Ctrl-C) on the
``instrument`` path and SIGTERM on the ``plugin`` path, and must exit by itself.

Everything the tests check is gathered here once per activation path, so the server starts
only once per path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Optional

import otlp_receiver
import profiling_workdir
import workload
from serve import STOP_GRACE_S, VllmServer  # noqa: F401 (STOP_GRACE_S: for messages)

TOGGLE_PICKUP_S = 3.0  # the tool polls the config about every 0.5 s; the machine is busy
TIMELIMIT_S = 6
OTLP_SETTLE_S = 20.0

RECORDED_PHASES = ("on", "identity", "stop", "parallel", "timed")
COMPLETIONS = 2  # of each request of the parallel phase
STOP_SIGNALS = {"instrument": signal.SIGINT, "plugin": signal.SIGTERM}
SILENT_PHASES = ("off_before", "off_after", "expired")


def identity_specs(prefix: str) -> list:
    """Sequential requests whose outputs are compared between servers (same seed, same text);
    every third a chat request, so the stop phase has chat requests too."""
    return workload.make_requests(6, seed=7, prompt_words=(3, 9, 21), output_tokens=(8, 24),
                                  id_prefix=prefix, chat_every=3)


def stop_specs(prefix: str, identity: list) -> list:
    """The identity requests again, each with a stop string taken from the first half of the
    text it gave (same prompt, greedy: the same text up to there), so each ends early. Their
    ids are the identity request's id with ``s`` appended."""
    specs = []
    for spec, result in zip(identity_specs(prefix), identity):
        piece = result.text[:len(result.text) // 2].strip()[-3:]
        if len(piece) >= 2:
            specs.append(dataclasses.replace(spec, request_id=result.request_id + "s",
                                             stop=[piece]))
    return specs


@dataclasses.dataclass
class ServingRun:
    path: str
    work: Path
    server_log: Path
    phases: dict
    pid_names: dict
    api_pid: int
    num_gpu_blocks: Optional[int]
    prof_dir: Optional[Path] = None
    output_dir: Optional[Path] = None
    analyzer_rc: Optional[int] = None
    analyzer_output: str = ""
    otlp_before_stop: list = dataclasses.field(default_factory=list)
    otlp_after_stop: list = dataclasses.field(default_factory=list)
    stop_rc: Optional[int] = None
    stop_signal: str = "SIGTERM"
    stop_seconds: Optional[float] = None

    def results(self, *phases: str) -> list:
        return [r for phase in phases for r in self.phases.get(phase, [])]


def gpu_blocks(url: str) -> Optional[int]:
    """``num_gpu_blocks`` as vLLM itself reports it on /metrics (cache_config_info)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text)
    return int(match.group(1)) if match else None


def process_names(server: VllmServer) -> dict:
    import psutil

    names = {}
    for pid in server.pids():
        try:
            process = psutil.Process(pid)
            names[pid] = " ".join([process.name(), *process.cmdline()[:3]])
        except psutil.Error:
            continue
    return names


def _run_phase(server: VllmServer, specs: list, concurrency: int) -> list:
    return workload.run(server.url, server.model_name, specs, concurrency, timeout_s=300)


def run_baseline(model: Path, work: Path) -> ServingRun:
    """vLLM without the tool (its plugins switched off): reference outputs and KV size."""
    env = {"VLLM_PLUGINS": "none-of-the-installed"}
    with VllmServer(model, work, env=env) as server:
        phases = {"identity": _run_phase(server, identity_specs("base"), 1)}
        blocks = gpu_blocks(server.url)
        names = process_names(server)
        api_pid = server.process.pid
    return ServingRun("baseline", work, server.log_path, phases, names, api_pid, blocks)


def run_profiled(path: str, model: Path, work: Path) -> ServingRun:
    """Serve with the tool by activation ``path`` (``instrument`` or ``plugin``), OTLP on."""
    files = profiling_workdir.prepare(work, enable=0)
    receiver = otlp_receiver.OtlpReceiver().start()
    env = files.env()
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_SERVICE_NAME": f"vllm-e2e-{path}",
    })
    launcher: tuple = ()
    if path == "instrument":
        launcher = ("opentelemetry-instrument",)
        env.update({"OTEL_TRACES_EXPORTER": "ms_service,otlp", "OTEL_METRICS_EXPORTER": "none",
                    "OTEL_LOGS_EXPORTER": "none"})
    server = VllmServer(model, work, env=env, launcher=launcher)
    phases: dict = {}
    try:
        server.start()
        names = process_names(server)
        blocks = gpu_blocks(server.url)
        conc = dict(concurrency=3)
        phases["off_before"] = _run_phase(
            server, workload.make_requests(6, seed=1, id_prefix=f"{path}off1"), **conc)

        profiling_workdir.set_enable(files.config, True)
        time.sleep(TOGGLE_PICKUP_S)
        phases["on"] = _run_phase(server, workload.make_requests(
            24, seed=2, prompt_words=(4, 12, 24, 40), output_tokens=(4, 16, 32, 64),
            id_prefix=f"{path}on", traceparent=True, chat_every=3), concurrency=8)
        phases["identity"] = _run_phase(server, identity_specs(f"{path}id"), 1)
        phases["stop"] = _run_phase(server, stop_specs(f"{path}id", phases["identity"]), 1)
        parallel = workload.make_requests(3, seed=6, output_tokens=(8, 16),
                                          id_prefix=f"{path}par", chat_every=3)
        phases["parallel"] = _run_phase(server, [
            dataclasses.replace(spec, n=COMPLETIONS, temperature=0.8) for spec in parallel], 3)

        profiling_workdir.set_enable(files.config, False)
        time.sleep(TOGGLE_PICKUP_S)
        phases["off_after"] = _run_phase(
            server, workload.make_requests(6, seed=3, id_prefix=f"{path}off2"), **conc)

        profiling_workdir.set_timelimit(files.config, TIMELIMIT_S)
        time.sleep(1.0)
        switched_on = time.monotonic()
        profiling_workdir.set_enable(files.config, True)
        time.sleep(2.0)
        phases["timed"] = _run_phase(server, workload.make_requests(
            4, seed=4, output_tokens=(4,), id_prefix=f"{path}tl"), concurrency=4)
        time.sleep(max(0.0, switched_on + TIMELIMIT_S + 3.0 - time.monotonic()))
        phases["expired"] = _run_phase(
            server, workload.make_requests(4, seed=5, id_prefix=f"{path}exp"), **conc)

        # Spans must reach the receiver while the server still runs (batch delay 0.5 s).
        deadline = time.monotonic() + OTLP_SETTLE_S
        seen = -1
        while time.monotonic() < deadline:
            time.sleep(2.0)
            count = len(receiver.spans())
            if count and count == seen:
                break
            seen = count
        otlp_before = receiver.spans()
        api_pid = server.process.pid
        # Stop while recording: the shutdown hooks are active only then.
        profiling_workdir.set_enable(files.config, False)
        profiling_workdir.set_timelimit(files.config, 0)
        time.sleep(TOGGLE_PICKUP_S)
        profiling_workdir.set_enable(files.config, True)
        time.sleep(TOGGLE_PICKUP_S)
    finally:
        # Ctrl-C on one path, the service manager's SIGTERM on the other, while recording.
        stop_signal = STOP_SIGNALS[path]
        stop_rc = server.stop(sig=stop_signal)
    time.sleep(1.0)
    run = ServingRun(path, work, server.log_path, phases, names, api_pid, blocks,
                     prof_dir=files.prof_dir, output_dir=work / "analysis",
                     otlp_before_stop=otlp_before, otlp_after_stop=receiver.spans(),
                     stop_rc=stop_rc, stop_signal=stop_signal.name,
                     stop_seconds=server.stop_seconds)
    receiver.stop()
    run.analyzer_rc, run.analyzer_output = profiling_workdir.run_analyzer(
        files.prof_dir, run.output_dir)
    return run


def serve_once(model: Path, work: Path, specs: list, concurrency: int, extra_args: list,
               env: Optional[dict] = None, before_stop=None) -> tuple:
    """A profiled server (plugin path, recording from the start) with ``extra_args``, one
    workload, vLLM's default stop, then the analyzer: (results, prof folder, analysis folder,
    what ``before_stop(server)`` returned)."""
    files = profiling_workdir.prepare(work, enable=1)
    server = VllmServer(model, work, env={**files.env(), **(env or {})}, extra_args=extra_args)
    try:
        server.start()
        results = workload.run(server.url, server.model_name, specs, concurrency, timeout_s=300)
        seen = before_stop(server) if before_stop is not None else None
    finally:
        server.stop()
    time.sleep(1.0)
    rc, output = profiling_workdir.run_analyzer(files.prof_dir, work / "analysis")
    assert rc == 0, output[-3000:]
    return results, files.prof_dir, work / "analysis", seen


def write_matrix_report(run: ServingRun, folder: Path) -> None:
    """What the version-matrix runner (tools/compat.py) tabulates for one profiled run."""
    import collections
    import json

    log = run.server_log.read_text(errors="replace")
    report = {
        "path": run.path,
        "stop_signal": run.stop_signal,
        "stop_seconds": run.stop_seconds,
        "stop_rc": run.stop_rc,
        "processes": sorted(run.pid_names.values()),
        "records": collections.Counter(
            r.name for r in profiling_workdir.read_records(run.prof_dir)),
        "announced_missing": [line for line in log.splitlines()
                              if "these records will be missing" in line],
        "engine": next((line.split("otel-vllm-ascend: ", 1)[1] for line in log.splitlines()
                        if "entries from" in line and "otel-vllm-ascend: " in line), ""),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run.path}.json").write_text(json.dumps(report, indent=1, sort_keys=True))


STREAMED_TABLES = ("request.csv", "batch.csv", "kvcache.csv", "spec_decode.csv", "forward.csv",
                   "request_status.csv", "request_summary.csv", "batch_summary.csv",
                   "service_summary.csv", "dp_summary.csv", "prefill.csv", "decode.csv")


def _longest_record_us(prof_dir: Path) -> int:
    longest = 0
    for path in prof_dir.rglob("ms_service_*.db"):
        with contextlib.closing(sqlite3.connect(path)) as db:
            ns = db.execute("SELECT max(endTimestamp - timestamp) FROM Mstx").fetchone()[0]
        longest = max(longest, (ns or 0) // 1000)
    return longest


def streamed_tables_differ(prof_dir: Path, analysis_dir: Path, out: Path,
                           every_us: int = 2_000_000, margin_us: int = 1_000_000) -> list:
    """The outputs ``--stream`` writes of the capture (windows of ``every_us``, ``margin_us``
    before and after each) that are not those of the whole capture's analysis in
    ``analysis_dir``: the tables, report.html and chrome_tracing.json byte for byte,
    profiler.db's tables and views row for row; an output only one of them wrote is listed
    too. The margins grow to an eighth of the capture's longest record: --stream reads on for
    sixteen margins at most after a window whose requests run on, and a cold first step can
    last 16 s."""
    from analysis_fixtures import db_contents

    from otel_vllm_ascend.analysis import stream_tables
    from otel_vllm_ascend.analysis.cli import FORMATS, html_writer
    from otel_vllm_ascend.analysis.readers import capture_span
    from otel_vllm_ascend.analysis.time_window import closed

    out.mkdir(parents=True, exist_ok=True)
    margin_us = max(margin_us, _longest_record_us(prof_dir) // 8)
    span = closed(None, lambda: capture_span([prof_dir]))
    assert stream_tables.run_stream(prof_dir, out, span, every_us, margin_us, FORMATS,
                                    html_writer(out, None)) == 0
    differ = []
    for name in STREAMED_TABLES + ("report.html", "chrome_tracing.json"):
        ours, whole = out / name, analysis_dir / name
        if ours.exists() != whole.exists() or (
                ours.exists() and ours.read_bytes() != whole.read_bytes()):
            differ.append(name)
    if db_contents(out / "profiler.db") != db_contents(analysis_dir / "profiler.db"):
        differ.append("profiler.db")
    return differ
