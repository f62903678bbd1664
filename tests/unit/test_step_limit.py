"""``profiler_step_num``: recording stops after N engine steps, and the config file says so.

The steps go through installed hooks with the real EngineCore handlers (schedule and modelExec)
and vLLM 0.32's real ``SchedulerOutput``; the config file is a real file watched by live control.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time

import pytest
from runtime_helpers import Capture, spec, write_module

from otel_vllm_ascend import control
from otel_vllm_ascend.config import parse_config, switch_off
from otel_vllm_ascend.handlers import common
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor

pytest.importorskip("vllm", reason="needs vLLM's real SchedulerOutput (make test)")

from test_handlers import _request, _scheduler_output  # noqa: E402


@pytest.mark.parametrize("value, limit", [(5, 5), ("12", 12), (0, 0), (-1, 0), (-30, 0)])
def test_profiler_step_num_values(value, limit):
    config, problems = parse_config({"enable": 1, "profiler_step_num": value})
    assert (config.profiler_step_num, problems) == (limit, [])


def test_profiler_step_num_not_a_number(caplog):
    config, problems = parse_config({"profiler_step_num": "ten"}, "c.json")
    assert config.profiler_step_num == 0
    assert problems == ["c.json: key 'profiler_step_num' has invalid value \"ten\" (must be an "
                        "integer); using the default 0"]


def write_config(path, **values):
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps(values))
    stamp = max(time.time_ns(), before + 10_000_000)
    os.utime(path, ns=(stamp, stamp))


ENGINE = """
from test_handlers import SchedulerShape


class Scheduler(SchedulerShape):
    def schedule(self):
        return self.next_output


class Executor:
    def execute_model(self, scheduler_output):
        return "done"
"""


@pytest.fixture
def live(tmp_path):
    capture = Capture()
    common._role_recorded = None
    path = tmp_path / "ms_service_profiler_config.json"
    write_config(path, enable=1, profiler_step_num=2, prof_dir=str(tmp_path / "prof"),
                 domain="Schedule;Execute")
    name = write_module(tmp_path, ENGINE)
    module = importlib.import_module(name)
    instrumentor = VllmServiceInstrumentor()
    instrumentor.instrument(tracer_provider=capture.provider, config_path=str(path), specs=(
        spec(name, "Scheduler.schedule", handler="schedule", domain="Schedule"),
        spec(name, "Executor.execute_model", handler="execute_model", domain="Execute")))
    yield capture, path, module
    instrumentor.uninstrument()


def engine_step(module, sched, output):
    """One EngineCore step: schedule, then the executor with the same SchedulerOutput."""
    sched.next_output = output
    assert sched.schedule() is output
    assert module.Executor().execute_model(output) == "done"


def wait_until(condition, seconds=3.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_recording_stops_after_the_steps_and_the_file_says_so(live, caplog):
    capture, path, module = live
    sched = module.Scheduler()
    outputs = [_scheduler_output(new=[(_request(f"r-{i}", range(4)), 4)]) for i in range(4)]
    with caplog.at_level(logging.INFO, logger="otel_vllm_ascend.control"):
        for output in outputs[:3]:
            engine_step(module, sched, output)
        assert wait_until(lambda: not control.is_recording())
    names = [s.name for s in capture.spans()]
    # Two whole steps (schedule and execution counted once each), nothing of the third.
    assert names.count("batchFrameworkProcessing") == 2 and names.count("modelExec") == 2
    assert control.current().reason == "profiler_step_num reached"
    assert "profiler_step_num of 2 engine steps reached" in caplog.text
    # Every process of the service watches the file: enable is 0 there, the rest kept.
    assert wait_until(lambda: json.loads(path.read_text())["enable"] == 0)
    assert json.loads(path.read_text()) == {"enable": 0, "profiler_step_num": 2,
                                            "prof_dir": str(path.parent / "prof"),
                                            "domain": "Schedule;Execute"}
    control.poll_now()
    assert not control.is_recording()
    capture.clear()
    engine_step(module, sched, outputs[3])
    assert capture.spans() == []

    # Switched on again by hand: a new recording, with its own two steps.
    write_config(path, enable=1, profiler_step_num=2)
    control.poll_now()
    assert control.is_recording()
    for i in range(2):
        engine_step(module, sched, _scheduler_output(new=[(_request(f"s-{i}", range(4)), 4)]))
    assert control.is_recording()
    assert [s.name for s in capture.spans()].count("modelExec") == 2


def test_no_limit_counts_nothing(tmp_path):
    control.start(config=parse_config({"enable": 1, "profiler_step_num": -1})[0])
    try:
        assert all(control.engine_step(object()) for _ in range(50))
        assert control.is_recording()
    finally:
        control.stop()


def test_switch_off_keeps_other_keys_and_mode(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"enable": 1, "timelimit": 30, "unknown_key": [1, 2]}')
    os.chmod(path, 0o600)
    assert switch_off(str(path))
    assert json.loads(path.read_text()) == {"enable": 0, "timelimit": 30, "unknown_key": [1, 2]}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left


def test_switch_off_leaves_unusable_files_alone(tmp_path, caplog):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    assert not switch_off(str(path))
    assert path.read_text() == "[1, 2]"
    assert not switch_off(str(tmp_path / "missing.json"))
    assert "could not read the profiler config" in caplog.text
