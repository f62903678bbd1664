"""Where a profiled ``vllm serve`` spends its CPU: py-spy samples of every vLLM process.

Starts one server with the tool on (``"enable": 1``, file exporter, plugin activation; add
``--otlp`` to forward to a loopback receiver too), attaches ``py-spy record`` to the API server,
EngineCore and Worker while the serving benchmark's workload runs, then prints per process the
share of busy samples spent in the tool's own work (its code and the OpenTelemetry SDK, SQLite
and JSON work it calls, but not vLLM's original under a wrapper), and the hottest tool frames.
The writer process, which does nothing but the tool's work, is sampled too.

Needs ``py-spy`` (``pip install py-spy``) and permission to ptrace the server (root or
``CAP_SYS_PTRACE``).

    .venv/bin/python benchmarks/profile_serving.py [--requests 256] [--otlp] [--rate 100]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import profiling_workdir  # noqa: E402
import workload  # noqa: E402
from bench_serving_overhead import fixed_workload  # noqa: E402
from build_tiny_model import ensure_model  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402
from serve import VllmServer, venv_bin  # noqa: E402

# py-spy shortens file names to their last folders, so SDK frames are known by their names:
# the span processors' export thread and the two exporters.
OURS = ("otel_vllm_ascend", "(exporters/", "BatchProcessor.worker (", "OTLPSpanExporter",
        "MsServiceSpanExporter")


def roles(server: VllmServer) -> dict:
    import psutil

    found = {"api_server": server.process.pid}
    for pid in server.pids():
        text = " ".join(psutil.Process(pid).cmdline())
        if "otel_vllm_ascend.exporters.writer" in text:
            found["writer"] = pid  # the tool's writer process: all of it is the tool's work
        elif "EngineCore" in text or "EngineCore" in psutil.Process(pid).name():
            found["engine_core"] = pid
        elif "Worker" in text or "Worker" in psutil.Process(pid).name():
            found["worker"] = pid
    return found


WAITING_LEAVES = ("Condition.wait (", "Event.wait (", "sleep (", "select (", "poll (",
                  "_recv (", "recv_multipart (", "Queue.get (")
VLLM_OR_TORCH = ("/vllm/", "torch/", "(vllm/")


def is_ours(frame: str) -> bool:
    return any(marker in frame for marker in OURS)


def classify(frames: list) -> str:
    """``waiting``, ``ours`` (the tool's own work, SDK and SQLite calls it makes) or ``other``.

    A wrapper frame alone does not make a sample ours: below it vLLM's original runs, which
    vLLM would run anyway. Only samples whose frames under the deepest tool frame contain no
    vLLM or torch code count.
    """
    if frames and any(marker in frames[-1] for marker in WAITING_LEAVES):
        return "waiting"
    deepest = max((i for i, frame in enumerate(frames) if is_ours(frame)), default=-1)
    if deepest < 0:
        return "other"
    below = frames[deepest + 1:]
    if any(marker in frame for frame in below for marker in VLLM_OR_TORCH):
        return "other"
    return "ours"


def summarize(raw_file: Path, top: int) -> str:
    """Share of busy samples spent in the tool's own work, from py-spy's collapsed output."""
    busy = ours = 0
    hot: collections.Counter = collections.Counter()
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        kind = classify(frames)
        if kind == "waiting":
            continue
        busy += count
        if kind == "ours":
            ours += count
            deepest = max(i for i, frame in enumerate(frames) if is_ours(frame))
            hot[frames[deepest]] += count
    if not busy:
        return "  no busy samples"
    lines = [f"  busy samples {busy}: the tool's own work {100 * ours / busy:.2f} %"]
    for frame, count in hot.most_common(top):
        lines.append(f"    {100 * count / busy:6.2f} %  {frame}")
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--otlp", action="store_true", help="also forward over OTLP")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    py_spy = venv_bin("py-spy")
    if shutil.which(py_spy) is None and not Path(py_spy).exists():
        parser.error("py-spy is not installed (pip install py-spy)")
    work = args.work or Path(tempfile.mkdtemp(prefix="profile-serving-"))
    files = profiling_workdir.prepare(work, enable=1)
    env = files.env()
    with OtlpReceiver() as receiver:
        if args.otlp:
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
        with VllmServer(ensure_model(), work, env=env) as server:
            workload.run(server.url, server.model_name, fixed_workload(32, args.max_tokens, 99),
                         args.concurrency)
            recorders = {}
            for role, pid in roles(server).items():
                out = work / f"{role}.txt"
                recorders[role] = (out, subprocess.Popen(
                    [py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format",
                     "raw", "--output", str(out), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            time.sleep(1.0)
            started = time.perf_counter()
            results = workload.run(server.url, server.model_name,
                                   fixed_workload(args.requests, args.max_tokens, 0),
                                   args.concurrency)
            figures = workload.summarize(results, time.perf_counter() - started)
            for _, process in recorders.values():
                process.send_signal(subprocess.signal.SIGINT)
            for _, process in recorders.values():
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(f"workload: {figures['requests']} requests, {figures['output_tok_per_s']:.0f} output "
          f"tok/s; OTLP {'on' if args.otlp else 'off'}; py-spy at {args.rate} Hz")
    for role, (out, process) in recorders.items():
        print(f"{role}:")
        if out.exists():
            print(summarize(out, args.top))
        else:
            print(f"  no profile: {process.stderr.read().decode(errors='replace')[-300:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
