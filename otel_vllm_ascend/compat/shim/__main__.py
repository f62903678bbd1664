"""``python -m otel_vllm_ascend.compat.shim`` prints the folder to add to ``PYTHONPATH``."""

from otel_vllm_ascend.compat.shim import path

print(path())
