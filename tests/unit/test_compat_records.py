"""Records written by the entries of msserviceprofiler users' symbol files, through real hooks.

The entries come from the fixture files (loaded by the project's loader) and are installed by
the real instrumentor onto classes shaped like vLLM 0.32's (same method names and signatures),
called with real ``vllm.v1.request.Request`` objects. Assertions are on the messages the
ms_service exporter writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from runtime_helpers import Capture, instrument, write_module

from otel_vllm_ascend import symbols
from otel_vllm_ascend.exporters import message

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ms_symbols"
VLLM_ASCEND_YAML = FIXTURES / "vllm_ascend" / "service_profiling_symbols.0.32.0.yaml"

SHAPED_LIKE_VLLM = """
class Scheduler:
    # vllm.v1.core.sched.scheduler.Scheduler (0.32): the parts these hooks touch.
    def __init__(self):
        self.waiting = []
        self.running = []
        self.requests = {}
        self.calls = []

    def add_request(self, request):
        self.calls.append(("add_request", request.request_id))
        self.waiting.append(request)
        self.requests[request.request_id] = request

    def _free_request(self, request, delay_free_blocks=False):
        self.calls.append(("_free_request", request.request_id))
        del self.requests[request.request_id]
        return None, None


class InputProcessor:
    # vllm.v1.engine.input_processor.InputProcessor (0.32; Processor before 0.11).
    def __init__(self):
        self.calls = []

    def process_inputs(self, request_id, prompt, params, supported_tasks, arrival_time=None,
                       lora_request=None, tokenization_kwargs=None, trace_headers=None,
                       priority=0, data_parallel_rank=None, resumable=False, session_id=None,
                       kv_hints=None):
        self.calls.append(request_id)
        if prompt is None:
            raise ValueError("no prompt")
        return ("EngineCoreRequest", request_id)
"""


def _spec(loaded, qualname, module, new_qualname=None):
    (found,) = [s for s in loaded.specs if s.qualname == qualname]
    new_qualname = new_qualname or qualname
    return dataclasses.replace(found, module=module, qualname=new_qualname,
                               symbol=f"{module}:{new_qualname}")


def _messages(capture):
    rows = []
    for span in capture.spans():
        rows.extend(json.loads(row.message) for row in message.span_to_records(span).mstx)
    return rows


@pytest.fixture(scope="module")
def requests_of_vllm():
    from vllm import SamplingParams
    from vllm.v1.request import Request

    return lambda rid: Request(rid, [1, 2, 3], SamplingParams(max_tokens=4), None)


@pytest.fixture()
def hooked(tmp_path):
    loaded = symbols.load_symbols(VLLM_ASCEND_YAML, vllm_version="0.32.0")
    module_name = write_module(tmp_path, SHAPED_LIKE_VLLM)
    specs = [
        _spec(loaded, "Scheduler.add_request", module_name),
        _spec(loaded, "Scheduler._free_request", module_name),
        # The file names vLLM's old Processor; the same handler on 0.32's InputProcessor.
        _spec(loaded, "Processor.process_inputs", module_name, "InputProcessor.process_inputs"),
    ]
    capture = Capture()
    instrumentor = instrument(capture, specs)
    module = __import__(module_name)
    yield module, capture
    instrumentor.uninstrument()


@pytest.mark.vllm  # requests_of_vllm builds vLLM's real Request
def test_add_request_writes_req_state_waiting_then_enqueue(hooked, requests_of_vllm):
    module, capture = hooked
    scheduler = module.Scheduler()
    assert scheduler.add_request(requests_of_vllm("req-1")) is None
    assert scheduler.calls == [("add_request", "req-1")]  # the original ran exactly once
    rows = _messages(capture)
    assert [(m["name"], m["domain"]) for m in rows] == [("ReqState", "Schedule"),
                                                         ("Enqueue", "Schedule")]
    assert rows[0]["rid"] == "req-1" and rows[0]["WAITING+"] == 1
    assert rows[1]["QueueSize="] == 1 and rows[1]["scope#QueueName"] == "WAITING"


@pytest.mark.vllm  # requests_of_vllm builds vLLM's real Request
def test_free_request_writes_req_state_finished(hooked, requests_of_vllm):
    module, capture = hooked
    scheduler = module.Scheduler()
    request = requests_of_vllm("req-2")
    scheduler.add_request(request)
    capture.clear()
    assert scheduler._free_request(request) == (None, None)
    assert scheduler.calls[-1] == ("_free_request", "req-2")
    rows = _messages(capture)
    assert rows == [{"domain": "Schedule", "name": "ReqState", "type": 0, "rid": "req-2",
                     "FINISHED+": 1}]


def test_process_inputs_writes_req_state_and_passes_errors_through(hooked):
    module, capture = hooked
    processor = module.InputProcessor()
    result = processor.process_inputs("cmpl-9", {"type": "token"}, object(), ("generate",))
    assert result == ("EngineCoreRequest", "cmpl-9")
    assert _messages(capture) == [{"domain": "Schedule", "name": "ReqState", "type": 0,
                                   "rid": "cmpl-9"}]
    capture.clear()
    with pytest.raises(ValueError, match="no prompt"):
        processor.process_inputs(request_id="cmpl-10", prompt=None, params=object(),
                                 supported_tasks=("generate",))
    assert processor.calls == ["cmpl-9", "cmpl-10"]
    assert _messages(capture) == []  # a failed call is no request state


@pytest.mark.vllm  # requests_of_vllm builds vLLM's real Request
def test_new_layout_add_request_writes_enqueue_only(tmp_path, requests_of_vllm):
    """msserviceprofiler 26.x's batch_handlers:add_request (vllm-ascend 0.20 and later) dropped
    the ReqState increment: the entry of vllm-ascend 0.23's file writes Enqueue alone."""
    loaded = symbols.load_symbols(FIXTURES / "vllm_ascend" / "vllm-ascend-0.23.yaml",
                                  vllm_version="0.23.0")
    module_name = write_module(tmp_path, SHAPED_LIKE_VLLM)
    capture = Capture()
    instrumentor = instrument(capture, [_spec(loaded, "Scheduler.add_request", module_name)])
    try:
        scheduler = __import__(module_name).Scheduler()
        assert scheduler.add_request(requests_of_vllm("req-3")) is None
        assert scheduler.calls == [("add_request", "req-3")]
        rows = _messages(capture)
        assert [(m["name"], m["domain"]) for m in rows] == [("Enqueue", "Schedule")]
        assert rows[0]["QueueSize="] == 1 and rows[0]["scope#QueueName"] == "WAITING"
    finally:
        instrumentor.uninstrument()
