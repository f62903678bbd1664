"""Compatibility shim for CANN's ``ms_service_profiler``, provided by otel-vllm-ascend.

Only importable on explicit opt-in (see ``otel_vllm_ascend.compat.shim``). Records go to
OpenTelemetry through otel-vllm-ascend, not to CANN's library.
"""

from otel_vllm_ascend.compat.profiler import Level, MarkType, Profiler

__all__ = ["Level", "MarkType", "Profiler"]
