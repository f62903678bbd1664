"""``otel-vllm-analyze``: say in one line which extra is missing instead of a traceback.

The serving install (``pip install otel-vllm-ascend``) leaves out pandas, numpy and matplotlib;
the analyzer needs them (``pip install 'otel-vllm-ascend[analysis]'``).
"""

from __future__ import annotations

import sys


def run() -> None:
    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as exc:
        print(f"otel-vllm-analyze: {exc.name or exc} is not installed; the analyzer needs the "
              "'analysis' extra: pip install 'otel-vllm-ascend[analysis]'", file=sys.stderr)
        sys.exit(2)
    from otel_vllm_ascend.analysis.cli import run as analyze

    analyze()
