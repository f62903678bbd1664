"""``span_info/``: every occurrence of chosen spans, and their statistics (``--span NAME...``).

``otel-vllm-analyze --span NAME [NAME ...]`` writes, into ``OUT/span_info/``:

* ``<NAME>.csv`` per span name: one row per occurrence, by start time, with the reference's
  columns ``span_name``, ``start_datetime``, ``end_datetime`` (UTC), ``during_time(ms)``,
  ``hostname``, ``pid``, and ``tid``;
* ``span_summary.csv``: one row per span name, ``span_name``, ``count``, ``total(ms)``,
  ``mean(ms)``, ``min(ms)``, ``p50(ms)``, ``p90(ms)``, ``p99(ms)``, ``max(ms)`` (linear
  interpolation percentiles, 4 decimals); a name the capture does not hold has count 0 and
  empty statistics.

The names asked for come after the ones always reported, as the reference does: the model
forward (``forward``) and the scheduling step (``BatchSchedule`` for MindIE and vLLM V0
captures of the C library, ``batchFrameworkProcessing`` for vLLM); of those defaults only the
ones the capture holds are written. A span is a record with a duration (message ``type`` 2);
events of the same name are left out. Names that are not spans of the capture are reported in
one message. File names keep letters, digits, ``.``, ``-`` and ``_`` of the span name (others
become ``_``).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.frame import format_datetime_us

FOLDER = "span_info"
SUMMARY_FILE = "span_summary.csv"
DEFAULT_SPANS = ("forward", "BatchSchedule", "batchFrameworkProcessing")
OCCURRENCE_COLUMNS = ("span_name", "start_datetime", "end_datetime", "during_time(ms)",
                      "hostname", "pid", "tid")
SUMMARY_COLUMNS = ("span_name", "count", "total(ms)", "mean(ms)", "min(ms)", "p50(ms)",
                   "p90(ms)", "p99(ms)", "max(ms)")
_SPAN_TYPE = 2
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def span_names(requested: Iterable[str]) -> list[str]:
    """The defaults, then the requested names, each once."""
    return list(dict.fromkeys([*DEFAULT_SPANS, *requested]))


def file_name(span_name: str) -> str:
    """``<span_name>.csv`` with characters unsafe in a file name replaced by ``_``."""
    stem = _UNSAFE.sub("_", span_name).strip(".") or "_"
    return f"{stem}.csv"


def span_rows(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The spans named ``names`` (records of type 2), by start time."""
    rows = frame.loc[frame["name"].isin(list(names))]
    return rows.loc[(rows["type"] == _SPAN_TYPE).fillna(False).to_numpy(dtype=bool)]


def occurrences(rows: pd.DataFrame) -> pd.DataFrame:
    """``OCCURRENCE_COLUMNS`` of the span rows of one name."""
    return pd.DataFrame({
        "span_name": rows["name"].to_numpy(dtype=object),
        "start_datetime": format_datetime_us(rows["start_us"].to_numpy()).to_numpy(),
        "end_datetime": format_datetime_us(rows["end_us"].to_numpy()).to_numpy(),
        "during_time(ms)": rows["dur_us"].to_numpy(dtype="float64") / 1000.0,
        "hostname": rows["host"].to_numpy(dtype=object),
        "pid": rows["pid"].to_numpy(dtype="int64"),
        "tid": rows["tid"].to_numpy(dtype="int64"),
    })


def summary_row(name: str, durations_ms: np.ndarray) -> dict:
    data = np.asarray(durations_ms, dtype="float64")
    data = data[np.isfinite(data)]
    if not data.size:
        return {"span_name": name, "count": 0,
                **{c: np.nan for c in SUMMARY_COLUMNS[2:]}}
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    values = (data.sum(), data.mean(), data.min(), p50, p90, p99, data.max())
    return {"span_name": name, "count": int(data.size),
            **{c: round(float(v), 4) for c, v in zip(SUMMARY_COLUMNS[2:], values)}}


def build_span_info(frame: pd.DataFrame, requested: Sequence[str]
                    ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list[str]]:
    """(occurrence table per span name, the summary table, requested names the capture does
    not hold as spans). Defaults the capture lacks are left out silently."""
    names = span_names(requested)
    rows = span_rows(frame, names)
    groups = {name: group for name, group in rows.groupby("name", sort=False, observed=True)}
    tables = {name: occurrences(groups[name]) for name in names if name in groups}
    summary, missing = summary_of(requested, {name: table["during_time(ms)"].to_numpy()
                                              for name, table in tables.items()})
    return tables, summary, missing


def summary_of(requested: Sequence[str], durations: dict) -> tuple[pd.DataFrame, list[str]]:
    """The summary table of the spans with ``durations`` (name -> ms of every occurrence:
    the names the capture holds as spans), and the requested names it does not hold."""
    summary = [summary_row(name, durations.get(name, np.zeros(0)))
               for name in span_names(requested) if name in durations or name in requested]
    missing = [name for name in dict.fromkeys(requested) if name not in durations]
    return pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)), missing
