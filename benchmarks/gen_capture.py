"""Generate the analyzer benchmark capture with this project's own recorder and exporter.

The issue's workload: 2,000 requests, each 1 prefill step + 100 decode steps, batches of up to
256 requests, two processes (API server + EngineCore). A small simulated vLLM V1 scheduler
(FIFO admission under a 256-request / 8,192-token / KV-block budget, step time growing with the
batch) produces the timeline; every record goes through ``otel_vllm_ascend.recorder`` into an SDK
``TracerProvider`` whose ``BatchSpanProcessor`` feeds ``MsServiceSpanExporter``, exactly the path
the built-in vLLM handlers use. Each role runs in its own child process, so the folder ends up
with one ``ms_service_<host>-<pid>.db`` per process, as a real service writes.

Usage::

    python benchmarks/gen_capture.py OUT_DIR [--scale 10] [--seed 7] [--shape thread|process]

``--scale N`` multiplies the number of requests (same arrival rate, so N times longer);
``--requests N`` sets the count at scale 1 (tests use small captures). The
simulation is deterministic for a given seed; both children replay it and each emits its own
role's records. Prints the files written and their row counts. ``--shape thread|process``
rewrites the capture into the Ascend C library's shapes (``clib_shape.py``: caret messages, one
file per thread or ``Trace_Service/`` per process).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REQUESTS = 2000
DECODE_STEPS = 100
MAX_SEQS = 256
MAX_TOKENS = 8192
BLOCK_SIZE = 128
TOTAL_BLOCKS = 2400
# Arrivals come in waves (requests per second, mean and swing over a period), so batches run
# from a few requests up to the 256 limit with a waiting queue at the peaks.
ARRIVAL_RATE = 100.0
ARRIVAL_SWING = 0.95
ARRIVAL_PERIOD_S = 10.0
START_NS = 1_767_232_800_000_000_000  # 2026-01-01T02:00:00Z
HOST = "bench-host"
FLUSH_EVERY = 4096

MS = 1_000_000  # ns per ms


@dataclass
class Request:
    index: int
    external: str
    internal: str
    prompt: int
    arrival_ns: int
    generated: int = 0
    iters: int = 0
    blocks: int = 0


@dataclass
class Step:
    sched_start: int
    sched_end: int
    exec_start: int
    exec_end: int
    batch: list  # (Request, is_prefill, tokens, computed_before, iter)
    admitted: list
    waiting_after: int
    running_after: int
    used_blocks: int
    allocated: int
    finished: list = field(default_factory=list)  # (Request, free_ns, used_blocks_after)


def simulate(requests: int, seed: int) -> tuple[list[Request], list[Step]]:
    """A deterministic vLLM-V1-like schedule: who runs in which step, and when."""
    rng = random.Random(seed)
    reqs = []
    t = START_NS
    for i in range(requests):
        phase = 2 * math.pi * (t - START_NS) / 1e9 / ARRIVAL_PERIOD_S
        rate = ARRIVAL_RATE * (1 + ARRIVAL_SWING * math.sin(phase))
        t += int(rng.expovariate(rate) * 1e9)
        external = f"cmpl-{rng.getrandbits(64):016x}-0"
        reqs.append(Request(i, external, f"{external}-{rng.getrandbits(32):08x}",
                            rng.randint(64, 1024), t))
    steps: list[Step] = []
    pending = deque(reqs)  # not yet at the EngineCore
    waiting: deque = deque()
    running: list[Request] = []
    used_blocks = 0
    now = START_NS
    while pending or waiting or running:
        if not waiting and not running:
            now = max(now, pending[0].arrival_ns + MS)
        while pending and pending[0].arrival_ns + MS <= now:
            waiting.append(pending.popleft())
        sched_start = now
        used_at_start = used_blocks
        batch = []
        tokens = 0
        for req in running:  # decode: one token each (a new block every BLOCK_SIZE tokens)
            need = _blocks(req.prompt + req.generated + 1) - req.blocks
            req.blocks += need
            used_blocks += need
            batch.append((req, False, 1, req.prompt + req.generated, req.iters))
            tokens += 1
        admitted = []
        while waiting and len(running) + len(admitted) < MAX_SEQS:
            req = waiting[0]
            need = _blocks(req.prompt + 1)
            if tokens + req.prompt > MAX_TOKENS or used_blocks + need > TOTAL_BLOCKS:
                break
            waiting.popleft()
            req.blocks = need
            used_blocks += need
            tokens += req.prompt
            admitted.append(req)
            batch.append((req, True, req.prompt, 0, 0))
        running.extend(admitted)
        if not batch:
            if not pending:
                raise RuntimeError("a waiting request can never be scheduled; check the limits")
            now = pending[0].arrival_ns + MS
            continue
        prefill_tokens = sum(b[2] for b in batch if b[1])
        sched_end = sched_start + int((0.15 + 0.002 * len(batch)) * MS)
        exec_start = sched_end + int(0.05 * MS)
        exec_ms = 3.0 + 0.03 * len(batch) + 0.004 * prefill_tokens
        exec_end = exec_start + int(exec_ms * (1 + 0.05 * rng.random()) * MS)
        step = Step(sched_start, sched_end, exec_start, exec_end, batch, admitted, len(waiting),
                    len(running), used_blocks, used_blocks - used_at_start)
        free_at = exec_end + int(0.1 * MS)
        still = []
        for req in running:
            req.generated += 1
            req.iters += 1
            if req.generated >= 1 + DECODE_STEPS:
                used_blocks -= req.blocks
                step.finished.append((req, free_at, used_blocks))
                free_at += int(0.01 * MS)
            else:
                still.append(req)
        running = still
        steps.append(step)
        now = free_at + int(0.2 * MS)
    return reqs, steps


def _blocks(tokens: int) -> int:
    return math.ceil(tokens / BLOCK_SIZE)


def _setup(folder: Path, role: str):
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from otel_vllm_ascend import recorder
    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    provider = TracerProvider(resource=Resource.create(
        {"service.name": "vllm", "host.name": HOST, "vllm.process.role": role}))
    exporter = MsServiceSpanExporter(folder=folder, hostname=HOST)
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=1 << 20, max_export_batch_size=8192, schedule_delay_millis=500))
    recorder.set_tracer_provider(provider)
    return provider, recorder


def emit_api_server(folder: Path, reqs: list[Request], steps: list[Step]) -> None:
    """httpReq / tokenize / link per request, detokenize per step, httpRes per finish."""
    from otel_vllm_ascend import contract as c

    provider, rec = _setup(folder, "api_server")
    rec.record_meta("role", "api_server")
    timeline = []
    for req in reqs:
        timeline.append((req.arrival_ns, 0, "httpReq", req))
        timeline.append((req.arrival_ns + int(0.2 * MS), 1, "tokenize", req))
        timeline.append((req.arrival_ns + int(0.3 * MS), 2, "link", req))
    for step in steps:
        for req, _, _ in step.finished:
            timeline.append((step.exec_end + int(0.4 * MS), 3, "httpRes", req))
        timeline.append((step.exec_end + int(0.5 * MS), 4, "detokenize", step))
    timeline.sort(key=lambda item: (item[0], item[1]))
    for count, (ts, _, name, obj) in enumerate(timeline, 1):
        if name == "link":  # at its simulated time, as a server records it
            rec.record_event(c.LINK_NAME, {c.DOMAIN: "Engine", c.LINK_FROM: obj.external,
                                           c.LINK_TO: obj.internal}, ts, record=c.RECORD_LINK)
        elif name == "detokenize":
            rec.record_event(name, {c.DOMAIN: "Engine",
                                    c.RID: [b[0].external for b in obj.batch]}, ts)
        elif name == "httpRes":
            rec.record_event(name, {c.DOMAIN: "Engine", c.RID: obj.external,
                                    c.METRIC_PREFIX + "recvTokenSize": obj.prompt,
                                    c.METRIC_PREFIX + "replyTokenSize": obj.generated}, ts)
        else:
            rec.record_event(name, {c.DOMAIN: "Engine", c.RID: obj.external}, ts)
        if count % FLUSH_EVERY == 0:
            rec.flush()
    rec.flush()
    provider.shutdown()


def emit_engine_core(folder: Path, reqs: list[Request], steps: list[Step]) -> None:
    """Enqueue per arrival; per step the schedule span (queue and KV events inside) and
    modelExec; Free per finished request."""
    from otel_vllm_ascend import contract as c

    provider, rec = _setup(folder, "engine_core")
    rec.record_meta("role", "engine_core")
    metric = c.METRIC_PREFIX
    arrivals = deque(reqs)
    waiting = 0
    emitted = 0
    for step in steps:
        while arrivals and arrivals[0].arrival_ns + MS <= step.sched_start:
            req = arrivals.popleft()
            waiting += 1
            rec.record_event("Enqueue", {c.DOMAIN: "Schedule", c.RID: req.internal,
                                         metric + "QueueSize": waiting,
                                         c.SCOPE_PREFIX + "QueueName": "WAITING"},
                             req.arrival_ns + MS)
            emitted += 1
        detail = [{"rid": r.internal, "iter": it, "type": 0 if pre else 1,
                   "num_scheduled_tokens": tok, "num_prompt_tokens": r.prompt,
                   "num_computed_tokens": computed} for r, pre, tok, computed, it in step.batch]
        detail_json = json.dumps(detail)
        rids = [r.internal for r, *_ in step.batch]
        kinds = {pre for _, pre, *_ in step.batch}
        batch_type = "Prefill,Decode" if len(kinds) == 2 else (
            "Prefill" if True in kinds else "Decode")
        tokens = sum(b[2] for b in step.batch)
        events = []
        at = step.sched_end - int(0.05 * MS)
        if step.admitted:
            admitted = [r.internal for r in step.admitted]
            waiting -= len(admitted)
            events.append(("Dequeue", at, {c.DOMAIN: "Schedule", c.RID: admitted,
                                           metric + "QueueSize": waiting,
                                           c.SCOPE_PREFIX + "QueueName": "WAITING"}))
            events.append(("Enqueue", at, {c.DOMAIN: "Schedule", c.RID: admitted,
                                           metric + "QueueSize": step.running_after,
                                           c.SCOPE_PREFIX + "QueueName": "RUNNING"}))
            for r in step.admitted:
                events.append(("CacheHitRate", at, {c.DOMAIN: "Schedule.KVCache",
                                                    c.RID: r.internal, "hitCache": 0.0}))
        events.append(("KVCacheStatus", at + 1000, {
            c.DOMAIN: "Schedule.KVCache", c.RID: rids, metric + "TotalBlocks": TOTAL_BLOCKS,
            metric + "UsedBlocks": step.used_blocks,
            metric + "FreeBlocks": TOTAL_BLOCKS - step.used_blocks,
            metric + "UsagePercent": step.used_blocks / TOTAL_BLOCKS,
            metric + "AllocatedBlocks": step.allocated}))
        rec.record_span("batchFrameworkProcessing", step.sched_start, step.sched_end,
                        {c.DOMAIN: "Schedule", c.RID_DETAIL: detail_json, c.RID: rids,
                         "batch_type": batch_type, "batch_size": len(step.batch),
                         metric + "num_scheduled_tokens": tokens}, events=events)
        rec.record_span("modelExec", step.exec_start, step.exec_end,
                        {c.DOMAIN: "Execute", c.RID_DETAIL: detail_json, c.RID: rids,
                         "batch_type": batch_type, "batch_size": tokens})
        for req, free_ns, used_after in step.finished:
            rec.record_event("Free", {c.DOMAIN: "Schedule.KVCache", c.RID: req.internal,
                                      metric + "deviceBlock": TOTAL_BLOCKS - used_after,
                                      metric + "UsagePercent": used_after / TOTAL_BLOCKS},
                             free_ns)
        emitted += 2 + len(events) + len(step.finished)
        if emitted >= FLUSH_EVERY:
            rec.flush()
            emitted = 0
    rec.flush()
    provider.shutdown()


def count_rows(folder: Path) -> dict[str, int]:
    counts = {}
    for path in sorted(folder.glob("ms_service_*.db")):
        with sqlite3.connect(path) as conn:
            counts[path.name] = conn.execute("SELECT COUNT(*) FROM Mstx").fetchone()[0]
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=int, default=1, help="multiply the request count")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=REQUESTS,
                        help=f"requests at scale 1 (default {REQUESTS})")
    parser.add_argument("--shape", choices=("ours", "thread", "process"), default="ours",
                        help="ours (default), or the Ascend C library's per-thread files /"
                        " Trace_Service/ per-process files with caret messages (clib_shape.py)")
    parser.add_argument("--role", choices=("api_server", "engine_core"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shape != "ours" and not args.role:
        return _generate_clib_shape(args)
    requests = args.requests * args.scale
    if args.role:
        reqs, steps = simulate(requests, args.seed)
        emit = emit_api_server if args.role == "api_server" else emit_engine_core
        emit(args.out_dir, reqs, steps)
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if list(args.out_dir.glob("ms_service_*.db")):
        print(f"{args.out_dir}: already holds ms_service_*.db files; use an empty folder",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    children = [subprocess.Popen([sys.executable, __file__, str(args.out_dir), "--requests",
                                  str(requests), "--seed", str(args.seed), "--role", role])
                for role in ("api_server", "engine_core")]
    codes = [child.wait() for child in children]
    if any(codes):
        print(f"generator children failed: exit codes {codes}", file=sys.stderr)
        return 1
    counts = count_rows(args.out_dir)
    _, steps = simulate(requests, args.seed)
    print(f"{requests} requests, {len(steps)} engine steps, max batch "
          f"{max(len(s.batch) for s in steps)}, "
          f"{(steps[-1].exec_end - START_NS) / 1e9:.1f} s simulated, "
          f"generated in {time.perf_counter() - started:.1f} s")
    for name, rows in counts.items():
        print(f"  {name}: {rows} rows")
    print(f"  total: {sum(counts.values())} rows")
    return 0


def _generate_clib_shape(args: argparse.Namespace) -> int:
    """Our capture in a temporary folder, rewritten into ``out_dir`` in the C library's shape."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clib_shape import convert

    if list(args.out_dir.rglob("ms_service_*.db")):
        print(f"{args.out_dir}: already holds ms_service_*.db files; use an empty folder",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gen-capture-") as ours:
        code = main([ours, "--scale", str(args.scale), "--seed", str(args.seed), "--requests",
                     str(args.requests)])
        if code:
            return code
        counts = convert(Path(ours), args.out_dir, args.shape)
    print(f"rewritten in the C library's {args.shape} layout:")
    for name, rows in counts.items():
        print(f"  {name}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
