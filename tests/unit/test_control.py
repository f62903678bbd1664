"""Live control with a real config file: enable toggles, timelimit, domain and level filters."""

from __future__ import annotations

import importlib
import json
import os
import time

import pytest
from runtime_helpers import Capture, spec, write_module

from otel_vllm_ascend import control
from otel_vllm_ascend.config import ConfigFile
from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor

TARGET = """
class Engine:
    def schedule(self):
        return "s"

    def execute(self):
        return "e"

    def detail(self):
        return "d"
"""


def write_config(path, **values):
    data = {"enable": 0, "prof_dir": str(path.parent / "prof")}
    data.update(values)
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps(data))
    # Make sure the watcher's mtime check sees a change even on coarse clocks.
    stamp = max(time.time_ns(), before + 10_000_000)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def setup(tmp_path):
    capture = Capture()
    name = write_module(tmp_path, TARGET)
    module = importlib.import_module(name)
    config_path = tmp_path / "ms_service_profiler_config.json"
    write_config(config_path, enable=0)
    specs = (spec(name, "Engine.schedule", domain="Schedule"),
             spec(name, "Engine.execute", domain="Execute"),
             spec(name, "Engine.detail", domain="Execute", level=30))
    instrumentor = VllmServiceInstrumentor()
    instrumentor.instrument(tracer_provider=capture.provider, specs=specs,
                            config_path=str(config_path))
    yield capture, module.Engine(), config_path, instrumentor
    instrumentor.uninstrument()


def _names(capture):
    names = [s.name for s in capture.spans()]
    capture.clear()
    return names


def _call_all(engine):
    assert (engine.schedule(), engine.execute(), engine.detail()) == ("s", "e", "d")


def test_enable_toggles_recording_live(setup):
    capture, engine, config_path, instrumentor = setup
    _call_all(engine)
    assert _names(capture) == []
    assert all(h.active is False for h in instrumentor.hooks)

    write_config(config_path, enable=1)
    control.poll_now()
    _call_all(engine)
    assert _names(capture) == ["schedule", "execute"]  # detail is level 30 > INFO

    write_config(config_path, enable=0)
    control.poll_now()
    _call_all(engine)
    assert _names(capture) == []


def test_watcher_thread_picks_up_change_within_a_second(setup):
    capture, engine, config_path, _ = setup
    write_config(config_path, enable=1)
    deadline = time.monotonic() + 3
    while not control.is_recording() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert control.is_recording()
    _call_all(engine)
    assert "schedule" in _names(capture)


def test_domain_allow_list_and_level(setup):
    capture, engine, config_path, _ = setup
    write_config(config_path, enable=1, domain="Execute", profiler_level="VERBOSE")
    control.poll_now()
    _call_all(engine)
    assert _names(capture) == ["execute", "detail"]


def test_timelimit_stops_recording_until_the_file_changes(setup):
    capture, engine, config_path, _ = setup
    write_config(config_path, enable=1, timelimit=1)
    control.poll_now()
    _call_all(engine)
    assert _names(capture) == ["schedule", "execute"]
    time.sleep(1.1)
    control.poll_now()
    assert control.current().reason == "timelimit reached"
    _call_all(engine)
    assert _names(capture) == []
    write_config(config_path, enable=1, timelimit=5)  # re-armed by a new file version
    control.poll_now()
    _call_all(engine)
    assert _names(capture) == ["schedule", "execute"]


def test_listener_sees_every_change(tmp_path):
    config_path = tmp_path / "c.json"
    write_config(config_path, enable=0)
    seen = []
    control.add_listener(seen.append)
    try:
        control.start(config_file=ConfigFile(str(config_path)), poll_interval=60)
        write_config(config_path, enable=1)
        control.poll_now()
        assert [s.recording for s in seen][-2:] == [False, True]
    finally:
        control.remove_listener(seen.append)
        control.stop()
    assert control.is_recording() is False


def test_fixed_config_without_file_records():
    from otel_vllm_ascend.config import ProfilerConfig

    state = control.start(config=ProfilerConfig(enable=True))
    try:
        assert state.recording and control.allows("Anything")
    finally:
        control.stop()


def test_samplers_follow_recording(tmp_path, caplog):
    import logging

    from otel_vllm_ascend import contract, recorder, samplers
    from otel_vllm_ascend.config import ProfilerConfig

    capture = Capture()
    recorder.set_tracer_provider(capture.provider)
    samplers._warned.clear()
    sampler_set = samplers.SamplerSet()
    caplog.set_level(logging.WARNING, logger="otel_vllm_ascend")
    config = ProfilerConfig(enable=True, host_system_usage_freq=20, npu_memory_usage_freq=5)
    try:
        sampler_set.on_state(control.LiveState(recording=True, config=config))
        assert sampler_set.running == ["host"]  # no NPU / GPU here: device sampling is off
        thread = sampler_set._running["host"]._thread
        assert thread.daemon
        time.sleep(0.5)
        sampler_set.on_state(control.LiveState(recording=False, config=config))
        assert sampler_set.running == [] and not thread.is_alive()
        records = capture.named(samplers.HOST_RECORD)
        assert 3 <= len(records) <= 12
        attrs = records[0].attributes
        assert attrs[contract.RECORD] == contract.RECORD_METRIC
        assert attrs[contract.DOMAIN] == "host"
        assert 0 <= attrs[contract.METRIC_PREFIX + "cpuPercent"] <= 100 * os.cpu_count()
        assert attrs[contract.METRIC_PREFIX + "memUsedMB"] > 0
        # Once more: the warnings are not repeated.
        sampler_set.on_state(control.LiveState(recording=True, config=config))
        messages = [r.getMessage() for r in caplog.records]
        assert sum("npu_memory_usage_freq" in m for m in messages) == 1
    finally:
        sampler_set.stop()
        recorder.set_tracer_provider(None)
    assert sampler_set.running == []
