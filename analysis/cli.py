"""``otel-vllm-analyze``: turn captures into request, batch and KV-cache tables, a trace, a report.

Usage::

    otel-vllm-analyze --input-path DIR [DIR ...] [--output-path OUT]
                      [--format csv json db html]
                      [--log-level LEVEL] [--since TIME] [--until TIME]
                      [--every DURATION | --stream DURATION] [--span NAME ...]
                      [--split-batch-size N ...] [--split-rid RID ...] [--split-number N]
    python -m otel_vllm_ascend.analysis --input-path DIR
    otel-vllm-analyze compare A B [-o OUT]     # two runs side by side (analysis/compare.py)

``DIR`` is searched recursively for ``ms_service_*.db`` captures (from this project's exporter or
msserviceprofiler's C library, any layout) and OTLP JSON files; several folders (one per host,
say) are read as one capture, each process keeping its host, and when requests cross hosts one
line says how far apart the hosts' clocks can be (:mod:`.host_clocks`). ``OUT`` (default
``./output``) receives, by format:

* ``csv``: ``request.csv``, ``request_summary.csv``, ``batch.csv``, ``batch_summary.csv``,
  ``kvcache.csv``, ``service_summary.csv``, ``spec_decode.csv`` (header only without
  speculative decoding), ``forward.csv``, ``request_status.csv``, ``prefill.csv`` and
  ``decode.csv`` (stage breakdown; ``--split-*`` add selections), and with ``--span`` the
  folder ``span_info/`` (:mod:`.detail_outputs`); with operator data (``acl_task_time``) also
  ``op_summary.csv`` and ``op_statistic.csv`` (analysis/operators.py);
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
import functools
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis import batches as batches_mod
from otel_vllm_ascend.analysis import (
    detail_outputs,
    every_window,
    stream_tables,
    summaries,
    time_window,
    writers,
)
from otel_vllm_ascend.analysis import kvcache as kvcache_mod
from otel_vllm_ascend.analysis import operators as operators_mod
from otel_vllm_ascend.analysis import requests as requests_mod
from otel_vllm_ascend.analysis import spec_decode as spec_mod
from otel_vllm_ascend.analysis import stages as stages_mod
from otel_vllm_ascend.analysis.allocator import give_back_free_memory
from otel_vllm_ascend.analysis.console_summary import (
    SUMMARY_REQUEST_COLUMNS,
    _print_summary,
    _warn_partial,
)
from otel_vllm_ascend.analysis.host_clocks import clock_gaps
from otel_vllm_ascend.analysis.output_jobs import _in_background, _Run
from otel_vllm_ascend.analysis.progress import _Progress
from otel_vllm_ascend.analysis.readers import capture_span, read_captures
from otel_vllm_ascend.analysis.steps import StepRequestChunks, engine_steps

_logger = logging.getLogger("otel_vllm_ascend.analysis")

FORMATS = ("csv", "json", "db", "html")
# Written only with operator data, or with data-parallel ranks.
ONLY_WITH_CSV_FILES = ("op_summary.csv", "op_statistic.csv", "dp_summary.csv")
CSV_FILES = ("request.csv", "request_summary.csv", "batch.csv", "batch_summary.csv",
             "kvcache.csv", "service_summary.csv", "spec_decode.csv") + ONLY_WITH_CSV_FILES
OUTPUT_FILES = {"csv": CSV_FILES + detail_outputs.CSV_FILES,
                "json": ("chrome_tracing.json",), "db": ("profiler.db",),
                "html": ("report.html",)}


class OutputError(Exception):
    """The output folder cannot be used."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-vllm-analyze",
        description="Analyse vLLM service captures (ms_service_*.db or OTLP JSON).",
        epilog="Compare two runs: otel-vllm-analyze compare A B [-o OUT] (see compare --help).")
    parser.add_argument("--input-path", required=True, nargs="+",
                        help="folder(s) searched for captures; several folders (e.g. one per"
                        " host) make one analysis")
    parser.add_argument("--output-path", default="./output",
                        help="folder for the results (default ./output)")
    parser.add_argument("--format", nargs="+", choices=FORMATS,
                        help="outputs to write (default: all)")
    parser.add_argument("--log-level", default="info", type=str.lower,
                        choices=["debug", "info", "warning", "error", "critical"],
                        help="log level (default info)")
    parser.add_argument("--since", type=time_window.parse_time, metavar="TIME",
                        help="only records that start at or after TIME (UTC ISO 8601 date and"
                        " time, e.g. 2026-12-07T14:00:00, seconds since the epoch, or"
                        " relative to the capture: start+10m, end-1h)")
    parser.add_argument("--until", type=time_window.parse_time, metavar="TIME",
                        help="only records that start before TIME (as --since)")
    parser.add_argument("--every", type=time_window.parse_duration, metavar="DURATION",
                        help="analyse the capture (or --since to --until) one window of"
                        " DURATION (90, 10m, 1h) after the other, each into a folder of its"
                        " own, with windows.csv listing them")
    parser.add_argument("--stream", type=time_window.parse_duration, metavar="DURATION",
                        help="write the whole capture's outputs reading its records"
                        " DURATION at a time: memory of one window, for captures too large to"
                        " read whole")
    detail_outputs.add_arguments(parser)  # --span, --split-*
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


def _prepared(path: Path, formats: Sequence[str]) -> Optional[list[str]]:
    """:func:`prepare_output`, its problem or the outputs it replaces said once; None when the
    folder cannot be used."""
    try:
        existing = prepare_output(path, formats)
    except OutputError as exc:
        _logger.error("%s", exc)
        return None
    if existing:
        _logger.warning("replacing %d existing output file(s) in %s: %s", len(existing), path,
                        ", ".join(existing))
    return existing


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


def _where(input_path: Union[Path, Sequence[Path]]) -> str:
    if isinstance(input_path, (str, os.PathLike)):
        return str(input_path)
    return ", ".join(str(path) for path in input_path)


def analyse(input_path: Union[Path, Sequence[Path]], output_path: Path, formats: Sequence[str],
            progress: Optional[_Progress] = None,
            keep_until_exit: Optional[list] = None,
            details: Optional[detail_outputs.DetailOptions] = None,
            window: Optional[time_window.TimeWindow] = None, empty_ok: bool = False,
            figures: Optional[dict] = None) -> int:
    """Run the whole analysis; returns the exit status.

    ``keep_until_exit``: a list that receives the large tables instead of letting them be
    freed on return, for a caller that ends the process right after without a teardown.
    ``details``: the ``--span`` / ``--split-*`` choices (:mod:`.detail_outputs`).
    ``window``: ``--since`` / ``--until`` (:mod:`.time_window`); ``empty_ok``: a window
    without records is no error (``every_window.NO_RECORDS``, logged as information);
    ``figures``: a dict that receives the window's ``every_window.figures_of``.
    """
    progress = progress or _Progress(False)
    if _prepared(output_path, formats) is None:
        return 2
    if "csv" in formats:  # an earlier run's optional tables must not outlive this capture's
        for name in ONLY_WITH_CSV_FILES:
            (output_path / name).unlink(missing_ok=True)
    frame, processes, report = read_captures(input_path, progress.files, window)
    give_back_free_memory()  # the decoded messages' memory (allocator.py)
    progress.done()
    for problem in report.problems:
        _logger.warning("%s", problem)
    for gap in clock_gaps(frame):  # several hosts: how far apart their clocks can be
        (_logger.warning if gap.apart else _logger.info)("%s", gap.message())
    if report.unparsable:
        _logger.warning("%d record(s) could not be decoded in total and were skipped",
                        report.unparsable)
    if frame.empty:
        if empty_ok and report.files:
            _logger.info("no record starts in the time window %s", window.describe())
            return every_window.NO_RECORDS
        if report.files and window is not None:
            _logger.error("no record starts in the time window %s in the %d capture file(s)"
                          " read under %s%s; nothing to analyse", window.describe(),
                          len(report.files), _where(input_path),
                          time_window.outside_note(report.files))
        elif report.files:
            _logger.error("no records in the %d capture file(s) read under %s; nothing to"
                          " analyse", len(report.files), _where(input_path))
        else:
            _logger.error("nothing to analyse under %s", _where(input_path))
        return 1
    starts = frame["start_us"]
    _logger.info("read %d records from %d file(s), %d process(es); they start from %s%s",
                 len(frame), len(report.files), len(processes),
                 time_window.TimeWindow(starts.min(), starts.max()).describe(),
                 f" (time window {window.describe()})" if window is not None else "")
    run = _Run(output_path)
    progress.stage("building engine steps")
    steps = run.stage("engine steps", engine_steps, frame)
    # The (step, request) rows (twenty million at x100, 0.36 GB as one table) are made a chunk
    # of steps at a time each time a builder reads them (request.csv, the stage breakdown's
    # rows, batch.csv), never held whole; spec_decode.csv makes the table only when there are
    # speculative-decoding records to place.
    per_request = StepRequestChunks(steps) if steps is not None else None
    progress.stage("building request.csv")
    requests = run.stage("request.csv", requests_mod.build_requests, frame, steps, per_request)
    # request_summary.csv's token gaps (a float64 per output at x100: 0.19 GB) come from the
    # output records when they name requests: taken here, before the (step, request) table
    # and the other tables are held; from the steps otherwise, after batch.csv (as before).
    request_summary = None
    gaps_from_steps = summaries.gaps_from_steps(frame)
    if requests is not None and not gaps_from_steps:
        request_summary = run.stage("request_summary.csv", summaries.request_summary, frame,
                                    requests)
    progress.stage("building spec_decode.csv")
    spec_decode = run.stage("spec_decode.csv", spec_mod.build_spec_decode, frame, steps,
                            per_request)
    # From here on, only the rows the stage breakdown reads (one per step), and for
    # request_summary the (step, request id) columns when its gaps come from the steps (no
    # output records).
    details = details or detail_outputs.DetailOptions()
    step_rids = step_chunks = None
    if per_request is not None:
        if gaps_from_steps:  # two columns of the whole table (the same arrays)
            whole = run.stage("engine steps", per_request.whole)
            step_rids = whole[["step_id", "rid"]] if whole is not None else None
            del whole
        step_chunks = per_request
        per_request = run.stage("prefill.csv / decode.csv", stages_mod.breakdown_rows,
                                per_request, details.selection)
    # kvcache.csv reads only the records, and batch.csv is the first to read it: built here,
    # it is not held under request.csv's and request_summary's transients (0.04 GB at x100).
    progress.stage("building kvcache.csv")
    kvcache = run.stage("kvcache.csv", kvcache_mod.build_kvcache, frame)
    progress.stage("building batch.csv")
    batches = None
    if steps is not None:
        batches = run.stage("batch.csv", batches_mod.build_batches, frame, steps, step_chunks,
                            kvcache, spec_decode if spec_decode is not None
                            else spec_mod.empty_spec_decode())
    del step_chunks, steps  # one row per step (0.03 GB at x100): read by nothing after batch.csv
    tables: dict[str, pd.DataFrame] = {}
    if requests is not None:
        tables["request_summary"] = request_summary if not gaps_from_steps else run.stage(
            "request_summary.csv", summaries.request_summary, frame, requests, step_rids,
            batches)
        tables["service_summary"] = run.stage(
            "service_summary.csv", summaries.service_summary, requests, batches)
    del step_rids
    if batches is not None:
        tables["batch_summary"] = run.stage("batch_summary.csv", summaries.batch_summary,
                                            batches)
        tables["dp_summary"] = run.stage("dp_summary.csv", summaries.dp_summary, batches)
    # Operator data (torch profiler traces next to the capture): analysis/operators.py.
    operator_capture = operators_mod.read_operator_tables(run, input_path, tables)
    tables = {k: v for k, v in tables.items() if v is not None}
    _warn_partial(requests, window is not None)
    # --- detail outputs (forward.csv, request_status.csv, stage breakdown, span_info/)
    detail = None
    if {"csv", "html", "db"} & set(formats):
        progress.stage("building the detail tables")
        detail = detail_outputs.build(run, frame, batches, per_request, details)
    # --- end of detail outputs
    del per_request

    out = output_path
    want_trace = "json" in formats or "db" in formats
    trace = _load_trace_module() if want_trace else None
    if trace is None and "json" in formats:
        _logger.error("chrome_tracing.json: the trace builder is not available in this"
                      " installation")
        run.failed.append("chrome_tracing.json")
    if trace is not None:  # the records' columns read from here on (also by report.html's)
        frame = _columns_of(frame, trace.RECORD_COLUMNS)
        give_back_free_memory()

    # Two cores: the work after the tables is split in two halves of about equal CPU time, one
    # of them in a forked child: the child writes the CSV files, profiler.db's tables and
    # report.html while this process builds the trace, writes it and adds it to profiler.db.
    # Above FORK_BELOW_BYTES the tables' half runs here first and the tables are let go before
    # the trace is built (output_jobs.py): with or without the report, the two are never held
    # at once.
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

    def db_tables_args() -> tuple:
        """profiler.db's tables but the trace's, as the writers take them."""
        empty = pd.DataFrame()
        db_tables = dict(tables)
        if spec_decode is not None:
            db_tables["spec_decode"] = spec_decode.reindex(columns=list(spec_mod.CSV_COLUMNS))
        db_tables.update(detail_outputs.db_tables(detail))
        return ((requests if requests is not None else empty, requests_mod.CSV_COLUMNS),
                (batches if batches is not None else empty, batches_mod.CSV_COLUMNS),
                (kvcache if kvcache is not None else empty, kvcache_mod.KVCACHE_COLUMNS),
                db_tables)

    def write_json(trace_events: Any) -> None:
        if "json" in formats and trace_events is not None:
            run.wrote(run.stage("chrome_tracing.json", trace.write_chrome_trace,
                                out / "chrome_tracing.json", trace_events))

    tables_written_here = False

    def write_tables(job_run: _Run) -> None:
        """The CSV files, profiler.db but the trace's tables, report.html."""
        nonlocal frame, detail, spec_decode, tables_written_here
        report_records = _report_records(frame) if "html" in formats else None
        if job_run.forked:  # this process's copy of the records: the report's are all it reads
            frame = None
            give_back_free_memory()
        if "csv" in formats:
            _write_csvs(job_run, out, requests, batches, kvcache, spec_decode, tables)
            if detail is not None:
                detail_outputs.write_csvs(job_run, out, detail)
        if "db" in formats:
            job_run.stage("profiler.db", writers.write_profiler_tables, out / "profiler.db",
                          *db_tables_args())
        if "html" in formats:
            # The report last, without the tables it does not read (the detail tables, 0.05 GB
            # at x100, under its drawing's transient when it is drawn in this process).
            stage_tables = detail_outputs.report_tables(detail)
            detail = spec_decode = None
            give_back_free_memory()
            _write_html(job_run, out, report_records, requests, batches, kvcache, tables,
                        stage_tables, window)
        tables_written_here = True  # in a forked child: the child's own copy of the flag

    progress.stage("writing outputs")
    join = _in_background(write_tables, run, "CSV files / profiler.db / report.html")
    # The tables are written (or the other process's to write); this one builds the trace,
    # writes it and adds it to profiler.db: only the request table (the trace's lifecycles)
    # and what the summary lines read are kept here.
    if figures is not None:
        figures.update(every_window.figures_of(requests, batches, tables, window))
    batches = batches[[]] if batches is not None else None  # its rows counted, no column
    kvcache = spec_decode = detail = None
    tables = {name: table for name, table in tables.items() if name == "service_summary"}
    if requests is not None and trace is not None:  # the columns the trace and summary read
        requests = _columns_of(requests, trace.REQUEST_COLUMNS + SUMMARY_REQUEST_COLUMNS)
    give_back_free_memory()
    trace_events = build_trace()
    # The trace's events are made once for chrome_tracing.json and profiler.db
    # (trace_file.WrittenAsRead): the JSON file is written as profiler.db's trace tables read
    # them.
    one_reading = trace_events is not None and "json" in formats and "db" in formats
    if not one_reading:
        write_json(trace_events)
    json_at = written_at = len(run.written)
    json_failed_at = failed_at = len(run.failed)
    json_file = db_events = None
    if "db" in formats:
        db_events = trace_events
        if one_reading:
            db_events = json_file = trace.WrittenAsRead(trace_events, out / "chrome_tracing.json")
    # Beside the other process's tables, the trace's are written to a file of their own, copied
    # into profiler.db once both are done; their failure is listed where profiler.db's is.
    trace_part = part_failure = None
    if db_events is not None and not tables_written_here:
        trace_part = run.stage("profiler.db", writers.write_trace_part, out / "profiler.db",
                               db_events, trace_events.origin_us)
        if trace_part is None:
            part_failure = run.failed.pop()
    join()
    if "db" in formats and "profiler.db" not in run.failed:
        # Listed where it was when one job wrote all of it: with the report, this process's
        # (before the other's files), without it the CSV files' (after them).
        if "html" not in formats:
            written_at, failed_at = len(run.written), len(run.failed)
        if part_failure is not None:
            run.failed.append(part_failure)
            run.place(None, written_at, failed_at)
        else:
            run.place(run.stage("profiler.db", writers.finish_profiler_db, out / "profiler.db",
                                db_events, getattr(trace_events, "origin_us", 0.0),
                                trace_part), written_at, failed_at)
    elif trace_part is not None:  # the other tables failed: no profiler.db to add them to
        trace_part.unlink(missing_ok=True)
    if one_reading:  # listed where write_json would have listed it
        run.place(trace.json_written(run, out / "chrome_tracing.json", trace_events, json_file,
                                     json_failed_at), json_at, json_failed_at)
    progress.done()
    _print_summary(requests, batches, tables, run, out)
    if keep_until_exit is not None:  # the process ends next: freeing ~1M objects is wasted work
        keep_until_exit.extend((frame, requests, batches, kvcache, tables, trace_events))
    return 1 if run.failed else 0


def _columns_of(table: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """``table``'s columns among ``names``, in its order (the table itself if none is)."""
    wanted = set(names)
    kept = [name for name in table.columns if name in wanted]
    return table[kept] if kept and len(kept) < len(table.columns) else table


def _report_records(frame: pd.DataFrame) -> pd.DataFrame:
    """The records report.html reads (report.py): the queue records (their name, process,
    start and dicts) and the earliest start, which begins its time axes."""
    if frame.empty:
        return frame
    wanted = np.array(frame["name"].isin(("Enqueue", "Dequeue")), dtype=bool)
    start = frame["start_us"].to_numpy(dtype="float64")
    finite = np.isfinite(start)
    if finite.any():
        wanted[np.nanargmin(np.where(finite, start, np.nan))] = True
    return frame.loc[wanted, ["name", "host", "pid", "start_us", "metrics", "scopes"]]


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
                kvcache: Any, tables: dict, stage_tables: Optional[dict] = None,
                window: Optional[time_window.TimeWindow] = None, queue_table: Any = None
                ) -> None:
    report_mod = _load_report_module()
    if report_mod is None:
        _logger.error("report.html: the report writer is not available in this installation")
        run.failed.append("report.html")
        return
    run.wrote(run.stage("report.html", _write_report, report_mod, out, frame, requests,
                        batches, kvcache, tables, stage_tables, window, queue_table))


def _write_report(report_mod: Any, out: Path, frame: pd.DataFrame, requests: Any,
                  batches: Any, kvcache: Any, tables: dict,
                  stage_tables: Optional[dict] = None,
                  window: Optional[time_window.TimeWindow] = None, queue_table: Any = None
                  ) -> Path:
    empty = pd.DataFrame()
    # a report of a window says so: its figures are not the whole capture's
    title = "vLLM service profile" + (f" · records starting {window.describe()}"
                                      if window is not None else "")
    return report_mod.write_report(
        out / "report.html",
        requests=requests if requests is not None else empty,
        batches=batches if batches is not None else empty,
        kvcache=kvcache if kvcache is not None else empty,
        summaries=tables, frame=frame, stage_tables=stage_tables, title=title,
        queue_table=queue_table)


def _check_stream_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--stream writes the whole capture's outputs: what it cannot do is refused."""
    if args.every:
        parser.error("--stream and --every exclude each other: --stream writes the whole"
                     " capture's outputs, --every one analysis per window")


def _stream(source: Union[Path, Sequence[Path]], out: Path, formats: list,
            window: time_window.TimeWindow, args: argparse.Namespace,
            details: detail_outputs.DetailOptions) -> int:
    existing = _prepared(out, formats)
    if existing is None:
        return 2
    for name in existing:  # an earlier run's CSV files: none left beside these tables
        if name.endswith(".csv"):
            (out / name).unlink(missing_ok=True)
    # The report says it is of a window only when one was asked for, as analyse()'s does.
    asked = window if args.since is not None or args.until is not None else None
    return stream_tables.run_stream(source, out, window, args.stream, formats=formats,
                                    write_html=html_writer(out, asked),
                                    details=details)


def html_writer(out: Path, window: Optional[time_window.TimeWindow]
                ) -> stream_tables.HtmlWriter:
    """report.html of ``--stream`` into ``out`` (``window``: the one asked for, if any)."""
    def write_html(run: _Run, requests: Any, batches: Any, kvcache: Any, tables: dict,
                   stage_tables: dict, frame: pd.DataFrame, queue_table: Any) -> None:
        _write_html(run, out, frame, requests, batches, kvcache, tables, stage_tables, window,
                    queue_table)

    return write_html


def main(argv: Optional[Sequence[str]] = None, keep_until_exit: Optional[list] = None) -> int:
    """Console entry point (``keep_until_exit``: see :func:`analyse`)."""
    # --- subcommand: ``otel-vllm-analyze compare A B`` (analysis/compare_cli.py) ---
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["compare"]:
        from otel_vllm_ascend.analysis.compare_cli import main as compare_main

        return compare_main(words[1:])
    # --- end of the compare subcommand ---
    parser = _parser()
    args = parser.parse_args(argv)
    inputs = [Path(p) for p in args.input_path]
    window = None
    span = functools.cache(lambda: capture_span(inputs))  # one scan of the files, if any
    if args.stream:
        _check_stream_arguments(parser, args)
    try:
        if any(path.is_dir() for path in inputs):  # else the inputs are refused, with a message
            window = time_window.window_of(args.since, args.until, span)
            if args.every or args.stream:  # a span with both ends, to cut
                window = time_window.closed(window, span, args.every or 1,
                                            "--every" if args.every else "--stream")
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    progress = _Progress(sys.stderr.isatty() and args.log_level != "debug")
    formats = list(dict.fromkeys(args.format or FORMATS))
    # Millions of small objects and no reference cycles: the cyclic GC would only rescan them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    source = inputs[0] if len(inputs) == 1 else inputs
    details = detail_outputs.DetailOptions.from_args(args)
    try:
        if args.stream and window is not None:
            return _stream(source, Path(args.output_path), formats, window, args, details)
        if args.every and window is not None:
            return every_window.run_every(
                lambda folder, part, figures: analyse(source, folder, formats, progress, None,
                                                      details, part, True, figures),
                Path(args.output_path), window, args.every)
        return analyse(source, Path(args.output_path), formats, progress, keep_until_exit,
                       details, window)
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
