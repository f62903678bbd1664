"""An unmodified msserviceprofiler handler file named in a symbol YAML, run by our instrumentor.

msserviceprofiler calls ``handler(original_func, this, *args)`` with an *unbound* original, so
its handlers call ``original_func(this, *args)``; ours call ``original(*args)``. Both must run
the original exactly once with the right arguments. ``ms_service_profiler`` comes from the
opt-in shim (the alias ``OTEL_VLLM_MS_SERVICE_PROFILER_SHIM=1`` installs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from runtime_helpers import Capture, instrument, spec, write_module

from otel_vllm_ascend.compat import shim
from otel_vllm_ascend.exporters import message

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ms_custom_handlers"

TARGET = """
class Scheduler:
    def __init__(self):
        self.waiting = []

    def add_request(self, request):
        self.waiting.append(request)
        return len(self.waiting)

    def step(self):
        return ["a", "b"]
"""


class Request:
    def __init__(self, request_id):
        self.request_id = request_id


@pytest.fixture()
def reference_handlers(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    assert shim.install()
    yield
    shim.uninstall()
    for name in [n for n in sys.modules if n.startswith(("ms_service_profiler", "queue_hookers"))]:
        del sys.modules[name]


def _messages(capture):
    rows = []
    for span in capture.spans():
        rows.extend(json.loads(row.message) for row in message.span_to_records(span).mstx)
    return rows


def test_reference_style_handlers_run_the_original_once_and_record(tmp_path, reference_handlers):
    module_name = write_module(tmp_path, TARGET)
    capture = Capture()
    instrumentor = instrument(capture, [
        spec(module_name, "Scheduler.add_request", handler="queue_hookers:add_request"),
        spec(module_name, "Scheduler.step", handler="queue_hookers:step"),
    ])
    try:
        scheduler = __import__(module_name).Scheduler()
        assert scheduler.add_request(Request("req-1")) == 1
        assert len(scheduler.waiting) == 1  # the original ran exactly once
        assert scheduler.step() == ["a", "b"]
    finally:
        instrumentor.uninstrument()
    assert _messages(capture) == [
        {"domain": "Schedule", "name": "Enqueue", "type": 0, "rid": "req-1", "QueueSize=": 1,
         "scope#QueueName": "WAITING"},
        {"domain": "Custom", "name": "customStep", "type": 2, "outputs": 2},
    ]


def test_instrumenting_with_the_env_opt_in_makes_the_module_importable(monkeypatch):
    monkeypatch.setenv(shim.ENV_VAR, "1")
    capture = Capture()
    instrumentor = instrument(capture, [])
    try:
        import ms_service_profiler

        assert Path(ms_service_profiler.__file__).parent.parent == Path(shim.path())
        assert shim.is_installed()
    finally:
        instrumentor.uninstrument()
        shim.uninstall()
        sys.modules.pop("ms_service_profiler", None)
