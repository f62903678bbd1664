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
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pandas as pd

from otel_vllm_ascend import contract
from otel_vllm_ascend.analysis.frame import (
    ProcessInfo,
    RecordBuilder,
    guess_role,
    parse_message,
)
from otel_vllm_ascend.contract_message import message_dict, record_header

_logger = logging.getLogger(__name__)

DB_NAME = re.compile(r"^ms_service_[\w.-]+\.db$")
OTLP_SUFFIXES = (".json", ".jsonl", ".ndjson")
_FETCH = 1024

Progress = Callable[[int, int, str], None]


@dataclass
class ReadReport:
    """What reading found: files, rows, and one user message per problem."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    unparsable: int = 0
    problems: list[str] = field(default_factory=list)


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


def _looks_like_otlp(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return False
    return head.lstrip()[:1] == b"{" and b'"resourceSpans"' in head


def read_captures(root: Path, progress: Optional[Progress] = None
                  ) -> tuple[pd.DataFrame, list[ProcessInfo], ReadReport]:
    """Read every capture below ``root`` -> (records frame, processes, report)."""
    report = ReadReport()
    root = Path(root)
    if not root.exists():
        report.problems.append(f"{root}: input folder does not exist")
        return RecordBuilder().build([]), [], report
    if not root.is_dir():
        report.problems.append(f"{root}: input path is not a folder")
        return RecordBuilder().build([]), [], report
    captures = find_captures(root)
    if not captures:
        report.problems.append(
            f"{root}: no capture found (expected ms_service_*.db files or OTLP JSON files)")
        return RecordBuilder().build([]), [], report
    builder = RecordBuilder()
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
    _fill_roles(builder, processes)
    frame = builder.build(processes.values())
    return frame, sorted(processes.values(), key=lambda p: (p.host, p.pid)), report


def _fill_roles(builder: RecordBuilder, processes: dict[tuple[str, int], ProcessInfo]) -> None:
    missing = [p for p in processes.values() if not p.role]
    if not missing:
        return
    names: dict[tuple[int, str], set] = {}
    cols = builder.columns
    for source, pid, name in zip(cols["source"], cols["pid"], cols["name"]):
        names.setdefault((pid, source), set()).add(name)
    for proc in missing:
        seen: set = set()
        for source in proc.sources:
            seen |= names.get((proc.pid, source), set())
        proc.role = guess_role(seen)


def _host_from_stem(stem: str, pid: int) -> str:
    body = stem[len("ms_service_"):] if stem.startswith("ms_service_") else stem
    match = re.match(rf"^(.*)-{pid}(?:-\d+)?$", body)
    if match:
        return match.group(1)
    match = re.match(r"^(.*?)-\d+(?:-\d+)?$", body)
    return match.group(1) if match else body


def _process(processes: dict, host: str, pid: int, source: str) -> ProcessInfo:
    key = (host, pid)
    proc = processes.get(key)
    if proc is None:
        proc = processes[key] = ProcessInfo(host=host, pid=pid)
    if source not in proc.sources:
        proc.sources.append(source)
    return proc


def _apply_meta(proc: ProcessInfo, meta: dict[str, str]) -> None:
    proc.meta.update(meta)
    role = meta.get("role")
    if role:
        proc.role = str(role)
    rank = meta.get("dpRankId")
    if rank not in (None, ""):
        try:
            proc.dp_rank = int(float(rank))
        except ValueError:
            pass


class _DbRows:
    """Decodes the ``Mstx`` rows of one file chunk by chunk into the builder."""

    def __init__(self, path: Path, meta: dict[str, str], builder: RecordBuilder,
                 processes: dict) -> None:
        self.source = path.stem
        self.meta = meta
        self.builder = builder
        self.processes = processes
        self.seen_pids: dict[int, ProcessInfo] = {}
        self.rows = 0
        self.bad = 0
        self.first_bad: Any = None

    def feed(self, chunk: list) -> None:
        add = self.builder.add
        source = self.source
        seen = self.seen_pids
        self.rows += len(chunk)
        for mark_id, message, pid, tid, start_ns, end_ns in chunk:
            decoded = parse_message(message)
            if decoded is None or not isinstance(start_ns, (int, float)):
                self._bad(mark_id)
                continue
            if end_ns is None:
                end_ns = start_ns
            try:
                pid = int(pid or 0)
                tid = int(tid or 0)
                mark = int(mark_id or 0)
                dur_us = (end_ns - start_ns) / 1000.0
            except (TypeError, ValueError):  # a column holding text where a number belongs
                self._bad(mark_id)
                continue
            proc = seen.get(pid)
            if proc is None:
                host = self.meta.get("hostname") or _host_from_stem(source, pid)
                proc = seen[pid] = _process(self.processes, host, pid, source)
                _apply_meta(proc, self.meta)
            proc.records += 1
            add(source, pid, tid, mark, start_ns / 1000.0, end_ns / 1000.0, decoded, None,
                dur_us)

    def _bad(self, mark_id: Any) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = mark_id

    def finish(self) -> None:
        if not self.seen_pids and self.meta:
            # A file with Meta rows but no usable record still names its process.
            pid = _pid_from_stem(self.source)
            if pid is not None:
                host = self.meta.get("hostname") or _host_from_stem(self.source, pid)
                _apply_meta(_process(self.processes, host, pid, self.source), self.meta)


def _read_db(path: Path, builder: RecordBuilder, processes: dict, report: ReadReport) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        report.problems.append(f"{path}: cannot open as SQLite ({exc}); file skipped")
        return False
    try:
        meta, meta_error = _read_meta(conn)
        sink = _DbRows(path, meta, builder, processes)
        error = _read_mstx(conn, sink.feed)
    finally:
        conn.close()
    if error is not None and not sink.rows and "malformed" in (meta_error or error):
        salvaged = _salvage(path)
        if salvaged is not None:
            meta, rows = salvaged
            meta_error = None
            error = "truncated or damaged database"
            sink = _DbRows(path, meta, builder, processes)
            sink.feed(rows)
    if error is not None and not sink.rows:
        if meta_error is not None and "no such table" not in error:
            error = f"not a readable capture ({meta_error})"
        report.problems.append(f"{path}: {error}; file skipped")
        return False
    if meta_error is not None:
        report.problems.append(f"{path}: table Meta unreadable ({meta_error}); process"
                               " details (host name, role) guessed")
    if error is not None:
        report.problems.append(
            f"{path}: {error}; kept the {sink.rows} rows read before the damage")
    sink.finish()
    if sink.bad:
        report.unparsable += sink.bad
        report.problems.append(
            f"{path}: {sink.bad} row(s) could not be decoded (first at markId"
            f" {sink.first_bad}); those rows were skipped")
    return True


def _pid_from_stem(stem: str) -> Optional[int]:
    match = re.search(r"-(\d+)(?:-\d+)?$", stem)
    return int(match.group(1)) if match else None


def _read_meta(conn: sqlite3.Connection) -> tuple[dict[str, str], Optional[str]]:
    """Meta rows as a dict, and the error text when the table exists but cannot be read."""
    try:
        rows = conn.execute("SELECT name, value FROM Meta").fetchall()
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        return {}, None if "no such table" in text else text  # Meta itself is optional
    return {str(name): "" if value is None else str(value) for name, value in rows}, None


def _salvage(path: Path) -> Optional[tuple[dict[str, str], list]]:
    """Rows of a truncated file: cut to whole pages, fix the page count, read until the damage."""
    try:
        data = bytearray(path.read_bytes())
    except OSError:
        return None
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        return None
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = len(data) // page_size if page_size else 0
    if pages < 2:
        return None
    del data[pages * page_size:]
    data[28:32] = pages.to_bytes(4, "big")
    with tempfile.TemporaryDirectory(prefix="otel-vllm-salvage-") as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(bytes(data))
        conn = sqlite3.connect(copy)
        try:
            meta: dict[str, str] = {}
            rows: list = []
            for query, sink in (("SELECT name, value FROM Meta", None),
                                ("SELECT markId, message, pid, tid, timestamp, endTimestamp"
                                 " FROM Mstx", rows)):
                try:
                    for row in conn.execute(query):  # row by row: keep all before the damage
                        if sink is None:
                            meta[str(row[0])] = "" if row[1] is None else str(row[1])
                        else:
                            sink.append(row)
                except sqlite3.DatabaseError:
                    pass
        finally:
            conn.close()
    return (meta, rows) if rows else None


def _read_mstx(conn: sqlite3.Connection, feed: Callable[[list], None]) -> Optional[str]:
    """Stream ``Mstx`` rows to ``feed`` in chunks; returns the error text if reading stopped."""
    try:
        cursor = conn.execute(
            "SELECT markId, message, pid, tid, timestamp, endTimestamp FROM Mstx")
        while True:
            chunk = cursor.fetchmany(_FETCH)
            if not chunk:
                break
            feed(chunk)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "no such table" in text:
            return "table Mstx is missing (not a service capture)"
        if "no such column" in text:
            return f"table Mstx lacks a column ({text})"
        return f"truncated or corrupt database ({text})"
    return None


# --- OTLP JSON ---------------------------------------------------------------------------------

def _otlp_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` in its JSON form -> a Python value (None when malformed)."""
    if not isinstance(value, dict):
        return value
    try:
        if "stringValue" in value:
            return value["stringValue"]
        if "intValue" in value:
            return int(value["intValue"])
        if "doubleValue" in value:
            return float(value["doubleValue"])
        if "boolValue" in value:
            return bool(value["boolValue"])
        if "arrayValue" in value:
            return [_otlp_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
        if "kvlistValue" in value:
            return {kv.get("key"): _otlp_value(kv.get("value"))
                    for kv in (value["kvlistValue"] or {}).get("values", [])}
        if "bytesValue" in value:
            return value["bytesValue"]
    except (TypeError, ValueError, AttributeError):
        return None
    return None


def _otlp_attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {kv["key"]: _otlp_value(kv.get("value")) for kv in items
            if isinstance(kv, dict) and "key" in kv}


def span_message(name: str, attributes: dict[str, Any], default_type: Optional[int],
                 inherited_domain: Optional[str] = None) -> tuple[dict, Optional[int]]:
    """Span-contract attributes -> the message dict the exporter would write, plus tid.

    ``default_type`` is 2 for a span, 0 for a span event; a span's ``ms.record`` kind overrides
    name and type as the exporter does. The mapping itself is ``contract_message``'s, shared
    with the exporter's rules (tests/unit/test_contract_message.py).
    """
    record = attributes.get(contract.RECORD)
    if record is not None:
        name, default_type = record_header(record, name)
    message = message_dict(name, default_type, attributes, inherited_domain)
    tid = attributes.get(contract.THREAD_ID)
    try:
        tid = int(tid) if tid is not None else None
    except (TypeError, ValueError):
        tid = None
    return message, tid


def _iter_otlp_requests(path: Path, report: ReadReport) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    lines = [line for line in text.splitlines() if line.strip()]
    bad = 0
    parsed: list = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            bad += 1
    if bad and len(lines) > 1:
        try:  # one pretty-printed object rather than JSON lines
            parsed = [json.loads(text)]
            bad = 0
        except ValueError:
            pass
    if bad:
        report.unparsable += bad
        report.problems.append(f"{path}: {bad} line(s) are not JSON; those lines were skipped")
    for item in parsed:
        if isinstance(item, dict) and isinstance(item.get("resourceSpans", []), list):
            yield item


def _read_otlp(path: Path, builder: RecordBuilder, processes: dict, report: ReadReport) -> bool:
    source = path.stem
    try:
        requests = list(_iter_otlp_requests(path, report))
    except OSError as exc:
        report.problems.append(f"{path}: cannot read ({exc}); file skipped")
        return False
    mark_ids: dict[int, int] = {}
    bad = 0
    malformed = (KeyError, TypeError, ValueError, AttributeError)
    for request in requests:
        for resource_spans in _list(request.get("resourceSpans")):
            try:
                resource = _otlp_attributes(resource_spans["resource"].get("attributes")
                                            if isinstance(resource_spans.get("resource"), dict)
                                            else None)
                try:
                    pid = int(resource.get("process.pid") or 0)
                except (TypeError, ValueError):
                    pid = 0
                proc = _process(processes, str(resource.get("host.name") or ""), pid, source)
                role = resource.get(contract.PROCESS_ROLE)
                if role and role != "other" and not proc.role:
                    proc.role = str(role)
                scopes = _list(resource_spans.get("scopeSpans"))
            except malformed:
                bad += 1
                continue
            for scope_spans in scopes:
                spans = _list(scope_spans.get("spans")) if isinstance(scope_spans, dict) else None
                if spans is None:
                    bad += 1
                    continue
                for span in spans:
                    try:
                        _add_otlp_span(span, source, pid, proc, builder, mark_ids)
                    except malformed:
                        bad += 1
    if bad:
        report.unparsable += bad
        report.problems.append(f"{path}: {bad} malformed span(s) or resource(s) skipped")
    return True


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _add_otlp_span(span: dict, source: str, pid: int, proc: ProcessInfo,
                   builder: RecordBuilder, mark_ids: dict[int, int]) -> None:
    attributes = _otlp_attributes(span.get("attributes"))
    name = span["name"]
    start_ns = int(span["startTimeUnixNano"])
    end_ns = int(span.get("endTimeUnixNano") or start_ns)
    if attributes.get(contract.RECORD) == contract.RECORD_META:
        _apply_meta(proc, {key[len(contract.META_PREFIX):]: str(value)
                           for key, value in attributes.items()
                           if key.startswith(contract.META_PREFIX)})
        return
    message, tid = span_message(name, attributes, 2)
    domain = message.get("domain")
    tid = tid or 0
    for event in span.get("events") or []:
        event_attrs = _otlp_attributes(event.get("attributes"))
        event_message, event_tid = span_message(event["name"], event_attrs, 0, domain)
        ts = int(event["timeUnixNano"]) / 1000.0
        mark = mark_ids[pid] = mark_ids.get(pid, -1) + 1
        builder.add(source, pid, event_tid or tid, mark, ts, ts, event_message)
        proc.records += 1
    mark = mark_ids[pid] = mark_ids.get(pid, -1) + 1
    builder.add(source, pid, tid, mark, start_ns / 1000.0, end_ns / 1000.0, message, None,
                (end_ns - start_ns) / 1000.0)
    proc.records += 1
