"""Read every capture below a folder into one records frame.

Two kinds of input are found by walking the folder recursively:

* ``ms_service_*.db`` SQLite files in msserviceprofiler's format, written by this project's
  exporter or by the Ascend C library in any of its layouts (one file per thread
  ``ms_service_<host>-<pid>-<tid>.db``, one per process, a ``Trace_Service/`` subfolder). Table
  ``Mstx`` holds the records (JSON or caret-form messages), table ``Meta`` the process metadata
  (``hostname``, ``role``, ``dpRankId``, ...).
* OTLP JSON files (``*.json``, ``*.jsonl``, ``*.ndjson``) whose lines are
  ``ExportTraceServiceRequest`` objects (``resourceSpans`` / ``scopeSpans`` / ``spans``), as
  written by ``otlp_json_file``-style exporters. Spans map to records through the span contract
  (``docs/span-contract.md``).

Nothing here raises on bad input: unreadable files, missing tables and undecodable messages are
counted and described in :class:`ReadReport.problems`, and every readable row is kept.

This module finds the captures and merges them; ``read_sqlite`` and ``read_otlp`` read one file
each, ``read_results`` holds the report and the per-process info they fill in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd

from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder
from otel_vllm_ascend.analysis.read_otlp import _read_otlp
from otel_vllm_ascend.analysis.read_parallel import read_files, worker_count
from otel_vllm_ascend.analysis.read_results import ReadReport, _complete_processes
from otel_vllm_ascend.analysis.read_sqlite import _read_db, time_span
from otel_vllm_ascend.analysis.time_window import TimeWindow

DB_NAME = re.compile(r"^ms_service_[\w.-]+\.db$")
OTLP_SUFFIXES = (".json", ".jsonl", ".ndjson")

Progress = Callable[[int, int, str], None]


@dataclass
class _Capture:
    kind: str  # "db" or "otlp"
    path: Path


def find_captures(root: Path) -> list[_Capture]:
    """Every capture file below ``root``, in a stable order."""
    found: list[_Capture] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if DB_NAME.match(name):
                found.append(_Capture("db", path))
            elif name.endswith(OTLP_SUFFIXES) and _looks_like_otlp(path):
                found.append(_Capture("otlp", path))
    return found


def capture_span(roots: Sequence[Path]) -> Optional[tuple[int, int]]:
    """(first, last) record start in µs of the SQLite captures below ``roots`` (None when they
    hold none): what a time relative to the capture is measured on."""
    return time_span([capture.path for root in roots if Path(root).is_dir()
                      for capture in find_captures(Path(root)) if capture.kind == "db"])


def _looks_like_otlp(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return False
    return head.lstrip()[:1] == b"{" and b'"resourceSpans"' in head


def read_captures(root: Union[Path, Sequence[Path]], progress: Optional[Progress] = None,
                  window: Optional[TimeWindow] = None
                  ) -> tuple[pd.DataFrame, list[ProcessInfo], ReadReport]:
    """Read every capture below ``root`` (one folder, or several read as one capture: one per
    host, say) -> (records frame, processes, report). ``window``: only the records starting
    inside it (time_window.py)."""
    report = ReadReport()
    roots = [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]
    captures: list[_Capture] = []
    seen: set[Path] = set()
    for folder in roots:
        if not folder.exists():
            report.problems.append(f"{folder}: input folder does not exist")
            continue
        if not folder.is_dir():
            report.problems.append(f"{folder}: input path is not a folder")
            continue
        found = find_captures(folder)
        if not found:
            report.problems.append(f"{folder}: no capture found (expected ms_service_*.db"
                                   " files or OTLP JSON files)")
        for capture in found:  # folders given twice or nested: each file once
            key = capture.path.resolve()
            if key not in seen:
                seen.add(key)
                captures.append(capture)
    if not captures:
        return RecordBuilder().build([]), [], report
    workers = worker_count()
    if workers > 1 and all(capture.kind == "db" for capture in captures):
        # Several cores: files and ranges of large files read by worker processes, merged
        # into the frame the serial reader makes (read_parallel.py); None: read serially.
        done = read_files([capture.path for capture in captures], workers, progress, window)
        if done is not None:
            frame, processes_read, parallel_report = done
            report.files = parallel_report.files
            report.rows = parallel_report.rows
            report.unparsable = parallel_report.unparsable
            report.problems.extend(parallel_report.problems)
            return frame, processes_read, report
    builder = RecordBuilder(window)
    processes: dict[tuple[str, int], ProcessInfo] = {}
    for index, capture in enumerate(captures):
        if progress is not None:
            progress(index, len(captures), capture.path.name)
        before = len(builder)
        if capture.kind == "db":
            ok = _read_db(capture.path, builder, processes, report)
        else:
            ok = _read_otlp(capture.path, builder, processes, report)
        if ok:
            report.files.append(str(capture.path))
        report.rows += len(builder) - before
    if progress is not None:
        progress(len(captures), len(captures), "")
    _complete_processes(builder, processes)
    frame = builder.build(processes.values())
    return frame, sorted(processes.values(), key=lambda p: (p.host, p.pid)), report
