"""Drop-in support for msserviceprofiler users.

* :mod:`otel_vllm_ascend.compat.profiler`: the reference's fluent ``Profiler`` API
  (``Profiler(Level.INFO).domain(...).res(...).metric(...).event(...)``, spans, links, metric
  samples, Meta rows) recording OpenTelemetry spans through the project's recorder. Port a
  custom handler by changing its import to ``from otel_vllm_ascend.compat import Profiler, Level``.
* :mod:`otel_vllm_ascend.compat.shim`: an explicit opt-in to run *unmodified* handler files that
  ``from ms_service_profiler import Profiler, Level`` when CANN's real module is not installed.

See docs/coming-from-msserviceprofiler.md for every difference from the reference.
"""

from otel_vllm_ascend.compat.profiler import Level, MarkType, Profiler

__all__ = ["Level", "MarkType", "Profiler"]
