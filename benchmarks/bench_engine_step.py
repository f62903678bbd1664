"""What the EngineCore handlers cost per engine step (``schedule`` + ``modelExec``).

Run:  .venv/bin/python benchmarks/bench_engine_step.py [--requests 32] [--steps 2000]

A steady decode step of N running requests, built from vLLM 0.32's real classes (Request,
SchedulerOutput / CachedRequestData, KVCacheManager, FCFSRequestQueue); the "originals" return
the prepared SchedulerOutput / a model output at once, so only our handlers are measured:
  hot path   what EngineCore's thread pays (snapshots, batch details, JSON, queueing records)
  total      the same plus what the recorder's thread does with the records, drained every 30
             steps as it does every 0.2 s in a server: with ``--exporter file`` (default) the
             ms_service file exporter behind the SDK's BatchSpanProcessor writes a real capture
             file (its rows handed over directly, no SDK span); with ``--exporter drop`` the
             SDK spans are built for an exporter that drops them
  total, slow spans   the same with spans built through tracer.start_span / Span.end
             (recorder.set_fast_path(False)) and exported by the processor's thread, the way
             before issue 8
in process-CPU microseconds per step, median of interleaved repeats. Budget context: an engine
step of the tiny model takes about 7 ms here (docs/performance reference), so 1 % is 70 us.
The self meter (otel_vllm_ascend.selfmeter) runs during the "total" case and its own figures
are printed too: records per step, span building per step (recorder CPU) and the span
processor's export thread CPU per step.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time

import torch
from bench_hook_overhead import DropExporter  # a sibling script in this folder
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from vllm.sampling_params import SamplingParams
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request

from otel_vllm_ascend import control, recorder, selfmeter
from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter
from otel_vllm_ascend.handlers import model, scheduler


class SchedulerShape:
    def __init__(self, num_requests):
        spec = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=8, dtype=torch.float32)
        self.kv_cache_config = KVCacheConfig(
            num_blocks=4096, kv_cache_tensors=[],
            kv_cache_groups=[KVCacheGroupSpec(["layer0"], spec)])
        self.kv_cache_manager = KVCacheManager(self.kv_cache_config, max_model_len=2048,
                                               scheduler_block_size=16, hash_block_size=16)
        init_none_hash(lambda value: repr(value).encode())
        hasher = get_request_block_hasher(16, lambda b: repr(b).encode())
        self.requests, self.waiting, self.running = {}, FCFSRequestQueue(), []
        for i in range(num_requests):
            trace = f"00-{i + 1:032x}-{i + 1:016x}-01"
            req = Request(f"cmpl-{i:016x}-0-{i:08x}", list(range(64)), SamplingParams(), None,
                          trace_headers={"traceparent": trace}, block_hasher=hasher)
            self.kv_cache_manager.allocate_slots(req, 64)
            req.num_computed_tokens = 64
            self.requests[req.request_id] = req
            self.running.append(req)
        cached = CachedRequestData.make_empty()
        for req in self.running:
            cached.req_ids.append(req.request_id)
            cached.num_computed_tokens.append(64)
            cached.num_output_tokens.append(1)
            cached.new_block_ids.append(None)
        self.output = SchedulerOutput(
            scheduled_new_reqs=[], scheduled_cached_reqs=cached,
            num_scheduled_tokens={r.request_id: 1 for r in self.running},
            total_num_scheduled_tokens=num_requests, scheduled_spec_decode_tokens={},
            scheduled_encoder_inputs={}, num_common_prefix_blocks=[0], finished_req_ids=set(),
            free_encoder_mm_hashes=[])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--exporter", choices=("file", "drop"), default="file")
    parser.add_argument("--churn", action="store_true",
                        help="one request leaves the running queue and another joins it every "
                             "step, as in a server under load (default: a steady batch)")
    options = parser.parse_args()

    provider = TracerProvider()
    folder = tempfile.mkdtemp(prefix="bench-engine-step-")
    exporter = MsServiceSpanExporter(folder) if options.exporter == "file" else DropExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 20,
                                                   max_export_batch_size=512))
    recorder.set_tracer_provider(provider)
    control.start(config=ProfilerConfig(enable=True))
    sched = SchedulerShape(options.requests)
    output = sched.output

    spare = []

    def schedule_original():
        if options.churn:  # membership changes, the output stays the same shape
            spare.append(sched.running.pop(0))
            if len(spare) > 1:
                sched.running.append(spare.pop(0))
        return copy.copy(output)  # vLLM builds a new SchedulerOutput every step

    def execute_original(scheduler_output, non_block=False):
        return "model output"

    def bare(steps):
        for _ in range(steps):
            execute_original(schedule_original(), non_block=True)

    def hooked(steps):
        for _ in range(steps):
            out = scheduler.schedule(schedule_original, sched)
            model.execute_model(execute_original, None, out, non_block=True)

    def draining(steps):
        # As in a server: the recorder drains every 0.2 s, i.e. every ~30 steps of ~7 ms.
        for step in range(steps):
            out = scheduler.schedule(schedule_original, sched)
            model.execute_model(execute_original, None, out, non_block=True)
            if step % 30 == 29:
                recorder.flush()
        recorder.flush()

    def hooked_draining(steps):
        selfmeter.meter.on = True
        draining(steps)
        selfmeter.meter.on = False

    def hooked_draining_slow(steps):
        # The same with spans built through tracer.start_span / Span.end (before issue 8).
        recorder.set_fast_path(False)
        try:
            draining(steps)
        finally:
            recorder.set_fast_path(True)

    def settle():
        recorder.flush()
        provider.force_flush()

    cases = [("bare originals", bare, None), ("handlers, hot path", hooked, None),
             ("handlers, total", hooked_draining, settle),
             ("total, slow spans", hooked_draining_slow, settle)]
    samples = {name: [] for name, _, _ in cases}
    selfmeter.meter.reset()
    export_cpu_start = selfmeter.export_thread_cpu_ns()
    for _ in range(options.repeats):
        for name, fn, after in cases:
            settle()
            start = time.process_time_ns()
            fn(options.steps)
            if after is not None:
                after()
            samples[name].append((time.process_time_ns() - start) / options.steps / 1000)
    control.stop()
    export_cpu = selfmeter.export_thread_cpu_ns() - export_cpu_start
    provider.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    churn = ", churn" if options.churn else ""
    print(f"{options.exporter} exporter{churn}; per engine step, {options.requests} decoding "
          f"requests, median of {options.repeats} interleaved x {options.steps} steps "
          f"(process CPU):")
    for name, values in samples.items():
        print(f"  {name:<20} {statistics.median(values):8.1f} us")
    fast_over_slow = statistics.median(
        f / s for f, s in zip(samples["handlers, total"], samples["total, slow spans"]))
    print(f"total / total with slow spans = {fast_over_slow:.2f} (median of per-round ratios)")
    meter, metered_steps = selfmeter.meter, options.steps * options.repeats
    print(f"self meter over the 'total' runs: {meter.drained / metered_steps:.1f} records per "
          f"step; span building {meter.drain_ns / metered_steps / 1000:.1f} us per step "
          f"({meter.drain_ns / max(meter.drained, 1) / 1000:.2f} us per record); export thread "
          f"{export_cpu / metered_steps / 1000:.1f} us per step (all cases)")


if __name__ == "__main__":
    main()
