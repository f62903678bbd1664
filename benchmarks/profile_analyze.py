"""CPU time of each stage of ``otel-vllm-analyze``, everything in this one process.

Runs the analyzer's stages one after the other (no forked writer) on a capture folder and
prints, per stage, the CPU time (``process_time``) and the wall time of the run with the least
CPU time for that stage out of ``--repeat`` runs of the whole sequence (imports happen once and
are taken from the first run). The CLI splits the writing between two processes; this script
shows what each part costs on its own, the figure to compare before and after a change on a
shared, noisy machine.

Usage::

    python benchmarks/gen_capture.py /tmp/capture          # the benchmark capture (x1)
    python benchmarks/profile_analyze.py /tmp/capture [--repeat 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("reading the captures", "engine steps, request / batch / KV tables, summaries",
          "CSV files", "Chrome trace: build", "Chrome trace: write",
          "profiler.db, including the trace tables", "importing matplotlib (report only)",
          "report: drawing, writing")


def _run_stages(capture: Path, out: Path) -> list[tuple[float, float]]:
    from otel_vllm_ascend.analysis import (
        batches,
        cli,
        kvcache,
        requests,
        spec_decode,
        summaries,
        trace,
        writers,
    )
    from otel_vllm_ascend.analysis.readers import read_captures
    from otel_vllm_ascend.analysis.steps import engine_steps, step_requests

    marks = [(time.process_time(), time.perf_counter())]

    def mark() -> None:
        marks.append((time.process_time(), time.perf_counter()))

    frame, _, _ = read_captures(capture)
    mark()
    steps = engine_steps(frame)
    per_request = step_requests(steps)
    kv = kvcache.build_kvcache(frame)
    req = requests.build_requests(frame, steps, per_request)
    spec = spec_decode.build_spec_decode(frame, steps, per_request)
    bat = batches.build_batches(frame, steps, per_request, kv, spec)
    tables = {"request_summary": summaries.request_summary(frame, req, per_request, bat),
              "service_summary": summaries.service_summary(req, bat),
              "batch_summary": summaries.batch_summary(bat)}
    del steps, per_request
    mark()
    run = cli._Run(out)
    cli._write_csvs(run, out, req, bat, kv, spec, tables)
    mark()
    events = trace.build_chrome_trace(frame, req, bat, kv)
    mark()
    trace.write_chrome_trace(out / "chrome_tracing.json", events)
    mark()
    writers.write_profiler_db(out / "profiler.db", (req, requests.CSV_COLUMNS),
                              (bat, batches.CSV_COLUMNS), (kv, kvcache.KVCACHE_COLUMNS),
                              tables, events, events.origin_us)
    mark()
    import matplotlib.figure  # noqa: F401 - timed on its own: the report's fixed cost
    mark()
    cli._write_html(run, out, frame, req, bat, kv, tables)
    mark()
    if run.failed:
        raise SystemExit(f"stages failed: {run.failed}")
    return [(c1 - c0, w1 - w0) for (c0, w0), (c1, w1) in zip(marks, marks[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture", type=Path, help="folder holding ms_service_*.db files")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "otel-vllm-profile-analyze")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gc.disable()  # as the CLI does
    # Everything in this one process, reading included (process_time counts no worker).
    os.environ["OTEL_VLLM_ANALYZE_SERIAL"] = "1"
    started = time.process_time(), time.perf_counter()
    import pandas  # noqa: F401

    from otel_vllm_ascend.analysis import cli  # noqa: F401
    imports = time.process_time() - started[0], time.perf_counter() - started[1]
    runs = [_run_stages(args.capture, args.out) for _ in range(max(1, args.repeat))]
    best = [min(column, key=lambda pair: pair[0]) for column in zip(*runs)]
    matplotlib_import = STAGES.index("importing matplotlib (report only)")
    best[matplotlib_import] = runs[0][matplotlib_import]  # imported once, in the first run
    print(f"{'stage':<56} {'CPU s':>6} {'wall s':>7}")
    print(f"{'importing the analyzer and pandas':<56} {imports[0]:>6.2f} {imports[1]:>7.2f}")
    for name, (cpu, wall) in zip(STAGES, best):
        print(f"{name:<56} {cpu:>6.2f} {wall:>7.2f}")
    total_cpu = imports[0] + sum(cpu for cpu, _ in best)
    total_wall = imports[1] + sum(wall for _, wall in best)
    print(f"{'total (best run of each stage)':<56} {total_cpu:>6.2f} {total_wall:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
