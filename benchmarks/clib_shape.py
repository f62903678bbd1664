"""Rewrite a capture of this project's shape into the shapes the Ascend C library writes.

The C library (``libms_service_profiler.so``) writes the same records with three differences
the analyzer has to cope with (docs: "Coming from msserviceprofiler"):

* messages in the C++ caret form, ``^key^:^text^,`` per item with a trailing comma, numbers
  bare, arrays inline (their quotes carets too), instead of JSON objects;
* table ``Mstx`` has a ``flag`` column (1 event, 2 span) and ``Meta`` holds only what the
  library knows (``hostname``, ``ppid``: no ``role``, so the analyzer guesses it);
* the layout: ``thread`` = one file per writing thread, ``ms_service_<host>-<pid>-<tid>.db``
  (library builds of mid-2025); ``process`` = one file per process below ``Trace_Service/``
  with a third ``Meta`` column (2026 builds).

Our generator records each process on one thread; for the per-thread layout the records are
spread over the threads vLLM would write them from (API server: responses and detokenizing on
the output handler thread; EngineCore: request arrivals on the input thread).

Usage::

    python benchmarks/clib_shape.py SRC_DIR DST_DIR [--layout thread|process]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

LAYOUTS = ("thread", "process")
_SPAN_TYPE = 2
# Records written from a second thread of their process in the per-thread layout.
_SECOND_THREAD = frozenset({"httpRes", "detokenize", "Enqueue"})
_ROWS_PER_INSERT = 4096


def caret_message(text: str) -> str:
    """One JSON message in the C++ caret form (key order kept, trailing comma)."""
    items = []
    for key, value in json.loads(text).items():
        if isinstance(value, str):
            items.append(f"^{key}^:^{value}^,")
        elif isinstance(value, bool):
            items.append(f"^{key}^:{int(value)},")
        elif isinstance(value, float):
            items.append(f"^{key}^:{value:f},")
        elif isinstance(value, (list, dict)):
            body = json.dumps(value, separators=(",", ":")).replace('"', "^")
            items.append(f"^{key}^:{body},")
        else:
            items.append(f"^{key}^:{value},")
    return "".join(items)


def _flag(message: dict) -> int:
    return 2 if message.get("type") == _SPAN_TYPE else 1


def _new_db(path: Path, meta: dict[str, str], layout: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE Mstx (message TEXT, flag INTEGER, markId INTEGER,"
                 " timestamp INTEGER, endTimestamp INTEGER, pid INTEGER, tid INTEGER)")
    if layout == "process":
        conn.execute("CREATE TABLE Meta (name TEXT, value TEXT, slice TEXT)")
        conn.executemany("INSERT INTO Meta VALUES (?, ?, '')", meta.items())
    else:
        conn.execute("CREATE TABLE Meta (name TEXT, value TEXT)")
        conn.executemany("INSERT INTO Meta VALUES (?, ?)", meta.items())
    return conn


def convert_file(src: Path, dst_dir: Path, layout: str) -> dict[str, int]:
    """One of our ``ms_service_*.db`` files -> the C library's file(s); rows per file written."""
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as conn:
        meta = dict(conn.execute("SELECT name, value FROM Meta"))
        rows = conn.execute("SELECT markId, message, pid, tid, timestamp, endTimestamp"
                            " FROM Mstx ORDER BY markId")
        library_meta = {k: v for k, v in meta.items() if k in ("hostname", "ppid")}
        host = library_meta.get("hostname", "host")
        outputs: dict[int, tuple[sqlite3.Connection, Path, list]] = {}
        counts: dict[str, int] = {}
        for mark_id, message, pid, tid, start, end in rows:
            decoded = json.loads(message)
            if layout == "thread" and decoded.get("name") in _SECOND_THREAD:
                tid = tid + 1
            key = tid if layout == "thread" else pid
            out = outputs.get(key)
            if out is None:
                name = (f"ms_service_{host}-{pid}-{tid}.db" if layout == "thread"
                        else f"Trace_Service/ms_service_{host}-{pid}.db")
                path = dst_dir / name
                out = outputs[key] = (_new_db(path, library_meta, layout), path, [])
            out[2].append((caret_message(message), _flag(decoded), mark_id, start, end, pid,
                           tid))
            if len(out[2]) >= _ROWS_PER_INSERT:
                _flush(out)
        for out in outputs.values():
            _flush(out)
            out[0].commit()
            counts[out[1].relative_to(dst_dir).as_posix()] = out[0].execute(
                "SELECT COUNT(*) FROM Mstx").fetchone()[0]
            out[0].close()
    return counts


def _flush(out: tuple) -> None:
    conn, _, pending = out
    conn.executemany("INSERT INTO Mstx VALUES (?, ?, ?, ?, ?, ?, ?)", pending)
    pending.clear()


def convert(src_dir: Path, dst_dir: Path, layout: str) -> dict[str, int]:
    """Every ``ms_service_*.db`` below ``src_dir`` rewritten under ``dst_dir``."""
    counts: dict[str, int] = {}
    for src in sorted(Path(src_dir).rglob("ms_service_*.db")):
        counts.update(convert_file(src, Path(dst_dir), layout))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", type=Path)
    parser.add_argument("dst_dir", type=Path)
    parser.add_argument("--layout", choices=LAYOUTS, default="thread")
    args = parser.parse_args(argv)
    counts = convert(args.src_dir, args.dst_dir, args.layout)
    for name, rows in counts.items():
        print(f"  {name}: {rows} rows")
    print(f"  total: {sum(counts.values())} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
