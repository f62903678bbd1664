"""Setting up the OpenTelemetry SDK for vLLM processes.

Used two ways, with the same result:

* under ``opentelemetry-instrument``: the distro (:mod:`otel_vllm_ascend.distro`) calls
  :func:`apply_env_defaults`, then the configurator calls :func:`configure_sdk`;
* on the plain ``vllm serve`` path: the vLLM plugin calls :func:`ensure_tracer_provider`, which
  does both when no SDK ``TracerProvider`` exists yet.

Defaults (each applies only when the user has not set the variable):

=============================  ======================================================
``OTEL_TRACES_EXPORTER``       ``ms_service``, plus ``otlp`` when
                               ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
                               ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set
``OTEL_METRICS_EXPORTER``      ``none``
``OTEL_LOGS_EXPORTER``         ``none``
``OTEL_SERVICE_NAME``          ``vllm`` (unless ``OTEL_RESOURCE_ATTRIBUTES`` names one)
``OTEL_BSP_SCHEDULE_DELAY``    ``500`` ms, so spans reach the file within about a second
``OTEL_BSP_MAX_QUEUE_SIZE``    ``65536``, so per-step spans of a busy server fit
=============================  ======================================================

The resource carries ``service.name``, ``process.pid``, ``host.name`` and
``vllm.process.role`` (``api_server``, ``engine_core``, ``worker``) when the role can be told
from the process. Multiprocessing children started with *fork* end with ``os._exit()``, which
skips ``atexit``; :func:`register_fork_flush` makes them write their queued records and spans
before they exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import socket
import sys
import threading
from typing import Any, MutableMapping, Optional

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_vllm_ascend import contract

_logger = logging.getLogger(__name__)

ROLE_ENV = "OTEL_VLLM_PROCESS_ROLE"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
FILE_EXPORTER = "ms_service"
FIXED_DEFAULTS = {
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_BSP_SCHEDULE_DELAY": "500",
    "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
}


class _SetupState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configured_provider: Optional[TracerProvider] = None
        self.fork_flush_for: set = set()


_state = _SetupState()


def default_traces_exporters(environ: Optional[MutableMapping[str, str]] = None) -> str:
    """``ms_service``, plus ``otlp`` when an OTLP endpoint is configured."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in ENDPOINT_ENVS):
        return f"{FILE_EXPORTER},otlp"
    return FILE_EXPORTER


def apply_env_defaults(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Set the distro's ``OTEL_*`` defaults where the user has not, and pick the session folder."""
    env = os.environ if environ is None else environ
    env.setdefault("OTEL_TRACES_EXPORTER", default_traces_exporters(env))
    for name, value in FIXED_DEFAULTS.items():
        env.setdefault(name, value)
    if "OTEL_SERVICE_NAME" not in env and "service.name=" not in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""):
        env["OTEL_SERVICE_NAME"] = "vllm"
    if env is os.environ:
        from otel_vllm_ascend.exporters import session

        session.session_dir()  # chosen now, once, so every child inherits the same folder


def detect_process_role() -> Optional[str]:
    """``api_server`` / ``engine_core`` / ``worker`` when this process says which it is."""
    role = os.environ.get(ROLE_ENV)
    if role:
        return role
    name = multiprocessing.current_process().name
    if name.startswith("EngineCore"):
        return "engine_core"
    if "Worker" in name:
        return "worker"
    if "--multiprocessing-fork" in sys.argv:
        return None  # a spawn child before multiprocessing has told it its name
    if multiprocessing.parent_process() is None and sys.argv and (
            os.path.basename(sys.argv[0]) == "vllm" or "vllm.entrypoints" in " ".join(sys.argv)):
        return "api_server"
    return None


def resource_attributes() -> dict:
    """Resource attributes we add to what ``Resource.create`` reads from ``OTEL_*``."""
    attrs: dict = {"process.pid": os.getpid(), "host.name": socket.gethostname()}
    role = detect_process_role()
    if role:
        attrs[contract.PROCESS_ROLE] = role
    return attrs


def configure_sdk(**kwargs: Any) -> TracerProvider:
    """Build and install the global SDK providers from ``OTEL_*`` (what the configurator does)."""
    from opentelemetry.sdk._configuration import _initialize_components

    from otel_vllm_ascend.exporters.processors import (
        CountingBatchSpanProcessor,
        ThreadIdSpanProcessor,
    )

    attrs = dict(kwargs.pop("resource_attributes", None) or {})
    for key, value in resource_attributes().items():
        attrs.setdefault(key, value)
    kwargs.setdefault("span_processors", [ThreadIdSpanProcessor()])
    kwargs.setdefault("export_span_processor", CountingBatchSpanProcessor)
    _initialize_components(resource_attributes=attrs, **kwargs)
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        _state.configured_provider = provider
        register_fork_flush(provider)
    return provider


def ensure_tracer_provider() -> Any:
    """Return the SDK provider, setting one up (file exporter, OTLP if configured) if needed.

    A provider set up by our configurator is used as it is. Another SDK provider (an
    application's own) gets our file exporter added once. Without any, the distro's defaults
    apply and a provider is built exactly as under ``opentelemetry-instrument``.
    """
    with _state.lock:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            if current is not _state.configured_provider and not _has_file_exporter(current):
                _add_file_exporter(current)
                register_fork_flush(current)
            return current
        apply_env_defaults()
        return configure_sdk()


def _has_file_exporter(provider: TracerProvider) -> bool:
    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    multi = getattr(provider, "_active_span_processor", None)
    for processor in getattr(multi, "_span_processors", ()):
        if isinstance(getattr(processor, "span_exporter", None), MsServiceSpanExporter):
            return True
    return False


def _add_file_exporter(provider: TracerProvider) -> None:
    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter
    from otel_vllm_ascend.exporters.processors import (
        CountingBatchSpanProcessor,
        ThreadIdSpanProcessor,
    )

    provider.add_span_processor(ThreadIdSpanProcessor())
    provider.add_span_processor(CountingBatchSpanProcessor(MsServiceSpanExporter()))


def flush_before_exit(provider: Any) -> None:
    """Queued records -> spans -> exporters, now (used at the exit of forked children)."""
    from otel_vllm_ascend import recorder

    try:
        recorder.flush_at_exit()
        provider.force_flush()
    except Exception:  # exit paths must not raise
        _logger.debug("flush at exit failed", exc_info=True)


def _in_fork_child(provider: Any) -> None:
    _refresh_pid(provider)
    multiprocessing.util.Finalize(None, flush_before_exit, args=(provider,), exitpriority=10)


def _refresh_pid(provider: Any) -> None:
    # The resource was built in the parent; a forked child must not report the parent's pid.
    resource = getattr(provider, "_resource", None)
    if not isinstance(resource, Resource) or resource.attributes.get("process.pid") == os.getpid():
        return
    update = getattr(provider, "_update_resource", None)  # also re-stamps cached tracers
    if update is not None:
        update(Resource({"process.pid": os.getpid()}))
    else:
        provider._resource = resource.merge(Resource({"process.pid": os.getpid()}))


def register_fork_flush(provider: Any) -> None:
    """Make multiprocessing *fork* children flush records and spans before ``os._exit``."""
    if id(provider) in _state.fork_flush_for:
        return
    _state.fork_flush_for.add(id(provider))
    multiprocessing.util.register_after_fork(provider, _in_fork_child)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _refresh_pid(provider))
