"""What the built-in handlers cost on vLLM's threads, per call, handler by handler.

Run:  .venv/bin/python benchmarks/bench_hot_path.py [--steps 2000] [--repeats 5]
      .venv/bin/python benchmarks/bench_hot_path.py --baseline-tree <main copy> [--tree <copy>]

Every case calls a handler through the wrapper the instrumentor installs (``build_wrapper`` of a
``Hook``), with vLLM 0.32's real classes and originals that return at once:

  schedule            ``Scheduler.schedule``: 32 decoding requests; with ``--churn`` (default)
                      one leaves RUNNING and one joins per step, as under load
  engine step         ``schedule`` and the executor's ``execute_model`` of its output
                      (``modelExec``, non_block): what EngineCore pays per step
  engine add_request  ``Scheduler.add_request`` of a new Request with ``trace_headers``
  api add_request     ``AsyncLLM.add_request`` (async; a new trace) with the nested
                      ``InputProcessor.assign_request_id`` hook
  process_outputs     ``OutputProcessor.process_outputs`` of 32 outputs of real request
                      states, one of them finishing every other call
  worker step         the model runner's ``execute_model`` with three
                      ``record_function_or_nullcontext`` phases inside it and
                      ``LogitsProcessor.forward`` in the last, then four phases (one of them
                      not recorded) with ``Sampler.forward`` in the first, as vLLM 0.32's
                      ``execute_model`` and ``sample_tokens`` run them

Figures, per call: ``hot``, CPU time of the calling thread (``time.thread_time_ns``) minus the
same loop of bare originals; ``hand-off``, what the recorder's thread then spends on that
call's records (the writer client's drain: plain values and one marshal frame, not sent). No
recorder thread runs; the heap of the set-up is frozen (``gc.freeze``) and collected before
every loop, so a full collection of vLLM's and torch's objects does not land in one loop.
Medians of interleaved repeats.

With ``--cold-cache MB``, every call is timed alone, after one byte of every 64-byte line of an
MB-sized buffer was written: the CPU caches no longer hold our code and data, as in a server,
where vLLM's own work between two engine steps evicts them. With 64 (more than this machine's
last-level cache) the figures come close to what the self meter measures in ``vllm serve``,
three to five times the warm loops' (docs/benchmarks.md, issue 17, tenth part).

With ``--baseline-tree``, each repeat runs this script once per tree (the tree first on
``PYTHONPATH``; ``--tree`` for the measured one, default: this checkout), alternating, and
prints both with the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("schedule", "engine step", "engine add_request", "api add_request", "process_outputs",
         "worker step")
PHASE_TAGS = ("gpu_model_runner: preprocess", "gpu_model_runner: forward",
              "gpu_model_runner: postprocess", "gpu_model_runner: sample",
              "gpu_model_runner: bookkeep", "gpu_model_runner: eplb",
              "gpu_model_runner: ModelRunnerOutput")


def _hooked(handler, func, binding):
    """The wrapper the instrumentor would install for ``handler`` on ``func``, recording."""
    from otel_vllm_ascend.hook import Hook
    from otel_vllm_ascend.wrapping import build_wrapper

    hook = Hook(None, None, getattr(func, "__name__", "target"), func, False, func, binding,
                handler)
    hook.active = True
    return build_wrapper(hook)


class Cases:
    """The per-call loops, each as (hooked, bare) functions of a step count."""

    def __init__(self, num_requests: int, churn: bool) -> None:
        from bench_engine_step import SchedulerShape  # a sibling script in this folder

        from otel_vllm_ascend.handlers import model, request, scheduler

        self.num_requests = num_requests
        self.sched = SchedulerShape(num_requests)
        self.churn = churn
        self.spare = []
        self.schedule = _hooked(scheduler.schedule, self.schedule_original, "method")
        self.execute = _hooked(model.execute_model, type(self).execute_original, "method")
        self.engine_add = _hooked(scheduler.add_request, self.engine_add_original, "method")
        self.runner = _hooked(model.execute_model_runner, type(self).runner_original, "method")
        self.logits = _hooked(model.compute_logits, type(self).logits_original, "method")
        self.sampler = _hooked(model.sampler_forward, type(self).sampler_original, "method")
        from vllm.v1.utils import record_function_or_nullcontext

        self.phase_original = record_function_or_nullcontext
        self.phase = _hooked(model.record_function_or_nullcontext,
                             record_function_or_nullcontext, "function")
        self._api_setup(request)

    # -- EngineCore (``this``: the scheduler) ---------------------------------------------
    def schedule_original(self, sched):
        if self.churn:  # membership changes, the output keeps its shape
            self.spare.append(sched.running.pop(0))
            if len(self.spare) > 1:
                sched.running.append(self.spare.pop(0))
        return copy.copy(sched.output)  # vLLM builds a new SchedulerOutput every step

    def execute_original(self, scheduler_output, non_block=False):
        return "model output"

    def engine_add_original(self, sched, request):
        sched.waiting.append(request)

    def new_requests(self, count):
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        made = []
        for i in range(count):
            trace = f"00-{i + 7:032x}-{i + 7:016x}-01"
            made.append(Request(f"cmpl-add-{os.getpid()}-{time.monotonic_ns()}-{i}",
                                list(range(16)), SamplingParams(), None,
                                trace_headers={"traceparent": trace}))
        return made

    def run_schedule(self, steps, hooked):
        schedule = self.schedule if hooked else self.schedule_original
        sched = self.sched
        for _ in range(steps):
            schedule(sched)

    def run_engine_step(self, steps, hooked):
        schedule = self.schedule if hooked else self.schedule_original
        execute = self.execute if hooked else type(self).execute_original
        sched = self.sched
        for _ in range(steps):
            execute(self, schedule(sched), non_block=True)

    def run_engine_add(self, steps, hooked):
        requests = self.new_requests(steps)
        add = self.engine_add if hooked else self.engine_add_original
        sched = self.sched
        start = time.thread_time_ns()
        for req in requests:
            add(sched, req)
        elapsed = time.thread_time_ns() - start
        self.sched.waiting.clear()
        return elapsed

    # -- API server -----------------------------------------------------------------------
    def _api_setup(self, request_module):
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine import EngineCoreOutput, EngineCoreRequest, FinishReason
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.engine.output_processor import OutputProcessor, RequestOutputCollector

        def engine_request(request_id):
            params = SamplingParams(max_tokens=64, detokenize=False,
                                    output_kind=RequestOutputKind.DELTA)
            return EngineCoreRequest(request_id=request_id, prompt_token_ids=list(range(16)),
                                     mm_features=None, sampling_params=params,
                                     pooling_params=None, arrival_time=time.time(),
                                     lora_request=None, cache_salt=None,
                                     data_parallel_rank=None)

        self.engine_request = engine_request
        self.collector = RequestOutputCollector
        self.assign_original = InputProcessor.assign_request_id
        self.assign = _hooked(request_module.assign_request_id, InputProcessor.assign_request_id,
                              "staticmethod")
        self.pending_requests = []
        this = self

        async def add_request(self, request_id, prompt, params, arrival_time=None,
                              lora_request=None, tokenization_kwargs=None, trace_headers=None,
                              **kwargs):
            req = this.pending_requests.pop()
            this.assign_now(req)
            return this.collector(RequestOutputKind.DELTA, req.request_id)

        self.add_async_original = add_request
        self.add_async = _hooked(request_module.add_request_async, add_request, "method")
        self.assign_now = self.assign_original

        processor = OutputProcessor(None, log_stats=False)
        for i in range(self.num_requests):
            req = engine_request(f"cmpl-out-{i:04d}")
            InputProcessor.assign_request_id(req)
            processor.add_request(req, None, None, 0,
                                  RequestOutputCollector(RequestOutputKind.DELTA, req.request_id))
        self.processor = processor
        ids = list(processor.request_states)
        self.outputs_plain = [EngineCoreOutput(request_id=rid, new_token_ids=[7]) for rid in ids]
        self.outputs_finishing = [EngineCoreOutput(request_id=rid, new_token_ids=[7])
                                  for rid in ids[:-1]]
        self.outputs_finishing.append(EngineCoreOutput(request_id=ids[-1], new_token_ids=[7],
                                                       finish_reason=FinishReason.LENGTH))
        self.process_original = type(self).process_original
        self.process_calls = 0
        self.process = _hooked(request_module.process_outputs, type(self).process_original,
                               "method")

    def process_original(self, engine_core_outputs, engine_core_timestamp=None,
                         iteration_stats=None):
        return None

    def run_api_add(self, steps, hooked):
        self.pending_requests = [self.engine_request(f"cmpl-{i:016x}-0") for i in range(steps)]
        self.assign_now = self.assign if hooked else self.assign_original
        add = self.add_async if hooked else self.add_async_original
        params = object()
        start = time.thread_time_ns()
        for i in range(steps):
            coroutine = add(None, f"cmpl-{i:016x}-0", {"prompt_token_ids": [1]}, params)
            try:
                coroutine.send(None)
            except StopIteration:
                pass
        return time.thread_time_ns() - start

    def run_process(self, steps, hooked):
        process = self.process if hooked else type(self).process_original
        processor = self.processor
        plain, finishing = self.outputs_plain, self.outputs_finishing
        for _ in range(steps):
            self.process_calls += 1
            process(processor, finishing if self.process_calls % 2 else plain, 0.0, None)

    # -- Worker ---------------------------------------------------------------------------
    # vLLM 0.32's shape: ``execute_model`` runs the preprocess, forward and postprocess phases
    # (``compute_logits`` inside the last), then ``sample_tokens`` the sample phase (the
    # sampler inside it) and three more phases, one of them not recorded.
    def run_worker(self, steps, hooked):
        runner = self.runner if hooked else type(self).runner_original
        phase = self.phase if hooked else self.phase_original
        logits = self.logits if hooked else type(self).logits_original
        sampler = self.sampler if hooked else type(self).sampler_original
        output = self.sched.output

        def execute_model(this, scheduler_output):
            with phase(PHASE_TAGS[0]):
                pass
            with phase(PHASE_TAGS[1]):
                pass
            with phase(PHASE_TAGS[2]):
                logits(this, "hidden")
            return None

        self.runner_body = execute_model
        for _ in range(steps):
            runner(self, output)
            with phase(PHASE_TAGS[3]):
                sampler(self, "logits")
            for tag in PHASE_TAGS[4:]:
                with phase(tag):
                    pass

    def runner_original(self, scheduler_output):
        return self.runner_body(self, scheduler_output)

    def logits_original(self, hidden):
        return None

    def sampler_original(self, logits):
        return None


def _timed(run, steps, hooked):
    gc.collect()
    start = time.thread_time_ns()
    elapsed = run(steps, hooked)
    return elapsed if elapsed is not None else time.thread_time_ns() - start


def _cold(run, megabytes):
    """``run`` one call at a time, each after the CPU caches were evicted, timed alone."""
    import numpy

    buffer = numpy.zeros(megabytes << 20, dtype=numpy.uint8)

    def timed(steps, hooked):
        clock = time.thread_time_ns
        total = 0
        for _ in range(steps):
            buffer[::64] += 1  # one write per cache line
            start = clock()
            run(1, hooked)
            total += clock() - start
        return total
    return timed


class _Socket:
    """Takes every frame at once: the hand-off figure leaves out the kernel's copy, the same
    in both trees."""

    @staticmethod
    def send(data) -> int:
        return len(data)


def _handoff_ns(recorder, client):
    """The recorder thread's hand-off of everything queued, as the writer client drains it in
    a server (each record to plain values, one marshal frame), the queue left empty."""
    start = time.thread_time_ns()
    client.send(recorder._state.queue)
    return time.thread_time_ns() - start


def measure(steps: int, inner: int, num_requests: int, churn: bool, cold_mb: int = 0) -> dict:
    """{case: [hot us per call, hand-off us per call]}, medians of ``inner`` rounds; with
    ``cold_mb``, every call after the caches were evicted (:func:`_cold`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from otel_vllm_ascend import control, recorder, writer_client
    from otel_vllm_ascend.config import ProfilerConfig

    recorder._state.thread = object()  # no drain thread: the queue is handled below
    client = writer_client.WriterClient("bench", None)
    client.state, client.sock = "connected", _Socket()
    control.start(config=ProfilerConfig(enable=True))
    cases = Cases(num_requests, churn)
    runs = {"schedule": cases.run_schedule, "engine step": cases.run_engine_step,
            "engine add_request": cases.run_engine_add, "api add_request": cases.run_api_add,
            "process_outputs": cases.run_process, "worker step": cases.run_worker}
    for run in runs.values():  # warm up (first records, role Meta, caches)
        run(50, True)
        run(50, False)
        _handoff_ns(recorder, client)
    if cold_mb:
        runs = {name: _cold(run, cold_mb) for name, run in runs.items()}
    # vLLM and torch make a large heap; a full collection of it landing in one timed loop would
    # swamp it (a server pays those too, but not per call).
    gc.collect()
    gc.freeze()
    samples = {name: [] for name in CASES}
    for _ in range(inner):
        for name in CASES:
            run = runs[name]
            bare = _timed(run, steps, False)
            _handoff_ns(recorder, client)
            hot = _timed(run, steps, True)
            moved = _handoff_ns(recorder, client)
            samples[name].append(((hot - bare) / steps / 1000, moved / steps / 1000))
    control.stop()
    import otel_vllm_ascend

    print(f"# otel_vllm_ascend from {Path(otel_vllm_ascend.__file__).parent}", file=sys.stderr)
    return {name: [statistics.median(s[0] for s in values),
                   statistics.median(s[1] for s in values)]
            for name, values in samples.items()}


def _run_tree(tree: Path, options) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, str(Path(__file__).resolve()), "--json", "--steps",
               str(options.steps), "--repeats", str(options.inner), "--requests",
               str(options.requests), "--cold-cache", str(options.cold_cache)] \
        + ([] if options.churn else ["--steady"])
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True,
                         cwd=str(tree)).stdout
    return json.loads(out.strip().splitlines()[-1])


def side_by_side(options) -> None:
    trees = {"baseline": options.baseline_tree.resolve(),
             "this": (options.tree or Path(__file__).resolve().parent.parent).resolve()}
    rounds = []
    for _ in range(options.repeats):
        rounds.append({label: _run_tree(tree, options) for label, tree in trees.items()})
    cold = f", caches evicted ({options.cold_cache} MB) before each call" \
        if options.cold_cache else ""
    print(f"us per call, {options.requests} requests per step, median of {options.repeats} "
          f"rounds (each the median of {options.inner} x {options.steps} calls{cold}), "
          f"baseline {trees['baseline'].name} / this {trees['this'].name}:")
    print(f"  {'case':<20} {'hot base':>9} {'hot this':>9} {'ratio':>6}   "
          f"{'hand-off base':>13} {'this':>6} {'ratio':>6}")
    for name in CASES:
        figures = []
        for index in (0, 1):
            base = [r["baseline"][name][index] for r in rounds]
            this = [r["this"][name][index] for r in rounds]
            ratio = statistics.median(t / b for t, b in zip(this, base) if b > 0) \
                if any(b > 0 for b in base) else float("nan")
            figures += [statistics.median(base), statistics.median(this), ratio]
        print(f"  {name:<20} {figures[0]:9.1f} {figures[1]:9.1f} {figures[2]:6.2f}   "
              f"{figures[3]:13.1f} {figures[4]:6.1f} {figures[5]:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3,
                        help="with --baseline-tree: repeats inside each tree's run")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--steady", dest="churn", action="store_false",
                        help="the running queue does not change between steps")
    parser.add_argument("--cold-cache", type=int, default=0, metavar="MB",
                        help="evict the CPU caches (an MB-sized buffer) before every call")
    parser.add_argument("--baseline-tree", type=Path)
    parser.add_argument("--tree", type=Path)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.baseline_tree is not None:
        side_by_side(options)
        return
    figures = measure(options.steps, options.repeats, options.requests, options.churn,
                      options.cold_cache)
    if options.json:
        print(json.dumps(figures))
        return
    cold = f", caches evicted ({options.cold_cache} MB) before each call" \
        if options.cold_cache else ""
    print(f"us per call, {options.requests} requests per step, median of {options.repeats} "
          f"interleaved x {options.steps} calls{cold}:")
    print(f"  {'case':<20} {'hot':>7} {'hand-off':>9}")
    for name, (hot, moved) in figures.items():
        print(f"  {name:<20} {hot:7.1f} {moved:9.1f}")


if __name__ == "__main__":
    main()
