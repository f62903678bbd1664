"""OpenTelemetry distro and configurator for vLLM.

Installed as the ``opentelemetry_distro`` and ``opentelemetry_configurator`` entry points, so
``opentelemetry-instrument vllm serve ...`` writes msserviceprofiler capture files with no
further set-up::

    opentelemetry-instrument vllm serve MODEL                        # files only
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 \\
        opentelemetry-instrument vllm serve MODEL                    # files + OTLP (Jaeger)
    OTEL_TRACES_EXPORTER=otlp opentelemetry-instrument vllm serve MODEL   # OTLP only

The defaults are listed in :mod:`otel_vllm_ascend.tracing_setup`; every ``OTEL_*`` variable the
user sets wins. Other distros installed next to this one: pick with ``OTEL_PYTHON_DISTRO`` /
``OTEL_PYTHON_CONFIGURATOR`` (name ``otel_vllm_ascend``).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from otel_vllm_ascend import tracing_setup


class VllmAscendDistro(BaseDistro):
    """Sets the ``OTEL_*`` defaults (``ms_service`` traces exporter, no metrics/logs export)."""

    def _configure(self, **kwargs: Any) -> None:
        tracing_setup.apply_env_defaults()


class VllmAscendConfigurator(_OTelSDKConfigurator):
    """The SDK configurator plus our resource attributes, thread ids, drop counts, fork flush."""

    def _configure(self, **kwargs: Any) -> None:
        if os.environ.get("OTEL_CONFIG_FILE"):
            super()._configure(**kwargs)  # declarative configuration: the user's file decides
            return
        tracing_setup.configure_sdk(**kwargs)
