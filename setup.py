"""The one compiled part: the hooks' hot path (otel_vllm_ascend/_hotpath.c).

Optional: where it cannot be built the install goes on and the hooks use the Python wrapper
(same behaviour, slower on vLLM's hot path). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("otel_vllm_ascend._hotpath", ["otel_vllm_ascend/_hotpath.c"],
                             optional=True)])
