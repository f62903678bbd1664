"""``python -m otel_vllm_ascend.analysis``: the same as ``otel-vllm-analyze``."""

import os
import sys

from otel_vllm_ascend.analysis.cli import main

tables: list = []
status = main(keep_until_exit=tables)
# Every output is written and closed: leave without freeing the tables and without the
# interpreter's teardown of pandas, matplotlib and numpy (0.15-0.25 s of CPU at the benchmark's
# size, for nothing).
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
