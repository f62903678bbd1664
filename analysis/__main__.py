"""``python -m otel_vllm_ascend.analysis``: the same as ``otel-vllm-analyze``."""

from otel_vllm_ascend.analysis.command import run

run()
