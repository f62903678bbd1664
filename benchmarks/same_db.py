"""Whether two profiler.db files hold the same tables, views and rows, without loading them.

    python benchmarks/same_db.py A/profiler.db B/profiler.db [--leave-out TABLE ...]

For each table and view of either file (but those left out): its schema text in both, its row
count in both, and the rows of each that the other lacks (SQLite's EXCEPT, in SQLite: a
2.9 GB batch table is compared without Python holding it). Then the rows' order: a table's
rowids pair its rows in both files, so each table is compared row for row by rowid too.
Prints one line per object and ends with ``same`` or ``different`` (exit status 0 or 1).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys


def objects(conn: sqlite3.Connection, schema: str) -> dict:
    return {name: (kind, sql) for kind, name, sql in conn.execute(
        f"SELECT type, name, sql FROM {schema}.sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def compare(a: str, b: str, leave_out: set) -> bool:
    conn = sqlite3.connect(a)
    conn.execute("ATTACH DATABASE ? AS b", (b,))
    ours, theirs = objects(conn, "main"), objects(conn, "b")
    same = True
    for name in sorted((set(ours) | set(theirs)) - leave_out):
        if ours.get(name) != theirs.get(name):
            print(f"{name}: schema differs or is missing in one file")
            same = False
            continue
        counts = [conn.execute(f'SELECT COUNT(*) FROM {schema}."{name}"').fetchone()[0]
                  for schema in ("main", "b")]
        only = [conn.execute(f'SELECT COUNT(*) FROM (SELECT * FROM {one}."{name}" EXCEPT'
                             f' SELECT * FROM {other}."{name}")').fetchone()[0]
                for one, other in (("main", "b"), ("b", "main"))]
        moved = 0
        if ours[name][0] == "table" and counts[0] == counts[1] and not any(only):
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')]
            # IS NOT: NULLs compare equal
            differs = " OR ".join(f'x."{c}" IS NOT y."{c}"' for c in columns) or "0"
            moved = conn.execute(f'SELECT COUNT(*) FROM main."{name}" x JOIN b."{name}" y'
                                 f" ON x.rowid = y.rowid WHERE {differs}").fetchone()[0]
        ok = counts[0] == counts[1] and not any(only) and not moved
        same &= ok
        print(f"{name}: {counts[0]} / {counts[1]} rows, {only[0]} / {only[1]} only in one,"
              f" {moved} in another order: {'same' if ok else 'DIFFERENT'}")
    conn.close()
    print("same" if same else "different")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--leave-out", nargs="*", default=[], help="tables not compared")
    args = parser.parse_args()
    return 0 if compare(args.a, args.b, set(args.leave_out)) else 1


if __name__ == "__main__":
    sys.exit(main())
