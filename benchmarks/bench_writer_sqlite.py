"""The writer's SQLite insert: CPU per row and per KiB of message, current settings vs others.

The writer process spends nearly all its CPU in ``_ProcessDb.write`` (``exporters/ms_service.py``):
the numbered ``executemany`` of the Mstx rows and the COMMIT, one transaction per hand-off frame.
This script replays real rows through that insert under the current settings and candidate
alternatives and prints, in one run, CPU µs per row and per KiB of message text with the ratio
to the current settings (lower is better). Candidates differ in one thing each:

* ``page4k`` / ``page16k``: page size (current 64 KiB);
* ``sync_off``: ``synchronous=OFF`` in WAL mode (a killed process still loses nothing
  committed; an OS crash or power loss can);
* ``journal_delete`` / ``journal_memory``: other journal modes (``memory``: a process killed in
  a transaction can corrupt the file, so not a candidate, shown for scale);
* ``frames2`` / ``frames4``: 2 / 4 frames per transaction (the writer would commit less often;
  a killed writer loses what it had received but not committed);
* ``one_executemany``: one row-by-row ``executemany`` per frame instead of one per 64 rows;
* ``multi_values``: ``INSERT ... VALUES (...), (...), ...`` with 32 rows per statement;
* ``checkpoint1k``: ``wal_autocheckpoint`` 1,024 pages (current 256).

Rows come from a capture folder (``--capture``: every ``ms_service_*.db`` under it, e.g. a
folder of ``bench_serving_overhead.py --work <folder>``'s ``enable1`` run or ``make demo``'s
output), or else are generated with the project's own recorder and exporter
(``gen_capture.py --requests 40``). Each process's rows are replayed in capture order as frames
of ``--frame-rows`` rows (a recorder drain is 0.2 s: a serving process hands off tens to a few
hundred rows per frame), every setting on a fresh file, settings interleaved per round.
``current`` and the other settings write through the exporter's own ``_ProcessDb.write``
(numbering included); CPU is ``time.process_time`` around the replay. Each output file is
checked to read back whole through a fresh read-only connection.

Usage::

    python benchmarks/bench_writer_sqlite.py [--capture DIR] [--rounds 5] [--frame-rows 100]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

from otel_vllm_ascend.exporters import ms_service

Row = Tuple[str, int, int, int, int]  # message, flag, timestamp, endTimestamp, tid


class Setting(NamedTuple):
    """One way to write: pragmas, frames per transaction, statement form; and whether a killed
    process keeps every committed row readable (the guarantee the exporter's comments state)."""

    pragmas: Tuple[str, ...]
    frames_per_commit: int = 1
    form: str = "exporter"  # exporter | one_executemany | multi_values
    keeps_guarantee: bool = True


CURRENT = (f"page_size={ms_service.PAGE_SIZE}", "journal_mode=WAL", "synchronous=NORMAL",
           f"wal_autocheckpoint={ms_service.WAL_CHECKPOINT_PAGES}")


def _with(pragma: str) -> Tuple[str, ...]:
    key = pragma.split("=")[0]
    return tuple(pragma if p.split("=")[0] == key else p for p in CURRENT)


SETTINGS: Dict[str, Setting] = {
    "current": Setting(CURRENT),
    "page4k": Setting(_with("page_size=4096")),
    "page16k": Setting(_with("page_size=16384")),
    "sync_off": Setting(_with("synchronous=OFF")),
    "journal_delete": Setting(_with("journal_mode=DELETE")),
    "journal_memory": Setting(_with("journal_mode=MEMORY"), keeps_guarantee=False),
    "checkpoint1k": Setting(_with("wal_autocheckpoint=1024")),
    "frames2": Setting(CURRENT, frames_per_commit=2),
    "frames4": Setting(CURRENT, frames_per_commit=4),
    "one_executemany": Setting(CURRENT, form="one_executemany"),
    "multi_values": Setting(CURRENT, form="multi_values"),
}

MULTI = 32
_MULTI_INSERT = "INSERT INTO Mstx VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * MULTI)


def read_rows(capture: Path) -> List[List[Row]]:
    """Each file's Mstx rows (one list per process), in the order they were written."""
    processes = []
    for path in sorted(capture.rglob("ms_service_*.db")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT message, flag, timestamp, endTimestamp, tid FROM Mstx "
                                "ORDER BY markId").fetchall()
        finally:
            conn.close()
        if rows:
            processes.append(rows)
    return processes


def generated_rows(folder: Path) -> List[List[Row]]:
    script = Path(__file__).with_name("gen_capture.py")
    subprocess.run([sys.executable, str(script), str(folder), "--requests", "40"], check=True,
                   stdout=subprocess.DEVNULL)
    return read_rows(folder)


def _open(path: Path, setting: Setting) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    for pragma in setting.pragmas:
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(ms_service.CREATE_MSTX)
    conn.execute(ms_service.CREATE_META)
    return conn


def _chunks(frame: List[Row]) -> List[List[Row]]:
    """A frame as the exporter translates it: batches of ``WRITE_BATCH`` (one row per item)."""
    size = ms_service.WRITE_BATCH
    return [frame[first:first + size] for first in range(0, len(frame), size)]


def _write_exporter(conn: sqlite3.Connection, frames: List[List[Row]], state: list) -> None:
    """One transaction through the exporter's own ``_ProcessDb.write``."""
    db = state[0]
    db.write([(chunk, []) for frame in frames for chunk in _chunks(frame)])


def _write_one(conn: sqlite3.Connection, frames: List[List[Row]], state: list) -> None:
    """One transaction, one row-by-row ``executemany`` per frame."""
    mark, pid = state[1], state[2]
    conn.execute("BEGIN")
    for frame in frames:
        conn.executemany(ms_service._INSERT_MSTX, [
            (message, flag, mark + index, start, end, pid, tid)
            for index, (message, flag, start, end, tid) in enumerate(frame)])
        mark += len(frame)
    conn.execute("COMMIT")
    state[1] = mark


def _write_multi(conn: sqlite3.Connection, frames: List[List[Row]], state: list) -> None:
    """One transaction, :data:`MULTI` rows per multi-row ``INSERT`` (the rest row by row)."""
    mark, pid = state[1], state[2]
    conn.execute("BEGIN")
    for frame in frames:
        params: list = []
        for index, (message, flag, start, end, tid) in enumerate(frame):
            params.append((message, flag, mark + index, start, end, pid, tid))
        whole = len(params) - len(params) % MULTI
        if whole:
            conn.executemany(_MULTI_INSERT, [
                [value for row in params[first:first + MULTI] for value in row]
                for first in range(0, whole, MULTI)])
        if whole < len(params):
            conn.executemany(ms_service._INSERT_MSTX, params[whole:])
        mark += len(frame)
    conn.execute("COMMIT")
    state[1] = mark


_FORMS: Dict[str, Callable] = {
    "exporter": _write_exporter,
    "one_executemany": _write_one,
    "multi_values": _write_multi,
}


def replay(processes: List[List[Row]], setting: Setting, folder: Path,
           frame_rows: int) -> float:
    """CPU seconds to write every process's rows into its own fresh file."""
    write = _FORMS[setting.form]
    cpu = 0.0
    for number, rows in enumerate(processes):
        path = folder / f"ms_service_bench-{number}.db"
        conn = _open(path, setting)
        db = ms_service._ProcessDb.__new__(ms_service._ProcessDb)  # the exporter's writer,
        db.conn, db.pid, db.next_mark = conn, number, 0  # on this connection and settings
        state = [db, 0, number]
        frames = [rows[i:i + frame_rows] for i in range(0, len(rows), frame_rows)]
        step = setting.frames_per_commit
        start = time.process_time()
        for first in range(0, len(frames), step):
            write(conn, frames[first:first + step], state)
        cpu += time.process_time() - start
        conn.close()
        check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            count = check.execute("SELECT COUNT(*), MAX(markId) FROM Mstx").fetchone()
        finally:
            check.close()
        assert count == (len(rows), len(rows) - 1), (path, count)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, help="a folder with ms_service_*.db files")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frame-rows", type=int, default=100)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    names = args.settings.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.capture:
            processes = read_rows(args.capture)
        else:
            processes = generated_rows(folder / "capture")
        rows = sum(len(p) for p in processes)
        kib = sum(len(r[0].encode()) for p in processes for r in p) / 1024
        print(f"{rows} rows from {len(processes)} processes, {kib:.0f} KiB of message "
              f"(mean {kib * 1024 / rows:.0f} B), frames of {args.frame_rows} rows, "
              f"{args.rounds} rounds, sqlite {sqlite3.sqlite_version}")
        seen: Dict[str, List[float]] = {name: [] for name in names}
        out = folder / "out"
        out.mkdir()
        for _ in range(args.rounds):
            for name in names:
                seen[name].append(replay(processes, SETTINGS[name], out, args.frame_rows))
    base = statistics.median(seen["current"]) if "current" in seen else None
    print(f"{'setting':<16} {'µs/row':>8} {'µs/KiB':>8} {'ratio':>6} {'spread':>13} "
          "keeps the guarantee")
    for name in names:
        cpu = statistics.median(seen[name])
        ratio = f"{cpu / base:.3f}" if base else "-"
        spread = f"{min(seen[name]) / cpu:.2f}-{max(seen[name]) / cpu:.2f}"
        print(f"{name:<16} {cpu * 1e6 / rows:>8.2f} {cpu * 1e6 / kib:>8.2f} {ratio:>6} "
              f"{spread:>13} {'yes' if SETTINGS[name].keeps_guarantee else 'NO'}")
    print(f"(pid {os.getpid()}; CPU of this process, medians of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
