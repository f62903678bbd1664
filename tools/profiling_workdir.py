"""The seed's profiling set-up, as files in a work folder, plus a raw reader of the capture.

msserviceprofiler's quick start: write ``ms_service_profiler_config.json`` (``"enable": 0``),
point ``SERVICE_PROF_CONFIG_PATH`` at it and ``PROFILING_SYMBOLS_PATH`` at a symbol YAML, start
the server, then switch collection on while it runs with::

    sed -i 's/"enable":\\s*0/"enable": 1/' ms_service_profiler_config.json

:func:`set_enable` runs exactly that ``sed`` (or its reverse). :func:`read_records` reads every
``ms_service_*.db`` under a folder without the analyzer, so checks do not depend on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Optional

CONFIG_NAME = "ms_service_profiler_config.json"
SYMBOLS_NAME = "service_profiling_symbols.yaml"


@dataclasses.dataclass
class ProfilingFiles:
    config: Path
    symbols: Path
    prof_dir: Path

    def env(self) -> dict:
        return {
            "SERVICE_PROF_CONFIG_PATH": str(self.config),
            "PROFILING_SYMBOLS_PATH": str(self.symbols),
        }


def write_config(path: Path, prof_dir: Path, *, enable: int = 0, timelimit: int = 0,
                 domain: str = "") -> None:
    # One key per line, "key": value, so the quick start's sed command matches.
    fields = {
        "enable": enable,
        "prof_dir": str(prof_dir),
        "profiler_level": "INFO",
        "timelimit": timelimit,
        "domain": domain,
    }
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def default_symbols_file() -> Optional[Path]:
    """The symbol YAML packaged with otel_vllm_ascend, if the installed version ships one."""
    try:
        import importlib.resources as resources

        package = resources.files("otel_vllm_ascend")
        for entry in sorted(package.iterdir(), key=lambda e: e.name):
            if entry.name.endswith((".yaml", ".yml")) and "symbol" in entry.name:
                return Path(str(entry))
    except (ImportError, OSError, TypeError):
        return None
    return None


def prepare(work_dir: Path, *, enable: int = 0, timelimit: int = 0) -> ProfilingFiles:
    """Write the config (and a copy of the default symbol YAML when one is packaged)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    files = ProfilingFiles(work_dir / CONFIG_NAME, work_dir / SYMBOLS_NAME, work_dir / "prof")
    write_config(files.config, files.prof_dir, enable=enable, timelimit=timelimit)
    packaged = default_symbols_file()
    if packaged is not None and not files.symbols.exists():
        shutil.copyfile(packaged, files.symbols)
    # Otherwise the tool copies its default there at start-up, as msserviceprofiler does.
    return files


def set_enable(config: Path, enable: bool) -> None:
    """Flip ``enable`` with the quick start's sed command."""
    old, new = ("0", "1") if enable else ("1", "0")
    subprocess.run(["sed", "-i", f's/"enable":\\s*{old}/"enable": {new}/', str(config)],
                   check=True)


def set_timelimit(config: Path, seconds: int) -> None:
    subprocess.run(["sed", "-i", f's/"timelimit":\\s*[0-9]*/"timelimit": {int(seconds)}/',
                    str(config)], check=True)


@dataclasses.dataclass
class Record:
    file: str
    pid: int
    tid: int
    flag: int
    start_ns: int
    end_ns: int
    name: str
    message: dict
    raw: str


def capture_files(root: Path) -> list:
    return sorted(p for p in Path(root).rglob("ms_service_*.db") if p.is_file())


def read_records(root: Path) -> list:
    """Every Mstx row of every ``ms_service_*.db`` under ``root``; JSON messages decoded."""
    records = []
    for path in capture_files(root):
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT message, flag, timestamp, endTimestamp, pid, tid FROM Mstx").fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            connection.close()
        for message, flag, start, end, pid, tid in rows:
            try:
                decoded = json.loads(message)
            except (TypeError, ValueError):
                decoded = {}
            if not isinstance(decoded, dict):
                decoded = {}
            records.append(Record(path.name, pid or 0, tid or 0, flag or 0, start or 0,
                                  end or 0, str(decoded.get("name", "")), decoded,
                                  message or ""))
    return records


def read_roles(root: Path) -> dict:
    """pid -> the vLLM role (api_server, engine_core, worker) each capture file's Meta names."""
    roles = {}
    for path in capture_files(root):
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            role = connection.execute("SELECT value FROM Meta WHERE name = 'role'").fetchone()
            pid = connection.execute("SELECT pid FROM Mstx LIMIT 1").fetchone()
        except sqlite3.Error:
            role = pid = None
        finally:
            connection.close()
        if role and pid:
            roles[int(pid[0])] = role[0]
    return roles


def run_analyzer(input_dir: Path, output_dir: Path, timeout_s: float = 600) -> tuple:
    """Run ``otel-vllm-analyze``; return (exit code, combined output)."""
    script = Path(sys.executable).parent / "otel-vllm-analyze"
    command = [str(script) if script.exists() else "otel-vllm-analyze",
               "--input-path", str(input_dir), "--output-path", str(output_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                               env=dict(os.environ))
    return completed.returncode, completed.stdout + completed.stderr
