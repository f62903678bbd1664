"""``python -m otel_vllm_ascend.analysis``: the same as ``otel-vllm-analyze``."""

import sys

from otel_vllm_ascend.analysis.cli import main

sys.exit(main())
