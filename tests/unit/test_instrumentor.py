"""Hook installation for every kind of callable, timer spans, double instrumentation, removal."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest
from runtime_helpers import Capture, instrument, spec, write_module

from otel_vllm_ascend import contract, wrapping

TARGET = """
import contextlib

CALLS = []

class Engine:
    def __init__(self):
        self.step_fn = self.step          # bound at construction, like vLLM's EngineCore

    def step(self, x, scale=2):
        CALLS.append("step")
        return x * scale

    @staticmethod
    def smethod(x):
        CALLS.append("smethod")
        return x + 1

    @classmethod
    def cmethod(cls, x):
        CALLS.append("cmethod")
        return (cls.__name__, x)

    async def astep(self, x):
        CALLS.append("astep")
        return x * 3

    def gen(self, n):
        CALLS.append("gen")
        for i in range(n):
            received = yield i
            if received is not None:
                CALLS.append(("sent", received))
        return "done"

    async def agen(self, n):
        CALLS.append("agen")
        for i in range(n):
            yield i

    @contextlib.contextmanager
    def capture(self, tag):
        CALLS.append(("enter", tag))
        yield tag.upper()
        CALLS.append(("exit", tag))

    def boom(self):
        CALLS.append("boom")
        raise ValueError("vllm's own error")

    def caller_a(self, x):
        return self.step(x)

    def caller_b(self, x):
        return self.step(x)


class Child(Engine):
    pass


def plain(a, b=2):
    CALLS.append("plain")
    return a + b
"""


@pytest.fixture
def capture():
    cap = Capture()
    yield cap
    from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor

    VllmServiceInstrumentor().uninstrument()


def _load(tmp_path, specs_for):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    return name, module, specs_for(name)


def test_timer_on_method_function_static_and_class_methods(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    specs = [spec(name, "Engine.step", domain="Execute", name="stepSpan",
                  attributes=[("x", "x"), ("doubled", "return"), ("self_type", "this | str")]),
             spec(name, "Engine.smethod"), spec(name, "Engine.cmethod"), spec(name, "plain")]
    module = importlib.import_module(name)
    instrumentor = instrument(capture, specs)
    engine = module.Engine()
    assert engine.step(5) == 10
    assert module.Engine.smethod(1) == 2 and engine.smethod(1) == 2
    assert module.Engine.cmethod(7) == ("Engine", 7)
    assert module.Child.cmethod(8) == ("Child", 8)
    assert module.plain(1) == 3
    assert len(instrumentor.hooks) == 4
    spans = capture.spans()
    names = [s.name for s in spans]
    assert names == ["stepSpan", "smethod", "smethod", "cmethod", "cmethod", "plain"]
    step = spans[0]
    assert step.attributes[contract.DOMAIN] == "Execute"
    assert step.attributes["x"] == 5 and step.attributes["doubled"] == 10
    assert step.attributes["self_type"].startswith("<")
    assert step.attributes[contract.THREAD_ID] > 0
    assert step.end_time >= step.start_time
    assert module.CALLS == ["step", "smethod", "smethod", "cmethod", "cmethod", "plain"]


def test_post_import_hook_and_binding_at_construction(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    assert name not in sys.modules
    instrumentor = instrument(capture, [spec(name, "Engine.step")])
    assert instrumentor.hooks == []  # module not imported yet
    module = importlib.import_module(name)
    assert len(instrumentor.hooks) == 1
    engine = module.Engine()  # binds self.step into step_fn in __init__
    assert engine.step_fn(3) == 6
    assert [s.name for s in capture.spans()] == ["step"]


def test_async_generator_asyncgen_and_context_manager(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrument(capture, [spec(name, q) for q in
                         ("Engine.astep", "Engine.gen", "Engine.agen", "Engine.capture")])
    engine = module.Engine()
    assert asyncio.iscoroutinefunction(module.Engine.astep)
    assert asyncio.run(engine.astep(2)) == 6

    gen = engine.gen(3)
    assert next(gen) == 0
    assert gen.send("hello") == 1
    assert list(gen) == [2]
    assert ("sent", "hello") in module.CALLS

    async def consume():
        return [i async for i in engine.agen(3)]
    assert asyncio.run(consume()) == [0, 1, 2]

    with engine.capture("fwd") as value:
        assert value == "FWD"
        assert [s.name for s in capture.spans()].count("capture") == 0  # still open
    assert module.CALLS[-1] == ("exit", "fwd")
    assert [s.name for s in capture.spans()] == ["astep", "gen", "agen", "capture"]


def test_generator_span_covers_iteration(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrument(capture, [spec(name, "Engine.gen")])
    gen = module.Engine().gen(2)
    assert capture.spans() == []  # nothing until the generator finishes
    assert list(gen) == [0, 1]
    assert len(capture.named("gen")) == 1


def test_exception_recorded_and_propagated_unchanged(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrument(capture, [spec(name, "Engine.boom")])
    with pytest.raises(ValueError, match="vllm's own error") as info:
        module.Engine().boom()
    assert info.value.__traceback__ is not None
    (span,) = capture.named("boom")
    assert not span.status.is_ok
    assert span.events[0].name == "exception"
    assert module.CALLS == ["boom"]


def test_caller_filter(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrument(capture, [spec(name, "Engine.step", caller_filter="caller_a")])
    engine = module.Engine()
    assert engine.caller_a(1) == 2 and engine.caller_b(1) == 2 and engine.step(1) == 2
    assert len(capture.named("step")) == 1


def test_instrument_twice_never_double_wraps(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    specs = [spec(name, "Engine.step")]
    first = instrument(capture, specs)
    wrapper = module.Engine.__dict__["step"]
    second = instrument(capture, specs)  # BaseInstrumentor: already instrumented, no-op
    assert first is second
    assert module.Engine.__dict__["step"] is wrapper
    # Even a second installer over the same module finds our wrapper and leaves it.
    from otel_vllm_ascend.installer import install
    assert install(specs[0], module) is None
    assert module.Engine().step(2) == 4
    assert len(capture.named("step")) == 1


def test_uninstrument_restores_every_original(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    originals = {q: module.Engine.__dict__[q] for q in ("step", "smethod", "cmethod", "astep")}
    plain = module.plain
    instrumentor = instrument(capture, [spec(name, f"Engine.{q}") for q in originals]
                              + [spec(name, "plain"), spec(name, "Child.cmethod")])
    assert "cmethod" not in module.Child.__dict__  # inherits the hooked one: not wrapped twice
    assert all(module.Engine.__dict__[q] is not originals[q] for q in originals)
    instrumentor.uninstrument()
    assert all(module.Engine.__dict__[q] is originals[q] for q in originals)
    assert module.plain is plain
    module.Engine().step(1)
    assert capture.spans() == []


def test_inherited_method_hooked_on_subclass_only(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, "Child.step")])
    assert "step" in module.Child.__dict__
    assert module.Engine().step(1) == 2      # the base class is untouched
    assert module.Child().step(1) == 2
    assert len(capture.named("step")) == 1
    instrumentor.uninstrument()
    assert "step" not in module.Child.__dict__


def test_uninstrument_then_import_installs_nothing(tmp_path, capture):
    name = write_module(tmp_path, TARGET)
    instrumentor = instrument(capture, [spec(name, "Engine.step")])
    instrumentor.uninstrument()
    module = importlib.import_module(name)
    assert wrapping.hook_of(module.Engine.__dict__["step"]) is None


def test_bad_entry_named_once_others_installed(tmp_path, capture, caplog):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, "Engine.nothing_here"),
                                        spec(name, "Engine.step", handler="nowhere.mod:func"),
                                        spec(name, "plain")])
    # The missing method is a problem; the unimportable handler falls back to the timer.
    assert len(instrumentor.hooks) == 2
    assert [h.handler for h in instrumentor.hooks] == [None, None]
    assert len(instrumentor.problems) == 1
    assert "test.yaml#1" in instrumentor.problems[0]
    assert "nothing_here" in instrumentor.problems[0]
    assert any("nowhere.mod" in r.getMessage() and "default timer" in r.getMessage()
               for r in caplog.records)
    assert module.plain(1) == 3


def test_disabled_hook_calls_straight_through(tmp_path, capture):
    from otel_vllm_ascend.config import ProfilerConfig

    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, "Engine.step")],
                              config=ProfilerConfig(enable=False))
    assert instrumentor.hooks[0].active is False
    assert module.Engine().step(4) == 8
    assert capture.spans() == []


def test_plugin_does_nothing_without_config_path(monkeypatch):
    from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
    from otel_vllm_ascend.plugin import register

    monkeypatch.delenv("SERVICE_PROF_CONFIG_PATH", raising=False)
    VllmServiceInstrumentor().uninstrument()
    register()
    assert not VllmServiceInstrumentor().is_instrumented_by_opentelemetry


def test_attribute_names_bound_like_the_call(tmp_path, capture):
    name = write_module(tmp_path, """
class Runner:
    def execute(self, batch, *, mode="eager", extra=None):
        return len(batch)

    def varargs(self, *items, **options):
        return len(items)
""")
    module = importlib.import_module(name)
    instrument(capture, [
        spec(name, "Runner.execute", attributes=[("n", "len(batch)"), ("mode", "mode"),
                                                 ("first", "args[1][0]"), ("ret", "return"),
                                                 ("extra", "extra")]),
        spec(name, "Runner.varargs", attributes=[("items", "items | len"),
                                                 ("opt", "options['k']")]),
    ])
    runner = module.Runner()
    assert runner.execute([4, 5, 6], mode="graph") == 3
    assert runner.varargs(1, 2, k="v") == 2
    execute, varargs = capture.spans()
    assert execute.attributes["n"] == 3 and execute.attributes["mode"] == "graph"
    assert execute.attributes["first"] == 4 and execute.attributes["ret"] == 3
    assert "extra" not in execute.attributes  # None is omitted
    assert varargs.attributes["items"] == 2 and varargs.attributes["opt"] == "v"


def test_async_context_manager_timer(tmp_path, capture):
    name = write_module(tmp_path, """
import contextlib

class Runner:
    @contextlib.asynccontextmanager
    async def session(self, tag):
        yield tag * 2
""")
    module = importlib.import_module(name)
    instrument(capture, [spec(name, "Runner.session", attributes=[("tag", "tag")])])

    async def use():
        async with module.Runner().session("ab") as value:
            assert capture.named("session") == []
            return value

    assert asyncio.run(use()) == "abab"
    (span,) = capture.named("session")
    assert span.attributes["tag"] == "ab"


def test_unusable_symbol_file_falls_back_to_packaged_default(tmp_path, caplog):
    from otel_vllm_ascend.instrumentor import _load_specs
    from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS, load_symbols

    bad = tmp_path / "symbols.yaml"
    bad.write_text("just: a mapping, not a list\n")
    with caplog.at_level("WARNING"):
        specs, source, _ = _load_specs(str(bad))
    assert source == str(load_symbols(PACKAGED_SYMBOLS).path)
    assert specs, "the packaged default should provide hooks"
    messages = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(messages) == 1, messages
    assert "packaged default" in messages[0]


def test_runtime_hooks_of_the_default_kept_with_a_user_symbol_file(tmp_path, monkeypatch):
    from otel_vllm_ascend import symbols
    from otel_vllm_ascend.instrumentor import _load_specs

    # The default's runtime hooks of the 0.32 line, whichever vLLM is installed.
    monkeypatch.setattr(symbols, "installed_vllm_version", lambda: "0.32.0")
    monkeypatch.delenv("OTEL_VLLM_SHUTDOWN_GRACE_S", raising=False)
    user = tmp_path / "symbols.yaml"
    user.write_text("- symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule\n"
                    "  handler: schedule\n"
                    "- symbol: vllm.v1.engine.core:DPEngineCoreProc.add_request\n"
                    "  handler: init_data_parallel\n"
                    "- symbol: vllm.v1.engine.async_llm:AsyncLLM.generate\n")
    specs, source, _ = _load_specs(str(user))
    assert source == str(user)
    # vLLM 0.32: the request id hook and the shutdown grace are added; the Meta hook is the
    # user's own already (not added twice); a timer on AsyncLLM.generate is no trace binding,
    # but bind_trace_context applies up to vLLM 0.31 only.
    assert [(s.symbol, s.handler and s.handler.rsplit(":", 1)[1]) for s in specs] == [
        ("vllm.v1.core.sched.scheduler:Scheduler.schedule", "schedule"),
        ("vllm.v1.engine.core:DPEngineCoreProc.add_request", "init_data_parallel"),
        ("vllm.v1.engine.async_llm:AsyncLLM.generate", None),
        ("vllm.v1.engine.input_processor:InputProcessor.assign_request_id",
         "assign_request_id"),
        ("vllm.v1.engine.utils:shutdown", "shutdown_grace"),
        ("vllm.v1.utils:APIServerProcessManager.shutdown", "api_servers_shutdown_grace")]
    monkeypatch.setenv("OTEL_VLLM_SHUTDOWN_GRACE_S", "0")
    specs, _, _ = _load_specs(str(user))
    assert not {"vllm.v1.engine.utils:shutdown", "vllm.v1.utils:APIServerProcessManager.shutdown"
                } & {s.symbol for s in specs}


def test_runtime_hooks_chain_with_the_user_file_on_older_vllm(tmp_path, monkeypatch):
    from otel_vllm_ascend import symbols
    from otel_vllm_ascend.instrumentor import _load_specs

    monkeypatch.setattr(symbols, "installed_vllm_version", lambda: "0.18.0")
    user = tmp_path / "symbols.yaml"
    user.write_text("- symbol: vllm.v1.engine.async_llm:AsyncLLM.generate\n")
    specs, _, _ = _load_specs(str(user))
    generate = [s for s in specs if s.symbol == "vllm.v1.engine.async_llm:AsyncLLM.generate"]
    # the user's timer first, the trace binding chained inside it
    assert [s.handler and s.handler.rsplit(":", 1)[1] for s in generate] == [
        None, "bind_trace_context"]
    assert {s.handler.rsplit(":", 1)[1] for s in specs if s.handler} == {
        "bind_trace_context", "assign_request_id", "incoming_trace_headers",
        "init_data_parallel", "shutdown_grace", "api_servers_shutdown_grace"}
