"""``otel-vllm-analyze compare A B``: arguments, messages, exit status (see :mod:`.compare`).

Exit status: 0 both written; 1 an input cannot be used (one line names it and says why) or an
output could not be written; 2 bad arguments or an unusable output folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from otel_vllm_ascend.analysis import compare, time_window
from otel_vllm_ascend.analysis.readers import capture_span

_logger = logging.getLogger("otel_vllm_ascend.analysis")

FORMATS = ("csv", "html")
OUTPUT_FILES = {"csv": "compare.csv", "html": "compare.html"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-vllm-analyze compare",
        description="Compare two runs (capture folders or otel-vllm-analyze output folders):"
                    " per metric and span the A and B values, their difference, and whether it"
                    " is beyond noise. A is the baseline (differences are B - A).")
    parser.add_argument("a", metavar="A", help="baseline: capture folder or output folder")
    parser.add_argument("b", metavar="B", help="the run compared with A")
    parser.add_argument("-o", "--output-path", default="./compare",
                        help="folder for compare.csv and compare.html (default ./compare)")
    parser.add_argument("--alpha", type=float, default=compare.ALPHA,
                        help=f"significance level of the Mann-Whitney test"
                             f" (default {compare.ALPHA})")
    parser.add_argument("--min-effect", type=float, default=compare.MIN_EFFECT,
                        help="smallest relative change of median or mean that is flagged"
                             f" (default {compare.MIN_EFFECT})")
    for side in ("a", "b"):
        parser.add_argument(f"--since-{side}", type=time_window.parse_time, metavar="TIME",
                            help=f"{side.upper()} is the records of its capture that start at"
                            " or after TIME (as otel-vllm-analyze --since)")
        parser.add_argument(f"--until-{side}", type=time_window.parse_time, metavar="TIME",
                            help=f"{side.upper()} is the records of its capture that start"
                            " before TIME")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="outputs to write (default: both)")
    parser.add_argument("--log-level", default="info", type=str.lower,
                        choices=["debug", "info", "warning", "error", "critical"])
    return parser


def run_compare(path_a: Path, path_b: Path, out: Path, formats: Sequence[str],
                alpha: float = compare.ALPHA, min_effect: float = compare.MIN_EFFECT,
                windows: Sequence[Optional[time_window.TimeWindow]] = (None, None)) -> int:
    """The whole command; returns the exit status. ``windows``: A's and B's time window
    (``--since-a`` ...), None for the whole capture."""
    from otel_vllm_ascend.analysis.writers import write_csv

    runs = []
    for label, path, window in (("A", path_a, windows[0]), ("B", path_b, windows[1])):
        try:
            runs.append(compare.load_run(Path(path), label, window))
        except compare.CompareInputError as exc:
            _logger.error("%s", exc)
            return 1
    a, b = runs
    for run in runs:
        message = compare.partial_message(run)
        if message:
            _logger.warning("%s", message)
    problem = _output_problem(out)
    if problem:
        _logger.error("%s", problem)
        return 2
    table = compare.compare_runs(a, b, alpha, min_effect)
    written, failed = [], []
    if "csv" in formats:
        try:
            written.append(write_csv(out / OUTPUT_FILES["csv"], table, compare.COMPARE_COLUMNS))
        except OSError as exc:
            _logger.error("could not produce compare.csv: %s", exc)
            failed.append("compare.csv")
    if "html" in formats:
        try:
            from otel_vllm_ascend.analysis.compare_report import write_compare_report

            written.append(write_compare_report(out / OUTPUT_FILES["html"], table, a, b))
        except Exception as exc:  # one message, never a traceback
            _logger.error("could not produce compare.html: %s: %s", type(exc).__name__, exc)
            _logger.debug("details", exc_info=True)
            failed.append("compare.html")
    _print_summary(table, a, b, out, written, failed)
    return 1 if failed else 0


def _output_problem(out: Path) -> Optional[str]:
    """Why ``out`` cannot receive the outputs (created if missing), or None."""
    if out.exists() and not out.is_dir():
        return f"output path {out} exists and is not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create output folder {out}: {exc.strerror or exc}"
    if not os.access(out, os.W_OK):
        return f"cannot write into output folder {out}"
    return None


def _print_summary(table: pd.DataFrame, a: compare.RunValues, b: compare.RunValues, out: Path,
                   written: list, failed: list) -> None:
    lines = [f"A: {a.path} ({a.kind})", f"B: {b.path} ({b.kind})"]
    rows = compare.flagged(table)
    tested = int(table["p_value"].notna().sum())
    lines.append(f"differences beyond noise: {len(rows)} of {tested} tested rows")
    for row in rows.itertuples():
        lines.append(f"  {row.section} {row.metric}: {row.verdict}; p50 {row.value_a:.4g} ->"
                     f" {row.value_b:.4g} {row.unit} ({row.rel_diff * 100:+.1f} %), mean"
                     f" {row.mean_a:.4g} -> {row.mean_b:.4g} ({row.rel_diff_mean * 100:+.1f} %)")
    lines.append(f"written to {out}: {', '.join(Path(p).name for p in written) or 'nothing'}")
    if failed:
        lines.append(f"not written: {', '.join(failed)}")
    print("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    windows = []
    for side, path, since, until in (("a", args.a, args.since_a, args.until_a),
                                     ("b", args.b, args.since_b, args.until_b)):
        if not Path(path).is_dir():
            windows.append(None)  # the input itself is refused below, with its own message
            continue
        try:
            windows.append(time_window.window_of(since, until,
                                                 lambda path=path: capture_span([Path(path)])))
        except ValueError as exc:
            parser.error(f"{side.upper()} ({path}): " + str(exc).replace(
                "--since", f"--since-{side}").replace("--until", f"--until-{side}"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if not 0 < args.alpha < 1:
        _logger.error("--alpha must lie between 0 and 1, got %s", args.alpha)
        return 2
    if args.min_effect < 0:
        _logger.error("--min-effect must not be negative, got %s", args.min_effect)
        return 2
    try:
        return run_compare(Path(args.a), Path(args.b), Path(args.output_path),
                           list(dict.fromkeys(args.format)), args.alpha, args.min_effect,
                           windows)
    except KeyboardInterrupt:
        _logger.error("interrupted")
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        _logger.error("compare failed: %s: %s", type(exc).__name__, exc)
        _logger.debug("details", exc_info=True)
        return 1
