"""EngineCore's request events (``Enqueue``, ``Free``, ``CacheHitRate``) and the step links:
the hooks queue the request's ``trace_headers`` as they are, the ``traceparent`` is parsed
where the spans are built (in the writer, or on the recorder's thread without one).

The spans must be what they were when the hooks parsed the header themselves: the request's
context as parent of its events, one link per request in its first step, including a request
added before recording started (no event carried its headers: the step's hand-off reads them
from the scheduler) and a request with no header at all (no parent, no link).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_step_records import _built_here, _built_in_writer, _output, _request, _Scheduler
from test_step_records import scripted as scripted  # noqa: F401  (the fixture)

from otel_vllm_ascend import contract, recorder
from otel_vllm_ascend.handlers import common, kvcache, model, scheduler


def _context(rid: str) -> list:
    """[trace id, span id] that ``_request(rid, traced=True)`` carries."""
    return [int(rid[1:]) + 0xabc, 0x77]


def _script() -> list:
    sched = _Scheduler()
    reqs = {rid: _request(rid, traced=rid != "r3") for rid in ("r1", "r2", "r3", "r4")}
    # r4 was added before recording started: no Enqueue carried its headers.
    sched.requests["r4"] = reqs["r4"]
    for rid in ("r1", "r2", "r3"):
        scheduler.add_request(lambda req: (sched.requests.__setitem__(req.request_id, req),
                                           sched.waiting.append(req)), sched, reqs[rid])
    manager = SimpleNamespace(block_pool=SimpleNamespace(get_num_free_blocks=lambda: 40),
                              usage=0.25)
    kvcache.get_computed_blocks(lambda req: ([], 4, 0), manager,
                                SimpleNamespace(request_id="r1", num_tokens=8,
                                                trace_headers=reqs["r1"].trace_headers))

    def step(output):
        return scheduler.schedule(lambda: output, sched)

    first = step(_output(new=[("r1", 8), ("r2", 4), ("r3", 2), ("r4", 3)],
                         scheduled={"r1": 8, "r2": 4, "r3": 2, "r4": 3}))
    model.execute_model(lambda out, non_block=False: "done", None, first)
    kvcache.free(lambda req: None, manager, reqs["r2"])
    step(_output(cached=[("r1", 8), ("r3", 2), ("r4", 3)], finished=["r2"],
                 scheduled={"r1": 1, "r3": 1, "r4": 1}))
    queued = list(recorder._state.queue)
    recorder._state.queue.clear()
    return queued


def _check(spans: list) -> None:
    by_name: dict = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    enqueues = by_name["Enqueue"]
    assert [s["attributes"][contract.RID] for s in enqueues] == ["r1", "r2", "r3"]
    assert [s["parent"] for s in enqueues] == [_context("r1"), _context("r2"), None]
    assert [s["attributes"]["ms.metric.QueueSize"] for s in enqueues] == [1, 2, 3]
    assert list(enqueues[0]["attributes"]) == [contract.DOMAIN, contract.RID,
                                               "ms.metric.QueueSize", "ms.scope.QueueName",
                                               contract.RECORD, contract.THREAD_ID]
    hit, = by_name["CacheHitRate"]
    assert hit["parent"] == _context("r1") and hit["attributes"]["hitCache"] == 0.5
    free, = by_name["Free"]
    assert free["parent"] == _context("r2")
    assert free["attributes"]["ms.metric.deviceBlock"] == 40
    first, second = by_name["batchFrameworkProcessing"]
    # r1, r2 from their Enqueue's headers, r4 from the scheduler's request; r3 has none
    assert [link[:2] for link in first["links"]] == [_context("r1"), _context("r2"),
                                                     _context("r4")]
    assert second["links"] == []
    model_exec, = by_name["modelExec"]
    assert model_exec["links"] == first["links"]


@pytest.mark.usefixtures("scripted")
def test_request_events_and_links_built_here(monkeypatch):
    monkeypatch.setattr(common, "_headers_sent", {})
    _check(_built_here(_script()))


@pytest.mark.usefixtures("scripted")
def test_request_events_and_links_built_in_the_writer(monkeypatch):
    monkeypatch.setattr(common, "_headers_sent", {})
    queued = _script()
    # The hot path parsed nothing: no context in the serving process's map.
    assert len(common.request_contexts) == 0
    # Only r4's headers (never sent with an event) cross with the step.
    step_wires = [rec[0].__name__ for rec in queued if rec.__class__ is tuple]  # tasks
    assert step_wires.count("engine.request_event") == 5
    _check(_built_in_writer(queued))


@pytest.mark.usefixtures("scripted")
def test_finished_requests_are_forgotten_on_both_sides(monkeypatch):
    monkeypatch.setattr(common, "_headers_sent", {})
    state: dict = {}
    from otel_vllm_ascend import handoff

    for rec in _script():
        wire = handoff.to_wire(rec, recorder.Deferred)
        if wire is not None:
            handoff.from_wire(wire, state)
    assert "r2" not in common._headers_sent and "r1" in common._headers_sent
    assert set(state["request_contexts"]) == {"r1", "r4"}
