"""Background samplers driven by the profiler config, started and stopped with ``enable``.

* ``host_system_usage_freq`` (1-50 Hz, -1 off): host CPU % and memory, sampled with psutil on a
  daemon thread, recorded as metric records ``hostUsage`` (domain ``host``):
  ``ms.metric.cpuPercent``, ``ms.metric.memPercent``, ``ms.metric.memUsedMB``.
* ``npu_memory_usage_freq`` (1-50 Hz, -1 off): device memory, metric records ``deviceMemory``
  (domain ``npu``): ``ms.metric.usage`` (MB allocated), ``ms.metric.reserved`` (MB),
  ``ms.scope.device``. Read through torch_npu when importable, torch.cuda when a GPU exists;
  otherwise one warning and nothing.

``acl_task_time`` (operator data) is not a sampler: see :mod:`otel_vllm_ascend.operator_profiler`.

Sampler threads are daemons and stop when recording stops (``enable: 0``, ``timelimit``), so
they never keep a process alive. Only the process that owns a device samples it: the API server
has none, so device samples are taken only where the device is initialised; the host is
sampled by the top process of the service (the API server) only.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
from typing import Any, Callable, Optional

from otel_vllm_ascend import contract, recorder

_logger = logging.getLogger(__name__)

HOST_RECORD = "hostUsage"
DEVICE_RECORD = "deviceMemory"
_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        _logger.warning("otel-vllm-ascend: %s", message)


def _is_service_top_process() -> bool:
    """The process that started the others, and not multiprocessing's resource tracker (also
    parentless, and instrumented under ``opentelemetry-instrument``)."""
    if multiprocessing.parent_process() is not None:
        return False
    command = " ".join(getattr(sys, "orig_argv", ()) or ())
    return "resource_tracker" not in command


def _valid_freq(value: Any) -> Optional[float]:
    try:
        freq = float(value)
    except (TypeError, ValueError):
        return None
    return min(freq, 50.0) if freq >= 1 else None


class PeriodicSampler:
    """Calls ``sample()`` ``freq`` times a second on a daemon thread until stopped."""

    def __init__(self, name: str, freq: float, sample: Callable[[], None]) -> None:
        self.name, self.freq, self._sample = name, freq, sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        period = 1.0 / self.freq
        failures = 0
        while not self._stop.wait(period):
            try:
                self._sample()
                failures = 0
            except Exception:
                failures += 1
                _logger.debug("sampler %s failed", self.name, exc_info=True)
                if failures >= 5:
                    _warn_once(self.name, f"sampler {self.name} stopped after 5 failures")
                    return


def sample_host() -> None:
    import psutil

    memory = psutil.virtual_memory()
    recorder.record_event(HOST_RECORD, {
        contract.DOMAIN: "host",
        contract.METRIC_PREFIX + "cpuPercent": float(psutil.cpu_percent(interval=None)),
        contract.METRIC_PREFIX + "memPercent": float(memory.percent),
        contract.METRIC_PREFIX + "memUsedMB": round(memory.used / 2**20, 1),
    }, record=contract.RECORD_METRIC)


def device_memory_reader() -> Optional[Callable[[], None]]:
    """A sampling function for the local device, or None (with one warning) without one."""
    try:
        import torch
        import torch_npu  # noqa: F401

        backend = torch.npu  # type: ignore[attr-defined]
    except Exception:
        backend = None
        try:
            import torch

            if torch.cuda.is_available():
                backend = torch.cuda
        except Exception:
            backend = None
    if backend is None:
        _warn_once("device", "npu_memory_usage_freq is set but neither torch_npu nor a CUDA "
                   "device is available: no device memory samples")
        return None

    def sample() -> None:
        is_initialized = getattr(backend, "is_initialized", None)
        if is_initialized is not None and not is_initialized():
            return  # this process never touched the device (API server, EngineCore)
        device = backend.current_device()
        recorder.record_event(DEVICE_RECORD, {
            contract.DOMAIN: "npu",
            contract.METRIC_PREFIX + "usage": round(backend.memory_allocated(device) / 2**20, 1),
            contract.METRIC_PREFIX + "reserved": round(backend.memory_reserved(device) / 2**20, 1),
            contract.SCOPE_PREFIX + "device": int(device),
        }, record=contract.RECORD_METRIC)
    return sample


class SamplerSet:
    """Starts / stops this process's samplers as the live state changes."""

    def __init__(self) -> None:
        self._running: dict = {}
        self._lock = threading.Lock()

    def on_state(self, live: Any) -> None:
        with self._lock:
            config = live.config
            wanted: dict = {}
            if live.recording and config is not None:
                host_freq = _valid_freq(getattr(config, "host_system_usage_freq", -1))
                # The host is sampled once, by the service's top process (the API server).
                if host_freq and _is_service_top_process():
                    wanted["host"] = (host_freq, sample_host)
                device_freq = _valid_freq(getattr(config, "npu_memory_usage_freq", -1))
                if device_freq:
                    reader = device_memory_reader()
                    if reader is not None:
                        wanted["device"] = (device_freq, reader)
            for key in list(self._running):
                sampler = self._running[key]
                if key not in wanted or wanted[key][0] != sampler.freq or not sampler.alive:
                    sampler.stop()
                    del self._running[key]
            for key, (freq, sample) in wanted.items():
                if key not in self._running:
                    sampler = PeriodicSampler(f"otel-vllm-{key}-sampler", freq, sample)
                    sampler.start()
                    self._running[key] = sampler

    @property
    def running(self) -> list:
        return sorted(self._running)

    def stop(self) -> None:
        with self._lock:
            for sampler in self._running.values():
                sampler.stop()
            self._running.clear()
