"""OpenTelemetry instrumentor for vLLM's service profiling hooks.

Installs one hook per entry of the symbol YAML (the packaged default, or the file named by
``PROFILING_SYMBOLS_PATH``) into whichever vLLM process runs it: API server, EngineCore, Worker.
Each hook records spans through :mod:`otel_vllm_ascend.recorder`; what is recorded is decided live
by the profiler config (``SERVICE_PROF_CONFIG_PATH``, see :mod:`otel_vllm_ascend.control`).

Usage::

    opentelemetry-instrument vllm serve MODEL        # entry point vllm_service_profiler
    SERVICE_PROF_CONFIG_PATH=prof.json vllm serve MODEL   # vLLM plugin, same instrumentor

    from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor
    VllmServiceInstrumentor().instrument(tracer_provider=provider)

Options of ``instrument()``: ``tracer_provider``; ``symbols_path`` (a YAML instead of the default
lookup); ``specs`` (already compiled ``HookSpec`` objects, tests); ``config_path`` (profiler
config to watch); ``config`` (a ``ProfilerConfig`` applied without watching).
Without a config file, collection is on with the default config: running under
``opentelemetry-instrument`` is the request to record.

``instrumentation_dependencies()`` is empty: vLLM builds often carry versions OpenTelemetry's
check rejects (``0.1.devN+g…``), so versions are gated per symbol (``min_version`` /
``max_version``) instead.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from typing import Any, Collection, Optional

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from otel_vllm_ascend import control, recorder
from otel_vllm_ascend import engine as engine_module
from otel_vllm_ascend.compat import shim as compat_shim
from otel_vllm_ascend.installer import HookInstaller

_logger = logging.getLogger(__name__)


class VllmServiceInstrumentor(BaseInstrumentor):
    """Hooks vLLM / vllm-ascend internals named by the symbol YAML."""

    _installer: Optional[HookInstaller] = None
    _samplers: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        ensure_visible_logging()
        # Opt-in (OTEL_VLLM_MS_SERVICE_PROFILER_SHIM=1): user handler files importing
        # ms_service_profiler work without CANN's module; before any handler is imported.
        compat_shim.install_if_requested()
        provider = kwargs.get("tracer_provider")
        if provider is not None:
            recorder.set_tracer_provider(provider)

        specs = kwargs.get("specs")
        source, skipped = "specs given", ()
        engine = engine_module.detect()
        if specs is None:
            specs, source, skipped = _load_specs(kwargs.get("symbols_path"))
            _announce_missing_records(engine, specs, skipped)
        installer = HookInstaller(specs)
        self._installer = installer
        installer.start()

        config_file, config = _config_source(kwargs)
        control.add_listener(installer.set_live_state)
        state = control.start(config_file=config_file, config=config)

        from otel_vllm_ascend import samplers

        self._samplers = samplers.SamplerSet()
        control.add_listener(self._samplers.on_state)
        # Operator data (acl_task_time): armed here, stepped by the model runner's hook.
        from otel_vllm_ascend import operator_profiler

        control.add_listener(operator_profiler.collector().on_state)

        _logger.info(
            "otel-vllm-ascend: pid %d: %s; %d entries from %s; %d hooks installed now, the "
            "rest when their module is imported; recording %s",
            os.getpid(), engine.describe(), len(specs), source, len(installer.hooks),
            "on" if state.recording else "off")

    def _uninstrument(self, **kwargs: Any) -> None:
        installer = self._installer
        if installer is not None:
            control.remove_listener(installer.set_live_state)
            installer.close()
            self._installer = None
        if self._samplers is not None:
            control.remove_listener(self._samplers.on_state)
            self._samplers.stop()
            self._samplers = None
        from otel_vllm_ascend import operator_profiler

        control.remove_listener(operator_profiler.collector().on_state)
        operator_profiler.collector().close()
        control.stop()
        recorder.flush()

    @property
    def hooks(self) -> list:
        """Hooks installed so far in this process (tests, diagnostics)."""
        return list(self._installer.hooks) if self._installer is not None else []

    @property
    def problems(self) -> list:
        return list(self._installer.problems) if self._installer is not None else []


# Kept from the packaged default whatever symbol file is in use, so captures made with
# msserviceprofiler's or vllm-ascend's files are as complete as with the default: runtime
# infrastructure rather than records (the last engine steps at shutdown, see
# handlers/lifecycle.py; one trace per request across processes, see handlers/request.py) and
# the process's Meta dpRankId, which vllm-ascend's files before 0.20 do not ask for.
# OTEL_VLLM_SHUTDOWN_GRACE_S=0 leaves the shutdown hooks out, from every symbol file.
ALWAYS_ON_SYMBOLS = frozenset({"vllm.v1.engine.utils:shutdown",
                               "vllm.v1.utils:APIServerProcessManager.shutdown"})
ALWAYS_ON_HANDLERS = frozenset({"shutdown_grace", "api_servers_shutdown_grace",
                                "assign_request_id", "carry_trace_context",
                                "incoming_trace_headers", "bind_trace_context",
                                "init_data_parallel"})
# Records the reference added in its 26.x handlers. A file in the reference's layout (written by
# vllm-ascend or msserviceprofiler) gets them from the default where it hooks none of their
# targets itself, so older files give what the newest do.
NEWER_RECORD_HANDLERS = frozenset({"execute_model_runner", "record_function_or_nullcontext",
                                   "propose_draft_token_ids", "capture_rejection_output",
                                   "init_data_parallel_worker"})


def _load_specs(symbols_path: Optional[str]) -> tuple:
    # The loader logs every problem itself and falls back to the packaged default when the
    # chosen file is unusable as a whole.
    from otel_vllm_ascend.handlers import BUILTIN_HANDLERS
    from otel_vllm_ascend.handlers.lifecycle import grace_seconds
    from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS, load_symbols, load_symbols_or_default

    symbol_set = load_symbols_or_default(symbols_path)
    specs = list(symbol_set.specs)
    if str(symbol_set.path) != str(PACKAGED_SYMBOLS):
        always = {BUILTIN_HANDLERS[name] for name in ALWAYS_ON_HANDLERS}
        newer = {BUILTIN_HANDLERS[name] for name in NEWER_RECORD_HANDLERS} \
            if symbol_set.reference_layout else set()
        present = {(spec.symbol, spec.handler) for spec in specs}
        hooked = {spec.symbol for spec in specs}
        added = [s for s in load_symbols(PACKAGED_SYMBOLS, symbol_set.vllm_version).specs
                 if (s.handler in always and (s.symbol, s.handler) not in present)
                 or (s.handler in newer and s.symbol not in hooked)]
        if added:
            _logger.info("otel-vllm-ascend: added from the packaged default: %s",
                         ", ".join(f"{s.symbol} ({s.handler.rsplit(':', 1)[1]})" for s in added))
        specs += added
    if grace_seconds() == 0:
        specs = [spec for spec in specs if spec.symbol not in ALWAYS_ON_SYMBOLS]
    return tuple(specs), str(symbol_set.path), tuple(symbol_set.skipped)


def _announce_missing_records(engine: Any, specs: Any, skipped: Any) -> None:
    """One line, in the process vLLM was started as, naming the default records this
    installation cannot give and why (version gates, the engine in use)."""
    if multiprocessing.parent_process() is not None:
        return
    outside = engine_module.outside_checked_lines(engine)
    if outside:
        _logger.warning("otel-vllm-ascend: %s", outside)
    available = [(engine_module.handler_short_name(s.handler), True, "") for s in specs]
    available += [(engine_module.handler_short_name(s.handler), False, why)
                  for s, why in skipped]
    missing = engine_module.missing_records(engine, available)
    # Entries of the user's file only: those added from the packaged default hold both engines'.
    from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS

    own = [s.symbol for s in specs if not s.source.startswith(f"{PACKAGED_SYMBOLS}#")]
    idle = engine_module.idle_entries(engine, own or [s.symbol for s in specs], missing)
    if idle:
        _logger.warning("otel-vllm-ascend: %s", idle)
    if missing:
        _logger.warning("otel-vllm-ascend: on %s these records will be missing: %s",
                        engine.describe(),
                        "; ".join(f"{m.record}: {m.reason}" for m in missing))


def _config_source(kwargs: dict) -> tuple:
    """(ConfigFile to watch or None, fixed config or None)."""
    from otel_vllm_ascend import config as config_module

    if kwargs.get("config") is not None:
        return None, kwargs["config"]
    path = kwargs.get("config_path") or config_module.config_path_from_env()
    if path:
        return config_module.ConfigFile(path), None
    default = config_module.ProfilerConfig()
    return None, dataclasses.replace(default, enable=type(default.enable)(1))


def ensure_visible_logging() -> None:
    """Our log lines show exactly once, whatever root handlers vLLM, IPEX or the user set up.

    The package logger gets its own stderr handler and level and does not propagate: a root
    handler at WARNING (IPEX adds one) would otherwise hide our INFO lines, and one at INFO
    would print them twice. A package logger that already has handlers was configured by the
    user (or a test harness) and is left as it is. ``OTEL_VLLM_LOG_LEVEL`` sets the level.
    """
    package_logger = logging.getLogger("otel_vllm_ascend")
    if package_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s"))
    package_logger.addHandler(handler)
    package_logger.propagate = False
    level = os.environ.get("OTEL_VLLM_LOG_LEVEL", "").strip().upper() or "INFO"
    try:
        package_logger.setLevel(int(level) if level.isdigit() else level)
    except ValueError:
        package_logger.setLevel(logging.INFO)
        package_logger.warning("otel-vllm-ascend: OTEL_VLLM_LOG_LEVEL=%r is not a log level "
                               "(DEBUG, INFO, WARNING, ERROR or a number); using INFO", level)
