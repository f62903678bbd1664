"""The API server's request records (``httpReq``, ``tokenize``, ``link``, ``httpRes``) cross to
the writer as plain values with the trace contexts in their wire form: built in the serving
process and through the hand-off they must be the same spans, with the parents, own ids and
the ``trace_headers`` text EngineCore gets that the hooks gave when they held SpanContexts.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from test_step_records import _built_here, _built_in_writer
from test_step_records import scripted as scripted  # noqa: F401  (the fixture)

from otel_vllm_ascend import contract, handoff, recorder, selfmeter
from otel_vllm_ascend.handlers import common, request

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _script() -> tuple:
    sent = {}

    def adding(internal_suffix):
        async def original(request_id, prompt, params, arrival_time=None, lora_request=None,
                           tokenization_kwargs=None, trace_headers=None, **kwargs):
            engine_request = SimpleNamespace(request_id=request_id + internal_suffix,
                                             trace_headers=None)
            request.assign_request_id(lambda req: None, None, engine_request)
            sent[request_id] = engine_request.trace_headers
            return SimpleNamespace(request_id=engine_request.request_id)
        return original

    asyncio.run(request.add_request_async(
        adding("-int"), None, "caller", {}, None,
        trace_headers={"traceparent": CALLER, "tracestate": "vendor=abc,other=1"}))
    asyncio.run(request.add_request_async(adding("-int"), None, "fresh", {}, None))
    asyncio.run(request.add_request_async(adding(""), None, "same-id", {}, None))
    states = {f"{rid}-int": SimpleNamespace(external_req_id=rid, prompt_token_ids=[1, 2],
                                            stats=SimpleNamespace(num_generation_tokens=3))
              for rid in ("caller", "fresh")}
    this = SimpleNamespace(request_states=states)
    outputs = [SimpleNamespace(request_id=rid, finish_reason="stop") for rid in states]

    def original(engine_core_outputs, engine_core_timestamp=None, iteration_stats=None):
        states.clear()
    request.process_outputs(original, this, outputs, 0.0, None)
    queued = list(recorder._state.queue)
    recorder._state.queue.clear()
    return queued, sent


def _check(spans: list, sent: dict) -> None:
    names = [(s["name"], s["attributes"].get(contract.RID)) for s in spans]
    assert names == [("httpReq", "caller"), ("tokenize", "caller"), ("link", None),
                     ("httpReq", "fresh"), ("tokenize", "fresh"), ("link", None),
                     ("httpReq", "same-id"), ("tokenize", "same-id"),
                     ("httpRes", "caller"), ("httpRes", "fresh"),
                     ("detokenize", ["caller-int", "fresh-int"])]  # EngineCore's ids
    caller = [0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7]
    for span in spans[:3] + spans[8:9]:
        assert span["parent"] == caller, span["name"]
    fresh_root = spans[3]
    assert fresh_root["parent"] is None
    fresh = [fresh_root["trace_id"], fresh_root["span_id"]]
    for span in spans[4:6] + spans[9:10]:
        assert span["parent"] == fresh, span["name"]
    assert spans[2]["attributes"] == {contract.DOMAIN: "Engine", contract.LINK_FROM: "caller",
                                      contract.LINK_TO: "caller-int",
                                      contract.RECORD: contract.RECORD_LINK,
                                      contract.THREAD_ID: 4242}
    assert list(spans[0]["attributes"]) == [contract.DOMAIN, contract.RID, "gen_ai.request.id",
                                            contract.RECORD, contract.THREAD_ID]
    assert spans[8]["attributes"][contract.METRIC_PREFIX + "replyTokenSize"] == 3
    # What EngineCore gets: the caller's context with its tracestate, the fresh trace's root
    assert sent["caller"] == {"traceparent": CALLER, "tracestate": "vendor=abc,other=1"}
    assert sent["fresh"] == {"traceparent": f"00-{fresh[0]:032x}-{fresh[1]:016x}-01"}
    assert spans[0]["trace_state"] == "vendor=abc,other=1"


def _with_ids(views: list, spans_of: list) -> list:
    for view, span in zip(views, spans_of):
        view["trace_id"], view["span_id"] = span.context.trace_id, span.context.span_id
        view["trace_state"] = span.parent.trace_state.to_header() \
            if span.parent is not None and span.parent.trace_state else None
    return views


@pytest.fixture
def keep_spans(monkeypatch):
    """The finished SDK spans of the next build, next to their views."""
    import test_step_records

    made: list = []
    original = test_step_records._provider

    def provider():
        provider, exporter = original()
        made.append(exporter)
        return provider, exporter
    monkeypatch.setattr(test_step_records, "_provider", provider)
    return made


@pytest.mark.usefixtures("scripted")
def test_api_request_records_built_here(keep_spans):
    queued, sent = _script()
    views = _built_here(queued)
    _check(_with_ids(views, keep_spans[-1].get_finished_spans()), sent)


@pytest.mark.usefixtures("scripted")
def test_api_request_records_built_in_the_writer(keep_spans):
    queued, sent = _script()
    # No record on vLLM's side holds a SpanContext: plain tasks only.
    assert all(rec.__class__ is tuple for rec in queued)  # tasks: (func, arg)
    assert {func.__name__ for func, _ in queued} == {"request.arrival", "request.api_spans",
                                                     "request.detokenize"}
    views = _built_in_writer(queued)
    _check(_with_ids(views, keep_spans[-1].get_finished_spans()), sent)


@pytest.mark.usefixtures("scripted")
def test_the_self_meter_counts_a_request_where_records_go_to_the_writer(monkeypatch):
    """The sender counts requests by their arrival record (the meter's per-request figure)."""
    import collections
    import socket

    from opentelemetry.sdk.trace import TracerProvider

    from otel_vllm_ascend import selfmeter, writer_client

    monkeypatch.setattr(selfmeter, "meter", selfmeter.Meter(True))
    monkeypatch.setattr(writer_client, "_meter", selfmeter.meter)
    queued, _ = _script()
    client = writer_client.WriterClient("otel-vllm-ascend-test-unused", TracerProvider())
    client.sock, peer = socket.socketpair()
    client.state = "connected"
    try:
        peer.setblocking(False)
        assert client.send(collections.deque(queued))
    finally:
        client.sock.close()
        peer.close()
    assert selfmeter.meter.requests == 3


def _link_targets(this, params, collector=None) -> list:
    """The internal ids ``add_request`` linked request ``par`` to (``collector``: what vLLM's
    add_request returns; default: one naming internal id ``par-int``)."""
    async def original(request_id, prompt, params, *args, **kwargs):
        return collector or SimpleNamespace(request_id="par-int")
    asyncio.run(request.add_request_async(original, this, "par", {}, params))
    links = [record for func, records in recorder._state.queue if func.__name__ in
             ("request.api_spans", selfmeter.REQUEST_TASK) for record in records
             if record[0] == contract.LINK_NAME]
    recorder._state.queue.clear()
    assert all(record[3][contract.LINK_FROM] == "par" for record in links)
    return [record[3][contract.LINK_TO] for record in links]


@pytest.mark.usefixtures("scripted")
def test_a_request_of_n_completions_links_every_child():
    """``n`` > 1: vLLM V1 fans the request out into child requests, which EngineCore's records
    name; each gets a link, so the analyzer joins them into the one request."""
    params = SimpleNamespace(n=2)
    # vLLM 0.23 and later: the output processor lists every internal id of an external one.
    processor = SimpleNamespace(external_req_ids={"par": ["0_par-int", "1_par-int"]},
                                request_states={})
    assert _link_targets(SimpleNamespace(output_processor=processor), params) == [
        "0_par-int", "1_par-int"]
    # Before: the children as the request states know them (none invented).
    processor = SimpleNamespace(request_states={"0_par-int": object(), "1_par-int": object()})
    assert _link_targets(SimpleNamespace(output_processor=processor), params) == [
        "0_par-int", "1_par-int"]
    processor = SimpleNamespace(request_states={})
    assert _link_targets(SimpleNamespace(output_processor=processor), params) == ["par-int"]
    # One completion: the one internal id.
    processor = SimpleNamespace(external_req_ids={"par": ["par-int"]}, request_states={})
    assert _link_targets(SimpleNamespace(output_processor=processor),
                         SimpleNamespace(n=1)) == ["par-int"]


@pytest.mark.usefixtures("scripted")
def test_the_arrival_is_queued_when_the_links_cannot_be_worked_out():
    """The arrival goes with the links as one task, queued after vLLM's call: a failure while
    working out the links (reported by the hook's wrapper) must not lose the request's
    ``httpReq``."""
    class Failing(dict):
        def get(self, key, default=None):
            raise RuntimeError("an output processor of another shape")

    processor = SimpleNamespace(external_req_ids=Failing(), request_states={})
    with pytest.raises(RuntimeError):
        _link_targets(SimpleNamespace(output_processor=processor), SimpleNamespace(n=1))
    names = [record[0] for func, records in recorder._state.queue
             if func.__name__ == selfmeter.REQUEST_TASK for record in records]
    recorder._state.queue.clear()
    assert names == ["httpReq", "tokenize"]


def test_the_output_processor_has_the_shape_the_link_hook_reads():
    """The fake above has the installed vLLM's shape: where it has ``external_req_ids``, a
    dict of lists; the request states, a dict."""
    pytest.importorskip("vllm")
    from vllm.v1.engine.output_processor import OutputProcessor

    processor = OutputProcessor(None, log_stats=False)
    assert isinstance(processor.request_states, dict)
    by_external = getattr(processor, "external_req_ids", None)
    assert by_external is None or isinstance(by_external, dict)


@pytest.mark.usefixtures("scripted")
def test_each_completion_ends_in_the_request_trace():
    """``n`` > 1: the request's trace context is kept until its last completion finished, so
    every ``httpRes`` has it as parent."""
    wire = handoff.context_to_wire(common.parse_traceparent({"traceparent": CALLER}))
    request._request_wires.put("par", wire)
    children = ("0_par-int", "1_par-int")
    states = {child: SimpleNamespace(external_req_id="par", prompt_token_ids=[1],
                                     stats=SimpleNamespace(num_generation_tokens=2))
              for child in children}
    this = SimpleNamespace(request_states=states, external_req_ids={"par": list(children)})

    def finishing(child):  # what vLLM 0.32's _finish_request does to both maps
        def original(engine_core_outputs, engine_core_timestamp=None, iteration_stats=None):
            states.pop(child)
            this.external_req_ids["par"].remove(child)
            if not this.external_req_ids["par"]:
                del this.external_req_ids["par"]
        return original

    for child in children:
        request.process_outputs(finishing(child), this,
                                [SimpleNamespace(request_id=child, finish_reason="length")],
                                0.0, None)
    responses = [record for func, records in recorder._state.queue
                 if func.__name__ == "request.api_spans" for record in records
                 if record[0] == "httpRes"]
    assert [record[5] for record in responses] == [wire, wire]
    assert request._request_wires.get("par") is None  # forgotten after the last one


@pytest.mark.usefixtures("scripted")
def test_children_are_linked_where_the_request_keeps_the_clients_id():
    """vLLM before its internal ids (0.9-0.10): the collector has no request id, the request
    keeps the client's, and its children are ``<index>_<client's id>``."""
    this = SimpleNamespace(output_processor=SimpleNamespace(
        request_states={"0_par": object(), "1_par": object()}))
    no_id = SimpleNamespace()  # RequestOutputCollector of vLLM 0.9: no request_id
    assert _link_targets(this, SimpleNamespace(n=2), no_id) == ["0_par", "1_par"]
    assert _link_targets(this, SimpleNamespace(n=1), no_id) == []
