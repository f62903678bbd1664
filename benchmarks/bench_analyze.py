"""Wall time and peak memory of ``otel-vllm-analyze`` on the issue's benchmark capture.

Generates the capture with ``gen_capture.py`` (2,000 requests x 101 steps, two processes, this
project's exporter) at scale 1 and 10, then runs the analyzer CLI in a child process several
times per scale and prints, per configuration, the median and best wall time, the CPU time
(user + system: steadier than wall time on a shared machine) and the peak resident memory of
the analyzer process (``wait4`` resource usage of that one child), next to
the floors of the issue: 2.5 s and 350 MB at scale 1 (the reference analyzer: 46-66 s, 1.4 GB).

Usage::

    python benchmarks/bench_analyze.py [--scales 1 10] [--repeat 3] [--work-dir DIR]

Two configurations run per scale: the eight outputs of the reference (``--format csv json db``)
and all outputs including ``report.html`` (``--format csv json db html``). The machine's load
average is printed before and after: on a shared machine it explains most of the spread.

Captures are kept in ``--work-dir`` (default: a folder under the system temp dir) and reused
by later runs with the same scale and seed.

``--baseline SRC`` compares with another version of the project in the same run: ``SRC`` is a
source tree of it (``git archive COMMIT | tar -x -C SRC``); each repetition runs that version,
then this one, one after the other, so a busy moment of a shared machine hits both alike, and
the ratios of the medians (this version / the baseline) are printed.

``--shape thread|process`` runs on the capture rewritten in the Ascend C library's shapes
(``clib_shape.py``: caret messages, one file per thread or ``Trace_Service/`` per process).
``--reference SRC --reference-python PY`` runs the reference analyzer (msserviceprofiler's
``ms_service_profiler.parse``, from its source tree ``SRC``, with the interpreter of a venv of
its own holding pandas 2.x) and this one alternately on the same capture, eight outputs, and
prints how many times faster this one is (wall and CPU medians); the reference's peak RSS is
that of its main process and the largest of its per-file children.
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
from typing import Optional

FLOOR_WALL_S = 2.5
FLOOR_RSS_MB = 350.0
HERE = Path(__file__).resolve().parent
CONFIGURATIONS = (("8 outputs (csv json db)", ["csv", "json", "db"]),
                  ("8 outputs + report", ["csv", "json", "db", "html"]))


def ensure_capture(work: Path, scale: int, seed: int, shape: str = "ours") -> Path:
    """The capture at ``scale`` in ``shape`` (``ours``, or the C library's ``thread`` /
    ``process`` layout, rewritten from ours by ``clib_shape.py``)."""
    folder = work / f"capture-x{scale}-seed{seed}" if shape == "ours" else \
        work / f"capture-x{scale}-seed{seed}-clib-{shape}"
    if list(folder.rglob("ms_service_*.db")):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    if shape != "ours":
        ours = ensure_capture(work, scale, seed)
        print(f"rewriting the x{scale} capture in the C library's {shape} layout ...",
              flush=True)
        subprocess.run([sys.executable, str(HERE / "clib_shape.py"), str(ours), str(folder),
                        "--layout", shape], check=True, stdout=subprocess.DEVNULL)
        return folder
    print(f"generating the x{scale} capture in {folder} ...", flush=True)
    subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(folder), "--scale",
                    str(scale), "--seed", str(seed)], check=True)
    return folder


def capture_rows(folder: Path) -> int:
    total = 0
    for path in folder.rglob("ms_service_*.db"):
        with sqlite3.connect(path) as conn:
            total += conn.execute("SELECT COUNT(*) FROM Mstx").fetchone()[0]
    return total


def baseline_tree(source: Path, work: Path) -> Path:
    """A folder that imports as the ``otel_vllm_ascend`` of ``source`` (its package-dir mapping:
    ``exporters/`` and ``analysis/`` are subpackages) when put first on ``PYTHONPATH``."""
    root = work / "baseline-tree"
    shutil.rmtree(root, ignore_errors=True)
    package = root / "otel_vllm_ascend"
    package.mkdir(parents=True)
    for entry in (source / "otel_vllm_ascend").iterdir():
        (package / entry.name).symlink_to(entry.resolve())
    for sub in ("exporters", "analysis"):
        (package / sub).symlink_to((source / sub).resolve())
    return root


def run_once(capture: Path, out: Path, formats: list[str], pythonpath: Optional[Path] = None,
             reference: Optional[tuple[Path, str]] = None) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MB, exit status) of one analyzer run in a child process
    (``pythonpath``: import the analyzer from there instead; ``reference``: run the reference
    analyzer from that source tree with that interpreter instead)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "otel_vllm_ascend.analysis", "--input-path",
               str(capture.resolve()), "--output-path", str(out.resolve()), "--log-level",
               "warning", "--format", *formats]
    cwd = out.resolve().parent
    env = dict(os.environ)
    if reference is not None:
        out.mkdir(parents=True)
        source, python = reference
        command = [python, "-m", "ms_service_profiler.parse", "--input-path",
                   str(capture.resolve()), "--output-path", str(out.resolve()), "--log-level",
                   "warning", "--format", *formats]
        cwd = source.resolve()
    started = time.perf_counter()
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(pythonpath),
                                                           env.get("PYTHONPATH"))))
    # Started outside any source tree: a project folder as the current directory would be
    # imported before the ``PYTHONPATH`` one.
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=env, cwd=cwd)
    # wait4 reports the resource usage of this child alone (RUSAGE_CHILDREN would mix runs).
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read().decode("utf-8", "replace") if child.stderr else ""
    if child.returncode:
        print(f"  analyzer exit status {child.returncode}: {stderr.strip()[:500]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, child.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "otel-vllm-bench-analyze")
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also run the project version in this source tree, alternating")
    parser.add_argument("--shape", choices=("ours", "thread", "process"), default="ours",
                        help="capture shape: this project's, or the C library's per-thread /"
                        " per-process layout with caret messages")
    parser.add_argument("--reference", type=Path, metavar="SRC",
                        help="also run the reference analyzer from this source tree"
                        " (msserviceprofiler), alternating, on the eight outputs")
    parser.add_argument("--reference-python", default="python3", metavar="PY",
                        help="the interpreter of the reference's own venv (pandas 2.x)")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.baseline is not None:
        return compare_with_baseline(args)
    if args.reference is not None:
        return compare_with_reference(args)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.repeat} run(s) per"
          f" configuration, load average before: {_load()}")
    results = []
    for scale in args.scales:
        capture = ensure_capture(args.work_dir, scale, args.seed, args.shape)
        rows = capture_rows(capture)
        for label, formats in CONFIGURATIONS:
            walls, cpus, peaks = [], [], []
            for _ in range(args.repeat):
                wall, cpu, peak, status = run_once(capture, args.work_dir / f"out-x{scale}",
                                                   formats)
                if status:
                    return status
                walls.append(wall)
                cpus.append(cpu)
                peaks.append(peak)
            results.append((scale, rows, label, statistics.median(walls), min(walls),
                            statistics.median(cpus), max(peaks)))
    print(f"load average after: {_load()}")
    print(f"{'scale':>5} {'rows':>9}  {'outputs':<24} {'wall median s':>13} {'best s':>7} "
          f"{'CPU s':>6} {'peak RSS MB':>11} {'wall/floor':>10} {'RSS/floor':>9}")
    for scale, rows, label, median, best, cpu, peak in results:
        print(f"{scale:>5} {rows:>9,}  {label:<24} {median:>13.2f} {best:>7.2f} {cpu:>6.2f}"
              f" {peak:>11.0f} {median / (FLOOR_WALL_S * scale):>9.2f}x"
              f" {peak / FLOOR_RSS_MB:>8.2f}x")
    print(f"floors (scale 1): {FLOOR_WALL_S} s wall, {FLOOR_RSS_MB:.0f} MB peak RSS; wall/floor "
          "divides by floor x scale, RSS/floor by the scale-1 floor")
    for scale, _, label, median, _, _, peak in results:
        if scale == 1:
            ok = median <= FLOOR_WALL_S and peak <= FLOOR_RSS_MB
            print(f"scale 1, {label}: within the floors: {'yes' if ok else 'NO'}")
    return 0


def compare_with_baseline(args: argparse.Namespace) -> int:
    """Baseline and this version, alternating; medians and their ratios."""
    tree = baseline_tree(args.baseline, args.work_dir)
    print(f"baseline: {args.baseline}; load average before: {_load()}")
    lines = []
    for scale in args.scales:
        capture = ensure_capture(args.work_dir, scale, args.seed)
        for label, formats in CONFIGURATIONS:
            runs: dict[str, list] = {"baseline": [], "this": []}
            for _ in range(args.repeat):
                for version, path in (("baseline", tree), ("this", None)):
                    wall, cpu, peak, status = run_once(
                        capture, args.work_dir / f"out-x{scale}-{version}", formats, path)
                    if status:
                        return status
                    runs[version].append((wall, cpu, peak))
            medians = {v: [statistics.median(r[i] for r in runs[v]) for i in range(2)]
                       + [max(r[2] for r in runs[v])] for v in runs}
            for version in ("baseline", "this"):
                wall, cpu, peak = medians[version]
                lines.append(f"x{scale:<4} {label:<24} {version:<9} {wall:>12.2f}"
                             f" {cpu:>12.2f} {peak:>12.0f}")
            ratio = [medians["this"][i] / medians["baseline"][i] for i in range(3)]
            lines.append(f"x{scale:<4} {label:<24} {'ratio':<9} {ratio[0]:>11.3f}x"
                         f" {ratio[1]:>11.3f}x {ratio[2]:>11.3f}x")
    print(f"load average after: {_load()}")
    print(f"{'scale':<5} {'outputs':<24} {'version':<9} {'wall median':>12} {'CPU median':>12}"
          f" {'peak RSS MB':>12}")
    print("\n".join(lines))
    return 0


def compare_with_reference(args: argparse.Namespace) -> int:
    """The reference analyzer and this one on the same capture, alternating, eight outputs."""
    print(f"reference: {args.reference} ({args.reference_python}); capture shape"
          f" {args.shape}; load average before: {_load()}")
    formats = ["csv", "json", "db"]
    lines = []
    for scale in args.scales:
        capture = ensure_capture(args.work_dir, scale, args.seed, args.shape)
        runs: dict[str, list] = {"reference": [], "this": []}
        for _ in range(args.repeat):
            for version in runs:
                reference = (args.reference, args.reference_python) \
                    if version == "reference" else None
                wall, cpu, peak, status = run_once(
                    capture, args.work_dir / f"out-x{scale}-{version}", formats,
                    reference=reference)
                if status:
                    return status
                runs[version].append((wall, cpu, peak))
                print(f"  x{scale} {version}: {wall:.2f} s wall, {cpu:.2f} s CPU,"
                      f" {peak:.0f} MB (load {_load()})", flush=True)
        medians = {v: [statistics.median(r[i] for r in runs[v]) for i in range(2)]
                   + [max(r[2] for r in runs[v])] for v in runs}
        for version in runs:
            wall, cpu, peak = medians[version]
            lines.append(f"x{scale:<4} {version:<9} {wall:>12.2f} {cpu:>12.2f} {peak:>12.0f}")
        speed = [medians["reference"][i] / medians["this"][i] for i in range(2)]
        lines.append(f"x{scale:<4} {'faster':<9} {speed[0]:>11.1f}x {speed[1]:>11.1f}x")
    print(f"load average after: {_load()}")
    print(f"{'scale':<5} {'version':<9} {'wall median':>12} {'CPU median':>12}"
          f" {'peak RSS MB':>12}")
    print("\n".join(lines))
    return 0


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
