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

This module wires collection to export without importing the export side: the file exporter
and the export span processor are looked up by name in the entry-point group
``otel_vllm_ascend.export`` (declared in ``pyproject.toml``, provided by
``otel_vllm_ascend.exporters``), as the SDK looks up ``OTEL_TRACES_EXPORTER`` names.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.metadata
import logging
import multiprocessing.util
import os
import socket
import threading
from typing import Any, MutableMapping, Optional

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_vllm_ascend import contract, session, writer_client
from otel_vllm_ascend.process_role import ROLE_ENV, detect_process_role  # noqa: F401 (API)
from otel_vllm_ascend.thread_id import ThreadIdSpanProcessor

_logger = logging.getLogger(__name__)

EXPORT_GROUP = "otel_vllm_ascend.export"
EXPORT_DEFAULTS = {  # the group's entries in pyproject.toml
    "file_exporter": "otel_vllm_ascend.exporters.ms_service:MsServiceSpanExporter",
    "span_processor": "otel_vllm_ascend.exporters.processors:CountingBatchSpanProcessor",
    "writer": "otel_vllm_ascend.exporters.writer:main",
}
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
        session.session_dir()  # chosen now, once, so every child inherits the same folder


def _export_entry(name: str) -> Any:
    found = importlib.metadata.entry_points()
    select = getattr(found, "select", None)  # Python >= 3.10; a dict of groups before
    group = select(group=EXPORT_GROUP) if select else found.get(EXPORT_GROUP, ())
    for entry in group:
        if entry.name == name:
            return entry
    _logger.debug("no %r in the entry-point group %s; using %s", name, EXPORT_GROUP,
                  EXPORT_DEFAULTS[name])
    return None


def export_part(name: str) -> Any:
    """``file_exporter`` or ``span_processor`` of the export side, by entry point.

    A source tree whose installed metadata predates the group (a stale ``*.egg-info`` first on
    ``sys.path``) still gets the package's own defaults, by the same names.
    """
    entry = _export_entry(name)
    if entry is not None:
        return entry.load()
    module, _, attr = EXPORT_DEFAULTS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def export_target(name: str) -> str:
    """The ``module:attr`` an export entry point names, without importing it (the writer is
    started as a process of its own by that name)."""
    entry = _export_entry(name)
    return entry.value if entry is not None else EXPORT_DEFAULTS[name]


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

    attrs = dict(kwargs.pop("resource_attributes", None) or {})
    for key, value in resource_attributes().items():
        attrs.setdefault(key, value)
    kwargs.setdefault("span_processors", [ThreadIdSpanProcessor()])
    kwargs.setdefault("export_span_processor", export_part("span_processor"))
    _initialize_components(resource_attributes=attrs, **kwargs)
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        _state.configured_provider = provider
        register_fork_flush(provider)
        start_writer(provider)
    return provider


def start_writer(provider: TracerProvider) -> None:
    """Hand this process's records to the node's writer process (started here when no vLLM
    process of this server has started it yet); see ``writer_client.py``. Only for a provider
    this package built from ``OTEL_*``, which the writer can build again for each process."""
    from otel_vllm_ascend import recorder

    if recorder._state.handoff is not None:
        return
    client = writer_client.start(provider, export_target("writer"))
    if client is not None:
        recorder.use_handoff(client)
        if client.process is not None:
            # After the recorder's own exit flush (registered later, so run first): the BYE
            # and the wait for the writer even when this process recorded nothing.
            atexit.register(client.close)


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
    file_exporter = export_part("file_exporter")
    multi = getattr(provider, "_active_span_processor", None)
    for processor in getattr(multi, "_span_processors", ()):
        if isinstance(getattr(processor, "span_exporter", None), file_exporter):
            return True
    return False


def _add_file_exporter(provider: TracerProvider) -> None:
    processor = export_part("span_processor")
    provider.add_span_processor(ThreadIdSpanProcessor())
    provider.add_span_processor(processor(export_part("file_exporter")()))


def flush_before_exit(provider: Any) -> None:
    """Queued records -> spans -> exporters, now (used at the exit of forked children)."""
    from otel_vllm_ascend import drops, recorder

    try:
        recorder.flush_at_exit()
        provider.force_flush()
        drops.report()
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
