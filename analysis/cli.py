"""``otel-vllm-analyze``: turn captures into request, batch and KV-cache tables, a trace, a report.

Usage::

    otel-vllm-analyze --input-path DIR [--output-path OUT] [--format csv json db html]
                      [--log-level LEVEL]
    python -m otel_vllm_ascend.analysis --input-path DIR

``DIR`` is searched recursively for ``ms_service_*.db`` captures (from this project's exporter or
msserviceprofiler's C library, any layout) and OTLP JSON files. ``OUT`` (default ``./output``)
receives, by format:

* ``csv``: ``request.csv``, ``request_summary.csv``, ``batch.csv``, ``batch_summary.csv``,
  ``kvcache.csv``, ``service_summary.csv``, ``spec_decode.csv`` (header only without
  speculative decoding); with operator data (``acl_task_time``) also ``op_summary.csv`` and
  ``op_statistic.csv`` (analysis/operators.py);
* ``json``: ``chrome_tracing.json`` (open in https://ui.perfetto.dev or chrome://tracing);
* ``db``: ``profiler.db`` (every table in SQLite);
* ``html``: ``report.html`` (one self-contained page of plots and tables).

All formats are written by default. Files already in ``OUT`` are replaced (one message says
so). Problems with the input (empty folder, damaged or foreign files, undecodable messages,
requests cut off by the start or end of the capture) are reported in one line each; everything
that can still be computed is written. Exit status: 0 all written, 1 some output missing or no
records found, 2 bad arguments or an unusable output folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis import batches as batches_mod
from otel_vllm_ascend.analysis import kvcache as kvcache_mod
from otel_vllm_ascend.analysis import operators as operators_mod
from otel_vllm_ascend.analysis import requests as requests_mod
from otel_vllm_ascend.analysis import spec_decode as spec_mod
from otel_vllm_ascend.analysis import summaries, writers
from otel_vllm_ascend.analysis.readers import read_captures
from otel_vllm_ascend.analysis.steps import engine_steps, step_requests

_logger = logging.getLogger("otel_vllm_ascend.analysis")

FORMATS = ("csv", "json", "db", "html")
CSV_FILES = ("request.csv", "request_summary.csv", "batch.csv", "batch_summary.csv",
             "kvcache.csv", "service_summary.csv", "spec_decode.csv", "op_summary.csv",
             "op_statistic.csv")
OUTPUT_FILES = {"csv": CSV_FILES, "json": ("chrome_tracing.json",), "db": ("profiler.db",),
                "html": ("report.html",)}


class OutputError(Exception):
    """The output folder cannot be used."""


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def files(self, done: int, total: int, name: str) -> None:
        if not self.enabled or total < 2:
            return
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\rreading captures [{'#' * filled}{'.' * (width - filled)}]"
                         f" {done}/{total} {name[:40]:<40}")
        sys.stderr.flush()

    def stage(self, text: str) -> None:
        if not self.enabled:
            return
        sys.stderr.write(f"\r{text:<90}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-vllm-analyze",
        description="Analyse vLLM service captures (ms_service_*.db or OTLP JSON).")
    parser.add_argument("--input-path", required=True, help="folder searched for captures")
    parser.add_argument("--output-path", default="./output",
                        help="folder for the results (default ./output)")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="outputs to write (default: all)")
    parser.add_argument("--log-level", default="info", type=str.lower,
                        choices=["debug", "info", "warning", "error", "critical"],
                        help="log level (default info)")
    return parser


def prepare_output(path: Path, formats: Sequence[str]) -> list[str]:
    """Create ``path`` if needed, check it is writable; returns the outputs already there."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    probe = path / f".otel-vllm-analyze-{os.getpid()}.probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write into output folder {path}: {exc.strerror or exc}"
                          ) from None
    return [name for fmt in formats for name in OUTPUT_FILES[fmt] if (path / name).exists()]


class _Run:
    """One analysis: each stage reports its own failure and the others go on."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[Path] = []
        self.failed: list[str] = []

    def stage(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # one message per failed output, never a traceback
            _logger.error("could not produce %s: %s: %s", what, type(exc).__name__, exc)
            _logger.debug("details", exc_info=True)
            self.failed.append(what)
            return None

    def wrote(self, path: Optional[Path]) -> None:
        if path is not None:
            self.written.append(Path(path))


def _load_trace_module() -> Any:
    try:
        from otel_vllm_ascend.analysis import trace
    except ImportError:
        return None
    return trace


def _load_report_module() -> Any:
    try:
        from otel_vllm_ascend.analysis import report
    except ImportError:
        return None
    return report


def analyse(input_path: Path, output_path: Path, formats: Sequence[str],
            progress: Optional[_Progress] = None,
            keep_until_exit: Optional[list] = None) -> int:
    """Run the whole analysis; returns the exit status.

    ``keep_until_exit``: a list that receives the large tables instead of letting them be
    freed on return, for a caller that ends the process right after without a teardown.
    """
    progress = progress or _Progress(False)
    try:
        existing = prepare_output(output_path, formats)
    except OutputError as exc:
        _logger.error("%s", exc)
        return 2
    if existing:
        _logger.warning("replacing %d existing output file(s) in %s: %s", len(existing),
                        output_path, ", ".join(existing))
    frame, processes, report = read_captures(input_path, progress.files)
    progress.done()
    for problem in report.problems:
        _logger.warning("%s", problem)
    if report.unparsable:
        _logger.warning("%d record(s) could not be decoded in total and were skipped",
                        report.unparsable)
    if frame.empty:
        if report.files:
            _logger.error("no records in the %d capture file(s) read under %s; nothing to"
                          " analyse", len(report.files), input_path)
        else:
            _logger.error("nothing to analyse under %s", input_path)
        return 1
    _logger.info("read %d records from %d file(s), %d process(es)", len(frame),
                 len(report.files), len(processes))
    run = _Run(output_path)
    progress.stage("building engine steps")
    steps = run.stage("engine steps", engine_steps, frame)
    per_request = run.stage("engine steps", step_requests, steps) if steps is not None else None
    progress.stage("building kvcache.csv")
    kvcache = run.stage("kvcache.csv", kvcache_mod.build_kvcache, frame)
    progress.stage("building request.csv")
    requests = run.stage("request.csv", requests_mod.build_requests, frame, steps, per_request)
    progress.stage("building spec_decode.csv")
    spec_decode = run.stage("spec_decode.csv", spec_mod.build_spec_decode, frame, steps,
                            per_request)
    progress.stage("building batch.csv")
    batches = None
    if steps is not None:
        batches = run.stage("batch.csv", batches_mod.build_batches, frame, steps, per_request,
                            kvcache, spec_decode if spec_decode is not None
                            else spec_mod.empty_spec_decode())
    tables: dict[str, pd.DataFrame] = {}
    if requests is not None:
        tables["request_summary"] = run.stage(
            "request_summary.csv", summaries.request_summary, frame, requests, per_request,
            batches)
        tables["service_summary"] = run.stage(
            "service_summary.csv", summaries.service_summary, requests, batches)
    if batches is not None:
        tables["batch_summary"] = run.stage("batch_summary.csv", summaries.batch_summary,
                                            batches)
    # Operator data (torch profiler traces next to the capture): analysis/operators.py.
    operator_capture = _read_operator_data(run, input_path, tables)
    tables = {k: v for k, v in tables.items() if v is not None}
    _warn_partial(requests)
    del steps, per_request  # one row per (step, request): the largest table, no longer needed

    out = output_path
    want_trace = "json" in formats or "db" in formats
    trace = _load_trace_module() if want_trace else None
    if trace is None and "json" in formats:
        _logger.error("chrome_tracing.json: the trace builder is not available in this"
                      " installation")
        run.failed.append("chrome_tracing.json")

    # Two cores: the work after the tables is split in two halves of about equal CPU time, one
    # of them in a forked child. With the report, the child draws it and writes the CSV files
    # while this process builds the trace and writes it and profiler.db; without the report,
    # profiler.db (the largest single job) and the CSV files go to the child once the trace
    # is built.
    def build_trace() -> Any:
        if trace is None:
            return None
        progress.stage("building the trace")
        built = run.stage("chrome_tracing.json", trace.build_chrome_trace, frame, requests,
                          batches, kvcache)
        if built is not None and operator_capture is not None:
            run.stage("operators in chrome_tracing.json", operators_mod.merge_into_trace,
                      built, operator_capture, frame, trace)
        return built

    def write_db(job_run: _Run, trace_events: Any) -> None:
        if "db" not in formats:
            return
        empty = pd.DataFrame()
        db_tables = dict(tables)
        if spec_decode is not None:
            db_tables["spec_decode"] = spec_decode.reindex(columns=list(spec_mod.CSV_COLUMNS))
        job_run.wrote(job_run.stage(
            "profiler.db", writers.write_profiler_db, out / "profiler.db",
            (requests if requests is not None else empty, requests_mod.CSV_COLUMNS),
            (batches if batches is not None else empty, batches_mod.CSV_COLUMNS),
            (kvcache if kvcache is not None else empty, kvcache_mod.KVCACHE_COLUMNS),
            db_tables, trace_events, getattr(trace_events, "origin_us", 0.0)))

    def write_json(trace_events: Any) -> None:
        if "json" in formats and trace_events is not None:
            run.wrote(run.stage("chrome_tracing.json", trace.write_chrome_trace,
                                out / "chrome_tracing.json", trace_events))

    def write_csvs(job_run: _Run) -> None:
        if "csv" in formats:
            _write_csvs(job_run, out, requests, batches, kvcache, spec_decode, tables)

    if "html" in formats:
        def csv_and_report(job_run: _Run) -> None:
            write_csvs(job_run)
            _write_html(job_run, out, frame, requests, batches, kvcache, tables)

        progress.stage("writing outputs")
        join = _in_background(csv_and_report, run, "CSV files / report.html")
        trace_events = build_trace()
        write_json(trace_events)
        write_db(run, trace_events)
    else:
        trace_events = build_trace()
        progress.stage("writing outputs")

        def csv_and_db(job_run: _Run) -> None:
            write_csvs(job_run)
            write_db(job_run, trace_events)

        join = _in_background(csv_and_db, run, "CSV files / profiler.db")
        write_json(trace_events)
    join()
    progress.done()
    _print_summary(requests, batches, tables, run, out)
    if keep_until_exit is not None:  # the process ends next: freeing ~1M objects is wasted work
        keep_until_exit.extend((frame, requests, batches, kvcache, tables, trace_events))
    return 1 if run.failed else 0


def _read_operator_data(run: _Run, input_path: Path, tables: dict) -> Any:
    """Operator traces under the input: op_summary / op_statistic into ``tables``."""
    capture = run.stage("operator data", operators_mod.read_operators, input_path)
    if capture is None:
        return None
    for problem in capture.problems:
        _logger.warning("%s", problem)
    if capture.empty:
        return None
    _logger.info("read %d operator events of %d profiled steps from %d file(s)",
                 len(capture.events), len(capture.steps), len(capture.sources))
    tables["op_summary"] = run.stage("op_summary.csv", operators_mod.build_op_summary, capture)
    tables["op_statistic"] = run.stage("op_statistic.csv", operators_mod.build_op_statistic,
                                       capture)
    return capture


def _write_csvs(run: _Run, out: Path, requests: Any, batches: Any, kvcache: Any,
                spec_decode: Any, tables: dict) -> None:
    for name, table, columns in (
            ("request.csv", requests, requests_mod.CSV_COLUMNS),
            ("batch.csv", batches, batches_mod.CSV_COLUMNS),
            ("kvcache.csv", kvcache, kvcache_mod.KVCACHE_COLUMNS),
            ("spec_decode.csv", spec_decode, spec_mod.CSV_COLUMNS)):
        if table is not None:
            run.wrote(run.stage(name, writers.write_csv, out / name, table, columns))
    for key, table in tables.items():
        run.wrote(run.stage(f"{key}.csv", writers.write_csv, out / f"{key}.csv", table,
                            list(table.columns)))


def _write_html(run: _Run, out: Path, frame: pd.DataFrame, requests: Any, batches: Any,
                kvcache: Any, tables: dict) -> None:
    report_mod = _load_report_module()
    if report_mod is None:
        _logger.error("report.html: the report writer is not available in this installation")
        run.failed.append("report.html")
        return
    run.wrote(run.stage("report.html", _write_report, report_mod, out, frame, requests,
                        batches, kvcache, tables))


def _in_background(jobs: Callable[[_Run], None], run: _Run,
                   what: str) -> Callable[[], None]:
    """Run ``jobs`` in a forked child when a second core exists; returns the function to join.

    The child reports what it wrote and what failed through a pipe; without ``fork`` (or with
    ``OTEL_VLLM_ANALYZE_SERIAL=1``, or one core) the jobs simply run here, now.
    """
    serial = (not hasattr(os, "fork") or (os.cpu_count() or 1) < 2
              or os.environ.get("OTEL_VLLM_ANALYZE_SERIAL") == "1")
    if not serial:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            serial = True
    if serial:
        jobs(run)
        return lambda: None
    if pid == 0:  # the child: do the jobs, send the outcome, leave without cleanup
        code = 0
        try:
            os.close(read_fd)
            child = _Run(run.out)
            try:
                jobs(child)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                child.failed.append(f"background writer ({type(exc).__name__}: {exc})")
            payload = json.dumps({"written": [str(p) for p in child.written],
                                  "failed": child.failed})
            with os.fdopen(write_fd, "w") as pipe:
                pipe.write(payload)
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)

    def join() -> None:
        with os.fdopen(read_fd) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        try:
            outcome = json.loads(text)
        except ValueError:
            _logger.error("the background writer (%s) ended without a result", what)
            run.failed.append(what)
            return
        run.written.extend(Path(p) for p in outcome["written"])
        run.failed.extend(outcome["failed"])

    return join


def _write_report(report_mod: Any, out: Path, frame: pd.DataFrame, requests: Any,
                  batches: Any, kvcache: Any, tables: dict) -> Path:
    empty = pd.DataFrame()
    return report_mod.write_report(
        out / "report.html",
        requests=requests if requests is not None else empty,
        batches=batches if batches is not None else empty,
        kvcache=kvcache if kvcache is not None else empty,
        summaries=tables, frame=frame)


def _warn_partial(requests: Optional[pd.DataFrame]) -> None:
    if requests is None or requests.empty:
        return
    no_start = int((~requests["has_arrival"].astype(bool)).sum())
    no_end = int((~requests["has_end"].astype(bool)).sum())
    if no_start:
        _logger.warning("%d request(s) have no httpReq record (capture started while they"
                        " ran): kept and marked partial, arrival-based latencies left empty",
                        no_start)
    if no_end:
        _logger.warning("%d request(s) have no httpRes record (capture ended before they"
                        " finished): kept and marked partial, end-to-end latency left empty",
                        no_end)


def _pct(values: Any, q: float) -> str:
    data = np.asarray(values, dtype="float64")
    data = data[np.isfinite(data)]
    return f"{np.percentile(data, q):.2f}" if data.size else "n/a"


def _print_summary(requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
                   tables: dict, run: _Run, out: Path) -> None:
    lines = []
    if requests is not None and not requests.empty:
        partial = int(requests["partial"].astype(bool).sum())
        lines.append(f"requests: {len(requests)} ({len(requests) - partial} complete,"
                     f" {partial} partial)")
        lines.append(f"TTFT ms: p50 {_pct(requests['ttft_ms'], 50)}"
                     f"  p99 {_pct(requests['ttft_ms'], 99)}")
        lines.append(f"end-to-end ms: p50 {_pct(requests['e2e_ms'], 50)}"
                     f"  p99 {_pct(requests['e2e_ms'], 99)}")
    else:
        lines.append("requests: 0")
    service = tables.get("service_summary")
    if service is not None:
        value = dict(zip(service["Metric"], service["Value"])).get(
            "generate_token_speed (token/s)")
        if value is not None and value == value:
            lines.append(f"output tokens/s: {value:.1f}")
    if batches is not None:
        lines.append(f"engine steps: {len(batches)}")
    names = ", ".join(p.name for p in run.written) or "nothing"
    lines.append(f"written to {out}: {names}")
    if run.failed:
        lines.append(f"not written: {', '.join(dict.fromkeys(run.failed))}")
    print("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None, keep_until_exit: Optional[list] = None) -> int:
    """Console entry point (``keep_until_exit``: see :func:`analyse`)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    progress = _Progress(sys.stderr.isatty() and args.log_level != "debug")
    formats = list(dict.fromkeys(args.format))
    # Millions of small objects and no reference cycles: the cyclic GC would only rescan them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return analyse(Path(args.input_path), Path(args.output_path), formats, progress,
                       keep_until_exit)
    except KeyboardInterrupt:
        progress.done()
        _logger.error("interrupted")
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        progress.done()
        _logger.error("analysis failed: %s: %s", type(exc).__name__, exc)
        _logger.debug("details", exc_info=True)
        return 1
    finally:
        if gc_was_enabled:
            gc.enable()


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """``otel-vllm-analyze`` and ``python -m otel_vllm_ascend.analysis``: :func:`main`, then leave.

    Every output is written and closed by then, so the process ends without freeing the large
    tables and without the interpreter's teardown of pandas, matplotlib and numpy (0.15-0.25 s
    of CPU at the benchmark's size, for nothing).
    """
    tables: list = []
    status = main(keep_until_exit=tables)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

