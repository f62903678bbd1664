"""Rows per second written by the ms_service exporter on one core, and bytes per row.

Run: .venv/bin/python benchmarks/bench_exporter.py [--spans 200000] [--batch 512] [--repeat 5]
     [--baseline-message OLD_MESSAGE_PY]

Spans are built up front with the SDK (as the recorder's drain thread builds them), shaped like
the records of one vLLM engine step: a batch span with request details, span events, zero-
duration event/metric records. Only ``export()`` is timed: translation to messages, markIds,
SQLite inserts and commits. The process is pinned to one CPU when the OS allows it; the rate is
rows per CPU-second of this process (wall-clock rate printed too: on a shared machine it also
counts time other processes took from that CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from otel_vllm_ascend import contract
from otel_vllm_ascend.exporters import ms_service
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

FLOOR_ROWS_PER_S = 150_000


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def build_spans(count: int) -> list:
    """``count`` spans cycling through the record kinds of one engine step."""
    collect = _Collect()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(collect))
    tracer = provider.get_tracer("otel_vllm_ascend")
    now = time.time_ns()
    rids = [f"cmpl-{i:016x}-0-{i:08x}" for i in range(8)]
    detail = json.dumps([{"rid": r, "iter": 3, "type": 1, "num_scheduled_tokens": 1,
                          "num_prompt_tokens": 40, "num_computed_tokens": 43} for r in rids])
    for i in range(count):
        t = now + i * 1000
        kind = i % 4
        if kind == 0:
            span = tracer.start_span("batchFrameworkProcessing", start_time=t, attributes={
                contract.DOMAIN: "Schedule", contract.RID_DETAIL: detail, contract.RID: rids,
                "batch_type": "Decode", "batch_size": 8,
                contract.METRIC_PREFIX + "num_scheduled_tokens": 8, contract.THREAD_ID: 4242})
            span.add_event("Enqueue", {
                contract.RID: rids[0], contract.METRIC_PREFIX + "QueueSize": 3,
                contract.SCOPE_PREFIX + "QueueName": "RUNNING"}, t + 10)
            span.end(end_time=t + 500)
        elif kind == 1:
            span = tracer.start_span("modelExec", start_time=t, attributes={
                contract.DOMAIN: "Execute", contract.RID: rids, "batch_type": "Decode",
                "batch_size": 8, contract.THREAD_ID: 4242})
            span.end(end_time=t + 700)
        elif kind == 2:
            span = tracer.start_span("KVCacheStatus", start_time=t, attributes={
                contract.RECORD: contract.RECORD_EVENT, contract.DOMAIN: "Schedule.KVCache",
                contract.RID: rids[1], contract.METRIC_PREFIX + "TotalBlocks": 1024,
                contract.METRIC_PREFIX + "UsedBlocks": 100,
                contract.METRIC_PREFIX + "FreeBlocks": 924,
                contract.METRIC_PREFIX + "UsagePercent": 0.0977, contract.THREAD_ID: 4242})
            span.end(end_time=t)
        else:
            span = tracer.start_span("httpRes", start_time=t, attributes={
                contract.RECORD: contract.RECORD_EVENT, contract.DOMAIN: "Engine",
                contract.RID: rids[2], contract.METRIC_PREFIX + "recvTokenSize": 40,
                contract.METRIC_PREFIX + "replyTokenSize": 64, "gen_ai.request.id": rids[2],
                contract.THREAD_ID: 4343})
            span.end(end_time=t)
    return collect.spans


def run_once(spans: list, batch: int, folder: Path) -> tuple:
    exporter = MsServiceSpanExporter(folder=folder, hostname="bench")
    exporter.export(spans[:1])  # open the file outside the timed part, as a running service has
    rows_before = exporter.written_rows
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for i in range(1, len(spans), batch):
        exporter.export(spans[i:i + batch])
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    rows = exporter.written_rows - rows_before
    exporter.shutdown()
    size = exporter.path.stat().st_size
    return rows, wall, cpu, size, exporter.written_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=512, help="spans per export() call")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline-message", type=Path, metavar="FILE",
                        help="another revision's exporters/message.py (e.g. from `git show "
                             "REV:exporters/message.py`): each run is repeated with it, in "
                             "alternating order, and the ratio of the medians printed")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    spans = build_spans(args.spans)
    if args.baseline_message is not None:
        return compare_message_modules(spans, args.batch, args.repeat, args.baseline_message)
    cpu_rates, wall_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            rows, wall, cpu, size, total = run_once(spans, args.batch, Path(tmp) / f"run{i}")
            cpu_rates.append(rows / cpu)
            wall_rates.append(rows / wall)
            print(f"run {i}: {rows} rows, {cpu:.3f} s CPU = {rows / cpu:,.0f} rows/s per core, "
                  f"{wall:.3f} s wall = {rows / wall:,.0f} rows/s; "
                  f"file {size:,} bytes = {size / total:.1f} bytes/row")
    median = statistics.median(cpu_rates)
    print(f"median {median:,.0f} rows per CPU-second on one core (wall-clock median "
          f"{statistics.median(wall_rates):,.0f} rows/s; batch {args.batch}); floor "
          f"{FLOOR_ROWS_PER_S:,} rows/s; ratio to floor {median / FLOOR_ROWS_PER_S:.2f}")
    return 0 if median >= FLOOR_ROWS_PER_S else 1


def compare_message_modules(spans: list, batch: int, repeat: int, baseline: Path) -> int:
    """The same runs with the exporter's message module swapped between this tree's and
    ``baseline``, interleaved so a noisy moment hits both; prints the ratio of the medians."""
    spec = importlib.util.spec_from_file_location("baseline_message", baseline)
    baseline_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline_module)
    modules = {"this tree": ms_service._message, "baseline": baseline_module}
    rates: dict = {label: [] for label in modules}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            order = list(modules) if i % 2 else list(reversed(modules))
            for label in order:
                ms_service._message = modules[label]
                rows, _, cpu, size, total = run_once(spans, batch, Path(tmp) / f"{label}{i}")
                rates[label].append(rows / cpu)
                print(f"run {i} {label}: {rows / cpu:,.0f} rows/s per core, "
                      f"{size / total:.1f} bytes/row")
    ms_service._message = modules["this tree"]
    ours, theirs = (statistics.median(rates[label]) for label in modules)
    print(f"median this tree {ours:,.0f} rows/s, baseline {theirs:,.0f} rows/s; "
          f"this tree / baseline {ours / theirs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
