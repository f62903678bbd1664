"""``ms_service_profiler.mstx.service_profiler``: the enable checks handlers call directly."""

from typing import Any

from otel_vllm_ascend.compat import gate
from otel_vllm_ascend.compat.profiler import parse_level

__all__ = ["service_profiler"]


class _ServiceProfiler:
    @staticmethod
    def is_enable(level: Any) -> bool:
        return gate.enabled(parse_level(level))

    @staticmethod
    def is_domain_enable(domain: str) -> bool:
        return gate.enabled(0, domain)  # the allow-list alone, as the reference


service_profiler = _ServiceProfiler()
