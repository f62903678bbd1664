"""Wall time and peak memory of ``otel-vllm-analyze`` on the issue's benchmark capture.

Generates the capture with ``gen_capture.py`` (2,000 requests x 101 steps, two processes, this
project's exporter) at scale 1 and 10, then runs the analyzer CLI in a child process several
times per scale and prints, per configuration, the median and best wall time and the peak
resident memory of the analyzer process (``wait4`` resource usage of that one child), next to
the floors of the issue: 2.5 s and 350 MB at scale 1 (the reference analyzer: 46-66 s, 1.4 GB).

Usage::

    python benchmarks/bench_analyze.py [--scales 1 10] [--repeat 3] [--work-dir DIR]
                                       [--formats csv json db html]

Captures are kept in ``--work-dir`` (default: a folder under the system temp dir) and reused
by later runs with the same scale and seed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR_WALL_S = 2.5
FLOOR_RSS_MB = 350.0
HERE = Path(__file__).resolve().parent


def ensure_capture(work: Path, scale: int, seed: int) -> Path:
    folder = work / f"capture-x{scale}-seed{seed}"
    if list(folder.glob("ms_service_*.db")):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating the x{scale} capture in {folder} ...", flush=True)
    subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(folder), "--scale",
                    str(scale), "--seed", str(seed)], check=True)
    return folder


def capture_rows(folder: Path) -> int:
    total = 0
    for path in folder.glob("ms_service_*.db"):
        with sqlite3.connect(path) as conn:
            total += conn.execute("SELECT COUNT(*) FROM Mstx").fetchone()[0]
    return total


def run_once(capture: Path, out: Path, formats: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit status) of one analyzer run in a child process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "otel_vllm_ascend.analysis", "--input-path", str(capture),
               "--output-path", str(out), "--log-level", "warning", "--format", *formats]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 reports the resource usage of this child alone (RUSAGE_CHILDREN would mix runs).
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read().decode("utf-8", "replace") if child.stderr else ""
    if child.returncode:
        print(f"  analyzer exit status {child.returncode}: {stderr.strip()[:500]}")
    return wall, usage.ru_maxrss / 1024.0, child.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "otel-vllm-bench-analyze")
    parser.add_argument("--formats", nargs="+", default=["csv", "json", "db", "html"])
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, formats: "
          f"{' '.join(args.formats)}, {args.repeat} run(s) per scale")
    header = (f"{'scale':>5} {'rows':>9} {'wall median s':>14} {'wall best s':>12} "
              f"{'peak RSS MB':>12} {'wall / floor':>13} {'RSS / floor':>12}")
    results = []
    for scale in args.scales:
        capture = ensure_capture(args.work_dir, scale, args.seed)
        rows = capture_rows(capture)
        walls, peaks = [], []
        for _ in range(args.repeat):
            wall, peak, status = run_once(capture, args.work_dir / f"out-x{scale}",
                                          args.formats)
            if status:
                return status
            walls.append(wall)
            peaks.append(peak)
        results.append((scale, rows, statistics.median(walls), min(walls), max(peaks)))
    print(header)
    for scale, rows, median, best, peak in results:
        wall_ratio = median / (FLOOR_WALL_S * scale)
        rss_ratio = peak / FLOOR_RSS_MB
        print(f"{scale:>5} {rows:>9,} {median:>14.2f} {best:>12.2f} {peak:>12.0f} "
              f"{wall_ratio:>12.2f}x {rss_ratio:>11.2f}x")
    print(f"floors (scale 1): {FLOOR_WALL_S} s wall, {FLOOR_RSS_MB:.0f} MB peak RSS; "
          "'wall / floor' divides by floor x scale, 'RSS / floor' by the scale-1 floor")
    first = next((r for r in results if r[0] == 1), None)
    if first is not None:
        ok = first[2] <= FLOOR_WALL_S and first[4] <= FLOOR_RSS_MB
        print(f"scale 1 within the floors: {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
