"""Helpers for the collection-runtime unit tests: an in-memory SDK, specs, generated modules."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_vllm_ascend import recorder
from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.expr import compile_expr
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
from otel_vllm_ascend.symbols import AttributeSpec, HookSpec

_counter = itertools.count()


class Capture:
    """Spans the recorder turned into SDK spans, through a real SDK provider."""

    def __init__(self) -> None:
        # Records an earlier test queued without draining (a handler half called directly)
        # are built now, for whatever provider was set then, not later into this capture.
        recorder.flush()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self):
        recorder.flush()
        return list(self.exporter.get_finished_spans())

    def named(self, name):
        return [s for s in self.spans() if s.name == name]

    def clear(self):
        recorder.flush()
        self.exporter.clear()


def spec(module: str, qualname: str, handler=None, domain="Test", name="", attributes=(),
         caller_filter=None, level=20) -> HookSpec:
    attrs = tuple(AttributeSpec(n, e, compile_expr(e)) for n, e in attributes)
    return HookSpec(symbol=f"{module}:{qualname}", module=module, qualname=qualname,
                    handler=handler, domain=domain, name=name or qualname.split(".")[-1],
                    attributes=attrs, caller_filter=caller_filter, level=level,
                    source="test.yaml#1")


def write_module(tmp_path, source: str) -> str:
    """Write ``source`` as a fresh module on sys.path (not imported yet); return its name."""
    name = f"otel_vllm_target_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    return name


def instrument(capture: Capture, specs, config=None) -> VllmServiceInstrumentor:
    instrumentor = VllmServiceInstrumentor()
    instrumentor.instrument(tracer_provider=capture.provider, specs=tuple(specs),
                            config=config if config is not None else ProfilerConfig(enable=True))
    return instrumentor
