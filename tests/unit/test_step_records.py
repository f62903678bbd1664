"""An engine step's and a Worker step's spans, attribute by attribute, against a golden file.

``fixtures/step_spans.json`` holds the spans the per-span records made (commit ``4a84958``,
before the one-record-per-step hand-off) for a scripted run of the EngineCore hooks
(``schedule`` with queue churn and KV changes, an empty step, ``modelExec`` blocking and
non-blocking) and the Worker hooks (the runner, recorded and unrecorded phases, failing phases
inside and outside the runner's call, ``computing_logits``, ``sample`` and a failing
``sample``, a failing runner). Every path must still make
exactly those spans: built in the serving process (``OTEL_VLLM_WRITER=0``) and through the
hand-off to the writer (to_wire, a marshal frame, from_wire in a fresh producer state).

Regenerate (only when the spans are meant to change): ``OTEL_VLLM_WRITE_GOLDEN=1`` and run this
module.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import DEFAULT_ON

from otel_vllm_ascend import control, handoff, native_thread, recorder
from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.handlers import common, model, request, scheduler

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "step_spans.json"
TID = 4242


class _Request(SimpleNamespace):
    """A scheduler queue member: compared by identity, as vLLM's Requests are."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def _request(rid: str, traced: bool) -> _Request:
    headers = {"traceparent": f"00-{int(rid[1:]) + 0xabc:032x}-{0x77:016x}-01"} if traced \
        else None
    return _Request(request_id=rid, trace_headers=headers)


class _Scheduler:
    """What the schedule hook reads of vLLM's Scheduler."""

    def __init__(self) -> None:
        self.requests: dict = {}
        self.running: list = []
        self.waiting: list = []
        self.free = 60
        self.kv_cache_config = SimpleNamespace(num_blocks=64)
        self.kv_cache_manager = SimpleNamespace(
            block_pool=SimpleNamespace(get_num_free_blocks=lambda: self.free), usage=0.0)


def _output(new=(), cached=(), finished=(), scheduled=None):
    scheduled = dict(scheduled or {})
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=rid, prompt_token_ids=[0] * prompt,
                                            num_computed_tokens=0) for rid, prompt in new],
        scheduled_cached_reqs=SimpleNamespace(req_ids=[rid for rid, _ in cached],
                                              num_computed_tokens=[n for _, n in cached]),
        finished_req_ids=set(finished), num_scheduled_tokens=scheduled,
        total_num_scheduled_tokens=sum(scheduled.values()))


def _engine_steps(sched: _Scheduler) -> None:
    """Four engine steps, one of them empty, with churned queues and KV changes."""
    reqs = {rid: _request(rid, traced=rid != "r3") for rid in ("r1", "r2", "r3", "r4")}
    common.request_contexts.put("r2", common.parse_traceparent(reqs["r2"].trace_headers))
    for rid in ("r1", "r2", "r3"):
        sched.requests[rid] = reqs[rid]
        sched.waiting.append(reqs[rid])

    def step(output, move, free, usage):
        def original():
            for rid, to_running in move:
                member = reqs[rid]
                if to_running:
                    sched.waiting.remove(member)
                    sched.running.append(member)
                else:
                    sched.running.remove(member)
            sched.free = free
            sched.kv_cache_manager.usage = usage
            return output
        return scheduler.schedule(original, sched)

    first = step(_output(new=[("r1", 8), ("r2", 4)], scheduled={"r1": 8, "r2": 4}),
                 [("r1", True), ("r2", True)], 57, 0.1)
    model.execute_model(lambda out, non_block=False: "done", None, first)  # blocking
    sched.requests["r4"] = reqs["r4"]
    sched.waiting.append(reqs["r4"])
    second = step(_output(new=[("r3", 16)], cached=[("r1", 8), ("r2", 4)],
                          scheduled={"r1": 1, "r2": 1, "r3": 8}), [("r3", True)], 50, 0.2)
    pending: Future = Future()
    model.execute_model(lambda out, non_block=False: pending, None, second, non_block=True)
    third = step(_output(cached=[("r1", 9), ("r3", 8)], finished=["r2"],
                         scheduled={"r1": 1, "r3": 8}), [("r2", False)], 52, 0.15)
    pending.set_result("done")  # modelExec of the second step ends after the third's schedule
    model.execute_model(lambda out, non_block=False: "done", None, third)
    step(_output(), [], 52, 0.15)  # an empty step: nothing recorded, nothing classified
    fourth = step(_output(new=[("r4", 3)], cached=[("r3", 16)], finished=["r1"],
                          scheduled={"r3": 1, "r4": 3}), [("r1", False), ("r4", True)], 49, 0.2)
    model.execute_model(lambda out, non_block=False: "done", None, fourth)


class _Phase:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _worker_steps() -> None:
    """Three Worker steps: runner, phases (one unrecorded, some failing), logits and sampling;
    a failing runner."""
    for index, rids in enumerate((["r1", "r2"], ["r3"])):
        output = SimpleNamespace(num_scheduled_tokens={rid: 1 for rid in rids})
        runner_this = SimpleNamespace()

        def runner(out, index=index):
            for tag in ("gpu_model_runner: preprocess", "gpu_model_runner: forward",
                        "gpu_model_runner: bookkeep", "gpu_model_runner: postprocess"):
                with model.record_function_or_nullcontext(lambda name: _Phase(), None, tag):
                    pass
            model.compute_logits(lambda hidden: "logits", SimpleNamespace(), "hidden")
            if index:  # a phase that fails inside the runner, which carries on
                try:
                    with model.record_function_or_nullcontext(
                            lambda name: _Phase(), None, "gpu_model_runner: postprocess"):
                        raise KeyError("postprocess failed")
                except KeyError:
                    pass
            return "runner output"

        model.execute_model_runner(runner, runner_this, output)
        with model.record_function_or_nullcontext(lambda name: _Phase(), None,
                                                  "gpu_model_runner: sample"):
            model.sampler_forward(lambda logits: "tokens", SimpleNamespace(), "logits")
        if index:
            with pytest.raises(KeyError):
                with model.record_function_or_nullcontext(lambda name: _Phase(), None,
                                                          "gpu_model_runner: draft"):
                    raise KeyError("draft failed")

            def failing_sample(logits):
                raise ValueError("sampling failed")

            with pytest.raises(ValueError):
                model.sampler_forward(failing_sample, SimpleNamespace(), "logits")

    def failing_runner(out):
        with model.record_function_or_nullcontext(lambda name: _Phase(), None,
                                                  "gpu_model_runner: preprocess"):
            pass
        raise RuntimeError("runner failed")

    with pytest.raises(RuntimeError):  # the runner fails: its span and its phase's still made
        model.execute_model_runner(failing_runner, SimpleNamespace(),
                                   SimpleNamespace(num_scheduled_tokens={"r4": 3}))


def _core_output(rid: str, finished: bool = False) -> SimpleNamespace:
    return SimpleNamespace(request_id=rid, finish_reason="length" if finished else None)


def _api_steps() -> None:
    """Three calls of the API server's ``process_outputs``: finishing requests (one vLLM keeps,
    as 0.32 keeps a streaming input between chunks: no httpRes; one it drops), a state without
    an external id, an output whose state vLLM no longer has."""
    states = {f"r{i}-int": SimpleNamespace(external_req_id=f"ext{i}",
                                           prompt_token_ids=[0] * (i + 3),
                                           stats=SimpleNamespace(num_generation_tokens=i + 1))
              for i in range(3)}
    states["r9-int"] = SimpleNamespace(prompt_token_ids=None, prompt_len=5, stats=None)
    this = SimpleNamespace(request_states=states)
    # ext1 arrived with the caller's context (add_request keeps it in its wire form)
    request._request_wires.put("ext1", handoff.context_to_wire(common.parse_traceparent(
        {"traceparent": f"00-{0x5150:032x}-{0x51:016x}-01"})))

    def step(outputs, dropped):
        def original(engine_core_outputs, engine_core_timestamp=None, iteration_stats=None):
            for rid in dropped:
                states.pop(rid)
        request.process_outputs(original, this, outputs, 0.0, None)

    step([_core_output("r0-int"), _core_output("r1-int"), _core_output("r9-int")], [])
    step([_core_output("r0-int"), _core_output("r1-int", finished=True),
          _core_output("r2-int", finished=True), _core_output("r9-int", finished=True)],
         ["r1-int", "r9-int"])
    step([_core_output("r0-int"), _core_output("gone-int")], [])


def _canonical(value):
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    return value


def _view(span) -> dict:
    """What an exporter reads, with the thread id and exception stack made comparable."""
    events = []
    for event in span.events:
        attributes = dict(event.attributes)
        if "exception.stacktrace" in attributes:
            attributes["exception.stacktrace"] = \
                attributes["exception.stacktrace"].strip().splitlines()[-1]
        events.append([event.name, _canonical(attributes), event.timestamp])
    attributes = dict(span.attributes)
    return {
        "name": span.name, "start": span.start_time, "end": span.end_time,
        "attributes": _canonical(attributes), "events": events,
        "links": [[link.context.trace_id, link.context.span_id, int(link.context.trace_flags)]
                  for link in span.links],
        "parent": [span.parent.trace_id, span.parent.span_id] if span.parent else None,
        "status": [span.status.status_code.name, span.status.description],
    }


@pytest.fixture
def scripted(monkeypatch):
    """A fresh process state, a clock that ticks by 10 ns, one thread id."""
    ticks = itertools.count(1_000_000, 10)
    monkeypatch.setattr(time, "time_ns", lambda: next(ticks))
    monkeypatch.setattr(native_thread, "current", SimpleNamespace(id=TID))
    monkeypatch.setattr(native_thread, "stamp", native_thread._stamp)  # reads both patches
    monkeypatch.setattr(recorder._state, "thread", object())  # drained by the test only:
    monkeypatch.setattr(recorder, "_drain", lambda: None)  # and not by an earlier test's thread
    monkeypatch.setattr(recorder._state, "handoff", None)
    monkeypatch.setattr(common, "_role_recorded", "engine_core")  # no role Meta record
    monkeypatch.setattr(common, "request_contexts", common.ContextMap())
    monkeypatch.setattr(request, "_request_wires", common.ContextMap())
    monkeypatch.setattr(common, "_last_batch", None)
    monkeypatch.setattr(handoff, "local_state", {}, raising=False)  # the expanders' state
    recorder._state.queue.clear()
    control.start(config=ProfilerConfig(enable=True))
    yield
    control.stop()
    recorder._state.queue.clear()


def _provider():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=DEFAULT_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _script_records() -> list:
    scheduler_state = _Scheduler()
    _engine_steps(scheduler_state)
    _worker_steps()
    _api_steps()
    queued = list(recorder._state.queue)
    recorder._state.queue.clear()
    return queued


def _built_here(queued: list) -> list:
    provider, exporter = _provider()
    recorder.SpanBuilding(provider).build(iter(queued))
    return [_view(span) for span in exporter.get_finished_spans()]


def _built_in_writer(queued: list) -> list:
    wires = [wire for wire in (handoff.to_wire(rec, recorder.Deferred) for rec in queued)
             if wire is not None]
    (kind, payload), = handoff.FrameReader().feed(handoff.records_frame(wires))
    assert kind == handoff.RECORDS
    state: dict = {}
    records = []
    for wire in payload:
        records.extend(handoff.from_wire(wire, state))
    provider, exporter = _provider()
    recorder.SpanBuilding(provider).build(records)
    return [_view(span) for span in exporter.get_finished_spans()]


def _golden() -> list:
    return json.loads(GOLDEN.read_text())


def test_spans_built_here_equal_the_golden_file(scripted):
    spans = _built_here(_script_records())
    if os.environ.get("OTEL_VLLM_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(spans, indent=1, sort_keys=True) + "\n")
    _assert_same(spans, _golden())


def test_spans_built_in_the_writer_equal_the_golden_file(scripted):
    _assert_same(_built_in_writer(_script_records()), _golden())


def _assert_same(spans: list, expected: list) -> None:
    assert [s["name"] for s in spans] == [s["name"] for s in expected]
    for got, want in zip(spans, expected):
        for field in want:  # one field at a time, so a failure names it
            assert got[field] == want[field], (want["name"], field)


class _FailingEnter(_Phase):
    def __enter__(self):
        raise OSError("no profiler")


def test_a_phase_outside_the_runner_goes_as_one_record_with_the_spans_inside_it(scripted):
    """vLLM 0.32's sampling phase: ``sample`` ends inside it; both cross as one record, in the
    order they ended. A phase whose own ``__enter__`` fails leaves nothing open."""
    with model.record_function_or_nullcontext(lambda name: _Phase(), None,
                                              "gpu_model_runner: sample"):
        model.sampler_forward(lambda logits: "tokens", SimpleNamespace(), "logits")
    with pytest.raises(OSError):
        with model.record_function_or_nullcontext(lambda name: _FailingEnter(), None,
                                                  "gpu_model_runner: sample"):
            pass
    assert model._open_step is None
    model.sampler_forward(lambda logits: "tokens", SimpleNamespace(), "logits")
    queued = list(recorder._state.queue)
    recorder._state.queue.clear()
    assert [[span[0] for span in arg] for _, arg in queued] == [["sample", "sample_token"],
                                                                 ["sample"]]
