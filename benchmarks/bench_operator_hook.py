"""What operator collection (``acl_task_time``) costs a model step, off and on.

Run:  .venv/bin/python benchmarks/bench_operator_hook.py [--calls 200000] [--steps 200]

Part 1, operators off (the model runner hook's per-step cost, CPU ns per step, median of
interleaved repeats):
  before        what the hook did per step before operator collection existed: a module
                flag check and ``samplers.profiler_step()`` with no profiler (reproduced here)
  no collector  ``operator_profiler.step_begin()`` + ``step_end()`` in a process without one
  armed off     the same with the collector of an instrumented process, ``acl_task_time`` 0

Part 2, operators on: process CPU time per step of a small model step (a 4-layer MLP, batch
8, width 256, one torch thread) without the collector, and with it profiling every step
(``acl_task_time`` 3), each over ``--steps`` steps, 5 interleaved repeats, median. The
profiler's own threads count too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from otel_vllm_ascend import control, operator_profiler
from otel_vllm_ascend.config import ProfilerConfig


class _OldSamplers:
    """The removed ``samplers.profiler_step`` path, for the "before" column."""

    step_profiler = None

    @classmethod
    def profiler_step(cls) -> None:
        if cls.step_profiler is not None:
            cls.step_profiler.step()


_engine_steps_here = False


def before_step() -> None:
    if not _engine_steps_here:
        _OldSamplers.profiler_step()


def after_step() -> None:
    operator_profiler.step_begin()
    operator_profiler.step_end()


def per_call_ns(func, calls: int) -> float:
    start = time.process_time_ns()
    for _ in range(calls):
        func()
    return (time.process_time_ns() - start) / calls


def part_off(calls: int, repeats: int) -> dict:
    armed_off = operator_profiler.OperatorCollector()
    armed_off.on_state(control.LiveState(recording=True, config=ProfilerConfig(
        enable=True, acl_task_time=0), enabled_at=1.0))
    results: dict = {"before": [], "no collector": [], "armed off": []}
    for _ in range(repeats):
        operator_profiler._collector = None
        results["before"].append(per_call_ns(before_step, calls))
        results["no collector"].append(per_call_ns(after_step, calls))
        operator_profiler._collector = armed_off
        results["armed off"].append(per_call_ns(after_step, calls))
    operator_profiler._collector = None
    return {name: statistics.median(values) for name, values in results.items()}


def part_on(steps: int, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # CPU time of one thread: stable on a shared machine
    layers = [torch.nn.Linear(256, 256) for _ in range(4)]
    batch = torch.randn(8, 256)

    def model_step() -> None:
        with torch.no_grad():
            x = batch
            for layer in layers:
                x = torch.relu(layer(x))

    results: dict = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            for mode in ("off", "on"):
                collector = operator_profiler.OperatorCollector(
                    folder_of=lambda target=Path(folder) / f"r{repeat}": target)
                config = ProfilerConfig(enable=True, acl_task_time=3 if mode == "on" else 0)
                collector.on_state(control.LiveState(recording=True, config=config,
                                                     enabled_at=float(repeat)))
                if mode == "on":  # the first start initialises the library (done ahead in
                    collector.step_begin()  # a Worker): keep it out of the measurement
                    collector.step_end()
                start = time.process_time()
                for _ in range(steps):
                    collector.step_begin()
                    model_step()
                    collector.step_end()
                results[mode].append((time.process_time() - start) / steps * 1e6)
                collector.close()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    off = part_off(args.calls, args.repeats)
    print("operators off, CPU ns per model step (hook's share):")
    for name, value in off.items():
        print(f"  {name:<13} {value:8.1f}")
    on = part_on(args.steps, 5)
    print(f"model step (4x Linear 256, batch 8, 1 thread), CPU µs per step, {args.steps} steps:")
    print(f"  collector off {on['off']:8.1f}")
    print(f"  profiling on  {on['on']:8.1f}  ({(on['on'] / on['off'] - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
