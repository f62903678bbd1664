"""vLLM plugin entry point (``vllm.general_plugins``): profiling with plain ``vllm serve``.

vLLM calls :func:`register` in every process it starts (API server, EngineCore, workers),
sometimes more than once. With ``SERVICE_PROF_CONFIG_PATH`` set it makes sure an OpenTelemetry
SDK provider exists (our file exporter, plus OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) and
installs the hooks; without it, it does nothing::

    SERVICE_PROF_CONFIG_PATH=./ms_service_profiler_config.json vllm serve MODEL

Under ``opentelemetry-instrument`` the instrumentor is already active in the process; the
plugin then leaves it alone (the instrumentor is a singleton and every hook is installed once).
"""

from __future__ import annotations

import logging

_logger = logging.getLogger(__name__)


def register() -> None:
    """Install the hooks when ``SERVICE_PROF_CONFIG_PATH`` is set; never raises."""
    try:
        from otel_vllm_ascend.config import config_path_from_env

        if not config_path_from_env():
            return
        from otel_vllm_ascend.instrumentor import VllmServiceInstrumentor

        instrumentor = VllmServiceInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return
        from otel_vllm_ascend.tracing_setup import ensure_tracer_provider

        provider = ensure_tracer_provider()
        instrumentor.instrument(tracer_provider=provider)
    except Exception:  # a profiler problem must never stop vLLM from starting
        _logger.warning("otel-vllm-ascend: vLLM plugin could not install the hooks",
                        exc_info=True)
