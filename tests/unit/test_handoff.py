"""The hand-off to the writer process: records as plain values in marshal frames.

Every record shape survives the trip (to_wire -> frame -> FrameReader -> from_wire) and becomes
the same span the serving process would have built; work registered for the writer (the engine
step's classification, its ``ms.rid_detail`` text, ``batch_type`` and links) gives there what
it gives in the serving process.
"""

from __future__ import annotations

import json
import marshal
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import DEFAULT_ON
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from test_span_builder import _records, _view

from otel_vllm_ascend import contract, handoff, recorder
from otel_vllm_ascend.handlers import common
from otel_vllm_ascend.handlers import spec_decode as _spec_decode  # noqa: F401 (registers)
from otel_vllm_ascend.records import CapturedException, SpanRecord


def _failing():
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        return exc


def _all_records():
    records = _records()
    records.append(dict(name="modelRunnerExec", start_ns=1, end_ns=2,
                        attributes={contract.DOMAIN: "Model", contract.RID: ["a"]},
                        exception=_failing(), thread_id=7))
    records.append(dict(name="specDecoding", start_ns=3, end_ns=4, attributes={
        contract.RID_DETAIL: recorder.Deferred(_spec_decode.details_json, [("a", 0, 2, 1)]),
        "accepted_ratio_per_pos": recorder.Deferred(_spec_decode.accepted_ratio_per_pos,
                                                    [("a", 0, 2, 1)])}, thread_id=7))
    return records


def _queued(records):
    return [tuple.__new__(SpanRecord, (r["name"], r["start_ns"], r["end_ns"], r["attributes"],
                                       r.get("events"), r.get("parent"), r.get("links"),
                                       r.get("exception"), r.get("thread_id") or 1,
                                       r.get("span_context")))
            for r in records]


def _spans(records, through_writer: bool):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=DEFAULT_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    building = recorder.SpanBuilding(provider)
    queued = _queued(records)
    if through_writer:
        data = handoff.records_frame([handoff.to_wire(rec, recorder.Deferred) for rec in queued])
        reader = handoff.FrameReader()
        frames = reader.feed(data[:7]) + reader.feed(data[7:])  # split anywhere
        assert [kind for kind, _ in frames] == [handoff.RECORDS]
        state: dict = {}
        queued = [rec for wire in frames[0][1] for rec in handoff.from_wire(wire, state)]
    building.build(queued)
    return exporter.get_finished_spans()


def test_every_record_shape_becomes_the_same_span():
    here = _spans(_all_records(), through_writer=False)
    there = _spans(_all_records(), through_writer=True)
    assert [s.name for s in there] == [s.name for s in here]
    for there_span, here_span in zip(there, here):
        assert _view(there_span) == _view(here_span), there_span.name
    failed = next(s for s in there if s.name == "modelRunnerExec")
    assert failed.status.description == "ValueError: bad input"
    event = failed.events[0]
    assert event.attributes["exception.type"] == "ValueError"
    assert "raise ValueError" in event.attributes["exception.stacktrace"]


def test_wire_records_are_plain_values():
    queued = _queued(_all_records())
    wires = [handoff.to_wire(rec, recorder.Deferred) for rec in queued]
    assert marshal.loads(marshal.dumps(wires)) == wires  # nothing but plain values
    spec = wires[-1]
    assert spec[3] == {}  # both attributes are left to the writer
    assert [name for _, name, _ in spec[4]] == ["spec_decode.details_json",
                                                "spec_decode.accepted_ratio_per_pos"]
    # an unregistered Deferred (str) was computed here
    assert wires[0][3][contract.RID_DETAIL] == "[1, 2]"


def test_contexts_keep_flags_and_tracestate():
    context = SpanContext(2**127 + 5, 2**63 + 1, True, TraceFlags(1),
                          TraceState([("vendor", "x=1")]))
    wire = handoff.context_to_wire(context)
    assert marshal.loads(marshal.dumps(wire)) == wire
    back = handoff.context_from_wire(wire)
    assert back == context and back.trace_state == context.trace_state
    assert back.is_remote and back.trace_flags.sampled


def test_foreign_values_are_dropped_or_made_plain():
    class Odd:
        pass

    plain, odd = _queued([
        dict(name="plain", start_ns=1, end_ns=2, attributes={"flag": True, "n": 1}),
        dict(name="n", start_ns=1, end_ns=2, attributes={
            "odd": Odd(), "flag": True, "items": (1, "a"), "mixed": [1, Odd()]},
            events=[("e", 1, {"inner": [Odd()], "ok": 2})])])
    plain_wire = handoff.to_wire(plain, recorder.Deferred)
    assert plain_wire[3] is plain.attributes  # nothing to clean: not even copied
    wire = handoff.to_wire(odd, recorder.Deferred)
    assert "odd" not in wire[3]  # the SDK would reject it too
    frames = handoff.FrameReader().feed(handoff.records_frame([plain_wire, wire]))
    sent = frames[0][1][1]  # cleaned item by item, the record kept
    assert sent[3]["flag"] is True and sent[3]["items"] == [1, "a"]
    assert sent[3]["mixed"][0] == 1 and isinstance(sent[3]["mixed"][1], str)
    assert sent[5][0][2]["ok"] == 2 and isinstance(sent[5][0][2]["inner"][0], str)


def test_frame_reader_refuses_garbage():
    reader = handoff.FrameReader()
    with pytest.raises(handoff.HandoffError):
        reader.feed(b"\xff\xff\xff\x7f\x02abc")
    reader = handoff.FrameReader()
    assert reader.feed(handoff.frame(handoff.HELLO, {"pid": 1})[:-1]) == []
    with pytest.raises(handoff.HandoffError):
        handoff.remote_function("no.such.function")


def _step(new=(), cached=(), finished=(), scheduled=None):
    """A SchedulerOutput as the classifier reads it."""
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=rid, prompt_token_ids=[0] * prompt,
                                            num_computed_tokens=0) for rid, prompt in new],
        scheduled_cached_reqs=SimpleNamespace(req_ids=[rid for rid, _ in cached],
                                              num_computed_tokens=[n for _, n in cached]),
        finished_req_ids=set(finished), num_scheduled_tokens=dict(scheduled or {}))


STEPS = [
    _step(new=[("a", 8), ("b", 4)], scheduled={"a": 8, "b": 4}),
    _step(new=[("c", 16)], cached=[("a", 8), ("b", 4)], scheduled={"a": 1, "b": 1, "c": 8}),
    _step(cached=[("a", 9), ("c", 8)], finished=["b"], scheduled={"a": 1, "c": 8}),
    _step(new=[("b2", 3)], cached=[("c", 16)], finished=["a"], scheduled={"c": 1, "b2": 3}),
]


def _contexts():
    return {rid: SpanContext(0x100 + i, 0x200 + i, True, TraceFlags(1))
            for i, rid in enumerate(("a", "b", "c", "b2"))}


def test_engine_steps_classified_from_their_plain_copies(monkeypatch):
    """A step's first record carries its inputs; the expanders classify them in order (the
    spans themselves: test_step_records.py)."""
    monkeypatch.setattr(common, "_last_batch", None)
    monkeypatch.setattr(common, "_headers_sent", {})
    # The scheduler's requests: their headers cross with the step that first schedules them
    # (no request event carried them) and are parsed where the step is expanded.
    requests = {rid: SimpleNamespace(trace_headers=common.trace_headers_of(context))
                for rid, context in _contexts().items()}
    wires = []
    for output in STEPS:
        batch = common.describe_batch(output, requests)
        wires.append(common._step_to_wire((batch, True, None)))
    batches = common.RemoteBatches()
    state: dict = {}
    for _, classification, span in marshal.loads(marshal.dumps(wires)):
        assert span is None
        batches.resolve(classification, state)
    second = wires[1][0]
    assert json.loads(batches.details_json(second))[2] == {
        "rid": "c", "iter": 0, "type": 0, "num_scheduled_tokens": 8, "num_prompt_tokens": 16,
        "num_computed_tokens": 0}
    assert batches.steps[second][1] == "Prefill,Decode"
    # c only: a and b were linked in their first step
    assert [link.trace_id for link in batches.links(second)] == [0x102]
    assert batches.batch_attributes("Execute", second, 10) == {
        contract.DOMAIN: "Execute", contract.RID: ["a", "b", "c"], "batch_size": 10}


def test_unregistered_task_runs_here():
    ran = []
    task = (ran.append, 5)
    assert handoff.to_wire(task, recorder.Deferred) is None and ran == [5]


def test_captured_exception_text():
    captured = handoff.capture_exception(_failing())
    assert isinstance(captured, CapturedException)
    assert (captured.type, captured.name, captured.message) == ("ValueError", "ValueError",
                                                                "bad input")


def test_a_list_shared_by_records_crosses_once():
    rids = [f"cmpl-{i:032x}-0" for i in range(32)]
    queued = _queued([dict(name=name, start_ns=1, end_ns=2, attributes={contract.RID: rids})
                      for name in ("batchFrameworkProcessing", "modelExec")])
    wires = [handoff.to_wire(rec, recorder.Deferred) for rec in queued]
    shared = handoff.records_frame(wires)
    copied = handoff.records_frame([wires[0], wires[1][:3] + ({contract.RID: list(rids)},)
                                    + wires[1][4:]])
    assert len(shared) < len(copied) - 32 * 4  # the second record names the first's list
    (kind, payload), = handoff.FrameReader().feed(shared)
    assert payload[0][3][contract.RID] is payload[1][3][contract.RID]


def test_a_value_equal_to_the_last_is_swapped_for_it():
    same = handoff.Repeated()
    first = ["a", "b"]
    assert same(first) is first
    assert same(["a", "b"]) is first
    reordered = ["b", "a"]
    assert same(reordered) is reordered  # order counts
    assert same(("b", "a")).__class__ is tuple  # never a value of another type


def test_an_unchanged_running_batch_crosses_once_per_frame(monkeypatch):
    """Steps whose running requests did not change send their ids as references to the list
    of the first; the writer classifies them as it would classify copies."""
    monkeypatch.setattr(common, "_last_batch", None)
    monkeypatch.setattr(common, "_headers_sent", {})
    rids = [f"cmpl-{i:032x}-0" for i in range(32)]
    steps = [_step(cached=[(rid, 10 + n) for rid in rids], scheduled=dict.fromkeys(rids, 1))
             for n in range(3)] + [_step(cached=[(rid, 13) for rid in rids[1:]],
                                         scheduled=dict.fromkeys(rids[1:], 1))]

    def wires(repeated):
        monkeypatch.setattr(common, "_same_cached_ids", repeated)
        return [common._step_to_wire((common.describe_batch(output), True, None))
                for output in steps]

    swapped, copied = wires(handoff.Repeated()), wires(lambda ids: ids)
    cached = [wire[1][1][2] for wire in swapped]
    assert cached[1] is cached[0] and cached[2] is cached[0] and cached[3] == rids[1:]
    assert [wire[1][1][2] for wire in copied] == cached
    assert len(marshal.dumps(swapped, 4)) < len(marshal.dumps(copied, 4)) - 2 * 32 * 4

    def classified(sent):
        batches = common.RemoteBatches()
        for _, classification, _ in marshal.loads(marshal.dumps(sent, 4)):
            batches.resolve(classification)
        return [(batches.details_json(seq), batches.steps[seq][1]) for seq, _, _ in sent]

    assert classified(swapped) == classified(copied)


def test_the_detokenize_ids_of_an_unchanged_batch_cross_once(monkeypatch):
    from otel_vllm_ascend.handlers import request

    monkeypatch.setattr(request, "_same_output_ids", handoff.Repeated())
    outputs = request._detokenize_to_wire((5, 7, ["a", "b"]))
    assert request._detokenize_to_wire((6, 7, ["a", "b"])) == (6, 7, ["a", "b"])
    assert request._detokenize_to_wire((6, 7, ["a", "b"]))[2] is outputs[2]
    assert request._detokenize_to_wire((7, 7, ["b"]))[2] == ["b"]


def test_the_writer_knows_every_name_a_producer_sends():
    """A name registered by a handler module the writer does not import would make the writer
    drop those records: compare, in fresh interpreters, the writer's names with the names of
    every handler module."""
    import subprocess
    import sys

    def names(imports: str) -> set:
        code = (f"{imports}\nfrom otel_vllm_ascend import handoff\n"
                "print(' '.join(sorted(handoff._by_name)))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True).stdout
        return set(out.split())

    every_handler = ("import pkgutil, importlib, otel_vllm_ascend.handlers as h\n"
                     "for m in pkgutil.iter_modules(h.__path__):\n"
                     "    importlib.import_module('otel_vllm_ascend.handlers.' + m.name)")
    expected = names(every_handler)
    assert {"engine.schedule", "engine.model_exec", "worker.spans",
            "request.detokenize"} <= expected
    assert names("import otel_vllm_ascend.exporters.writer") == expected
