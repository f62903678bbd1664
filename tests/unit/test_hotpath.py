"""The compiled hot path (``otel_vllm_ascend/_hotpath.c``) against its Python twins.

Every case runs on both :func:`handler_calls.around_handler` wrappers, the C one and the
Python closure it mirrors, and expects the same: the original runs exactly once, its result or
exception (the same object) passes through, the halves get the same arguments, and the failure
policy, the gates and the self meter behave alike. ``stamp`` likewise, across threads and a
fork. The runner phases' C part (``handlers.model``) gives the same records as its Python twin
over one transcript of phases, inside and outside runner steps, and their failures.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import sys
import threading
import time
import weakref
from collections import deque

import pytest

from otel_vllm_ascend import hotpath, native_thread, recorder, wrapping
from otel_vllm_ascend.handlers import common, meta, model, spec_decode
from otel_vllm_ascend.hook import HOOK_MARKER, Hook
from otel_vllm_ascend.selfmeter import meter


def test_the_compiled_part_is_built_in_the_test_environment():
    # `make test` installs the project with a C compiler at hand; without the module, the
    # cases below would test the Python closure twice.
    assert hotpath._built is not None, \
        "otel_vllm_ascend._hotpath was not built (pip install -e . with gcc and Python headers)"
    assert native_thread.stamp is not native_thread._stamp


@pytest.fixture(params=["compiled", "python"])
def kind(request, monkeypatch):
    if request.param == "compiled":
        monkeypatch.delenv(hotpath.PURE_PYTHON_ENV, raising=False)
        assert hotpath.compiled() is not None
    else:
        monkeypatch.setenv(hotpath.PURE_PYTHON_ENV, "1")
    return request.param


class Halves:
    """An AroundHandler whose halves record their calls and do what a case asks."""

    def __init__(self, state="state", before_raises=None, after_raises=None, after_returns=None,
                 **options):
        self.calls = []
        self.state, self.before_raises = state, before_raises
        self.after_raises, self.after_returns = after_raises, after_returns
        self.handler = wrapping.AroundHandler(self.before, self.after, "halves", **options)

    def before(self, this, args, kwargs):
        self.calls.append(("before", this, args, dict(kwargs)))
        if self.before_raises is not None:
            raise self.before_raises
        return self.state

    def after(self, state, this, args, kwargs, result, error):
        self.calls.append(("after", state, this, args, dict(kwargs), result, error))
        if error is not None:  # what capture_exception() formats
            self.error_frames = [frame.function for frame in
                                 inspect.getinnerframes(error.__traceback__)]
        if self.after_raises is not None:
            raise self.after_raises
        return self.after_returns


class RecordingHook(Hook):
    """A Hook whose failures are kept, not counted towards its removal."""

    __slots__ = ("failed_with",)

    def failed(self, exc):
        self.failed_with.append(exc)


def hooked(kind, halves, func, binding="function"):
    hook = RecordingHook(None, None, func.__name__, func, False, func, binding, halves.handler)
    hook.active = True
    hook.failed_with = []
    wrapper = wrapping.build_wrapper(hook)
    assert (type(wrapper).__name__ == "AroundWrapper") == (kind == "compiled")
    return hook, wrapper


class Original:
    def __init__(self, raises=None):
        self.calls = []
        self.raises = raises

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.raises is not None:
            raise self.raises
        return ("result", args, kwargs)


def function_of(original):
    def target(a, b=2, *, c=3):
        return original(a, b, c=c)
    return target


def test_a_function_call_goes_through_both_halves(kind):
    original = Original()
    halves = Halves()
    hook, wrapper = hooked(kind, halves, function_of(original))
    assert wrapper(1, b=5, c=7) == ("result", (1, 5), {"c": 7})
    assert len(original.calls) == 1
    assert halves.calls == [("before", None, (1,), {"b": 5, "c": 7}),
                            ("after", "state", None, (1,), {"b": 5, "c": 7},
                             ("result", (1, 5), {"c": 7}), None)]
    assert hook.failed_with == []


def test_an_after_only_handler_gets_true_as_its_state(kind, monkeypatch):
    """``wrapping.always`` as ``before``: the wrappers skip that call, the state is True."""
    monkeypatch.setattr(meter, "on", True)
    meter.reset()
    original = Original()
    halves = Halves()
    halves.handler.before = wrapping.always
    hook, wrapper = hooked(kind, halves, function_of(original))
    hook.symbol = "pkg.mod:target"
    assert wrapper(1) == ("result", (1, 2), {"c": 3}) and len(original.calls) == 1
    assert halves.calls == [("after", True, None, (1,), {}, ("result", (1, 2), {"c": 3}), None)]
    assert meter.by_symbol["pkg.mod:target"][0] == 1
    meter.reset()


def test_a_method_is_bound_like_a_function(kind):
    halves = Halves()

    class Target:
        def method(self, x, y=0):
            return (self, x, y)

    hook, wrapper = hooked(kind, halves, Target.method, binding="method")
    Target.method = wrapper
    target = Target()
    assert target.method(1, y=2) == (target, 1, 2)
    assert Target.method(target, 3) == (target, 3, 0)
    bound = target.method
    assert bound.__self__ is target and bound(4) == (target, 4, 0)
    assert [call[1] for call in halves.calls if call[0] == "before"] == [target] * 3
    assert halves.calls[0][2] == (1,) and halves.calls[0][3] == {"y": 2}


def test_classmethod_and_staticmethod(kind):
    halves = Halves()

    class Target:
        @classmethod
        def build(cls, x):
            return (cls, x)

        @staticmethod
        def plain(x):
            return x * 2

    _, build = hooked(kind, halves, Target.__dict__["build"].__func__, binding="classmethod")
    _, plain = hooked(kind, halves, Target.__dict__["plain"].__func__, binding="staticmethod")
    Target.build, Target.plain = classmethod(build), staticmethod(plain)

    class Sub(Target):
        pass

    assert Target.build(1) == (Target, 1) and Sub.build(2) == (Sub, 2)
    assert Sub().build(3) == (Sub, 3)
    assert Target.plain(4) == 8 and Target().plain(5) == 10
    befores = [call[1:3] for call in halves.calls if call[0] == "before"]
    assert befores == [(Target, (1,)), (Sub, (2,)), (Sub, (3,)), (None, (4,)), (None, (5,))]


def test_before_returning_none_runs_the_original_alone(kind):
    original = Original()
    halves = Halves(state=None)
    _, wrapper = hooked(kind, halves, function_of(original))
    assert wrapper(1) == ("result", (1, 2), {"c": 3})
    assert [call[0] for call in halves.calls] == ["before"] and len(original.calls) == 1


def test_a_failing_before_is_reported_and_the_original_still_runs(kind):
    original = Original()
    error = ValueError("before broke")
    halves = Halves(before_raises=error)
    hook, wrapper = hooked(kind, halves, function_of(original))
    assert wrapper(1) == ("result", (1, 2), {"c": 3})
    assert hook.failed_with == [error] and len(original.calls) == 1
    assert [call[0] for call in halves.calls] == ["before"]


def test_a_base_exception_in_before_propagates_as_in_python(kind):
    original = Original()
    halves = Halves(before_raises=KeyboardInterrupt())
    hook, wrapper = hooked(kind, halves, function_of(original))
    with pytest.raises(KeyboardInterrupt):
        wrapper(1)
    assert original.calls == [] and hook.failed_with == []


@pytest.mark.parametrize("after_errors", [False, True])
def test_the_originals_exception_passes_through_untouched(kind, after_errors):
    error = RuntimeError("vLLM's own")
    original = Original(raises=error)
    halves = Halves(after_errors=after_errors)
    hook, wrapper = hooked(kind, halves, function_of(original))
    hook.failures = 3
    with pytest.raises(RuntimeError) as raised:
        wrapper(1)
    assert raised.value is error and len(original.calls) == 1
    frames = [frame.function for frame in inspect.getinnerframes(raised.value.__traceback__)]
    assert frames[-1] == "__call__" and "target" in frames  # where it was raised
    if after_errors:
        assert halves.calls[-1] == ("after", "state", None, (1,), {}, None, error)
        assert halves.error_frames[-1] == "__call__" and "target" in halves.error_frames
        assert hook.failures == 0
    else:
        assert [call[0] for call in halves.calls] == ["before"] and hook.failures == 3


def test_a_failing_after_keeps_the_original_outcome(kind):
    original = Original()
    error = ValueError("after broke")
    halves = Halves(after_raises=error, wraps_result=True)
    hook, wrapper = hooked(kind, halves, function_of(original))
    assert wrapper(1) == ("result", (1, 2), {"c": 3})
    assert hook.failed_with == [error]

    original = Original(raises=LookupError("original"))
    halves = Halves(after_raises=ValueError("after broke"), after_errors=True)
    hook, wrapper = hooked(kind, halves, function_of(original))
    with pytest.raises(LookupError):
        wrapper(1)
    assert [type(exc) for exc in hook.failed_with] == [ValueError]


def test_a_successful_call_resets_the_failure_count(kind):
    halves = Halves()
    hook, wrapper = hooked(kind, halves, function_of(Original()))
    hook.failures = 2
    wrapper(1)
    assert hook.failures == 0


def test_wraps_result_hands_the_caller_what_after_returns(kind):
    wrapped = object()
    halves = Halves(after_returns=wrapped, wraps_result=True)
    _, wrapper = hooked(kind, halves, function_of(Original()))
    assert wrapper(1) is wrapped
    halves = Halves(after_returns=wrapped)
    _, wrapper = hooked(kind, halves, function_of(Original()))
    assert wrapper(1) == ("result", (1, 2), {"c": 3})


def test_only_first_passes_other_strings_straight_through(kind):
    original = Original()
    halves = Halves(only_first=frozenset({"forward"}))

    def record_function(name, *rest):
        return original(name, *rest)

    _, wrapper = hooked(kind, halves, record_function)
    wrapper("bookkeep")
    assert halves.calls == []
    wrapper("forward")
    wrapper(7)  # not a string: the handler decides
    wrapper(name="forward")  # no positional argument: likewise
    assert [call[2] for call in halves.calls if call[0] == "before"] == [("forward",), (7,), ()]
    assert len(original.calls) == 4


def test_an_inactive_hook_calls_the_original_alone(kind):
    original = Original()
    halves = Halves()
    hook, wrapper = hooked(kind, halves, function_of(original))
    hook.active = False
    assert wrapper(1) == ("result", (1, 2), {"c": 3})
    assert halves.calls == [] and len(original.calls) == 1


@pytest.mark.parametrize("state", ["state", None])
def test_the_self_meter_counts_our_part_per_symbol(kind, state, monkeypatch):
    monkeypatch.setattr(meter, "on", True)
    meter.reset()
    original = Original()

    def slow(*args):
        deadline = time.thread_time_ns() + 20_000_000
        while time.thread_time_ns() < deadline:  # 20 ms of CPU inside the original
            pass
        return original(*args)

    halves = Halves(state=state)
    hook, wrapper = hooked(kind, halves, slow)
    hook.symbol = "pkg.mod:slow"
    wrapper(1)
    wrapper(2)
    calls, hot_ns = meter.by_symbol["pkg.mod:slow"]
    assert calls == 2 and meter.hot_calls == 2
    assert 0 < hot_ns < 10_000_000  # the original's 2 x 20 ms are not ours
    meter.reset()


def test_the_wrapper_looks_like_the_original(kind):
    halves = Halves()

    def target(a, b=2, *, c=3):
        """The original's doc."""
        return a

    target.custom = "kept"
    hook, wrapper = hooked(kind, halves, target)
    assert wrapper.__name__ == "target" and wrapper.__doc__ == "The original's doc."
    assert wrapper.__qualname__ == target.__qualname__ and wrapper.__module__ == __name__
    assert wrapper.__wrapped__ is target and wrapper.custom == "kept"
    assert getattr(wrapper, HOOK_MARKER) is hook
    assert inspect.signature(wrapper) == inspect.signature(target)
    assert weakref.ref(wrapper)() is wrapper


def test_a_dropped_wrapper_is_collected(kind):
    halves = Halves()
    _, wrapper = hooked(kind, halves, function_of(Original()))
    wrapper.cycle = wrapper  # a reference cycle through its own attributes
    gone = weakref.ref(wrapper)
    del wrapper
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("which", ["compiled", "python"])
def test_stamp_is_now_and_the_calling_threads_os_id(which):
    stamp = native_thread.stamp if which == "compiled" else native_thread._stamp
    before = time.time_ns()
    now, tid = stamp()
    assert before <= now <= time.time_ns()
    assert tid == threading.get_native_id()
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(stamp=stamp()[1],
                                                         native=threading.get_native_id()))
    thread.start()
    thread.join()
    assert seen["stamp"] == seen["native"] != tid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("which", ["compiled", "python"])
def test_stamp_in_a_forked_child_gives_the_childs_thread_id(which):
    stamp = native_thread.stamp if which == "compiled" else lambda: native_thread._stamp()
    stamp()  # the parent's id is read (and kept) first
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit code
        try:
            ok = stamp()[1] == threading.get_native_id() == os.getpid()
            os.write(writer, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(writer)
    try:
        answer = os.read(reader, 1)
    finally:
        os.close(reader)
        os.waitpid(pid, 0)
    assert answer == b"1", f"{which} stamp() gave the parent's thread id in a forked child"
    assert sys.modules["otel_vllm_ascend.native_thread"] is native_thread


def test_the_compiled_wrapper_reads_flags_of_objects_without_slots_by_name():
    # Hook and Meter keep their flags in __slots__, which the compiled wrapper reads in place;
    # any other object's are read as attributes, each call.
    calls = []
    hook = type("PlainHook", (), {"failed": lambda self, exc: calls.append(exc)})()
    hook.active, hook.failures, hook.symbol = False, 1, "plain"
    plain_meter = type("PlainMeter", (), {})()
    plain_meter.on = False
    wrapper = hotpath._built.AroundWrapper(
        hook, lambda x: x + 1, lambda this, args, kwargs: calls.append("before") or "s",
        lambda *a: calls.append("after"), plain_meter, False, False, False, None)
    assert wrapper(1) == 2 and calls == []
    hook.active = True
    assert wrapper(2) == 3 and calls == ["before", "after"] and hook.failures == 0
    del hook.active
    with pytest.raises(AttributeError):
        wrapper(3)


# -- the model runner's phases: _hotpath.PhaseBegins against handlers.model._phase_begins ------

class Scope:
    """A runner's own context manager: says what it saw, may swallow or raise at its exit."""

    def __init__(self, name, swallow=False, exit_raises=None):
        self.name, self.swallow, self.exit_raises = name, swallow, exit_raises
        self.custom = f"attribute of {name}"
        self.exits = []

    def __enter__(self):
        return f"entered {self.name}"

    def __exit__(self, *exc):
        self.exits.append(exc[0])
        if self.exit_raises is not None:
            raise self.exit_raises
        return self.swallow


def _span_shape(span):
    """A WorkerSpan without its clock: (name, ordered, this thread, request ids, accepted,
    error's type name)."""
    name, start, end, tid, request_ids, accepted, error = span
    return (name, 0 < start <= end, tid == threading.get_native_id(), request_ids, accepted,
            None if error is None else type(error).__name__)


def _phases_transcript(kind, monkeypatch):
    """One runner step's phases inside its call, then a phase outside any (vLLM 0.32's
    sampling), with the errors a block and a manager can raise; the spans as recorded."""
    monkeypatch.setattr(common, "_role_recorded", "worker")
    queue = deque()
    monkeypatch.setattr(recorder._state, "queue", queue)
    monkeypatch.setattr(recorder._state, "thread", object())  # no drain thread: we read it
    monkeypatch.setattr(meter, "on", True)
    meter.reset()
    if model._compiled_phase_begins is not None:
        monkeypatch.setattr(model._compiled_phase_begins, "ready", False)
    scopes = []

    def original(name, **options):
        scopes.append(Scope(name, **options))
        return scopes[-1]

    def vllm_scope(name):  # what vLLM hands out when not profiling
        return contextlib.nullcontext(name)

    handler = model.record_function_or_nullcontext
    hook = RecordingHook(None, None, "record_function_or_nullcontext", vllm_scope, False,
                         vllm_scope, "function", handler)
    hook.active, hook.failed_with, hook.symbol = True, [], "runner phases"
    phases = wrapping.build_wrapper(hook)
    own_hook = RecordingHook(None, None, "own", original, False, original, "function",
                             handler)
    own_hook.active, own_hook.failed_with, own_hook.symbol = True, [], "own phases"
    own_phases = wrapping.build_wrapper(own_hook)
    seen = []

    monkeypatch.setattr(model, "_open_step", [])  # inside the runner's call
    monkeypatch.setattr(model, "_step_request_ids", ["r-1", "r-2"])
    for tag in ("gpu_model_runner: preprocess", "gpu_model_runner: forward",
                "gpu_model_runner: bookkeep"):
        with phases(tag) as value:
            seen.append(value)
    context = phases("Postprocess")
    seen.append(type(context).__name__)
    with pytest.raises(KeyError):
        with context:
            raise KeyError("the block failed")
    with own_phases("forward", swallow=True) as value:
        seen.append(value)
        seen.append(own_phases("forward", swallow=True).custom)  # reads through
        raise ValueError("swallowed by the runner's manager")
    with pytest.raises(OSError):
        with own_phases("prepare input", exit_raises=OSError("the manager's exit failed")):
            pass
    inside = [_span_shape(span) for span in model._open_step]

    monkeypatch.setattr(model, "_open_step", None)  # vLLM 0.32's sampling phase
    with phases("gpu_model_runner: sample"):
        model.record_worker_span("sample", 1, 2, threading.get_native_id(), None, None)
    with pytest.raises(RuntimeError):
        with phases("Sample"):
            raise RuntimeError("sampling failed")
    outside = [(task[0].__name__, [_span_shape(span) for span in task[1]]) for task in queue]
    assert model._open_step is None
    return (seen, inside, outside, [scope.exits for scope in scopes],
            meter.by_symbol[model.PHASE_EXIT_SYMBOL][0], hook.failed_with)


def test_the_phases_record_the_same_in_c_and_in_python(kind, monkeypatch):
    seen, inside, outside, exits, metered, failures = _phases_transcript(kind, monkeypatch)
    rid = ["r-1", "r-2"]
    assert seen == ["gpu_model_runner: preprocess", "gpu_model_runner: forward",
                    "gpu_model_runner: bookkeep",
                    "PhaseContext" if kind == "compiled" else "_PhaseContext",
                    "entered forward", "attribute of forward"]
    assert inside == [("prepare input", True, True, None, None, None),
                      ("forward", True, True, rid, None, None),
                      ("post process", True, True, None, None, "KeyError"),
                      ("forward", True, True, rid, None, "ValueError"),
                      ("prepare input", True, True, None, None, None)]
    assert outside == [("worker.spans", [("sample", True, True, None, None, None),
                                         ("sample_token", True, True, None, None, None)]),
                       ("worker.spans", [("sample_token", True, True, None, None,
                                          "RuntimeError")])]
    assert exits == [[ValueError], [], [None]]
    assert metered == 7 and failures == []
    if kind == "compiled":
        assert model._compiled_phase_begins.ready  # the twin ran once, then the C one
    meter.reset()


class SchedulerOutput:
    """The one field of vLLM's SchedulerOutput the runner's hook reads."""

    def __init__(self, tokens):
        self.num_scheduled_tokens = tokens


def _runner_transcript(kind, monkeypatch):
    """Model-runner steps with the logits' span inside and outside them, failing and not, as
    the spans are queued."""
    monkeypatch.setattr(common, "_role_recorded", "worker")
    monkeypatch.setattr(meta, "_recorded", True)
    queue = deque()
    monkeypatch.setattr(recorder._state, "queue", queue)
    monkeypatch.setattr(recorder._state, "thread", object())  # no drain thread: we read it

    def logits(x, fail=False):
        if fail:
            raise ValueError("logits failed")
        return x + 1

    logits_hook = RecordingHook(None, None, "forward", logits, False, logits, "function",
                                model.compute_logits)
    logits_hook.active, logits_hook.failed_with = True, []
    hooked_logits = wrapping.build_wrapper(logits_hook)

    class Runner:
        def execute_model(self, scheduler_output, accept=None, fail=False):
            assert hooked_logits(1) == 2
            with pytest.raises(ValueError):
                hooked_logits(1, fail=True)
            if accept is not None:
                spec_decode._step.accepted_by_request = accept
            if fail:
                raise RuntimeError("the step failed")
            return "output"

    runner_hook = RecordingHook(None, None, "execute_model", Runner.execute_model, False,
                                Runner.execute_model, "method", model.execute_model_runner)
    runner_hook.active, runner_hook.failed_with = True, []
    execute = wrapping.build_wrapper(runner_hook)
    runner, results = Runner(), []
    results.append(execute(runner, SchedulerOutput({"r-1": 1, "r-2": 3})))
    results.append(execute(runner, SchedulerOutput({"r-3": 2}), accept={"r-3": 1}))
    results.append(execute(runner, scheduler_output=SchedulerOutput({"r-4": 1})))
    results.append(execute(runner, SchedulerOutput({})))  # nothing scheduled: no record
    results.append(model._step_request_ids)
    with pytest.raises(RuntimeError):
        execute(runner, SchedulerOutput({"r-5": 1}), fail=True)
    results.append(hooked_logits(5))  # outside any runner call
    tasks = [(task[0].__name__, [_span_shape(span) for span in task[1]]) for task in queue]
    failures = runner_hook.failed_with + logits_hook.failed_with
    return results, tasks, model._open_step, failures


def test_runner_steps_and_the_spans_inside_record_the_same_in_both_wrappers(kind, monkeypatch):
    results, tasks, open_step, failures = _runner_transcript(kind, monkeypatch)
    assert results == ["output", "output", "output", "output", [], 6]

    def step(request_ids, accepted=None, error=None):
        return ("worker.spans", [("computing_logits", True, True, None, None, None),
                                 ("computing_logits", True, True, None, None, "ValueError"),
                                 ("modelRunnerExec", True, True, request_ids, accepted, error)])

    def alone(error=None):  # a span outside any runner call: a record of its own
        return ("worker.spans", [("computing_logits", True, True, None, None, error)])

    assert tasks == [step(["r-1", "r-2"]), step(["r-3"], {"r-3": 1}), step(["r-4"]),
                     alone(), alone("ValueError"),  # the step with nothing scheduled
                     step(["r-5"], error="RuntimeError"), alone()]
    assert open_step is None and failures == []


def test_with_an_npu_to_synchronise_the_python_twin_keeps_the_phases(kind, monkeypatch):
    """On Ascend the logits' span and the forward phase synchronise the NPU stream at their
    start and end: the phases' C part leaves them to its twin (here a stand-in stream)."""
    synchronised = []
    monkeypatch.setattr(model, "_npu_checked", True)
    monkeypatch.setattr(model, "_npu_synchronize", lambda: synchronised.append(1))
    monkeypatch.setattr(common, "_role_recorded", "worker")
    monkeypatch.setattr(recorder._state, "queue", deque())
    monkeypatch.setattr(recorder._state, "thread", object())
    if model._compiled_phase_begins is not None:
        monkeypatch.setattr(model._compiled_phase_begins, "ready", False)
    monkeypatch.setattr(model, "_open_step", [])
    monkeypatch.setattr(model, "_step_request_ids", ["r-1"])
    hooks = []
    for handler, original in ((model.compute_logits, lambda x: x + 1),
                              (model.record_function_or_nullcontext, contextlib.nullcontext)):
        hook = RecordingHook(None, None, "target", original, False, original, "function",
                             handler)
        hook.active, hook.failed_with = True, []
        hooks.append(wrapping.build_wrapper(hook))
    logits, phases = hooks
    for _ in range(2):
        assert logits(1) == 2
        with phases("forward"):
            pass
    assert len(synchronised) == 8  # each span's start and end, both times
    assert [_span_shape(span) for span in model._open_step] == [
        ("computing_logits", True, True, None, None, None),
        ("forward", True, True, ["r-1"], None, None)] * 2
    assert model._compiled_phase_begins is None or not model._compiled_phase_begins.ready
