"""The tool's own cost, measured in the process that pays it.

Set ``OTEL_VLLM_SELF_METER=1`` to switch it on (off by default; when off a hooked call pays one
attribute check). It adds up, in a few integers per process:

* ``hot_ns`` / ``hot_calls``: CPU time of our code on vLLM's threads (``time.thread_time_ns``):
  hook wrappers and handlers of sync and ``async def`` targets, *minus* the CPU time inside the
  original call (a nested hook inside the original counts for itself). CPU, not wall time: on
  a loaded machine wall time mostly measures waits for the GIL (often held by our own drain
  thread, already counted below) and for a core. Reading that clock is a system call (about
  0.5 µs, more on a loaded VM) and two reads' worth lands inside each metered call's
  interval: the report gives that estimate as ``meter_ns`` (calls x 2 x one read, timed in the
  process when the report is made), so ``hot_ns - meter_ns`` is what the hooks cost with the
  meter off. Generator and context-manager targets are not metered; the context managers the
  model runner's phases get are, at their exit (``handlers.model.PHASE_EXIT_SYMBOL``), where
  their record is made, and so is the callback that ends ``modelExec`` when the executor's
  Future completes (``handlers.model.COMPLETION_SYMBOL``).
* ``by_symbol``: the same per hooked symbol, ``{symbol: [calls, hot_ns]}``.
* ``drain_ns`` / ``drained``: CPU time of the recorder turning queued records into spans, and
  how many records it turned.
* ``export_cpu_ns``: CPU time of the SDK's span-processor worker threads (encoding, SQLite
  writes, OTLP), read from ``/proc`` when the report is made (Linux; in ns where the kernel
  keeps ``schedstat``, else in 10 ms ticks).
* ``steps`` and ``requests``: ``batchFrameworkProcessing`` and ``httpReq`` records seen, so a
  reader can divide by engine steps (EngineCore) and by requests (API server).

This module only counts and formats; the recorder records the report
(:func:`recorder.record_self_meter_report`). Report: a Meta row ``selfMeter`` (JSON of the
figures above plus ``pid`` and ``role``) is recorded every :data:`REPORT_INTERVAL_S` seconds
while records flow and once more at exit, and the exit report is logged.
``benchmarks/bench_serving_overhead.py`` reads the last row of each capture file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict

_logger = logging.getLogger(__name__)

ENV = "OTEL_VLLM_SELF_METER"
META_KEY = "selfMeter"
REPORT_INTERVAL_S = 2.0  # short: a process killed at shutdown still leaves a recent report
STEP_RECORD = "batchFrameworkProcessing"
STEP_TASK = "engine.schedule"  # the hand-off's record that expands into a STEP_RECORD
REQUEST_RECORD = "httpReq"
REQUEST_TASK = "request.arrival"  # the hand-off's record that expands into a REQUEST_RECORD
# Threads of the SDK's batch processors (span export), by the names the SDK gives them.
_EXPORT_THREAD_PREFIXES = ("OtelBatch", "OtelPeriodic")


class Meter:
    """Counters of one process; plain integer adds, no lock (a lost add under a thread race
    costs a few nanoseconds of accuracy, never correctness of vLLM)."""

    __slots__ = ("on", "hot_ns", "hot_calls", "by_symbol", "drain_ns", "drained", "steps",
                 "requests", "last_report")

    def __init__(self, on: bool) -> None:
        self.on = on
        self.reset()

    def reset(self) -> None:
        self.hot_ns = 0
        self.hot_calls = 0
        self.by_symbol: Dict[str, list] = {}  # hooked symbol -> [calls, hot_ns]
        self.drain_ns = 0
        self.drained = 0
        self.steps = 0
        self.requests = 0
        self.last_report = time.monotonic()

    def add_hot(self, elapsed_ns: int, symbol: str = "") -> None:
        self.hot_ns += elapsed_ns
        self.hot_calls += 1
        figures = self.by_symbol.get(symbol)
        if figures is None:
            figures = self.by_symbol[symbol] = [0, 0]
        figures[0] += 1
        figures[1] += elapsed_ns


meter = Meter(os.environ.get(ENV, "") not in ("", "0"))


def export_thread_cpu_ns() -> int:
    """CPU time so far of the SDK's span-export worker threads in this process (0 if unknown)."""
    total = 0
    for thread in threading.enumerate():
        if thread.name.startswith(_EXPORT_THREAD_PREFIXES) and thread.native_id is not None:
            total += _thread_cpu_ns(thread.native_id)
    return total


def _thread_cpu_ns(tid: int) -> int:
    """Another thread's CPU time: ``schedstat``'s run time in ns, else ``stat``'s 10 ms ticks
    (a thread that runs 3 ms in a start would be charged 0 or 10 ms there)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as stat:
            return int(stat.read().split()[0])
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // tick  # utime + stime


def clock_read_ns(samples: int = 63) -> int:
    """What one read of the meter's clock costs here now (median of back-to-back reads)."""
    read = time.thread_time_ns
    gaps = []
    for _ in range(samples):
        first = read()
        gaps.append(read() - first)
    gaps.sort()
    return gaps[samples // 2]


def snapshot(role: str = "other") -> Dict[str, Any]:
    """The figures of this process now (``role``: the process's vLLM role, for the reader)."""
    return {
        "pid": os.getpid(), "role": role,
        "hot_ns": meter.hot_ns, "hot_calls": meter.hot_calls,
        "meter_ns": 2 * clock_read_ns() * meter.hot_calls,
        "by_symbol": {symbol: list(figures) for symbol, figures in meter.by_symbol.items()},
        "drain_ns": meter.drain_ns, "drained": meter.drained,
        "export_cpu_ns": export_thread_cpu_ns(),
        "steps": meter.steps, "requests": meter.requests,
    }


def take_report(role: str) -> Dict[str, Any]:
    """:func:`snapshot`, and the next periodic report is due in :data:`REPORT_INTERVAL_S`."""
    meter.last_report = time.monotonic()
    return snapshot(role)


def report_text(figures: Dict[str, Any]) -> str:
    """One line for the log: totals and per-step / per-request figures."""
    tool_ns = (figures["hot_ns"] - figures["meter_ns"] + figures["drain_ns"]
               + figures["export_cpu_ns"])
    parts = [f"self meter pid {figures['pid']} ({figures['role']}): hot "
             f"{figures['hot_ns'] / 1e6:.1f} ms in {figures['hot_calls']} calls (the meter's "
             f"own clock about {figures['meter_ns'] / 1e6:.1f} ms of it), span building "
             f"{figures['drain_ns'] / 1e6:.1f} ms for {figures['drained']} records, export "
             f"threads {figures['export_cpu_ns'] / 1e6:.1f} ms"]
    if figures["steps"]:
        parts.append(f"{tool_ns / figures['steps'] / 1000:.1f} us per engine step")
    if figures["requests"]:
        parts.append(f"{tool_ns / figures['requests'] / 1000:.1f} us per request")
    return "; ".join(parts)


def due() -> bool:
    """True when a periodic report should be recorded now (called by the recorder's thread)."""
    return meter.on and time.monotonic() - meter.last_report >= REPORT_INTERVAL_S


def _after_fork_in_child() -> None:
    meter.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
