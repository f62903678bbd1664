"""Operator collection (``acl_task_time``) in one process, with the real torch profiler on CPU.

The collector is driven the way vLLM drives it: the control listener arms it, the model
runner's hook brackets each model step with ``step_begin`` / ``step_end``. The NPU path is
tested up to torch_npu's API with a stand-in module that records what it is given.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import types

import pytest

from otel_vllm_ascend import control, operator_profiler
from otel_vllm_ascend.config import ProfilerConfig, parse_config

torch = pytest.importorskip("torch")


def live(config, recording=True, enabled_at=1.0):
    return control.LiveState(recording=recording, config=config, enabled_at=enabled_at)


def run_steps(collector, count, size=32):
    a = torch.randn(size, size)
    walls = []
    for _ in range(count):
        start = time.time_ns()
        collector.step_begin()
        torch.relu(a @ a)
        collector.step_end()
        walls.append((start, time.time_ns()))
    return walls


def marks_of(path):
    events = json.loads(path.read_text())["traceEvents"]
    return [e for e in events if str(e.get("name", "")).startswith(
        operator_profiler.MARKER_PREFIX)], events


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "operators_host-1"


@pytest.fixture
def collector(folder):
    made = operator_profiler.OperatorCollector(folder_of=lambda: folder)
    yield made
    made.close()


def test_settings_from_config_fields():
    config, problems = parse_config({
        "enable": 1, "acl_task_time": 3, "acl_prof_task_time_level": "L1;10",
        "torch_prof_stack": 1, "torch_prof_modules": True, "torch_prof_step_num": 8,
        "profiler_step_num": 5, "api_filter": "mm;relu", "kernel_filter": "gemm"})
    assert problems == []
    settings = operator_profiler.OperatorSettings.from_config(config)
    assert settings == operator_profiler.OperatorSettings(
        acl_task_time=3, level="L1", duration_s=10, with_stack=True, with_modules=True,
        step_limit=5, api_filter=("mm", "relu"), kernel_filter=("gemm",),
        aicore_metrics="ACL_AICORE_PIPE_UTILIZATION")
    assert operator_profiler.OperatorSettings.from_config(ProfilerConfig(enable=True)) is None


@pytest.mark.parametrize("device, activities", [("cpu", ("CPU",)), ("cuda", ("CPU", "CUDA")),
                                                ("npu", ("CPU", "NPU"))])
def test_plan_per_device_and_level(device, activities):
    for level, shapes, memory, npu_level in (("L0", False, False, "Level0"),
                                             ("L1", True, False, "Level1"),
                                             ("L2", True, True, "Level2")):
        plan = operator_profiler.plan_profiler(
            operator_profiler.OperatorSettings(3, level=level), device)
        assert plan.activities == activities
        assert (plan.record_shapes, plan.profile_memory) == (shapes, memory)
        assert plan.npu_level == (npu_level if device == "npu" else None)
        assert plan.backend == ("torch_npu" if device == "npu" else "torch")
        assert plan.notes == ()


def test_acl_modes_say_what_they_need():
    cpu = operator_profiler.plan_profiler(operator_profiler.OperatorSettings(1), "cpu")
    assert cpu.notes == ("acl_task_time 1 (aclprof) needs an Ascend NPU with torch_npu and the "
                         "CANN toolkit; this process has no NPU: collecting with "
                         "torch.profiler instead",)
    gpu = operator_profiler.plan_profiler(operator_profiler.OperatorSettings(2), "cuda")
    assert "acl_task_time 2 (MSPTI)" in gpu.notes[0] and "a CUDA GPU" in gpu.notes[0]
    npu1 = operator_profiler.plan_profiler(operator_profiler.OperatorSettings(1), "npu")
    assert npu1.notes == () and npu1.activities == ("CPU", "NPU")  # the ACL path
    npu2 = operator_profiler.plan_profiler(operator_profiler.OperatorSettings(2), "npu")
    assert "MSPTI" in npu2.notes[0] and "torch_npu's profiler" in npu2.notes[0]


def test_step_limit_profiles_exactly_the_requested_steps(collector, folder):
    config = ProfilerConfig(enable=True, acl_task_time=3, torch_prof_step_num=3)
    collector.on_state(live(config))
    walls = run_steps(collector, 6)
    collector.close()
    windows = collector.windows
    assert [(w.index, w.steps, w.first_step, w.reason) for w in windows] == [
        (1, 3, 1, "3 steps profiled")]
    marks, events = marks_of(folder / "window-1.pt.trace.json")
    assert [m["name"].split("@")[0] for m in marks] == [
        "otel_vllm_ascend.step#1", "otel_vllm_ascend.step#2", "otel_vllm_ascend.step#3"]
    # the mark carries the wall clock read in step_begin, inside the step's own window
    for mark, (start, end) in zip(marks, walls):
        wall = int(mark["name"].split("@")[1])
        assert start <= wall <= end
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    assert {e["name"] for e in ops} >= {"aten::mm", "aten::relu"}
    sidecar = json.loads((folder / operator_profiler.SIDECAR_NAME).read_text())
    assert sidecar["settings"]["step_limit"] == 3 and sidecar["plan"]["device"] == "cpu"
    assert sidecar["windows"][0]["file"] == "window-1.pt.trace.json"


def test_disable_stops_collection_and_enable_starts_a_new_window(collector, folder):
    config = ProfilerConfig(enable=True, acl_task_time=3)
    collector.on_state(live(config))
    run_steps(collector, 2)
    collector.on_state(live(config, recording=False))  # enable 0 (control thread)
    assert collector.windows[0].reason == "collection stopped"
    # With recording off the runner hook is inactive: no step calls; even if one came, the
    # collector starts nothing.
    run_steps(collector, 2)
    collector.flush()  # (a window starts only once the previous one is written)
    collector.on_state(live(config, enabled_at=2.0))  # enable 1 again
    run_steps(collector, 1)
    collector.close()
    assert [(w.index, w.steps) for w in collector.windows] == [(1, 2), (2, 1)]
    assert len(marks_of(folder / "window-1.pt.trace.json")[0]) == 2
    assert len(marks_of(folder / "window-2.pt.trace.json")[0]) == 1


def test_long_collections_are_written_in_windows(collector, folder, monkeypatch):
    monkeypatch.setattr(operator_profiler, "WINDOW_STEPS", 2)
    collector.on_state(live(ProfilerConfig(enable=True, acl_task_time=3)))
    for _ in range(5):
        run_steps(collector, 1)
        collector.flush()  # the next window starts once the full one is written
    collector.close()
    assert [(w.steps, w.reason) for w in collector.windows] == [
        (2, "window of 2 steps full"), (2, "window of 2 steps full"), (1, "process exit")]
    assert sorted(p.name for p in folder.glob("*.pt.trace.json")) == [
        "window-1.pt.trace.json", "window-2.pt.trace.json", "window-3.pt.trace.json"]


def test_a_step_never_waits_for_a_window_being_written(collector, folder):
    collector.on_state(live(ProfilerConfig(enable=True, acl_task_time=3)))
    with operator_profiler._PROFILER_LOCK:  # as while the previous window is exported
        started = time.monotonic()
        run_steps(collector, 2)
        assert time.monotonic() - started < 1.0
        assert collector.windows == []  # not started: the library is busy
    run_steps(collector, 2)  # free again: the window starts at the next step
    collector.close()
    assert [(w.steps, w.first_step) for w in collector.windows] == [(2, 1)]


def test_duration_limit(collector):
    config = ProfilerConfig(enable=True, acl_task_time=3, acl_prof_level="L0",
                            acl_prof_duration_s=1)
    collector.on_state(live(config))
    run_steps(collector, 2)
    time.sleep(1.05)
    run_steps(collector, 2)
    assert [(w.steps, w.reason) for w in collector.windows] == [(2, "duration of 1 s reached")]


def test_api_filter_keeps_matching_operators(collector, folder):
    config = ProfilerConfig(enable=True, acl_task_time=3, api_filter=("relu",),
                            torch_prof_step_num=1)
    collector.on_state(live(config))
    run_steps(collector, 1)
    collector.close()
    marks, events = marks_of(folder / "window-1.pt.trace.json")
    assert len(marks) == 1
    names = {e["name"] for e in events if e.get("cat") == "cpu_op"}
    assert names and all("relu" in n for n in names)


def test_acl_1_on_cpu_warns_once_and_collects(collector, folder, caplog):
    operator_profiler._warned.clear()
    caplog.set_level(logging.WARNING, logger="otel_vllm_ascend")
    collector.on_state(live(ProfilerConfig(enable=True, acl_task_time=1,
                                           torch_prof_step_num=1)))
    run_steps(collector, 2)
    collector.close()
    lines = [r.getMessage() for r in caplog.records if "acl_task_time 1" in r.getMessage()]
    assert lines == ["otel-vllm-ascend: acl_task_time 1 (aclprof) needs an Ascend NPU with "
                     "torch_npu and the CANN toolkit; this process has no NPU: collecting with "
                     "torch.profiler instead"]
    assert (folder / "window-1.pt.trace.json").exists()


def test_without_torch_npu_one_line_says_so(folder, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import fails like on a plain host
    operator_profiler._warned.clear()
    caplog.set_level(logging.WARNING, logger="otel_vllm_ascend")
    collector = operator_profiler.OperatorCollector(folder_of=lambda: folder,
                                                    device_of=lambda: "npu")
    collector.on_state(live(ProfilerConfig(enable=True, acl_task_time=3)))
    run_steps(collector, 3)
    collector.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("needs torch_npu, which does not import here" in m for m in messages) == 1
    assert collector.windows == []


class _FakeNpuProfiler:
    """Stands in for ``torch_npu.profiler``: records how it is called."""

    def __init__(self):
        self.calls = []
        self.ProfilerActivity = types.SimpleNamespace(CPU="cpu-activity", NPU="npu-activity")
        self.ProfilerLevel = types.SimpleNamespace(Level0="L0", Level1="L1", Level2="L2")
        self.AiCMetrics = types.SimpleNamespace(PipeUtilization="pipe", ArithmeticUtilization="ar")

    def tensorboard_trace_handler(self, folder, worker_name=None, analyse_flag=True):
        self.calls.append(("handler", folder, worker_name, analyse_flag))
        return "handler"

    def _ExperimentalConfig(self, **kwargs):
        self.calls.append(("experimental", kwargs))
        return ("experimental", kwargs)

    def profile(self, **kwargs):
        self.calls.append(("profile", kwargs))
        fake = self

        class Profile:
            def start(self):
                fake.calls.append("start")

            def step(self):
                fake.calls.append("step")

            def stop(self):
                fake.calls.append("stop")
        return Profile()


def test_npu_path_calls_torch_npu_profiler_as_configured(folder, monkeypatch):
    fake = _FakeNpuProfiler()
    monkeypatch.setitem(sys.modules, "torch_npu", types.SimpleNamespace(profiler=fake))
    collector = operator_profiler.OperatorCollector(folder_of=lambda: folder,
                                                    device_of=lambda: "npu")
    config, _ = parse_config({"enable": 1, "acl_task_time": 3, "acl_prof_task_time_level": "L1",
                              "torch_prof_stack": 1, "torch_prof_step_num": 2})
    collector.on_state(live(config))
    run_steps(collector, 3)
    collector.close()
    experimental = [c for c in fake.calls if c[0] == "experimental"][0][1]
    assert experimental == {"profiler_level": "L1", "aic_metrics": "pipe"}
    handler = [c for c in fake.calls if c[0] == "handler"][0]
    assert handler[1] == str(folder) and handler[3] is False  # parsed later, not in the step
    assert handler[2].endswith(f"-{__import__('os').getpid()}")
    profile = [c for c in fake.calls if c[0] == "profile"][0][1]
    assert profile["activities"] == ["cpu-activity", "npu-activity"]
    assert (profile["with_stack"], profile["record_shapes"]) == (True, True)
    lifecycle = [c for c in fake.calls if isinstance(c, str)]
    assert lifecycle == ["start", "step", "step", "stop"]  # 2 steps, stopped on the model thread
    assert [(w.steps, w.file) for w in collector.windows] == [(2, None)]


def test_off_costs_no_profiler(monkeypatch):
    """With acl_task_time 0 the hook calls reach no profiler code."""
    collector = operator_profiler.OperatorCollector(
        window_factory=lambda plan, folder: pytest.fail("no profiler with operators off"))
    collector.on_state(live(ProfilerConfig(enable=True, acl_task_time=0)))
    collector.step_begin()
    collector.step_end()
    assert collector.windows == []
    monkeypatch.setattr(operator_profiler, "_collector", None)
    operator_profiler.step_begin()  # no collector in this process: nothing at all
    operator_profiler.step_end()


def test_model_runner_hook_brackets_the_step(monkeypatch):
    from otel_vllm_ascend.handlers import model

    calls = []

    class Collector(operator_profiler.OperatorCollector):
        def step_begin(self):
            calls.append("begin")
            self._marker = "the step's marker"

        def step_end(self):
            calls.append("end")
            self._marker = None

    collector = Collector()
    monkeypatch.setattr(model.operator_profiler, "_collector", collector)
    output = types.SimpleNamespace(num_scheduled_tokens={"r1": 3})

    def step():
        state = model._runner_before(types.SimpleNamespace(), (output,), {})
        calls.append("model")
        model._runner_after(state, None, (output,), {}, None, None)

    step()  # not armed (operator collection not configured): the collector is not called
    assert calls == ["model"]
    calls.clear()
    collector.busy = True  # armed, or a window open
    step()
    assert calls == ["begin", "model", "end"]
    empty = types.SimpleNamespace(num_scheduled_tokens={})
    assert model._runner_before(types.SimpleNamespace(), (empty,), {}) is None
    assert calls == ["begin", "model", "end"]  # an empty step is no model step


def test_windows_in_quick_succession(collector, folder, monkeypatch):
    """Rotation at every step while earlier windows are still being written: no window ever
    overlaps an export (that used to crash the process), and every profiled step is in a
    file."""
    monkeypatch.setattr(operator_profiler, "WINDOW_STEPS", 1)
    collector.on_state(live(ProfilerConfig(enable=True, acl_task_time=3)))
    run_steps(collector, 40, size=64)
    collector.close()
    windows = collector.windows
    assert windows and all(w.steps == 1 for w in windows)
    files = sorted(folder.glob("*.pt.trace.json"))
    assert len(files) == len(windows)
    assert sum(len(marks_of(path)[0]) for path in files) == len(windows)


def test_enable_off_in_mid_step(collector, folder):
    """The control thread stops the window while a step runs: that step is not counted and
    its mark is closed by the model's thread afterwards."""
    config = ProfilerConfig(enable=True, acl_task_time=3)
    collector.on_state(live(config))
    run_steps(collector, 1)
    collector.step_begin()
    stopper = __import__("threading").Thread(
        target=collector.on_state, args=(live(config, recording=False),))
    stopper.start()
    stopper.join()
    torch.relu(torch.randn(8, 8))
    collector.step_end()
    assert collector._marker is None
    run_steps(collector, 1)
    collector.close()
    assert [(w.steps, w.reason) for w in collector.windows] == [(1, "collection stopped")]


def test_timelimit_stops_collection(collector):
    """``timelimit`` ends recording through live control; the listener stops the window."""
    control.add_listener(collector.on_state)
    try:
        control.start(config=ProfilerConfig(enable=True, acl_task_time=3, timelimit=1),
                      poll_interval=0.1)
        run_steps(collector, 2)
        deadline = time.monotonic() + 5
        while control.is_recording() and time.monotonic() < deadline:
            time.sleep(0.05)
        run_steps(collector, 2)  # after the limit: the hook would not even call these
    finally:
        control.remove_listener(collector.on_state)
        control.stop()
    assert [(w.steps, w.reason) for w in collector.windows] == [(2, "collection stopped")]


def test_duration_counts_from_the_first_window(collector, monkeypatch):
    """A long collection is written in windows; its duration limit spans all of them."""
    monkeypatch.setattr(operator_profiler, "WINDOW_STEPS", 3)
    config = ProfilerConfig(enable=True, acl_task_time=3, acl_prof_level="L0",
                            acl_prof_duration_s=1)
    collector.on_state(live(config))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        run_steps(collector, 1)
        collector.flush()
    windows = collector.windows
    # No window starts after the duration (the loop went on for 3 s), whichever window was
    # open when it ran out, and the windows before the last were full ones. A window's time is
    # taken once its profiler has started, after the duration check: on a loaded machine that
    # start can take a little while, hence the margin.
    assert windows[-1].started_unix_ns - windows[0].started_unix_ns < 1.25e9
    assert windows[-1].reason in ("duration of 1 s reached", "window of 3 steps full")
    assert len(windows) > 1 and all(w.reason == "window of 3 steps full" for w in windows[:-1])


def test_v0_model_runner_hook_brackets_the_step(monkeypatch):
    from otel_vllm_ascend.handlers import v0_model

    calls = []
    monkeypatch.setattr(v0_model.operator_profiler, "step_begin", lambda: calls.append("begin"))
    monkeypatch.setattr(v0_model.operator_profiler, "step_end", lambda: calls.append("end"))
    state = v0_model._runner_before(types.SimpleNamespace(), (), {})
    calls.append("model")
    v0_model._runner_after(state, None, (), {}, None, None)
    assert calls == ["begin", "model", "end"]
