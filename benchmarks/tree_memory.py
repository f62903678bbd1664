"""Peak memory of a command's whole process tree, not only of its largest process.

``/usr/bin/time -v`` reports the largest single process's RSS. A command that forks (the
analyzer's output writer, its parallel readers) holds memory in several processes at once,
sharing the pages untouched since the fork; adding their RSS counts those twice. This samples,
every ``--interval`` seconds, the sum of each process's PSS (shared pages split between the
processes sharing them; ``/proc/<pid>/smaps_rollup``, Linux) over the command and all its
descendants, and prints the peak of that sum next to the largest single RSS.

Usage::

    python benchmarks/tree_memory.py [--interval 0.2] -- <command> [args ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil


def _field_mib(path: str, name: str) -> float:
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(name):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_sum = peak_single = 0.0
    peak_count, peak_at = 0, 0.0
    while proc.poll() is None:
        try:
            pids = [proc.pid] + [child.pid for child in root.children(recursive=True)]
        except psutil.Error:
            pids = [proc.pid]
        total = sum(_field_mib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)
        if total > peak_sum:
            peak_sum, peak_count, peak_at = total, len(pids), time.monotonic() - started
        peak_single = max([peak_single] + [_field_mib(f"/proc/{pid}/status", "VmRSS:")
                                           for pid in pids])
        time.sleep(args.interval)
    print(f"exit {proc.returncode}, wall {time.monotonic() - started:.1f} s; peak of the tree's "
          f"PSS sum {peak_sum:.0f} MiB ({peak_count} processes, at {peak_at:.1f} s); largest "
          f"single RSS {peak_single:.0f} MiB")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
