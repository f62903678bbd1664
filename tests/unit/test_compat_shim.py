"""Opt-in shim for unmodified handler files importing ``ms_service_profiler`` (real children).

Each test starts a Python child with the project installed, the fixture handler folder on
``PYTHONPATH`` and one way of opting in (or none), and reads the capture file it wrote.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from otel_vllm_ascend.compat import shim

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ms_custom_handlers"


def _run(tmp_path, mode, extra_paths=(), env_updates=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", shim.ENV_VAR)}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_paths), str(FIXTURES)])
    env.update(env_updates or {})
    out = tmp_path / "capture"
    out.mkdir()
    return subprocess.run([sys.executable, str(FIXTURES / "run_handlers.py"), str(out), mode],
                          env=env, capture_output=True, text=True, timeout=120)


def _messages(db_path):
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT flag, message FROM Mstx ORDER BY markId").fetchall()
    return [(flag, json.loads(text)) for flag, text in rows]


EXPECTED = [
    (1, {"domain": "Schedule", "name": "Enqueue", "type": 0, "rid": "req-7", "QueueSize=": 1,
         "scope#QueueName": "WAITING"}),
    (2, {"domain": "Custom", "name": "customStep", "type": 2, "outputs": 3}),
]


def test_shim_folder_on_pythonpath_runs_the_unmodified_handlers(tmp_path):
    done = _run(tmp_path, "plain", extra_paths=[shim.path()])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert Path(report["module"]).parent == Path(shim.path()) / "ms_service_profiler"
    assert _messages(report["db"]) == EXPECTED


def test_env_var_opt_in_adds_the_alias(tmp_path):
    done = _run(tmp_path, "install", env_updates={shim.ENV_VAR: "1"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["added"] is True
    assert _messages(report["db"]) == EXPECTED


def test_without_opt_in_the_module_is_not_importable(tmp_path):
    done = _run(tmp_path, "install")
    assert done.returncode != 0
    assert "No module named 'ms_service_profiler'" in done.stderr


def test_a_real_ms_service_profiler_wins_over_the_alias(tmp_path):
    real = tmp_path / "cann" / "ms_service_profiler"
    real.mkdir(parents=True)
    # Stands in for CANN's module: same public names, but marks itself so we can tell.
    (real / "__init__.py").write_text(
        "from otel_vllm_ascend.compat.profiler import Level, Profiler\nREAL = True\n")
    done = _run(tmp_path, "install", extra_paths=[real.parent], env_updates={shim.ENV_VAR: "1"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["added"] is False
    assert Path(report["module"]).parent == real


def test_shim_path_is_printed_by_the_module_entry():
    done = subprocess.run([sys.executable, "-m", "otel_vllm_ascend.compat.shim"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == shim.path()
    assert (Path(shim.path()) / "ms_service_profiler" / "__init__.py").is_file()


def test_install_is_refused_when_a_real_module_is_importable(tmp_path, monkeypatch):
    real = tmp_path / "ms_service_profiler"
    real.mkdir()
    (real / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert shim.install() is False
        assert not shim.is_installed()
    finally:
        shim.uninstall()


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("no", False)])
def test_env_var_off_values_do_nothing(monkeypatch, value, expected):
    monkeypatch.setenv(shim.ENV_VAR, value)
    assert shim.install_if_requested() is expected
    assert not shim.is_installed()
