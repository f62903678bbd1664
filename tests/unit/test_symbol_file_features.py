"""What real symbol files use, through the real loader and instrumentor: entries of one symbol
chained in file order, generator-style handlers, wildcard symbols hooked as modules load."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import textwrap
import traceback

import pytest
from runtime_helpers import Capture, instrument, write_module

from otel_vllm_ascend import symbols, wrapping
from otel_vllm_ascend.installer import install
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor

TARGET = """
CALLS = []

class Runner:
    def execute(self, batch, scale=2):
        CALLS.append(("execute", batch))
        if batch is None:
            raise LookupError("vllm's own error")
        return len(batch) * scale

    async def aexecute(self, batch):
        CALLS.append(("aexecute", batch))
        return len(batch)

    @staticmethod
    def helper(x):
        CALLS.append(("helper", x))
        return x + 1
"""

HANDLERS = """
ORDER = []

def outer(original, this, *args, **kwargs):
    ORDER.append("outer before")
    result = original(*args, **kwargs)
    ORDER.append(("outer after", result))
    return result

def inner(ctx):
    ORDER.append(("inner before", ctx.args, ctx.kwargs, type(ctx.this).__name__))
    try:
        result = yield
        ORDER.append(("inner after", result, ctx.return_value, ctx.local_values))
    finally:
        ORDER.append("inner finally")

def swallowing(ctx):
    try:
        yield
    except LookupError:
        ORDER.append("caught")

def reference_style(ctx):
    # msserviceprofiler 26.x: the handler reads ctx.return_value after its yield
    yield
    ORDER.append(("reference", ctx.return_value))

def raise_before(ctx):
    raise RuntimeError("broke before the call")
    yield

def no_yield(ctx):
    ORDER.append("ran, never yielded")
    if False:
        yield

def yields_twice(ctx):
    yield
    yield

def raise_after(ctx):
    yield
    raise RuntimeError("broke after the call")

async def async_gen(ctx):
    yield
"""


@pytest.fixture
def capture():
    cap = Capture()
    yield cap
    VllmServiceInstrumentor().uninstrument()


@pytest.fixture
def modules(tmp_path):
    target = importlib.import_module(write_module(tmp_path, TARGET))
    handlers = importlib.import_module(write_module(tmp_path, HANDLERS))
    return target, handlers


def load(tmp_path, text):
    path = tmp_path / "symbols.yaml"
    path.write_text(textwrap.dedent(text))
    return symbols.load_symbols(path, vllm_version="0.32.0")


def instrument_file(capture, tmp_path, text):
    loaded = load(tmp_path, text)
    assert loaded.problems == [], loaded.problems
    return instrument(capture, loaded.specs)


# --- chains ------------------------------------------------------------------------------------


def chain_yaml(target, handlers):
    return f"""
        - symbol: {target.__name__}:Runner.execute
          handler: {handlers.__name__}:outer
        - symbol: {target.__name__}:Runner.execute
          handler: {handlers.__name__}:inner
        - symbol: {target.__name__}:Runner.execute
          name: executeSpan
          domain: Execute
    """


def test_one_symbol_with_three_handlers_runs_them_in_file_order(tmp_path, modules, capture):
    target, handlers = modules
    original = target.Runner.__dict__["execute"]
    instrumentor = instrument_file(capture, tmp_path, chain_yaml(target, handlers))
    assert len(instrumentor.hooks) == 3
    assert target.Runner().execute([1, 2, 3], scale=3) == 9
    assert target.CALLS == [("execute", [1, 2, 3])]  # the original ran once
    order = handlers.ORDER
    assert order[:2] == ["outer before", ("inner before", ([1, 2, 3],), {"scale": 3}, "Runner")]
    assert order[2][:3] == ("inner after", 9, 9)  # the yield's value and ctx.return_value
    assert order[3:] == ["inner finally", ("outer after", 9)]
    local_values = order[2][3]
    assert local_values["batch"] == [1, 2, 3] and local_values["scale"] == 3
    assert type(local_values["self"]).__name__ == "Runner"
    (span,) = capture.named("executeSpan")
    assert span.attributes["ms.domain"] == "Execute"
    # the first entry wraps the others: its hook is what the class holds now
    outermost = wrapping.hook_of(target.Runner.__dict__["execute"])
    assert outermost.spec.handler.endswith(":outer")
    assert [hook.spec.source.rsplit("#", 1)[1] for hook in outermost.chain()] == ["1", "2", "3"]
    instrumentor.uninstrument()
    assert target.Runner.__dict__["execute"] is original


def test_chain_passes_the_original_exception_unchanged(tmp_path, modules, capture):
    target, handlers = modules
    instrument_file(capture, tmp_path, chain_yaml(target, handlers))
    with pytest.raises(LookupError, match="vllm's own error") as info:
        target.Runner().execute(None)
    assert target.CALLS == [("execute", None)]
    # the generator handler saw the error at its yield: its finally ran, its after-code did not
    assert handlers.ORDER == ["outer before", ("inner before", (None,), {}, "Runner"),
                              "inner finally"]
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "execute" and "inner" not in frames
    (span,) = capture.named("executeSpan")
    assert not span.status.is_ok


def test_a_chain_is_installed_once(tmp_path, modules, capture):
    target, handlers = modules
    loaded = load(tmp_path, chain_yaml(target, handlers))
    instrument(capture, loaded.specs)
    wrapper = target.Runner.__dict__["execute"]
    for spec in loaded.specs:  # a second installer finds every entry of the chain in place
        assert install(spec, target) is None
    assert target.Runner.__dict__["execute"] is wrapper
    assert target.Runner().execute([1]) == 2
    assert target.CALLS == [("execute", [1])] and len(capture.named("executeSpan")) == 1


def test_an_inner_hook_that_removes_itself_leaves_the_chain_working(tmp_path, modules, capture,
                                                                     caplog):
    target, handlers = modules
    loaded = load(tmp_path, f"""
        - symbol: {target.__name__}:Runner.execute
          handler: {handlers.__name__}:outer
        - symbol: {target.__name__}:Runner.execute
          handler: {handlers.__name__}:raise_before
    """)
    original = target.Runner.__dict__["execute"]
    instrumentor = instrument(capture, loaded.specs)
    runner = target.Runner()
    for batch in range(wrapping.MAX_CONSECUTIVE_FAILURES + 2):
        assert runner.execute([0] * batch) == 2 * batch
    assert len(target.CALLS) == wrapping.MAX_CONSECUTIVE_FAILURES + 2
    outer_hook, inner_hook = wrapping.hook_of(target.Runner.__dict__["execute"]).chain()
    assert inner_hook.removed and not outer_hook.removed
    assert handlers.ORDER.count("outer before") == wrapping.MAX_CONSECUTIVE_FAILURES + 2
    warned = [r.getMessage() for r in caplog.records if "broke before the call" in r.getMessage()]
    assert len(warned) == 1
    instrumentor.uninstrument()
    assert target.Runner.__dict__["execute"] is original


def test_chain_on_a_static_method_and_an_async_method(tmp_path, modules, capture):
    target, handlers = modules
    instrument_file(capture, tmp_path, f"""
        - symbol: {target.__name__}:Runner.helper
          handler: {handlers.__name__}:outer
        - symbol: {target.__name__}:Runner.helper
          handler: {handlers.__name__}:reference_style
        - symbol: {target.__name__}:Runner.aexecute
          handler: {handlers.__name__}:reference_style
        - symbol: {target.__name__}:Runner.aexecute
    """)
    assert target.Runner.helper(1) == 2 and target.Runner().helper(5) == 6
    assert asyncio.run(target.Runner().aexecute("abc")) == 3
    assert [c[0] for c in target.CALLS] == ["helper", "helper", "aexecute"]
    assert handlers.ORDER == ["outer before", ("reference", 2), ("outer after", 2),
                              "outer before", ("reference", 6), ("outer after", 6),
                              ("reference", 3)]
    assert len(capture.named("aexecute")) == 1  # the timer covers the awaited call


def test_caller_filter_of_a_chained_entry_sees_the_real_caller(tmp_path, modules, capture):
    target, handlers = modules
    caller = write_module(tmp_path, f"""
from {target.__name__} import Runner

def step_a(runner):
    return runner.execute([1])

def step_b(runner):
    return runner.execute([1, 2])
""")
    callers = importlib.import_module(caller)
    instrument_file(capture, tmp_path, f"""
        - symbol: {target.__name__}:Runner.execute
          name: everyCall
        - symbol: {target.__name__}:Runner.execute
          handler: {handlers.__name__}:reference_style
          caller_filter: step_b
    """)
    runner = target.Runner()
    assert callers.step_a(runner) == 2 and callers.step_b(runner) == 4
    assert len(capture.named("everyCall")) == 2
    assert handlers.ORDER == [("reference", 4)]  # only the call made from step_b


# --- generator-style handlers ------------------------------------------------------------------


def one_handler(tmp_path, capture, target, handlers, name, qualname="Runner.execute"):
    return instrument_file(capture, tmp_path, f"""
        - symbol: {target.__name__}:{qualname}
          handler: {handlers.__name__}:{name}
    """)


def test_generator_handler_that_catches_the_error_cannot_swallow_it(tmp_path, modules,
                                                                    capture):
    target, handlers = modules
    one_handler(tmp_path, capture, target, handlers, "swallowing")
    error = None
    with pytest.raises(LookupError) as info:
        try:
            target.Runner().execute(None)
        except LookupError as exc:
            error = exc
            raise
    assert info.value is error and handlers.ORDER == ["caught"]
    assert target.CALLS == [("execute", None)]


@pytest.mark.parametrize("name, ran", [
    ("raise_before", []),
    ("no_yield", ["ran, never yielded"]),
    ("yields_twice", []),
    ("raise_after", []),
])
def test_failing_generator_handlers_never_change_the_call(tmp_path, modules, capture, caplog,
                                                          name, ran):
    target, handlers = modules
    one_handler(tmp_path, capture, target, handlers, name)
    runner = target.Runner()
    for batch in range(wrapping.MAX_CONSECUTIVE_FAILURES + 1):
        assert runner.execute([1] * batch) == 2 * batch
    assert len(target.CALLS) == wrapping.MAX_CONSECUTIVE_FAILURES + 1  # once per call
    assert handlers.ORDER == ran * wrapping.MAX_CONSECUTIVE_FAILURES
    assert wrapping.hook_of(target.Runner.__dict__["execute"]) is None  # removed itself
    failures = [r for r in caplog.records if "failed" in r.getMessage()
                and "Runner.execute" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(failures) == 1


def test_async_generator_handler_falls_back_to_the_timer(tmp_path, modules, capture, caplog):
    target, handlers = modules
    instrumentor = one_handler(tmp_path, capture, target, handlers, "async_gen")
    assert instrumentor.hooks[0].handler is None
    assert target.Runner().execute([1]) == 2
    assert len(capture.named("execute")) == 1
    assert any("async generator" in r.getMessage() and "default timer" in r.getMessage()
               for r in caplog.records)


def test_disabled_generator_handler_does_not_run(tmp_path, modules):
    from otel_vllm_ascend.config import ProfilerConfig

    target, handlers = modules
    loaded = load(tmp_path, f"""
        - symbol: {target.__name__}:Runner.execute
          handler: {handlers.__name__}:inner
    """)
    instrument(Capture(), loaded.specs, config=ProfilerConfig(enable=False))
    try:
        assert target.Runner().execute([1]) == 2
        assert handlers.ORDER == []
    finally:
        VllmServiceInstrumentor().uninstrument()


# --- wildcards ---------------------------------------------------------------------------------

MODELS = {
    "__init__.py": "class AtPackageLevel:\n    def embed(self):\n        return 'package'\n",
    "llama.py": """
        CALLS = []
        class LlamaForCausalLM:
            def embed(self, x):
                CALLS.append(x)
                return x * 2
        class Derived(LlamaForCausalLM):
            pass
        class NoEmbed:
            def forward(self):
                return 0
    """,
    "vision/__init__.py": "",
    "vision/clip.py": """
        class ClipVision:
            @classmethod
            def embed(cls, x):
                return (cls.__name__, x)
    """,
}


@pytest.fixture
def model_package(tmp_path, monkeypatch):
    name = f"wcpkg_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "site"
    for relative, text in MODELS.items():
        path = root / name / "models" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (root / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def wildcard_yaml(package, class_pattern="*"):
    return f"""
        - symbol: "{package}.models.*:{class_pattern}.embed"
          name: multimodalEmbedding
          domain: Multimodal
    """


def test_wildcard_hooks_modules_as_they_are_imported(tmp_path, model_package, capture):
    instrumentor = instrument_file(capture, tmp_path, wildcard_yaml(model_package))
    assert not any(m.startswith(model_package) for m in sys.modules)  # nothing imported for it
    assert instrumentor.hooks == []
    llama = importlib.import_module(f"{model_package}.models.llama")
    assert [h.symbol for h in instrumentor.hooks] == [
        f"{model_package}.models.llama:LlamaForCausalLM.embed"]
    assert llama.LlamaForCausalLM().embed(2) == 4 and llama.Derived().embed(3) == 6
    assert llama.CALLS == [2, 3]
    spans = capture.named("multimodalEmbedding")
    assert len(spans) == 2 and spans[0].attributes["ms.domain"] == "Multimodal"
    clip = importlib.import_module(f"{model_package}.models.vision.clip")
    assert clip.ClipVision.embed(1) == ("ClipVision", 1)
    assert len(capture.named("multimodalEmbedding")) == 3
    # the package itself is not under its prefix; the modules keep their real loaders
    package = importlib.import_module(f"{model_package}.models")
    assert wrapping.hook_of(package.AtPackageLevel.__dict__["embed"]) is None
    assert type(llama.__loader__).__name__ == "SourceFileLoader"
    assert llama.__spec__.loader is llama.__loader__


def test_wildcard_class_pattern_and_modules_imported_before(tmp_path, model_package, capture):
    llama = importlib.import_module(f"{model_package}.models.llama")
    instrumentor = instrument_file(capture, tmp_path, wildcard_yaml(model_package, "Clip*"))
    assert instrumentor.hooks == []  # llama is loaded, but has no class matching Clip*
    clip = importlib.import_module(f"{model_package}.models.vision.clip")
    assert [h.symbol for h in instrumentor.hooks] == [
        f"{model_package}.models.vision.clip:ClipVision.embed"]
    assert llama.LlamaForCausalLM().embed(1) == 2 and clip.ClipVision.embed(0) == ("ClipVision",
                                                                                    0)
    assert len(capture.named("multimodalEmbedding")) == 1


def test_wildcard_on_modules_loaded_at_start_and_uninstrument(tmp_path, model_package, capture):
    llama = importlib.import_module(f"{model_package}.models.llama")
    original = llama.LlamaForCausalLM.__dict__["embed"]
    watchers_before = list(sys.meta_path)
    instrumentor = instrument_file(capture, tmp_path, wildcard_yaml(model_package))
    assert len(instrumentor.hooks) == 1 and len(sys.meta_path) == len(watchers_before) + 1
    instrumentor.uninstrument()
    assert llama.LlamaForCausalLM.__dict__["embed"] is original
    assert sys.meta_path == watchers_before
    clip = importlib.import_module(f"{model_package}.models.vision.clip")
    assert wrapping.hook_of(clip.ClipVision.__dict__["embed"]) is None


def test_wildcard_and_concrete_entry_of_one_method_chain(tmp_path, model_package, modules,
                                                         capture):
    _, handlers = modules
    instrument_file(capture, tmp_path, wildcard_yaml(model_package) + f"""
        - symbol: {model_package}.models.llama:LlamaForCausalLM.embed
          handler: {handlers.__name__}:reference_style
    """)
    llama = importlib.import_module(f"{model_package}.models.llama")
    assert llama.LlamaForCausalLM().embed(5) == 10
    assert llama.CALLS == [5] and handlers.ORDER == [("reference", 10)]
    assert len(capture.named("multimodalEmbedding")) == 1
