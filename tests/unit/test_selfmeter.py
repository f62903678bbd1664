"""The self meter: our time on vLLM's threads excludes the original; reports reach the exporter."""

from __future__ import annotations

import importlib
import json
import time

import pytest
from runtime_helpers import Capture, instrument, spec, write_module

from otel_vllm_ascend import contract, recorder, selfmeter

TARGET = """
import time

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

class Engine:
    def step(self, seconds):
        burn(seconds)                # the "original": must not count as ours
        return seconds * 2

def slow_handler(original, this, seconds):
    burn(0.002)                      # the handler's own work: must count
    time.sleep(0.05)                 # waiting is not CPU: must not count
    return original(seconds)

def slow_steps(ctx):                 # the same, as a generator-style handler
    burn(0.001)
    yield
    burn(0.001)
"""


@pytest.fixture
def metered():
    saved = selfmeter.meter.on
    selfmeter.meter.on = True
    selfmeter.meter.reset()
    yield selfmeter.meter
    selfmeter.meter.on = saved
    selfmeter.meter.reset()


def _engine(tmp_path, capture, handler):
    name = write_module(tmp_path, TARGET)
    hooks = [spec(name, "Engine.step", handler=f"{name}:{handler}" if handler else None)]
    instrumentor = instrument(capture, hooks)
    module = importlib.import_module(name)
    return instrumentor, module.Engine()


@pytest.mark.parametrize("handler", [None, "slow_handler", "slow_steps"])
def test_original_time_is_not_ours(tmp_path, metered, handler):
    capture = Capture()
    instrumentor, engine = _engine(tmp_path, capture, handler)
    try:
        assert engine.step(0.05) == 0.1
    finally:
        instrumentor.uninstrument()
    assert metered.hot_calls == 1
    ((symbol, (calls, symbol_ns)),) = metered.by_symbol.items()
    assert symbol.endswith(":Engine.step") and calls == 1 and symbol_ns == metered.hot_ns
    assert metered.hot_ns < 0.04e9, "the original's 50 ms CPU (or a sleep) was counted as ours"
    if handler:
        assert metered.hot_ns >= 0.002e9, "the handler's own 2 ms were not counted"
    else:
        assert metered.hot_ns > 0


def test_off_counts_nothing(tmp_path):
    assert not selfmeter.meter.on  # off by default (the test run does not set the variable)
    capture = Capture()
    instrumentor, engine = _engine(tmp_path, capture, "slow_handler")
    try:
        engine.step(0.0)
    finally:
        instrumentor.uninstrument()
    assert selfmeter.meter.hot_calls == 0
    assert capture.named("step") == []  # the handler records nothing itself; timer not used


def test_drain_counts_steps_requests_and_report_reaches_exporter(metered):
    capture = Capture()
    recorder.set_tracer_provider(capture.provider)
    try:
        now = time.time_ns()
        for _ in range(3):
            recorder.record_span(selfmeter.STEP_RECORD, now, now + 1000,
                                 {contract.DOMAIN: "Schedule"})
        recorder.record_event(selfmeter.REQUEST_RECORD, {contract.RID: "a"})
        recorder.flush()
        assert (metered.steps, metered.requests, metered.drained) == (3, 1, 4)
        assert metered.drain_ns > 0
        recorder.record_self_meter_report()
        meta = capture.named(contract.META_NAME)
    finally:
        recorder.set_tracer_provider(None)
    assert len(meta) == 1
    figures = json.loads(meta[0].attributes[contract.META_PREFIX + selfmeter.META_KEY])
    assert figures["steps"] == 3 and figures["requests"] == 1 and figures["drained"] == 4
    assert 0 <= figures["meter_ns"] < 100_000 * figures["hot_calls"] + 1
    text = selfmeter.report_text(figures)
    assert "per engine step" in text and "per request" in text and "clock" in text


def test_clock_read_cost_is_measured():
    cost = selfmeter.clock_read_ns()
    assert 0 < cost < 1_000_000  # a system call: well under a millisecond, never free


def test_export_thread_cpu_is_read_from_proc():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    class BusyExporter(InMemorySpanExporter):
        def export(self, spans):
            end = time.thread_time() + 0.1
            while time.thread_time() < end:  # burn CPU on the export thread
                pass
            return super().export(spans)

    provider = TracerProvider()
    busy = BusyExporter()
    provider.add_span_processor(BatchSpanProcessor(busy, schedule_delay_millis=10))
    before = selfmeter.export_thread_cpu_ns()
    provider.get_tracer("t").start_span("x").end()
    deadline = time.monotonic() + 5
    while not busy.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker thread exports (force_flush would export on this thread)
    after = selfmeter.export_thread_cpu_ns()
    provider.shutdown()
    assert after - before >= 50_000_000


def test_export_thread_cpu_is_read_to_the_nanosecond():
    """A thread that runs 3 ms is charged about 3 ms, not 0 or 10 (stat's ticks)."""
    import os
    import threading

    go, done, release = threading.Event(), threading.Event(), threading.Event()

    def export_worker():
        go.wait(10)
        end = time.thread_time() + 0.003
        while time.thread_time() < end:
            pass
        done.set()
        release.wait(10)  # stays alive (and named) until read

    thread = threading.Thread(target=export_worker, name="OtelBatchSpanRecordProcessor",
                              daemon=True)
    thread.start()
    try:
        if not os.path.exists(f"/proc/self/task/{thread.native_id}/schedstat"):
            pytest.skip("this kernel keeps no schedstat: stat's 10 ms ticks are all there is")
        before = selfmeter.export_thread_cpu_ns()
        go.set()
        assert done.wait(10)
        after = selfmeter.export_thread_cpu_ns()
    finally:
        go.set()
        release.set()
        thread.join(10)
    assert 2_500_000 <= after - before <= 6_000_000
