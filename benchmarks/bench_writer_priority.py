"""What the writer's CPU priority gives busy serving processes on a saturated host.

A stand-in for vLLM on a small host: ``--busy`` processes (default 3, like API server,
EngineCore and Worker) each run a loop of fixed Python work units with a short sleep between
them (a step waiting on another process), counting units done; next to them one *writer*
process inserts capture-like rows into a SQLite file in WAL mode, one transaction per
``--rows`` rows, at the priority under test (``OTEL_VLLM_WRITER_PRIORITY`` values, applied by
the writer's own ``priority.lower``). Rounds interleave the settings; printed per setting: the
busy processes' units per second as a ratio to a round with no writer, and the writer's rows
per second (what it still gets done with the CPU left over).

``--writer-session own`` starts the writer in a session of its own (``os.setsid``), as the
real writer was started before it moved into the server's session (``writer_client.start``):
on Linux with the kernel's autogroup the scheduler then shares the CPU between the sessions
first, so a setting's niceness does not weigh against the busy processes. ``shared``, the
default, keeps it in the busy processes' session, as the real writer is now.

Usage::

    python benchmarks/bench_writer_priority.py [--seconds 6] [--rounds 3] \\
        [--settings none,normal,nice,batch,idle] [--busy 3] [--writer-session own]

``none`` runs no writer. Run it under ``flock`` on a shared machine: other load changes what a
low priority yields.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from otel_vllm_ascend.exporters import priority

MESSAGE = ("{\"name\":\"batchFrameworkProcessing\",\"domain\":\"BatchSchedule\",\"rid\":[\"%d\"],"
           "\"batch_size\":32,\"ms.rid_detail\":\"" + "x" * 600 + "\"}")


def _busy(stop_at: float, sleep_s: float, result: multiprocessing.Queue) -> None:
    units = 0
    while time.monotonic() < stop_at:
        total = 0
        for value in range(2000):  # about 0.1 ms of interpreter work
            total += value * value
        units += 1
        if units % 10 == 0:
            time.sleep(sleep_s)
    result.put(("busy", units))


def _writer(stop_at: float, setting: str, rows: int, folder: str,
            result: multiprocessing.Queue, own_session: bool = False) -> None:
    if own_session:
        os.setsid()
    applied = priority.lower(setting)
    conn = sqlite3.connect(os.path.join(folder, f"w{os.getpid()}.db"), isolation_level=None)
    conn.execute("PRAGMA page_size=65536")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE Mstx(message TEXT, flag INTEGER, markId INTEGER, "
                 "timestamp INTEGER, endTimestamp INTEGER, pid INTEGER, tid INTEGER)")
    written = 0
    while time.monotonic() < stop_at:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO Mstx VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [(MESSAGE % (written + i), 2, written + i, 1, 2, 1, 1)
                          for i in range(rows)])
        conn.execute("COMMIT")
        written += rows
    conn.close()
    result.put(("writer", written, applied.policy, applied.nice,
                   getattr(applied, "group_nice", None)))  # set by the trees that raised it


def one_round(setting: str, args: argparse.Namespace, folder: str) -> dict:
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    stop_at = time.monotonic() + 0.5 + args.seconds
    procs = [ctx.Process(target=_busy, args=(stop_at, args.sleep_ms / 1000, result))
             for _ in range(args.busy)]
    if setting != "none":
        procs.append(ctx.Process(target=_writer,
                                 args=(stop_at, setting, args.rows, folder, result,
                                       args.writer_session == "own")))
    for proc in procs:
        proc.start()
    outcome = {"busy": 0, "writer": 0}
    for _ in procs:
        kind, count, *rest = result.get()
        outcome[kind] += count
        if kind == "writer":
            outcome["applied"] = rest
    for proc in procs:
        proc.join()
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200, help="rows per transaction")
    parser.add_argument("--sleep-ms", type=float, default=0.2,
                        help="sleep after every 10 work units (a step's wait)")
    parser.add_argument("--settings", default="none,normal,nice,batch,idle")
    parser.add_argument("--writer-session", choices=("shared", "own"), default="shared",
                        help="the writer in the busy processes' session or in its own")
    args = parser.parse_args()
    settings = args.settings.split(",")
    seen: dict = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for setting in settings:
                seen[setting].append(one_round(setting, args, folder))
                for path in Path(folder).glob("w*"):
                    path.unlink()
    base = statistics.median(o["busy"] for o in seen.get("none", seen[settings[0]]))
    print(f"{args.busy} busy processes, {os.cpu_count()} CPUs, {args.seconds:.0f} s x "
          f"{args.rounds} rounds, writer in {args.writer_session} session; ratios to the "
          f"median of 'none'")
    print(f"{'setting':<8} {'busy units/s':>13} {'ratio':>7} {'writer rows/s':>14} applied")
    for setting, outcomes in seen.items():
        busy = statistics.median(o["busy"] for o in outcomes)
        rows = statistics.median(o["writer"] for o in outcomes)
        applied = outcomes[-1].get("applied", "")
        print(f"{setting:<8} {busy / args.seconds:>13.0f} {busy / base:>7.3f} "
              f"{rows / args.seconds:>14.0f} {applied}")


if __name__ == "__main__":
    main()
