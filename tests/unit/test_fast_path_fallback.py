"""Fail loud, degrade gracefully: when the direct span builder cannot be used (an SDK whose
private parts changed, simulated by making its set-up or a build raise), the recorder says so
in one WARNING naming the cause and every exporter still receives every span."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vllm_ascend import contract, recorder, span_builder
from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter
from otel_vllm_ascend.thread_id import ThreadIdSpanProcessor


def _raise(*args, **kwargs):
    raise RuntimeError("simulated SDK change")


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder._state, "fast_path", True)
    monkeypatch.setattr(recorder._state, "fast_path_failure", None)
    memory = InMemorySpanExporter()
    files = MsServiceSpanExporter(tmp_path, hostname="h")
    provider = TracerProvider()
    provider.add_span_processor(ThreadIdSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(files))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    recorder.set_tracer_provider(provider)
    yield memory, files
    recorder.set_tracer_provider(None)
    provider.shutdown()


def _record_and_flush(drains=2, per_drain=3):
    now = time.time_ns()
    for drain in range(drains):
        for index in range(per_drain):
            recorder.record_span("step", now + index, now + index + 10,
                                 {contract.DOMAIN: "Schedule", "n": drain * 10 + index})
        recorder.flush()


def _rows(files):
    with sqlite3.connect(files.path) as conn:
        return conn.execute("SELECT COUNT(*) FROM Mstx").fetchone()[0]


@pytest.mark.parametrize("broken", ["__init__", "build"])
def test_a_broken_fast_path_gives_one_warning_and_every_span(pipeline, monkeypatch, caplog,
                                                             broken):
    memory, files = pipeline
    monkeypatch.setattr(span_builder.FastSpanBuilder, broken, _raise)
    with caplog.at_level(logging.WARNING, logger="otel_vllm_ascend"):
        _record_and_flush()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "RuntimeError: simulated SDK change" in message and "plain SDK" in message
    assert "QUEUE_SIZE" not in message
    assert "simulated SDK change" in recorder.fast_path_failure()
    assert len(memory.get_finished_spans()) == 6
    assert _rows(files) == 6


def test_the_working_fast_path_says_nothing(pipeline, caplog):
    memory, files = pipeline
    with caplog.at_level(logging.WARNING, logger="otel_vllm_ascend"):
        _record_and_flush()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert recorder.fast_path_failure() is None
    assert len(memory.get_finished_spans()) == 6 and _rows(files) == 6


SDK_WITHOUT_A_PRIVATE_MODULE = """
import logging
import opentelemetry.sdk.trace.sampling as sampling
del sampling.StaticSampler  # an SDK that renamed a class the builder imports
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otel_vllm_ascend import recorder
memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
recorder.set_tracer_provider(provider)
for index in range(3):
    recorder.record_span("step", 10 + index, 20 + index, {"ms.domain": "Schedule"})
    recorder.flush()
print("spans", len(memory.get_finished_spans()))
"""


def test_an_sdk_without_what_the_builder_imports_still_collects():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", SDK_WITHOUT_A_PRIVATE_MODULE], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert "spans 3" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "could not be imported" in warnings[0], done.stderr
