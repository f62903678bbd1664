"""Fault injection: whatever our code does, the original runs exactly once per call and its
result or exception passes through; our errors are logged once per hook; 5 consecutive failures
remove the hook."""

from __future__ import annotations

import asyncio
import importlib
import logging

import pytest
from runtime_helpers import Capture, instrument, spec, write_module

from otel_vllm_ascend import recorder, wrapping

TARGET = """
CALLS = []

class Engine:
    def __init__(self):
        self.step_fn = self.step

    def step(self, x):
        CALLS.append(x)
        return {"result": x}

    def boom(self, x):
        CALLS.append(x)
        raise KeyError("original failed")

    async def astep(self, x):
        CALLS.append(x)
        return x + 100


def raise_before(original, this, *args, **kwargs):
    raise RuntimeError("handler broke before the call")

def raise_after(original, this, *args, **kwargs):
    original(*args, **kwargs)
    raise RuntimeError("handler broke after the call")

def call_twice(original, this, *args, **kwargs):
    original(*args, **kwargs)
    return original(*args, **kwargs)

def never_call(original, this, *args, **kwargs):
    return "not the original's result"

def replace_result(original, this, *args, **kwargs):
    original(*args, **kwargs)
    return "something else"

def swallow(original, this, *args, **kwargs):
    try:
        original(*args, **kwargs)
    except KeyError:
        return None

def reraise(original, this, *args, **kwargs):
    return original(*args, **kwargs)

async def async_raise_after(original, this, *args, **kwargs):
    await original(*args, **kwargs)
    raise RuntimeError("async handler broke")

async def async_never_call(original, this, *args, **kwargs):
    return 0


# Built-in style handlers: two halves around the original.
from otel_vllm_ascend.wrapping import AroundHandler, always

SEEN = []

def _note(state, this, args, kwargs, result, error):
    SEEN.append((state, args, result, type(error).__name__ if error else None))

def _broken_before(this, args, kwargs):
    raise RuntimeError("around broke before the call")

def _broken_after(state, this, args, kwargs, result, error):
    raise RuntimeError("around broke after the call")

around_ok = AroundHandler(lambda this, args, kwargs: "state", _note, "around_ok",
                          after_errors=True)
around_returns_only = AroundHandler(lambda this, args, kwargs: "state", _note,
                                    "around_returns_only")
around_skip = AroundHandler(lambda this, args, kwargs: None, _note, "around_skip")
around_raise_before = AroundHandler(_broken_before, _note, "around_raise_before")
around_raise_after = AroundHandler(always, _broken_after, "around_raise_after")
"""


@pytest.fixture
def capture():
    cap = Capture()
    yield cap
    from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor

    VllmServiceInstrumentor().uninstrument()


def _setup(tmp_path, capture, qualname, handler):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, qualname, handler=f"{name}:{handler}")])
    return module, instrumentor.hooks[0]


AROUND = ["around_ok", "around_returns_only", "around_skip", "around_raise_before",
          "around_raise_after"]
FAILING = ("raise_before", "raise_after", "never_call", "around_raise_before",
           "around_raise_after")


@pytest.fixture(params=[False, True], ids=["meter-off", "meter-on"])
def metering(request):
    from otel_vllm_ascend import selfmeter

    saved = selfmeter.meter.on
    selfmeter.meter.on = request.param
    yield request.param
    selfmeter.meter.on = saved
    selfmeter.meter.reset()


@pytest.mark.parametrize("handler", ["raise_before", "raise_after", "call_twice", "never_call",
                                     "replace_result"] + AROUND)
def test_original_runs_once_and_result_passes_through(tmp_path, capture, handler, metering):
    module, hook = _setup(tmp_path, capture, "Engine.step", handler)
    engine = module.Engine()
    result = engine.step(7)
    assert result == {"result": 7}
    assert module.CALLS == [7]
    assert hook.failures == (1 if handler in FAILING else 0)
    if handler in ("around_ok", "around_returns_only"):
        assert module.SEEN == [("state", (7,), {"result": 7}, None)]
    elif handler in ("around_skip", "around_raise_before"):
        assert module.SEEN == []  # nothing to record, or before failed: after is not called


@pytest.mark.parametrize("handler", ["swallow", "reraise", "raise_after"] + AROUND)
def test_original_exception_passes_through(tmp_path, capture, handler, metering):
    module, hook = _setup(tmp_path, capture, "Engine.boom", handler)
    with pytest.raises(KeyError, match="original failed"):
        module.Engine().boom(1)
    assert module.CALLS == [1]
    if handler == "around_ok":
        assert module.SEEN == [("state", (1,), None, "KeyError")]
    elif handler == "around_returns_only":
        assert module.SEEN == []  # without after_errors, after runs only on a return
    # the original's exception is never counted as ours; a broken before still is
    assert hook.failures == (1 if handler == "around_raise_before" else 0)


def test_around_handler_removed_after_five_consecutive_failures(tmp_path, capture):
    module, hook = _setup(tmp_path, capture, "Engine.step", "around_raise_after")
    assert wrapping.hook_of(module.Engine.__dict__["step"]) is hook
    engine = module.Engine()
    for i in range(5):
        assert engine.step(i) == {"result": i}
    assert hook.removed and module.CALLS == [0, 1, 2, 3, 4]


def test_around_handler_called_as_a_plain_handler():
    calls = []

    def original(x):
        calls.append(x)
        return x * 2

    seen = []
    handler = wrapping.AroundHandler(lambda this, args, kwargs: "s",
                                     lambda *state: seen.append(state), "h")
    assert handler(original, "this", 4) == 8 and calls == [4]
    assert seen == [("s", "this", (4,), {}, 8, None)]
    with pytest.raises(TypeError):
        handler(original, "this", None)  # None * 2: the original's error passes through
    assert len(seen) == 1 and calls == [4, None]  # after ran on the return only


def test_async_handler_failures(tmp_path, capture):
    module, hook = _setup(tmp_path, capture, "Engine.astep", "async_raise_after")
    assert asyncio.run(module.Engine().astep(1)) == 101
    assert module.CALLS == [1]
    assert hook.failures == 1


def test_async_handler_that_never_awaits_the_original(tmp_path, capture):
    module, hook = _setup(tmp_path, capture, "Engine.astep", "async_never_call")
    assert asyncio.run(module.Engine().astep(2)) == 102
    assert module.CALLS == [2]


def test_logged_once_then_removed_after_five_consecutive_failures(tmp_path, capture, caplog):
    module, hook = _setup(tmp_path, capture, "Engine.step", "raise_before")
    engine = module.Engine()
    bound_early = engine.step_fn  # a wrapper bound before the removal
    caplog.set_level(logging.DEBUG, logger="otel_vllm_ascend")
    for i in range(4):
        assert engine.step(i) == {"result": i}
    assert not hook.removed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Engine.step" in warnings[0].getMessage()
    assert "handler broke before the call" in warnings[0].getMessage()
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(debug) == 4
    assert engine.step(4) == {"result": 4}
    assert hook.removed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "removed after 5 consecutive" in warnings[1].getMessage()
    # The class holds the original again; the early-bound wrapper calls straight through.
    assert wrapping.hook_of(module.Engine.__dict__["step"]) is None
    assert bound_early(5) == {"result": 5}
    assert module.CALLS == [0, 1, 2, 3, 4, 5]
    assert hook.failures == 5


def test_success_resets_the_consecutive_count(tmp_path, capture, monkeypatch):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, "Engine.step")])
    hook = instrumentor.hooks[0]
    real_record = recorder.record_span
    fail = {"on": True}

    def flaky(*args, **kwargs):
        if fail["on"]:
            raise OSError("recorder broke")
        return real_record(*args, **kwargs)

    monkeypatch.setattr(recorder, "record_span", flaky)
    engine = module.Engine()
    for i in range(4):
        assert engine.step(i) == {"result": i}
    fail["on"] = False
    engine.step(4)
    assert hook.failures == 0
    fail["on"] = True
    for i in range(4):
        engine.step(i)
    assert not hook.removed
    engine.step(9)
    assert hook.removed
    assert module.CALLS == [0, 1, 2, 3, 4, 0, 1, 2, 3, 9]


def test_timer_failure_keeps_original_exception(tmp_path, capture, monkeypatch):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    instrumentor = instrument(capture, [spec(name, "Engine.boom")])

    def broken(*args, **kwargs):
        raise OSError("recorder broke")

    monkeypatch.setattr(recorder, "record_span", broken)
    with pytest.raises(KeyError, match="original failed"):
        module.Engine().boom(3)
    assert module.CALLS == [3]
    assert instrumentor.hooks[0].failures == 1


def test_unimportable_handler_falls_back_to_the_timer(tmp_path, capture, caplog):
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    with caplog.at_level(logging.WARNING):
        instrumentor = instrument(capture, [spec(name, "Engine.step",
                                                 handler="no_such_pkg.handlers:step")])
    assert len(instrumentor.hooks) == 1 and instrumentor.hooks[0].handler is None
    warnings = [r.getMessage() for r in caplog.records if "no_such_pkg" in r.getMessage()]
    assert len(warnings) == 1 and "default timer" in warnings[0]
    assert module.Engine().step(7) == {"result": 7}
    recorder.flush()
    assert [s.name for s in capture.spans()] == ["step"]


def test_only_first_sends_other_values_straight_to_the_original(metering):
    from otel_vllm_ascend import selfmeter
    from otel_vllm_ascend.hook import Hook

    def original(name, extra=None):
        return ("made", name, extra)

    before_seen, after_seen = [], []

    def before(this, args, kwargs):
        before_seen.append(args)
        return "state"

    def after(state, this, args, kwargs, result, error):
        after_seen.append(result)
        return ("wrapped", result)

    handler = wrapping.AroundHandler(before, after, "h", wraps_result=True,
                                     only_first=frozenset({"kept"}))
    hook = Hook(None, None, "original", original, False, original, "function", handler)
    hook.active = True
    wrapper = wrapping.build_wrapper(hook)
    selfmeter.meter.reset()
    assert wrapper("other", extra=1) == ("made", "other", 1)  # before and meter skipped
    assert before_seen == [] and after_seen == [] and selfmeter.meter.hot_calls == 0
    assert wrapper("kept") == ("wrapped", ("made", "kept", None))
    assert wrapper(3) == ("wrapped", ("made", 3, None))  # not a string: before decides
    assert wrapper(name="kept") == ("wrapped", ("made", "kept", None))  # keyword: before decides
    assert before_seen == [("kept",), (3,), ()]
    assert selfmeter.meter.hot_calls == (3 if metering else 0)


def test_only_first_on_a_method_reads_the_argument_after_this():
    from otel_vllm_ascend.hook import Hook

    class Engine:
        def run(self, name):
            return name.upper()

    seen = []
    handler = wrapping.AroundHandler(lambda this, args, kwargs: args,
                                     lambda state, *rest: seen.append(state), "h",
                                     only_first=frozenset({"kept"}))
    hook = Hook(None, None, "run", Engine.run, False, Engine.run, "method", handler)
    hook.active = True
    wrapper = wrapping.build_wrapper(hook)
    engine = Engine()
    assert wrapper(engine, "other") == "OTHER" and seen == []
    assert wrapper(engine, "kept") == "KEPT" and seen == [("kept",)]
