"""Operator-level data: the operators (and device kernels) each model step ran.

With ``acl_task_time`` set in the profiler config, every process that runs the model (the
Worker; EngineCore when the model runs inside it) runs a torch profiler while recording is on:
``torch.profiler`` on CPU and CUDA, ``torch_npu.profiler`` on Ascend NPU. It is stepped once
per model step by the model runner's ``execute_model`` hook (``modelRunnerExec``), which also
marks each step in the profiler's own trace (a ``user_annotation`` event named
``otel_vllm_ascend.step#<n>@<wall clock ns>``); the analyzer uses those marks to put the
operators on the clock of the spans (``docs/analysis.md``, "Operators").

Config fields (``ms_service_profiler_config.json``, read live like every other field):

=============================== ==============================================================
``acl_task_time``               0 off; 3 torch profiler (torch_npu's on NPU). 1 (aclprof) and
                                2 (MSPTI): on NPU torch_npu's profiler with its NPU activity
                                (the ACL path; torch_npu has no MSPTI switch, one line says
                                so); elsewhere one line says what they need and the device's
                                torch profiler runs instead
``acl_prof_task_time_level``    ``L0`` operators only, ``L1`` + input shapes, ``L2`` + memory;
                                on NPU torch_npu's ``Level0/1/2``. ``;<s>`` (or ``,<s>``):
                                stop that many seconds after the first profiled step
``torch_prof_stack``            Python stacks of each operator (``with_stack``)
``torch_prof_modules``          the ``nn.Module`` hierarchy (``with_modules``)
``torch_prof_step_num``         profile that many model steps, then stop (0: until disabled);
                                ``profiler_step_num`` limits it too (the smaller wins)
``api_filter``                  keep only host operators whose name contains one of these
                                ``;``-separated substrings (case-sensitive; empty: all); on
                                NPU applied by the analyzer (torch_npu writes unfiltered)
``kernel_filter``               the same for device kernels
``aclprofAicoreMetrics``        NPU only: torch_npu's ``aic_metrics``
=============================== ==============================================================

``enable`` and ``timelimit`` start and stop it with the rest of the recording; a config change
while recording starts a new collection window. Output, per process, next to the capture:
``<session folder>/operators_<host>-<pid>/`` holding one ``window-<k>.pt.trace.json`` (Chrome
trace written by the torch profiler) per collection window and ``operator_profile.json`` (what
was asked, what ran, one entry per window). On NPU torch_npu writes its
``<host>-<pid>_<time>_ascend_pt`` folder there instead, unparsed (``analyse_flag=False``) so
the step is not held up; parse it later with ``torch_npu.profiler.profiler.analyse``.

The step is never blocked by writing: a window ends when collection stops (``enable`` 0,
``timelimit``, the step or duration limit) and every :data:`WINDOW_STEPS` steps; the profiler
is stopped there (about a millisecond) and its trace written by a background thread.
``torch.profiler`` is started and stopped from the control thread when this torch offers
``profile_all_threads`` (torch >= 2.7); otherwise (and with torch_npu) on the model's thread,
at the first step after the change. The first start in a process initialises the profiler
library (about a second on CPU); it is done ahead on a background thread in Worker processes,
which makes libkineto print one harmless ``External init callback must run in same thread``
line. With ``acl_task_time`` 0 the hook costs one attribute check per step.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from otel_vllm_ascend import process_role, session

_logger = logging.getLogger(__name__)

MARKER_PREFIX = "otel_vllm_ascend.step#"
FOLDER_PREFIX = "operators_"
SIDECAR_NAME = "operator_profile.json"
TRACE_SUFFIX = ".pt.trace.json"
WINDOW_STEPS = 100  # a long collection is written in windows of this many steps
EXIT_WRITE_TIMEOUT_S = 20.0
ACL_NAMES = {1: "aclprof", 2: "MSPTI", 3: "torch profiler"}
NPU_LEVELS = {"L0": "Level0", "L1": "Level1", "L2": "Level2"}
HOST_CATEGORIES = frozenset({"cpu_op", "python_function", "cuda_runtime", "cuda_driver",
                             "user_annotation"})
_warned: set = set()
# The profiler library is one per process and not safe to use from two threads at once (an
# export running while another window starts or stops can crash the process): every start,
# stop and export holds this lock. A step never waits for it: a window that cannot start
# because the previous one is still being written starts at a later step.
_PROFILER_LOCK = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        _logger.warning("otel-vllm-ascend: %s", message)


@dataclass(frozen=True)
class OperatorSettings:
    """What the profiler config asks of operator collection (``None`` when it is off)."""

    acl_task_time: int
    level: str = "L0"
    duration_s: Optional[int] = None
    with_stack: bool = False
    with_modules: bool = False
    step_limit: int = 0  # 0: until collection stops
    api_filter: Tuple[str, ...] = ()
    kernel_filter: Tuple[str, ...] = ()
    aicore_metrics: str = ""

    @classmethod
    def from_config(cls, config: Any) -> Optional[OperatorSettings]:
        mode = int(getattr(config, "acl_task_time", 0) or 0)
        if mode <= 0:
            return None
        limits = [int(getattr(config, key, 0) or 0)
                  for key in ("torch_prof_step_num", "profiler_step_num")]
        limits = [limit for limit in limits if limit > 0]
        return cls(
            acl_task_time=mode,
            level=str(getattr(config, "acl_prof_level", None) or "L0"),
            duration_s=getattr(config, "acl_prof_duration_s", None),
            with_stack=bool(getattr(config, "torch_prof_stack", False)),
            with_modules=bool(getattr(config, "torch_prof_modules", False)),
            step_limit=min(limits) if limits else 0,
            api_filter=tuple(getattr(config, "api_filter", ()) or ()),
            kernel_filter=tuple(getattr(config, "kernel_filter", ()) or ()),
            aicore_metrics=str(getattr(config, "aclprofAicoreMetrics", "") or ""))


@dataclass(frozen=True)
class ProfilerPlan:
    """How the settings map onto this device's profiler (pure data: :func:`plan_profiler`)."""

    backend: str  # "torch" (torch.profiler) or "torch_npu"
    device: str  # "cpu", "cuda" or "npu"
    activities: Tuple[str, ...]
    record_shapes: bool
    profile_memory: bool
    with_stack: bool
    with_modules: bool
    npu_level: Optional[str] = None
    aic_metrics: Optional[str] = None
    notes: Tuple[str, ...] = ()


def detect_device() -> str:
    """``npu`` when torch_npu imports and sees a device, ``cuda`` with a GPU, else ``cpu``."""
    try:
        import torch
    except ImportError:
        return "none"
    try:
        import torch_npu  # noqa: F401

        if torch.npu.is_available():  # type: ignore[attr-defined]
            return "npu"
    except Exception:
        pass
    try:
        if torch.cuda.is_available():
            return "cuda"
    except Exception:
        pass
    return "cpu"


def plan_profiler(settings: OperatorSettings, device: str) -> ProfilerPlan:
    """The profiler to run for ``settings`` on ``device``, with the lines a user must read."""
    notes: List[str] = []
    mode = settings.acl_task_time
    if device == "npu":
        if mode == 2:
            notes.append("acl_task_time 2 (MSPTI) needs libmspti.so preloaded and "
                         "msserviceprofiler's library; torch_npu's profiler has no MSPTI "
                         "switch: collecting with torch_npu's profiler (CPU + NPU activities)")
        activities: Tuple[str, ...] = ("CPU", "NPU")
    else:
        if mode in (1, 2):
            notes.append(f"acl_task_time {mode} ({ACL_NAMES[mode]}) needs an Ascend NPU with "
                         f"torch_npu and the CANN toolkit; this process has "
                         f"{'a CUDA GPU' if device == 'cuda' else 'no NPU'}: collecting with "
                         "torch.profiler instead")
        activities = ("CPU", "CUDA") if device == "cuda" else ("CPU",)
    if settings.kernel_filter and device == "cpu":
        notes.append("kernel_filter applies to device kernels; a CPU-only process has none")
    level = settings.level if settings.level in NPU_LEVELS else "L0"
    return ProfilerPlan(
        backend="torch_npu" if device == "npu" else "torch", device=device,
        activities=activities, record_shapes=level in ("L1", "L2"),
        profile_memory=level == "L2", with_stack=settings.with_stack,
        with_modules=settings.with_modules,
        npu_level=NPU_LEVELS[level] if device == "npu" else None,
        aic_metrics=(settings.aicore_metrics or None) if device == "npu" else None,
        notes=tuple(notes))


# -- the profiler objects ------------------------------------------------------------------

def _torch_all_threads_config() -> Any:
    """torch's ``_ExperimentalConfig(profile_all_threads=True, trace_only=True)``, or None."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True, trace_only=True)
    except (ImportError, TypeError):
        return None


class TorchWindow:
    """One ``torch.profiler`` run (CPU / CUDA); export writes its Chrome trace."""

    def __init__(self, plan: ProfilerPlan) -> None:
        import torch.profiler as tp

        kwargs: dict = {
            "activities": [getattr(tp.ProfilerActivity, name) for name in plan.activities],
            "record_shapes": plan.record_shapes, "profile_memory": plan.profile_memory,
            "with_stack": plan.with_stack, "with_modules": plan.with_modules,
        }
        config = _torch_all_threads_config()
        self.any_thread = config is not None
        if config is not None:
            kwargs["experimental_config"] = config
        self._profile = tp.profile(**kwargs)

    def start(self) -> None:
        self._profile.start()

    def stop(self) -> None:
        self._profile.stop()

    def step(self) -> None:
        pass  # steps are marked by record_function (no schedule: step() would do nothing)

    def export(self, folder: Path, index: int) -> Optional[str]:
        name = f"window-{index}{TRACE_SUFFIX}"
        temporary = folder / f".{name}.tmp"
        self._profile.export_chrome_trace(str(temporary))
        return name if temporary.exists() else None


class TorchNpuWindow:
    """One ``torch_npu.profiler`` run; torch_npu's handler writes ``*_ascend_pt`` at stop."""

    any_thread = False

    def __init__(self, plan: ProfilerPlan, folder: Path) -> None:
        import torch_npu

        profiler = torch_npu.profiler
        kwargs: dict = {
            "activities": [getattr(profiler.ProfilerActivity, name) for name in plan.activities],
            "record_shapes": plan.record_shapes, "profile_memory": plan.profile_memory,
            "with_stack": plan.with_stack, "with_modules": plan.with_modules,
            "on_trace_ready": profiler.tensorboard_trace_handler(
                str(folder), worker_name=f"{socket.gethostname()}-{os.getpid()}",
                analyse_flag=False),
        }
        experimental: dict = {"profiler_level": getattr(profiler.ProfilerLevel,
                                                        plan.npu_level or "Level0")}
        metrics = _npu_aic_metrics(profiler, plan.aic_metrics)
        if metrics is not None:
            experimental["aic_metrics"] = metrics
        kwargs["experimental_config"] = profiler._ExperimentalConfig(**experimental)
        self._profile = profiler.profile(**kwargs)

    def start(self) -> None:
        self._profile.start()

    def stop(self) -> None:
        self._profile.stop()

    def step(self) -> None:
        self._profile.step()

    def export(self, folder: Path, index: int) -> Optional[str]:
        return None  # written by torch_npu's trace handler at stop


def _npu_aic_metrics(profiler: Any, name: Optional[str]) -> Any:
    """``ACL_AICORE_PIPE_UTILIZATION`` -> ``AiCMetrics.PipeUtilization`` (None if unknown)."""
    if not name:
        return None
    wanted = name.upper().replace("ACL_AICORE_", "").replace("_", "")
    metrics = getattr(profiler, "AiCMetrics", None)
    for attr in dir(metrics) if metrics is not None else ():
        if attr.upper() == wanted:
            return getattr(metrics, attr)
    return None


def make_window(plan: ProfilerPlan, folder: Path) -> Any:
    """The profiler object for ``plan`` (raises ImportError when its library is missing)."""
    if plan.backend == "torch_npu":
        return TorchNpuWindow(plan, folder)
    return TorchWindow(plan)


# -- trace post-processing ----------------------------------------------------------------

def keep_event(event: dict, api_filter: Tuple[str, ...], kernel_filter: Tuple[str, ...]) -> bool:
    """``api_filter`` / ``kernel_filter`` on one Chrome trace event (step marks always kept)."""
    if event.get("ph") != "X":
        return True
    name = str(event.get("name", ""))
    if name.startswith(MARKER_PREFIX):
        return True
    category = str(event.get("cat", ""))
    wanted = api_filter if category in HOST_CATEGORIES else kernel_filter
    return not wanted or any(part in name for part in wanted)


def filter_trace_file(path: Path, api_filter: Tuple[str, ...],
                      kernel_filter: Tuple[str, ...]) -> None:
    """Rewrite a Chrome trace keeping what the filters allow."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    events = data.get("traceEvents", []) if isinstance(data, dict) else []
    data["traceEvents"] = [e for e in events if isinstance(e, dict)
                           and keep_event(e, api_filter, kernel_filter)]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


# -- the collector ------------------------------------------------------------------------

@dataclass
class WindowRecord:
    """One collection window, as listed in ``operator_profile.json``."""

    index: int
    started_unix_ns: int
    first_step: int
    steps: int = 0
    stopped_unix_ns: Optional[int] = None
    reason: str = ""
    file: Optional[str] = None


@dataclass
class _Window:
    profiler: Any
    record: WindowRecord
    settings: OperatorSettings
    token: Any


class OperatorCollector:
    """Operator collection of one process: armed by the live state, stepped by the runner."""

    def __init__(self, folder_of: Optional[Callable[[], Path]] = None,
                 device_of: Callable[[], str] = detect_device,
                 window_factory: Callable[[ProfilerPlan, Path], Any] = make_window) -> None:
        self._folder_of = folder_of or default_folder
        self._device_of = device_of
        self._factory = window_factory
        self._lock = threading.RLock()
        self._armed: Optional[tuple] = None  # (token, settings)
        self._window: Optional[_Window] = None
        self._exhausted: Any = None  # the token whose step / duration limit was reached
        self._model_here = False
        self._warmed = False
        self._marker: Any = None
        self._step_no = 0
        self._next_index = 0
        self._writers: List[threading.Thread] = []
        self._windows: List[WindowRecord] = []
        self._plan: Optional[ProfilerPlan] = None
        self._failed = False
        self._counted: tuple = (None, 0)  # (token, steps profiled under it)
        self._token_started: tuple = (None, 0.0)  # (token, monotonic start of its 1st window)
        # armed or a window open: the one flag the hook reads per step while this is False
        self.busy = False

    # -- control thread ---------------------------------------------------------------
    def on_state(self, live: Any) -> None:
        """Listener of :mod:`control`: arm, re-arm or disarm with the live state."""
        settings = OperatorSettings.from_config(live.config) if (
            live.recording and live.config is not None) else None
        with self._lock:
            token = (live.enabled_at, settings)
            if settings is None:
                self._armed = None
                self._finish_from_any_thread("collection stopped")
                self.busy = self._window is not None
                return
            if self._armed is not None and self._armed[0] == token:
                return
            self._armed = (token, settings)
            self.busy = True
            self._finish_from_any_thread("config changed")
        if not self._warmed and (self._model_here
                                 or process_role.detect_process_role() == "worker"):
            self._warm_up(settings)

    def _finish_from_any_thread(self, reason: str) -> None:
        window = self._window
        if window is not None and getattr(window.profiler, "any_thread", False):
            self._finish(reason)

    def _warm_up(self, settings: OperatorSettings) -> None:
        """Initialise the profiler library off the model's thread (about 1 s, once)."""
        self._warmed = True
        plan = plan_profiler(settings, self._device_of())
        if plan.backend != "torch":
            return

        def warm() -> None:
            try:
                with _PROFILER_LOCK:
                    window = self._factory(plan, Path("."))
                    if getattr(window, "any_thread", False):
                        window.start()
                        window.stop()
                    del window
            except Exception:
                _logger.debug("operator profiler warm-up failed", exc_info=True)

        threading.Thread(target=warm, name="otel-vllm-operators-warmup", daemon=True).start()

    # -- model thread -----------------------------------------------------------------
    def step_begin(self) -> None:
        """Before a model step (the runner's ``execute_model``, non-empty batch)."""
        if self._armed is None and self._window is None:
            return
        self._model_here = True
        with self._lock:
            armed, window = self._armed, self._window
            if window is not None and (armed is None or window.token != armed[0]):
                self._finish("collection stopped" if armed is None else "config changed")
                window = None
            if armed is None:
                return
            token, settings = armed
            if settings.duration_s and self._token_started[0] == token and \
                    time.monotonic() - self._token_started[1] >= settings.duration_s:
                self._finish(f"duration of {settings.duration_s} s reached")
                self._exhausted = token
                return
            if window is None:
                if self._exhausted == token or self._failed:
                    return
                window = self._start(token, settings)
                if window is None:
                    return
            self._step_no += 1
            self._marker = _enter_marker(f"{MARKER_PREFIX}{self._step_no}@{time.time_ns()}")

    def step_end(self) -> None:
        """After the step (also after an error), on the same thread."""
        marker, self._marker = self._marker, None
        if marker is None:
            return
        with self._lock:
            _exit_marker(marker)
            window = self._window
            if window is None:
                return
            window.profiler.step()
            window.record.steps += 1
            token, done = self._counted
            done = done + 1 if token == window.token else 1
            self._counted = (window.token, done)
            limit = window.settings.step_limit
            if limit and done >= limit:
                self._finish(f"{limit} steps profiled")
                self._exhausted = window.token
            elif window.record.steps >= WINDOW_STEPS:
                self._finish(f"window of {WINDOW_STEPS} steps full")

    def _start(self, token: Any, settings: OperatorSettings) -> Optional[_Window]:
        plan = plan_profiler(settings, self._device_of())
        if plan != self._plan:
            for note in plan.notes:
                _warn_once(note, note)
            _logger.info("otel-vllm-ascend: operator collection with %s on %s (activities %s%s)"
                         "; traces in %s", "torch_npu.profiler" if plan.backend == "torch_npu"
                         else "torch.profiler", plan.device, "+".join(plan.activities),
                         "" if plan.device == "npu" else "; no Ascend NPU through torch_npu "
                         "here", self._folder_of())
            self._plan = plan
        folder = self._folder_of()
        if not _PROFILER_LOCK.acquire(blocking=False):
            return None  # the previous window is still being written: try at the next step
        try:
            session.make_folder(folder)
            profiler = self._factory(plan, folder)
            profiler.start()
        except ImportError as exc:
            self._failed = True
            _warn_once("import", f"operator collection (acl_task_time {settings.acl_task_time})"
                       f" needs {'torch_npu' if plan.backend == 'torch_npu' else 'torch'}, "
                       f"which does not import here ({exc}); no operator data")
            return None
        except Exception as exc:
            self._failed = True
            _warn_once("start", f"operator profiler did not start ({type(exc).__name__}: "
                       f"{exc}); no operator data from this process")
            return None
        finally:
            _PROFILER_LOCK.release()
        self._warmed = True  # the library is initialised now: no warm-up needed any more
        if self._token_started[0] != token:
            self._token_started = (token, time.monotonic())
        self._next_index += 1
        record = WindowRecord(self._next_index, time.time_ns(), self._step_no + 1)
        self._windows.append(record)
        self._window = _Window(profiler, record, settings, token)
        self.busy = True
        return self._window

    def _finish(self, reason: str) -> None:
        """Stop the running window (caller holds the lock); its trace is written in the
        background."""
        window, self._window = self._window, None
        self.busy = self._armed is not None
        if window is None:
            return
        # A step in flight keeps its mark: step_end closes it on the model's thread (the
        # profiler has stopped by then, so that step is not in the window).
        try:
            with _PROFILER_LOCK:
                window.profiler.stop()
        except Exception as exc:
            _warn_once("stop", f"operator profiler did not stop cleanly ({type(exc).__name__}:"
                       f" {exc}); its window is lost")
            return
        window.record.stopped_unix_ns = time.time_ns()
        window.record.reason = reason
        writer = threading.Thread(target=self._write, args=(window,), daemon=True,
                                  name="otel-vllm-operators-writer")
        self._writers = [w for w in self._writers if w.is_alive()] + [writer]
        writer.start()

    def _write(self, window: _Window) -> None:
        folder = self._folder_of()
        try:
            with _PROFILER_LOCK:
                name = window.profiler.export(folder, window.record.index)
                window.profiler = None  # its buffers are freed here, not on another thread
            if name is not None:
                temporary = folder / f".{name}.tmp"
                settings = window.settings
                if settings.api_filter or settings.kernel_filter:
                    filter_trace_file(temporary, settings.api_filter, settings.kernel_filter)
                os.replace(temporary, folder / name)
                window.record.file = name
        except Exception as exc:
            _warn_once("write", f"operator trace of window {window.record.index} not written "
                       f"({type(exc).__name__}: {exc})")
        self._write_sidecar(folder, window.settings)

    def _write_sidecar(self, folder: Path, settings: OperatorSettings) -> None:
        with self._lock:
            windows = [{k: v for k, v in asdict(w).items()} for w in self._windows
                       if w.stopped_unix_ns is not None]
            plan = self._plan
        document = {
            "format": 1, "host": socket.gethostname(), "pid": os.getpid(),
            "role": process_role.detect_process_role(), "marker_prefix": MARKER_PREFIX,
            "settings": asdict(settings), "plan": asdict(plan) if plan else None,
            "windows": windows,
        }
        temporary = folder / f".{SIDECAR_NAME}.{threading.get_native_id()}.tmp"
        try:
            temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
            os.replace(temporary, folder / SIDECAR_NAME)
        except OSError as exc:
            _warn_once("sidecar", f"{folder / SIDECAR_NAME} not written ({exc})")

    def close(self, timeout_s: float = EXIT_WRITE_TIMEOUT_S) -> None:
        """Stop collection and wait (bounded) for the traces to be written (exit, tests)."""
        with self._lock:
            self._armed = None
            self._finish("process exit")
            self.busy = False
        self.flush(timeout_s)

    def flush(self, timeout_s: float = EXIT_WRITE_TIMEOUT_S) -> None:
        """Wait (bounded) until the windows stopped so far are written."""
        with self._lock:
            writers = list(self._writers)
        deadline = time.monotonic() + timeout_s
        for writer in writers:
            writer.join(max(0.0, deadline - time.monotonic()))

    def reset_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._window = None
        self.busy = self._armed is not None
        self._marker = None
        self._writers = []
        self._windows = []
        self._model_here = False
        self._warmed = False

    @property
    def windows(self) -> List[WindowRecord]:
        return list(self._windows)


def _enter_marker(name: str) -> Any:
    from torch.autograd.profiler import record_function

    marker = record_function(name)
    marker.__enter__()
    return marker


def _exit_marker(marker: Any) -> None:
    try:
        marker.__exit__(None, None, None)
    except Exception:
        _logger.debug("step marker exit failed", exc_info=True)


def default_folder() -> Path:
    """``<session folder>/operators_<host>-<pid>``."""
    return session.session_dir() / f"{FOLDER_PREFIX}{socket.gethostname()}-{os.getpid()}"


_collector: Optional[OperatorCollector] = None


def collector() -> OperatorCollector:
    """This process's collector (created on first use; closed at exit)."""
    global _collector
    if _collector is None:
        _collector = OperatorCollector()
        atexit.register(_close_at_exit)
    return _collector


def _close_at_exit() -> None:
    if _collector is not None:
        _collector.close()


def _after_fork_in_child() -> None:
    """A forked child starts with the parent's arming but none of its windows or threads."""
    global _PROFILER_LOCK
    _PROFILER_LOCK = threading.Lock()  # a parent's writer may have held it at the fork
    if _collector is not None:
        _collector.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def step_begin() -> None:
    """Hook call before a model step: two attribute checks when operator collection is off."""
    if _collector is not None and _collector.busy:
        _collector.step_begin()


def step_end() -> None:
    if _collector is not None and _collector._marker is not None:
        _collector.step_end()
