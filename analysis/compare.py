"""``otel-vllm-analyze compare A B``: two runs side by side, and which differences are real.

Usage::

    otel-vllm-analyze compare A B [-o OUT] [--alpha 0.01] [--min-effect 0.05]
                                  [--format csv html]

``A`` and ``B`` are each a capture folder (what ``--input-path`` takes) or a folder of this
tool's outputs (``request.csv``, ``batch.csv``, ``service_summary.csv``, and ``profiler.db`` or
``chrome_tracing.json`` for the spans). ``A`` is the baseline: every difference is B − A.
``OUT`` (default ``./compare``) receives ``compare.csv`` and ``compare.html``.

One row per compared quantity:

* ``request``: TTFT, time per output token, end-to-end latency and queue wait of the complete
  requests (``request.csv``);
* ``batch``: requests per step, tokens per step, model execution time per step, scheduling time
  per step and KV-cache usage after each step (``batch.csv``);
* ``span``: the duration of every span name (records with a duration; for an output folder the
  trace's slices without the synthesised request lanes);
* ``service``: single numbers of ``service_summary.csv`` (throughput, counts, duration); they
  have no spread, so they are never flagged.

Beyond noise (the ``significant`` column): both sides hold at least ``MIN_VALUES`` values, the
two-sided Mann–Whitney U test (normal approximation with tie and continuity correction) gives
p < ``alpha``, *and* the effect is at least ``min_effect``: the larger of the relative
differences of the medians and of the means that goes the test's way (``prob_b_higher``, the
share of (A, B) pairs where B's value is larger, above or below 0.5). The test asks whether a
value of B tends to be larger or smaller than a value of A, with no assumption about the shape
of the distributions; the effect floor keeps a statistically clear but practically irrelevant
shift (thousands of engine steps make any 0.1 % change "significant") from being flagged.
Values within one run are not independent (consecutive steps and overlapping requests share
load), which makes p-values optimistic; the effect floor is the guard against that too. Two
runs of one configuration may differ by more than the noise within either (docs/analysis.md).
``ci95_low`` / ``ci95_high``: an approximate 95 % confidence interval of the difference of
medians, from the distribution-free order-statistic interval of each median (standard errors
combined).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.read_sqlite import query
from otel_vllm_ascend.analysis.time_window import TimeWindow, outside_note

ALPHA = 0.01
MIN_EFFECT = 0.05
MIN_VALUES = 8  # below this, the normal approximation of the U statistic is not trusted

COMPARE_COLUMNS = ("section", "metric", "unit", "n_a", "n_b", "value_a", "value_b", "diff",
                   "rel_diff", "ci95_low", "ci95_high", "mean_a", "mean_b", "rel_diff_mean",
                   "p90_a", "p90_b",
                   "p99_a", "p99_b", "p_value", "prob_b_higher", "significant", "verdict")

# Verdicts.
B_HIGHER = "B higher"
B_LOWER = "B lower"
SAME = "no difference beyond noise"
FEW = "too few values"
ONLY_A = "only in A"
ONLY_B = "only in B"
SINGLE = "single value (not tested)"


@dataclass(frozen=True)
class Metric:
    """One compared column of a table: ``column`` of ``table`` (CSV names)."""

    key: str
    label: str
    unit: str
    table: str  # "request" (complete requests only) or "batch"
    column: str


METRICS: tuple[Metric, ...] = (
    Metric("ttft", "TTFT", "ms", "request", "first_token_latency(ms)"),
    Metric("tpot", "TPOT", "ms", "request", "time_per_output_token(ms)"),
    Metric("e2e", "end-to-end latency", "ms", "request", "execution_time(ms)"),
    Metric("queue_wait", "queue wait", "ms", "request", "queue_wait_time(ms)"),
    Metric("batch_size", "batch size", "requests", "batch", "total_batch_size"),
    Metric("scheduled_tokens", "scheduled tokens per step", "tokens", "batch",
           "total_scheduled_tokens"),
    Metric("step_time", "model execution per step", "ms", "batch", "model_exec_time(ms)"),
    Metric("schedule_time", "scheduling per step", "ms", "batch", "during_time(ms)"),
    Metric("kv_usage", "KV-cache usage after a step", "fraction", "batch", "kvcache_usage_rate"),
)

SERVICE_METRICS: tuple[tuple[str, str], ...] = (
    ("generate_token_speed (token/s)", "token/s"),
    ("generate_all_token_speed (token/s)", "token/s"),
    ("request_num", "requests"),
    ("complete_request_num", "requests"),
    ("partial_request_num", "requests"),
    ("engine_step_num", "steps"),
    ("duration (s)", "s"),
)


class CompareInputError(Exception):
    """An input of ``compare`` cannot be used at all; the message names it and says why."""


@dataclass
class RunValues:
    """What one side of the comparison contributes: raw values per metric and span."""

    label: str  # "A" or "B"
    path: Path
    kind: str  # "capture" or "analysis folder"
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # Metric.key -> finite values
    spans: dict[str, np.ndarray] = field(default_factory=dict)  # span name -> durations, ms
    service: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # what this input lacks, for the user
    problems: list[str] = field(default_factory=list)  # the reader's messages (damaged files)

    @property
    def title(self) -> str:
        return f"{self.label} ({self.path})"


# ----------------------------------------------------------------------------- loading

ANALYSIS_MARKERS = ("request.csv", "batch.csv")


def is_analysis_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ANALYSIS_MARKERS)


def load_run(path: Path, label: str, window: Optional[TimeWindow] = None) -> RunValues:
    """Values of one input (capture folder or output folder; of a capture, ``window``: only the
    records that start inside it); raises :class:`CompareInputError`."""
    path = Path(path)
    if not path.exists():
        raise CompareInputError(f"{label} ({path}): does not exist")
    if not path.is_dir():
        raise CompareInputError(f"{label} ({path}): is not a folder (give the capture folder or"
                                " a folder of otel-vllm-analyze outputs)")
    if window is not None and is_analysis_folder(path):
        from otel_vllm_ascend.analysis.readers import find_captures

        if not find_captures(path):  # outputs written next to their capture: the capture
            raise CompareInputError(f"{label} ({path}): a time window needs a capture folder;"
                                    " this is a folder of analysis outputs")
    if is_analysis_folder(path) and window is None:
        run = _load_outputs(path, label)
    else:
        run = _load_capture(path, label, window)
    if not any(v.size for v in run.metrics.values()) and not run.spans:
        reasons = "; ".join(run.missing) or "nothing to compare"
        raise CompareInputError(f"{label} ({path}): nothing to compare: {reasons}")
    return run


def _table_values(run: RunValues, requests: Optional[pd.DataFrame],
                  batches: Optional[pd.DataFrame]) -> None:
    """Fill ``run.metrics`` from tables with the CSV column names; note what is missing."""
    complete = None
    if requests is None:
        run.missing.append("no request table")
    elif requests.empty:
        run.missing.append("no requests")
    else:
        partial = requests["partial"] if "partial" in requests.columns else False
        complete = requests.loc[~pd.Series(partial, index=requests.index).map(_truthy)]
        if complete.empty:
            run.missing.append(f"all {len(requests)} requests are partial (no httpReq or"
                               " httpRes in the capture)")
    if batches is None:
        run.missing.append("no batch table")
    elif batches.empty:
        run.missing.append("no engine steps")
    for metric in METRICS:
        table = complete if metric.table == "request" else batches
        if table is None or table.empty or metric.column not in table.columns:
            run.metrics[metric.key] = np.zeros(0)
            continue
        values = pd.to_numeric(table[metric.column], errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan)
        run.metrics[metric.key] = values[np.isfinite(values)]


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value) if value == value else False


def _service_values(run: RunValues, table: Optional[pd.DataFrame]) -> None:
    if table is None or table.empty or not {"Metric", "Value"} <= set(table.columns):
        return
    for metric, value in zip(table["Metric"].tolist(), table["Value"].tolist()):
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            run.service[str(metric)] = number


def _spans_from_frame(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Durations (ms) per record name of every record with a duration."""
    if frame.empty:
        return {}
    start = frame["start_us"].to_numpy(dtype="float64")
    end = frame["end_us"].to_numpy(dtype="float64")
    names = frame["name"].to_numpy(dtype=object)
    keep = (end > start) & (names != "") & (names != "link")
    if "dur_us" in frame.columns:
        dur = frame["dur_us"].to_numpy(dtype="float64")
    else:
        dur = end - start
    return _group(names[keep], dur[keep] / 1000.0)


def _group(names: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    if not len(names):
        return {}
    series = pd.Series(values).groupby(pd.Series(names, dtype=object), sort=True)
    return {str(name): group.to_numpy(dtype="float64") for name, group in series}


def _load_capture(path: Path, label: str, window: Optional[TimeWindow]) -> RunValues:
    from otel_vllm_ascend.analysis import batches as batches_mod
    from otel_vllm_ascend.analysis import kvcache as kvcache_mod
    from otel_vllm_ascend.analysis import requests as requests_mod
    from otel_vllm_ascend.analysis import spec_decode as spec_mod
    from otel_vllm_ascend.analysis import summaries
    from otel_vllm_ascend.analysis.readers import read_captures
    from otel_vllm_ascend.analysis.steps import engine_steps, step_requests

    run = RunValues(label, path, "capture" if window is None
                    else f"capture, records starting {window.describe()}")
    frame, _, report = read_captures(path, window=window)
    run.problems = list(report.problems)
    if report.unparsable:
        run.problems.append(f"{report.unparsable} record(s) could not be decoded and were"
                            " skipped")
    if frame.empty:
        # The reader's messages start with the file they are about; those about the folder
        # itself (no capture in it) with the folder.
        file_problems = [p for p in run.problems if not p.startswith(f"{path}: ")]
        if report.files and window is not None:
            reason = (f"no record starts in the time window {window.describe()} in the"
                      f" {len(report.files)} capture file(s) read{outside_note(report.files)}")
        elif report.files:
            reason = f"no records in the {len(report.files)} capture file(s) read"
        elif file_problems:
            reason = "no readable capture (" + "; ".join(file_problems) + ")"
        else:
            reason = ("no capture and no analysis output found (expected ms_service_*.db or"
                      " OTLP JSON files, or request.csv / batch.csv)")
        raise CompareInputError(f"{label} ({path}): {reason}")
    steps = engine_steps(frame)
    per_request = step_requests(steps)
    requests = requests_mod.build_requests(frame, steps, per_request)
    kvcache = kvcache_mod.build_kvcache(frame)
    spec = spec_mod.build_spec_decode(frame, steps, per_request)
    batches = batches_mod.build_batches(frame, steps, per_request, kvcache, spec)
    _table_values(run, requests.reindex(columns=list(requests_mod.CSV_COLUMNS)),
                  batches.reindex(columns=list(batches_mod.CSV_COLUMNS)))
    _service_values(run, summaries.service_summary(requests, batches))
    run.spans = _spans_from_frame(frame)
    if not run.spans:
        run.missing.append("no span records")
    return run


def _read_csv(run: RunValues, name: str) -> Optional[pd.DataFrame]:
    path = run.path / name
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        run.missing.append(f"{name} unreadable ({type(exc).__name__}: {exc})")
        return None


def _load_outputs(path: Path, label: str) -> RunValues:
    run = RunValues(label, path, "analysis folder")
    requests = _read_csv(run, "request.csv")
    batches = _read_csv(run, "batch.csv")
    _table_values(run, requests, batches)
    _service_values(run, _read_csv(run, "service_summary.csv"))
    run.spans = _spans_from_outputs(run)
    return run


def _spans_from_outputs(run: RunValues) -> dict[str, np.ndarray]:
    """Span durations from ``profiler.db``'s ``slice`` table, else ``chrome_tracing.json``."""
    db = run.path / "profiler.db"
    if db.is_file():
        try:
            rows = query(db, "SELECT name, duration FROM slice WHERE duration > 0"
                             " AND (cat IS NULL OR cat != 'request')")
            names = np.array([r[0] for r in rows], dtype=object)
            return _group(names, np.array([r[1] for r in rows], dtype="float64") / 1e6)
        except sqlite3.Error as exc:
            run.missing.append(f"profiler.db has no readable trace ({exc})")
    trace = run.path / "chrome_tracing.json"
    if trace.is_file():
        try:
            with open(trace, encoding="utf-8") as handle:
                events = json.load(handle)
        except (OSError, ValueError) as exc:
            run.missing.append(f"chrome_tracing.json unreadable ({type(exc).__name__})")
            return {}
        if isinstance(events, dict):
            events = events.get("traceEvents", [])
        spans = [(e.get("name"), e.get("dur")) for e in events
                 if isinstance(e, dict) and e.get("ph") == "X" and e.get("cat") != "request"
                 and e.get("dur")]
        return _group(np.array([s[0] for s in spans], dtype=object),
                      np.array([float(s[1]) for s in spans], dtype="float64") / 1000.0)
    run.missing.append("no profiler.db or chrome_tracing.json (span durations)")
    return {}


# ----------------------------------------------------------------------------- statistics

def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The Mann–Whitney U test of two samples -> (two-sided p-value, P(B > A)).

    P(B > A) is the share of (A value, B value) pairs where B's is larger, ties counted half
    (U of B / (n_A n_B)): 0.5 when neither tends to be larger. The p-value uses the normal
    approximation with tie and continuity correction.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    both = np.concatenate((a, b))
    ranks = pd.Series(both).rank(method="average").to_numpy()
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    prob_b_higher = 1.0 - u1 / (n1 * n2)
    n = n1 + n2
    _, counts = np.unique(both, return_counts=True)
    ties = float(((counts.astype("float64") ** 3) - counts).sum())
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:  # every value the same: nothing distinguishes the samples
        return 1.0, prob_b_higher
    delta = u1 - n1 * n2 / 2.0
    z = max(abs(delta) - 0.5, 0.0) / math.sqrt(variance)
    return float(math.erfc(z / math.sqrt(2.0))), float(prob_b_higher)


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Mann–Whitney U test (see :func:`mann_whitney`)."""
    return mann_whitney(a, b)[0]


def median_standard_error(values: np.ndarray) -> float:
    """From the distribution-free 95 % interval of the median (order statistics)."""
    n = len(values)
    if n < 2:
        return math.nan
    ordered = np.sort(values)
    half = 1.959964 * math.sqrt(n) / 2.0
    low = max(int(math.floor(n / 2.0 - half)), 0)
    high = min(int(math.ceil(n / 2.0 + half)), n - 1)
    return float(ordered[high] - ordered[low]) / (2 * 1.959964)


def _relative(diff: float, base: float) -> float:
    if not math.isfinite(diff) or not math.isfinite(base):
        return math.nan
    if base == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / abs(base)


def compare_samples(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA,
                    min_effect: float = MIN_EFFECT) -> dict:
    """The statistics columns of one row for two samples (NaN where undefined)."""
    row: dict = {"n_a": len(a), "n_b": len(b)}
    for side, values in (("a", a), ("b", b)):
        if len(values):
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            row.update({f"value_{side}": float(p50), f"mean_{side}": float(values.mean()),
                        f"p90_{side}": float(p90), f"p99_{side}": float(p99)})
        else:
            row.update({f"{c}_{side}": math.nan for c in ("value", "mean", "p90", "p99")})
    if not len(a) or not len(b):
        row.update(diff=math.nan, rel_diff=math.nan, ci95_low=math.nan, ci95_high=math.nan,
                   p_value=math.nan, significant=None,
                   verdict=ONLY_B if len(b) else ONLY_A if len(a) else "no values")
        return row
    diff = row["value_b"] - row["value_a"]
    row["diff"] = diff
    row["rel_diff"] = _relative(diff, row["value_a"])
    spread = math.hypot(median_standard_error(a), median_standard_error(b))
    row["ci95_low"] = diff - 1.959964 * spread
    row["ci95_high"] = diff + 1.959964 * spread
    if len(a) < MIN_VALUES or len(b) < MIN_VALUES:
        row.update(p_value=math.nan, significant=None, verdict=FEW)
        return row
    row["rel_diff_mean"] = _relative(row["mean_b"] - row["mean_a"], row["mean_a"])
    p_value, prob_b_higher = mann_whitney(a, b)
    # The direction is the test's (which side's values tend to be larger); the effect is the
    # larger relative change, of median or mean, that goes the same way.
    direction = np.sign(prob_b_higher - 0.5)
    effect = max((abs(r) for r in (row["rel_diff"], row["rel_diff_mean"])
                  if not math.isnan(r) and np.sign(r) == direction != 0), default=0.0)
    significant = bool(p_value < alpha and effect >= min_effect)
    row.update(p_value=p_value, prob_b_higher=prob_b_higher, significant=significant,
               verdict=(B_HIGHER if direction > 0 else B_LOWER) if significant else SAME)
    return row


# ----------------------------------------------------------------------------- the table

def compare_runs(a: RunValues, b: RunValues, alpha: float = ALPHA,
                 min_effect: float = MIN_EFFECT) -> pd.DataFrame:
    """``compare.csv``'s rows (``COMPARE_COLUMNS``)."""
    rows = []
    for metric in METRICS:
        row = compare_samples(a.metrics.get(metric.key, np.zeros(0)),
                              b.metrics.get(metric.key, np.zeros(0)), alpha, min_effect)
        rows.append({"section": metric.table, "metric": metric.label, "unit": metric.unit,
                     **row})
    for name in sorted(set(a.spans) | set(b.spans)):
        row = compare_samples(a.spans.get(name, np.zeros(0)), b.spans.get(name, np.zeros(0)),
                              alpha, min_effect)
        rows.append({"section": "span", "metric": name, "unit": "ms", **row})
    for name, unit in SERVICE_METRICS:
        value_a, value_b = a.service.get(name, math.nan), b.service.get(name, math.nan)
        if math.isnan(value_a) and math.isnan(value_b):
            continue
        diff = value_b - value_a
        rows.append({"section": "service", "metric": name, "unit": unit,
                     "value_a": value_a, "value_b": value_b, "diff": diff,
                     "rel_diff": _relative(diff, value_a), "significant": None,
                     "verdict": (ONLY_A if math.isnan(value_b) else ONLY_B
                                 if math.isnan(value_a) else SINGLE)})
    table = pd.DataFrame(rows).reindex(columns=list(COMPARE_COLUMNS))
    table["significant"] = table["significant"].astype(object)
    for column in ("n_a", "n_b"):
        table[column] = table[column].astype("Int64")
    return table


def partial_message(run: RunValues) -> Optional[str]:
    """One line naming the input, its problems and what it lacks; None when all is well."""
    if not run.missing:
        if run.problems:
            return f"{run.title}: {'; '.join(run.problems)}; compared what could be read"
        return None
    return (f"{run.title}: partial input: {'; '.join(run.problems + run.missing)}; the values"
            " that need the missing data are left empty")


def flagged(table: pd.DataFrame) -> pd.DataFrame:
    return table.loc[table["significant"].map(lambda v: v is True).to_numpy()]

