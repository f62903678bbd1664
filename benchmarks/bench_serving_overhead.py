"""What the tool costs a real ``vllm serve``: interleaved server starts per configuration.

Configurations (each a fresh server start, in turn A B C D E A B C D E ...):

=========== ===============================================================================
plain       vLLM as a user runs it without profiling: the package installed, no
            ``SERVICE_PROF_CONFIG_PATH`` (the plugin loads and does nothing)
enable0     the tool loaded by the seed's workflow (``SERVICE_PROF_CONFIG_PATH``), ``enable: 0``
enable1     ``enable: 1``, file exporter (``ms_service_*.db``)
enable1otlp ``enable: 1`` plus OTLP/HTTP forwarding to a receiver on loopback
vllmotlp    vLLM's own tracing (``--otlp-traces-endpoint``) to the same receiver, tool inert
noplugin    (not in the default set) vLLM with ``VLLM_PLUGINS`` keeping our plugin unloaded
enable1inproc (not in the default set) ``enable1`` with ``OTEL_VLLM_WRITER=0``: every vLLM
            process builds and exports its own spans (the way before the writer process)
enable1prio0 (not in the default set) ``enable1`` with ``OTEL_VLLM_WRITER_PRIORITY=normal``:
            the writer process at the servers' own priority (the way before it lowered it)
enable1base (not in the default set; needs ``--baseline-tree``) ``enable1`` with another
            checkout of the project first on ``PYTHONPATH`` (e.g. ``git worktree add`` of
            main, with ``otel_vllm_ascend/exporters`` and ``otel_vllm_ascend/analysis``
            symlinked to its ``exporters`` and ``analysis``): the baseline side by side
=========== ===============================================================================

Each start gets one warm-up run, then ``--runs`` measured runs of the same fixed workload
(default 256 streaming completions x 64 output tokens, prompts of about 16-64 tokens,
concurrency 32). Printed per configuration: output tokens/s, TTFT and end-to-end p50/p99
(medians over runs) and the throughput ratio to ``plain`` as a ratio of medians with a
bootstrap 95 % confidence interval, and the CPU time of the server's processes per output token
with its ratio to ``plain`` (CPU per token hardly moves when the shared machine stalls a run,
throughput does). A single pair of runs says nothing below ~10 % on this
machine kind: use many repeats before reading a small difference. Each start's line also gives
the seconds the client (this process) waited for a CPU: a client that waits reads the streams
late and the server's batches shrink, which is the client's slowness, not the server's.

The tool's configurations run with its self meter on (``OTEL_VLLM_SELF_METER=1``); after each
server stops, the last ``selfMeter`` Meta row of every capture file is read and the tool's own
time is printed per process role, per engine step and per request (µs, medians over starts):
the serving processes' own figure ("in vLLM's processes") and the writer process's (role
``writer``) separately.

    .venv/bin/python benchmarks/bench_serving_overhead.py --repeats 5 [--runs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import profiling_workdir  # noqa: E402
import workload  # noqa: E402
from build_tiny_model import ensure_model  # noqa: E402
from otlp_receiver import ReceiverProcess  # noqa: E402
from serve import VllmServer  # noqa: E402

CONFIGS = ("plain", "enable0", "enable1", "enable1otlp", "vllmotlp")
OPTIONAL_CONFIGS = ("noplugin", "enable1inproc", "enable1prio0", "enable1base")
TOOL_CONFIGS = ("enable0", "enable1", "enable1otlp", "enable1inproc", "enable1prio0",
                "enable1base")
WRITER_ROLE = "writer"
NO_PLUGINS = {"VLLM_PLUGINS": "none-of-the-installed"}


def server_for(config: str, model: Path, work: Path, receiver: ReceiverProcess,
               launcher: str, baseline_tree: Path | None = None) -> VllmServer:
    env: dict = {}
    extra: list = []
    launch: tuple = ()
    if config not in TOOL_CONFIGS:
        if config == "noplugin":
            env.update(NO_PLUGINS)
        if config == "vllmotlp":
            extra = ["--otlp-traces-endpoint", receiver.endpoint + "/v1/traces"]
            env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    else:
        files = profiling_workdir.prepare(work, enable=0 if config == "enable0" else 1)
        env.update(files.env())
        env["OTEL_VLLM_SELF_METER"] = "1"
        if config == "enable1inproc":
            env["OTEL_VLLM_WRITER"] = "0"
        if config == "enable1prio0":
            env["OTEL_VLLM_WRITER_PRIORITY"] = "normal"
        if config == "enable1base":
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(baseline_tree), os.environ.get("PYTHONPATH", "")) if p)
        if config == "enable1otlp":
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
            if launcher == "instrument":
                env["OTEL_TRACES_EXPORTER"] = "ms_service,otlp"
        if launcher == "instrument":
            launch = ("opentelemetry-instrument",)
    return VllmServer(model, work, env=env, launcher=launch, extra_args=extra)


def self_meter(work: Path) -> dict | None:
    """Sum of the last ``selfMeter`` row of each capture file under ``work``, per role, and
    the tool's time per engine step (all processes) and per request."""
    per_role: dict = {}
    by_symbol: dict = {}  # (role, symbol) -> [calls, hot_ns]
    steps = requests = 0
    total_ns = writer_ns = 0
    for path in sorted(work.rglob("ms_service_*.db")):
        try:
            with sqlite3.connect(path) as conn:
                rows = conn.execute("SELECT value FROM Meta WHERE name = 'selfMeter'").fetchall()
        except sqlite3.Error:
            continue
        if not rows:
            continue
        figures = json.loads(rows[-1][0])
        figures["hot_ns"] -= figures.get("meter_ns", 0)  # the meter's own clock reads
        tool_ns = figures["hot_ns"] + figures["drain_ns"] + figures["export_cpu_ns"]
        role = per_role.setdefault(figures["role"], {"hot_ns": 0, "drain_ns": 0,
                                                     "export_cpu_ns": 0, "drained": 0})
        for key in role:
            role[key] += figures[key]
        for symbol, (calls, symbol_ns) in figures.get("by_symbol", {}).items():
            totals = by_symbol.setdefault((figures["role"], symbol), [0, 0])
            totals[0] += calls
            totals[1] += symbol_ns
        if figures["role"] == WRITER_ROLE:  # its steps are EngineCore's, counted there
            writer_ns += tool_ns
            continue
        total_ns += tool_ns
        steps += figures["steps"]
        requests += figures["requests"]
    if not per_role:
        return None
    return {"roles": per_role, "steps": steps, "requests": requests, "tool_ns": total_ns,
            "writer_ns": writer_ns,
            "writer_us_per_step": writer_ns / steps / 1000 if steps else None,
            "by_symbol": [[role, symbol, calls, ns] for (role, symbol), (calls, ns)
                          in sorted(by_symbol.items())],
            "us_per_step": total_ns / steps / 1000 if steps else None,
            "us_per_request": total_ns / requests / 1000 if requests else None}


def meter_report(meters: dict) -> str:
    lines = ["| configuration | starts | tool µs per engine step in vLLM's processes | "
             "in the writer process | per request (vLLM's processes) | "
             "per step by role: hot / span building or hand-off / export threads |",
             "|---|---|---|---|---|---|"]
    for config, rows in meters.items():
        rows = [m for m in rows if m and m["us_per_step"]]
        if not rows:
            continue
        roles = []
        for role in sorted({r for m in rows for r in m["roles"]}):
            parts = []
            for key in ("hot_ns", "drain_ns", "export_cpu_ns"):
                parts.append(statistics.median(
                    m["roles"][role][key] / m["steps"] / 1000 for m in rows if role in m["roles"]))
            roles.append(f"{role} {parts[0]:.1f} / {parts[1]:.1f} / {parts[2]:.1f}")
        writer = statistics.median(m.get("writer_us_per_step") or 0 for m in rows)
        lines.append(
            f"| {config} | {len(rows)} | {statistics.median(m['us_per_step'] for m in rows):.1f} | "
            f"{writer:.1f} | {statistics.median(m['us_per_request'] or 0 for m in rows):.1f} | "
            f"{'; '.join(roles)} |")
    return "\n".join(lines)


def hook_report(meters: dict) -> str:
    """Hot path per hooked symbol (with the meter's clock reads in), medians over starts."""
    lines = ["| configuration | process | hooked symbol | calls per step | µs per step | "
             "µs per call |", "|---|---|---|---|---|---|"]
    for config, rows in meters.items():
        rows = [m for m in rows if m and m["steps"]]
        per_key: dict = {}
        for meter in rows:
            for role, symbol, calls, ns in meter.get("by_symbol", ()):
                per_key.setdefault((role, symbol), []).append(
                    (calls / meter["steps"], ns / meter["steps"] / 1000, ns / max(calls, 1) / 1000))
        ranked = sorted(per_key.items(), key=lambda item: -statistics.median(
            v[1] for v in item[1]))
        for (role, symbol), values in ranked:
            calls, per_step, per_call = (statistics.median(v[i] for v in values) for i in range(3))
            lines.append(f"| {config} | {role} | `{symbol}` | {calls:.2f} | {per_step:.1f} | "
                         f"{per_call:.1f} |")
    return "\n".join(lines)


def fixed_workload(requests: int, max_tokens: int, seed: int) -> list:
    return workload.make_requests(requests, seed=seed, prompt_words=(8, 16, 24, 32),
                                  output_tokens=(max_tokens,), id_prefix="bench")


def server_cpu_s(server: VllmServer) -> float:
    """CPU seconds (user + system) used so far by the server's process tree."""
    try:
        root = psutil.Process(server.process.pid)
        processes = [root] + root.children(recursive=True)
    except psutil.Error:
        return float("nan")
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_queue_wait_s() -> float:
    """Seconds this process's threads have waited for a CPU while runnable (Linux schedstat;
    NaN elsewhere). A client that waits is a client that reads the streams late: the
    server's steps then shrink, as they did with the writer in a session of its own."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/schedstat") as file:
                total += int(file.read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return total / 1e9


def measure(server: VllmServer, specs: list, concurrency: int) -> dict:
    cpu_before = server_cpu_s(server)
    wait_before = run_queue_wait_s()
    started = time.perf_counter()
    results = workload.run(server.url, server.model_name, specs, concurrency)
    client_wait_s = run_queue_wait_s() - wait_before
    figures = workload.summarize(results, time.perf_counter() - started)
    for failed in [r for r in results if not r.ok][:3]:  # the client's side of a failure
        print(f"    failed {failed.request_id}: {failed.status} {failed.error}", file=sys.stderr)
    # CPU per output token: far less sensitive to the machine's stalls than tokens per second
    # (a stalled server mostly waits), so it shows what the tool adds with tighter intervals.
    tokens = figures["output_tokens"] or 1
    figures["cpu_ms_per_token"] = (server_cpu_s(server) - cpu_before) * 1000 / tokens
    figures["client_wait_s"] = client_wait_s
    return figures


def bootstrap_ratio(values: list, base: list, rounds: int = 2000, seed: int = 0) -> tuple:
    """Ratio of medians and its 95 % bootstrap interval (resampling runs of each side)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(rounds):
        a = [rng.choice(values) for _ in values]
        b = [rng.choice(base) for _ in base]
        ratios.append(statistics.median(a) / statistics.median(b))
    ratios.sort()
    return (statistics.median(values) / statistics.median(base),
            ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1])


def report(runs: dict) -> str:
    lines = ["| configuration | runs | output tok/s (median) | ratio to plain (95% CI) | "
             "TTFT p50 / p99 ms | E2E p50 / p99 ms | server CPU ms per token (ratio to plain, "
             "95% CI) |", "|---|---|---|---|---|---|---|"]
    base = [r["output_tok_per_s"] for r in runs.get("plain", [])]
    base_cpu = [r["cpu_ms_per_token"] for r in runs.get("plain", []) if "cpu_ms_per_token" in r]
    for config, results in runs.items():
        if not results:
            continue
        throughput = [r["output_tok_per_s"] for r in results]
        ratio = "-"
        if base and config != "plain":
            value, low, high = bootstrap_ratio(throughput, base)
            ratio = f"{value:.3f} ({low:.3f}-{high:.3f})"
        elif config == "plain":
            ratio = "1"

        def med(key: str, rows: list = results) -> float:
            return statistics.median(r[key] for r in rows)

        cpu = [r["cpu_ms_per_token"] for r in results if "cpu_ms_per_token" in r]
        cpu_text = f"{statistics.median(cpu):.3f}" if cpu else "-"
        if cpu and base_cpu and config != "plain":
            value, low, high = bootstrap_ratio(cpu, base_cpu)
            cpu_text += f" ({value:.3f}, {low:.3f}-{high:.3f})"
        lines.append(
            f"| {config} | {len(results)} | {statistics.median(throughput):.0f} | {ratio} | "
            f"{med('ttft_p50_ms'):.1f} / {med('ttft_p99_ms'):.1f} | "
            f"{med('e2e_p50_ms'):.1f} / {med('e2e_p99_ms'):.1f} | {cpu_text} |")
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="server starts per config")
    parser.add_argument("--runs", type=int, default=1, help="measured runs per server start")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--launcher", choices=("plugin", "instrument"), default="plugin",
                        help="activation path of the tool configurations")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--baseline-tree", type=Path,
                        help="a checkout of the baseline (e.g. main) for configuration "
                             "enable1base, put first on PYTHONPATH")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS) - set(OPTIONAL_CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; choose from "
                     f"{CONFIGS + OPTIONAL_CONFIGS}")
    if "enable1base" in configs and args.baseline_tree is None:
        parser.error("enable1base needs --baseline-tree")

    # The configurations say whether the tool is on; nothing in this shell may switch it on.
    for name in ("SERVICE_PROF_CONFIG_PATH", "PROFILING_SYMBOLS_PATH", "OTEL_TRACES_EXPORTER",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        os.environ.pop(name, None)
    model = ensure_model()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    runs: dict = {config: [] for config in configs}
    meters: dict = {config: [] for config in configs}
    inactive: list = []  # tool configurations' starts without a self-meter report
    # The receiver runs in its own process, as a collector would: receiving spans must not
    # slow down the client that times the workload.
    with ReceiverProcess() as receiver:
        for repeat in range(args.repeats):
            # Rotate the order every round so no configuration always runs first (the first
            # server of a round was seen to be slower, whatever it was).
            shift = repeat % len(configs)
            for config in list(configs[shift:]) + list(configs[:shift]):
                start_dir = work / f"{config}-{repeat}"
                server = server_for(config, model, start_dir, receiver, args.launcher,
                                    args.baseline_tree)
                with server:
                    measure(server, fixed_workload(32, args.max_tokens, seed=99),
                            args.concurrency)
                    for run in range(args.runs):
                        figures = measure(server, fixed_workload(
                            args.requests, args.max_tokens, seed=run), args.concurrency)
                        figures.update(config=config, repeat=repeat, run=run)
                        runs[config].append(figures)
                        print(f"[{repeat}] {config:12s} {figures['output_tok_per_s']:8.0f} tok/s"
                              f"  TTFT p50 {figures['ttft_p50_ms']:6.1f} ms  E2E p50 "
                              f"{figures['e2e_p50_ms']:6.1f} p99 {figures['e2e_p99_ms']:6.1f} ms"
                              f"  CPU {figures['cpu_ms_per_token']:.3f} ms/token"
                              f"  client waited {figures['client_wait_s']:.2f} s"
                              f"  failed {figures['failed']}", flush=True)
                if config in TOOL_CONFIGS:
                    meter = self_meter(start_dir)
                    meters[config].append(meter)
                    if meter is None and config != "enable0":  # collecting, no report: the
                        # tool did not run (e.g. the plugin failed to import)
                        inactive.append(f"{config} start {repeat}")
                        print(f"    no self-meter report under {start_dir}: the tool did not run"
                              f" in this start (see {start_dir / 'server.log'})", flush=True)
                    if meter and meter["us_per_step"]:
                        print(f"    self meter: {meter['us_per_step']:.1f} us per engine step "
                              f"in vLLM's processes (writer process "
                              f"{meter['writer_us_per_step'] or 0:.1f}), "
                              f"{meter['us_per_request'] or 0:.1f} us per request", flush=True)
    print()
    print(f"workload: {args.requests} requests x {args.max_tokens} output tokens, concurrency "
          f"{args.concurrency}; {args.repeats} interleaved server starts x {args.runs} runs per "
          f"configuration; tool activated by {args.launcher}; OTLP spans received: "
          f"{receiver.span_count}")
    print(report(runs))
    print()
    print("the tool's own time (self meter, summed over the processes of a start, all runs "
          "of the start including the warm-up):")
    print(meter_report(meters))
    print()
    print("hot path by hooked symbol (the meter's own clock reads included, ~2 reads per call):")
    print(hook_report(meters))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "self_meter": meters}, indent=1))
    failed = sum(r["failed"] for rows in runs.values() for r in rows)
    if inactive:
        print(f"the tool did not run in: {', '.join(inactive)}; those figures are not the"
              " tool's", file=sys.stderr)
    return 0 if failed == 0 and not inactive else 1


if __name__ == "__main__":
    sys.exit(main())
