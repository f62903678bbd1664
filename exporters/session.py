"""The collection folder: owned by collection (:mod:`otel_vllm_ascend.session`), which picks it
from the profiler config; the exporters read it from there (export -> collection, one way)."""

from otel_vllm_ascend.session import (  # noqa: F401
    CONFIG_ENV,
    DEFAULT_PROF_DIR,
    DIR_MODE,
    SESSION_ENV,
    make_folder,
    prof_dir_from_config,
    session_dir,
    session_name,
)
