"""Costs of the foundation pieces that run inside vLLM processes.

Prints ns per call (median of several repeats) and the ratio to the plain-Python baseline each
one replaces:

* ``CompiledExpr.evaluate`` of a seed expression vs the same chain written in Python;
* ``bind_names`` for a method call vs building the five fixed names by hand;
* ``ConfigFile.poll`` with nothing changed (what a watcher thread pays per tick) vs ``os.stat``;
* ``load_symbols`` of the packaged default (once per process, start-up).

Run: ``.venv/bin/python benchmarks/bench_foundation.py``
"""

import json
import os
import statistics
import tempfile
import time
import timeit

from otel_vllm_ascend.config import ConfigFile
from otel_vllm_ascend.expr import compile_expr
from otel_vllm_ascend.expr_names import bind_names
from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS, load_symbols

REPEATS = 7


def ns_per_call(statement, number):
    runs = timeit.repeat(statement, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e9


class InputBatch:
    def __init__(self):
        self._req_ids = ["a", "b", "c", "d"]


class Runner:
    def __init__(self):
        self.input_batch = InputBatch()

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        return None


def main():
    runner = Runner()
    names = bind_names(runner.execute_model, runner, ("so",), {}, None)
    compiled = compile_expr("args[0] | attr input_batch | attr _req_ids | len")

    def direct():
        return len(names["args"][0].input_batch._req_ids)

    evaluate = ns_per_call(lambda: compiled.evaluate(names), 200_000)
    baseline = ns_per_call(direct, 200_000)
    print(f"expr evaluate            {evaluate:8.0f} ns   python chain {baseline:6.0f} ns   "
          f"ratio {evaluate / baseline:5.1f}")

    method = runner.execute_model
    bind = ns_per_call(lambda: bind_names(method, runner, ("so",), {}, None), 100_000)
    fixed = ns_per_call(lambda: {"this": runner, "self": runner, "args": (runner, "so"),
                                 "kwargs": {}, "return": None}, 100_000)
    print(f"bind_names               {bind:8.0f} ns   fixed dict   {fixed:6.0f} ns   "
          f"ratio {bind / fixed:5.1f}")

    compile_ns = ns_per_call(
        lambda: compile_expr("return[0] | attr input_ids | len | str"), 20_000)
    print(f"compile_expr (load time) {compile_ns:8.0f} ns")

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ms_service_profiler_config.json")
        with open(path, "w") as handle:
            json.dump({"enable": 1}, handle)
        watched = ConfigFile(path)
        poll = ns_per_call(watched.poll, 100_000)
        stat = ns_per_call(lambda: os.stat(path), 100_000)
        print(f"ConfigFile.poll, no change {poll:6.0f} ns   os.stat      {stat:6.0f} ns   "
              f"ratio {poll / stat:5.1f}")

    starts = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        load_symbols(PACKAGED_SYMBOLS, vllm_version="0.32.0")
        starts.append(time.perf_counter() - start)
    print(f"load_symbols (default)   {statistics.median(starts) * 1e3:8.2f} ms  once per process")


if __name__ == "__main__":
    main()
