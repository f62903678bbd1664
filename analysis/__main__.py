"""``python -m otel_vllm_ascend.analysis``: the same as ``otel-vllm-analyze``."""

import os
import sys

from otel_vllm_ascend.analysis.cli import main

status = main()
# Every output is written and closed: leave without the interpreter's teardown of pandas,
# matplotlib and numpy (about 0.1 s of CPU at the benchmark's size, for nothing).
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
