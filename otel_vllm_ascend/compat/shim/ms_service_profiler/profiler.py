"""``ms_service_profiler.profiler`` as handlers import it (shim, see the package docstring)."""

from otel_vllm_ascend.compat.profiler import Level, MarkType, Profiler

__all__ = ["Level", "MarkType", "Profiler", "prof_step"]


def prof_step(stop_check: bool = False) -> None:
    """Does nothing: it steps CANN's torch_npu profiler, which this project does not drive."""
