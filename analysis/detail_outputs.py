"""The detail outputs: ``forward.csv``, ``request_status.csv``, ``prefill.csv``/``decode.csv``
(stage breakdown) and ``span_info/``, from building to writing.

:mod:`.cli` calls four functions: :func:`add_arguments` (the command-line options),
:func:`build` (after ``batch.csv``: every table, each failure one message through the run's
``stage``), :func:`write_csvs` (with the other CSV files) and :func:`report_tables` (what
``report.html`` shows of them). The builders live in :mod:`.forwards`, :mod:`.request_status`,
:mod:`.stages` and :mod:`.span_info`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from otel_vllm_ascend.analysis import forwards, request_status, span_info, stages, writers

_logger = logging.getLogger("otel_vllm_ascend.analysis")

CSV_FILES = ("forward.csv", "request_status.csv") + tuple(stages.CSV_FILES.values())


@dataclass(frozen=True)
class DetailOptions:
    """The command line's choices for the detail outputs."""

    spans: tuple = ()
    selection: stages.StageSelection = field(default_factory=stages.StageSelection)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DetailOptions:
        return cls(tuple(getattr(args, "span", None) or ()), stages.StageSelection(
            tuple(getattr(args, "split_batch_size", None) or ()),
            tuple(getattr(args, "split_rid", None) or ()),
            getattr(args, "split_number", None)))


@dataclass
class DetailTables:
    """What :func:`build` made (None: not built, its failure already reported)."""

    forwards: Optional[pd.DataFrame] = None
    request_status: Optional[pd.DataFrame] = None
    stage_tables: Optional[dict] = None
    span_tables: Optional[dict] = None
    span_summary: Optional[pd.DataFrame] = None
    spans_wanted: bool = False


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--span`` and the stage-breakdown selections."""
    parser.add_argument("--span", nargs="+", metavar="NAME",
                        help="also write span_info/: every occurrence of these spans (and of"
                             " forward / batchFrameworkProcessing) and their statistics")
    parser.add_argument("--split-batch-size", nargs="+", type=_positive, metavar="N",
                        help="stage breakdown (prefill.csv, decode.csv) also for steps of these"
                             " batch sizes (requests)")
    parser.add_argument("--split-rid", nargs="+", metavar="RID",
                        help="stage breakdown also for the steps that ran these request ids")
    parser.add_argument("--split-number", type=_positive, metavar="N",
                        help="stage breakdown over the first N steps of each selection only")


def build(run: Any, frame: pd.DataFrame, batches: Optional[pd.DataFrame],
          per_request: Optional[pd.DataFrame], options: DetailOptions) -> DetailTables:
    """Every detail table; ``run.stage(what, func, ...)`` reports a failure and returns None."""
    built = DetailTables(spans_wanted=bool(options.spans))
    # The stage breakdown first: the largest transient of the three (0.15 GB at x100), then not
    # on top of the other two tables.
    if batches is not None and per_request is not None:
        built.stage_tables = run.stage("prefill.csv / decode.csv",
                                       stages.build_stage_breakdown, frame, batches,
                                       per_request, options.selection)
    built.request_status = run.stage("request_status.csv", request_status.build_request_status,
                                     frame)
    if batches is not None:
        built.forwards = run.stage("forward.csv", forwards.build_forwards, frame, batches)
        warn_unmatched_selections(built.stage_tables)
    if options.spans:
        made = run.stage("span_info", span_info.build_span_info, frame, options.spans)
        if made is not None:
            built.span_tables, built.span_summary, missing = made
            warn_missing_spans(missing)
    return built


def warn_unmatched_selections(stage_tables: Optional[dict]) -> None:
    """One warning naming the ``--split-*`` selections no engine step matches."""
    unmatched = stages.unknown_selections(stage_tables) if stage_tables else []
    if unmatched:
        _logger.warning("stage breakdown: no engine step matches %s", ", ".join(unmatched))


def warn_missing_spans(missing: list) -> None:
    """One warning naming the ``--span`` names the capture does not hold."""
    if missing:
        _logger.warning("--span: no span named %s in the capture",
                        ", ".join(repr(name) for name in missing))


def db_tables(built: Optional[DetailTables]) -> dict:
    """The tables ``profiler.db`` stores (``request_status`` also feeds Insight's queue curve)."""
    if built is None:
        return {}
    tables = {"forward": (built.forwards, forwards.CSV_COLUMNS),
              "request_status": (built.request_status, request_status.CSV_COLUMNS)}
    return {name: table.reindex(columns=list(columns))
            for name, (table, columns) in tables.items() if table is not None}


def write_csvs(run: Any, out: Path, built: DetailTables) -> None:
    """The CSV files (and the ``span_info`` folder) of the tables built."""
    for name, table, columns in (
            ("forward.csv", built.forwards, forwards.CSV_COLUMNS),
            ("request_status.csv", built.request_status, request_status.CSV_COLUMNS)):
        if table is not None:
            run.wrote(run.stage(name, writers.write_csv, out / name, table, columns))
    for phase, table in (built.stage_tables or {}).items():
        name = stages.CSV_FILES[phase]
        run.wrote(run.stage(name, writers.write_csv, out / name, table, stages.CSV_COLUMNS))
    if built.span_summary is not None:
        run.wrote(run.stage("span_info", write_span_info, out / span_info.FOLDER,
                            built.span_tables or {}, built.span_summary))


def write_span_info(folder: Path, tables: dict, summary: pd.DataFrame) -> Path:
    """``span_info/``: one file per span name and ``span_summary.csv``, in a folder without
    an earlier run's files."""
    empty_span_folder(folder)
    for name, table in tables.items():
        target = span_info_file(folder, name)
        if target is not None:
            writers.write_csv(target, table, span_info.OCCURRENCE_COLUMNS)
    return write_span_summary(folder, summary)


def empty_span_folder(folder: Path) -> None:
    """``folder`` made, or its CSV files of an earlier run removed (their spans may not be
    asked for now)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.csv"):
        old.unlink()


def write_span_summary(folder: Path, summary: pd.DataFrame) -> Path:
    """``span_summary.csv`` in ``folder``; returns the folder (the output written)."""
    writers.write_csv(folder / span_info.SUMMARY_FILE, summary, span_info.SUMMARY_COLUMNS)
    return folder


def span_info_file(folder: Path, name: str) -> Optional[Path]:
    """The occurrences file of span ``name`` in ``folder``; None (and a warning) when its
    name is the summary's."""
    target = folder / span_info.file_name(name)
    if target.name == span_info.SUMMARY_FILE:
        _logger.warning("span_info: span %r is not written (its file name is the summary's)",
                        name)
        return None
    return target


def report_tables(built: Optional[DetailTables]) -> dict:
    """The stage breakdown tables for ``report.html`` (``{}`` when not built)."""
    return dict(built.stage_tables or {}) if built is not None else {}
