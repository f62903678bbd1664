"""``otel-vllm-analyze compare`` through the installed console script, as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import simulate_service  # noqa: E402

pytestmark = pytest.mark.subprocess


def run_cli(*args):
    cmd = [str(Path(sys.executable).with_name("otel-vllm-analyze")), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    return done


def test_compare_subcommand_and_plain_invocation(tmp_path):
    folder = tmp_path / "in"
    simulate_service(20, seed=3, max_batch=4).capture.write(folder)
    done = run_cli("compare", folder, folder, "-o", tmp_path / "cmp")
    assert done.returncode == 0, done.stderr
    assert "differences beyond noise: 0 of" in done.stdout
    assert (tmp_path / "cmp" / "compare.csv").is_file()
    assert (tmp_path / "cmp" / "compare.html").is_file()
    done = run_cli("compare", folder, tmp_path / "missing", "-o", tmp_path / "cmp")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"ERROR: B ({tmp_path / 'missing'}): does not exist"]
    # The plain invocation is unchanged.
    done = run_cli("--input-path", folder, "--output-path", tmp_path / "out", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "request.csv").is_file()
    assert "compare A B" in run_cli("--help").stdout
