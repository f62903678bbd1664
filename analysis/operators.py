"""Operator data: the torch profiler traces written next to the capture, on the spans' clock.

Inputs, found anywhere under the input folder:

* ``operators_<host>-<pid>/window-<k>.pt.trace.json``: Chrome traces written by
  ``torch.profiler`` in a process that ran the model (``otel_vllm_ascend.operator_profiler``),
  with ``operator_profile.json`` beside them; any other ``*.pt.trace.json`` is read too (its
  process then comes from the trace: ``host_name`` and the events' ``pid``);
* ``*_ascend_pt`` folders written by torch_npu's profiler: their parsed
  ``ASCEND_PROFILER_OUTPUT/trace_view.json`` (a Chrome trace, documented by torch_npu) is read;
  a folder holding only unparsed data (``FRAMEWORK``, ``PROF_*``) or only the database export
  is named in one line with what to run.

**Clock alignment.** Each model step of a profiled process is marked inside the profiler's own
trace by a ``user_annotation`` event named ``otel_vllm_ascend.step#<n>@<ns>``, where ``<ns>`` is
``time.time_ns()`` read on the model's thread just before the mark opened: the clock the spans
use. For a mark, ``delta = (baseTimeNanoseconds/1000 + ts) - ns/1000`` is the profiler clock's
offset plus the few µs between reading the time and opening the mark; the smallest ``delta``
of a file is taken as its offset and subtracted from every event of that file. The error is
therefore at most that smallest latency (µs). A trace without marks is taken on its own clock
(``baseTimeNanoseconds`` + ``ts``, or ``ts`` alone when it looks like µs since the epoch), with
one line saying so.

Normalised table (:data:`EVENT_COLUMNS`), one row per operator call or device kernel:
``host``, ``pid`` (the process that ran it), ``tid`` (OS thread; the stream for device kernels),
``name``, ``category`` (the profiler's ``cat``), ``kind`` (``host`` or ``device``),
``start_us``/``end_us`` (µs since the epoch, aligned), ``step`` (the profiled step whose mark
contains it, else NaN), ``source`` (file).

Builders (pure): :func:`build_op_summary` (``op_summary.csv``), :func:`build_op_statistic`
(``op_statistic.csv``); :func:`trace_events` turns the table into Chrome trace events for
``chrome_tracing.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

_logger = logging.getLogger(__name__)

MARKER_PREFIX = "otel_vllm_ascend.step#"
_MARKER = re.compile(r"^otel_vllm_ascend\.step#(\d+)@(\d+)$")
_FOLDER = re.compile(r"^operators_(.+)-(\d+)$")
TRACE_SUFFIX = ".pt.trace.json"
SIDECAR_NAME = "operator_profile.json"
ASCEND_SUFFIX = "_ascend_pt"
ASCEND_TRACE = ("ASCEND_PROFILER_OUTPUT", "trace_view.json")
HOST_CATEGORIES = frozenset({"cpu_op", "user_annotation", "python_function", "cuda_runtime",
                             "cuda_driver", "cpu_instant_event", "fwdbwd"})
DEVICE_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation"})
# Host categories that are operators (not stack frames or runtime calls) for the tables.
OPERATOR_CATEGORIES = frozenset({"cpu_op", "user_annotation"})
EVENT_COLUMNS = ("host", "pid", "tid", "name", "category", "kind", "start_us", "end_us",
                 "step", "source")
STEP_COLUMNS = ("host", "pid", "tid", "step", "start_us", "end_us", "source")
OP_SUMMARY_COLUMNS = ("name", "kind", "calls", "total_us", "mean_us", "max_us", "min_us",
                      "step_share_pct")
OP_STATISTIC_COLUMNS = ("host", "pid", "step", "start_us", "step_us", "operator_us",
                        "device_us", "operator_calls", "host_overhead_us",
                        "host_overhead_pct")
# Synthetic tids of the operator tracks in chrome_tracing.json (above any Linux tid and
# the trace's overlap tracks).
OPERATOR_TID_BASE = 900_000_000
DEVICE_TID_BASE = 950_000_000
# Epoch µs of any date after 2001: a ts this large is taken as wall-clock µs.
_EPOCH_US_FLOOR = 1e15


class OperatorDataError(ValueError):
    """One operator input that cannot be used (the message names file, entry and reason)."""


@dataclass
class OperatorCapture:
    """Every operator input read under one folder."""

    events: pd.DataFrame
    steps: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.events.empty and self.steps.empty


def empty_capture(problems: Optional[list[str]] = None) -> OperatorCapture:
    return OperatorCapture(pd.DataFrame(columns=list(EVENT_COLUMNS)),
                           pd.DataFrame(columns=list(STEP_COLUMNS)), list(problems or []))


# ----------------------------------------------------------------------------- reading

def find_operator_inputs(root: Path) -> tuple[list[Path], list[Path]]:
    """(torch Chrome traces, ``*_ascend_pt`` folders) under ``root``."""
    root = Path(root)
    if root.is_file():
        return ([root] if root.name.endswith(TRACE_SUFFIX) else []), []
    ascend = sorted(p for p in root.rglob(f"*{ASCEND_SUFFIX}") if p.is_dir())
    traces = sorted(p for p in root.rglob(f"*{TRACE_SUFFIX}")
                    if p.is_file() and not any(a in p.parents for a in ascend))
    return traces, ascend


def read_operators(roots: Union[Path, Sequence[Path]]) -> OperatorCapture:
    """Read every operator input under ``roots`` (one folder or several); problems are
    collected, never raised."""
    traces, ascend = [], []
    for root in [roots] if isinstance(roots, (str, os.PathLike)) else roots:
        found_traces, found_ascend = find_operator_inputs(Path(root))
        traces += found_traces
        ascend += found_ascend
    parts: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    problems: list[str] = []
    sources: list[Path] = []
    for path in traces:
        try:
            parts.append(read_torch_trace(path))
            sources.append(path)
        except OperatorDataError as exc:
            problems.append(str(exc))
    for folder in ascend:
        trace = folder.joinpath(*ASCEND_TRACE)
        if trace.is_file():
            try:
                events, steps = read_torch_trace(trace, process_of=_ascend_process(folder))
                parts.append((apply_collection_filters(events, folder.parent), steps))
                sources.append(trace)
            except OperatorDataError as exc:
                problems.append(str(exc))
        else:
            problems.append(_unreadable_ascend(folder))
    if not parts:
        return empty_capture(problems)
    events = pd.concat([p[0] for p in parts], ignore_index=True)
    steps = pd.concat([p[1] for p in parts], ignore_index=True)
    for problem in _marker_only_problems(parts, sources):
        problems.append(problem)
    return OperatorCapture(events, steps, problems, sources)


def apply_collection_filters(events: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """``api_filter`` / ``kernel_filter`` of the collection (``operator_profile.json`` in
    ``folder``) on events torch_npu wrote unfiltered: host operators / device kernels are kept
    when their name contains one of the substrings."""
    try:
        settings = json.loads((folder / SIDECAR_NAME).read_text(encoding="utf-8"))["settings"]
        api = tuple(settings.get("api_filter") or ())
        kernel = tuple(settings.get("kernel_filter") or ())
    except (OSError, ValueError, KeyError, TypeError):
        return events
    if not api and not kernel or events.empty:
        return events

    def keep(name: str, kind: str) -> bool:
        wanted = api if kind == "host" else kernel
        return not wanted or any(part in name for part in wanted)

    mask = [keep(name, kind) for name, kind in zip(events["name"], events["kind"])]
    return events[mask].reset_index(drop=True)


def _marker_only_problems(parts: list, sources: list[Path]) -> list[str]:
    return [f"{source}: no operator events (only step marks): nothing ran on the profiled "
            f"threads, or api_filter / kernel_filter removed everything"
            for (events, steps), source in zip(parts, sources) if events.empty and len(steps)]


def _unreadable_ascend(folder: Path) -> str:
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    output = folder / ASCEND_TRACE[0]
    if output.is_dir() and any(p.suffix == ".db" for p in output.iterdir()):
        return (f"{folder}: torch_npu wrote only its database export (export_type db); not "
                "read: profile with the text export (the default) to get trace_view.json")
    if "FRAMEWORK" in names or any(n.startswith("PROF_") for n in names):
        return (f"{folder}: torch_npu data not parsed yet (no {'/'.join(ASCEND_TRACE)}); "
                "parse it with python -c \"from torch_npu.profiler.profiler import analyse; "
                f"analyse('{folder}')\" and analyse again")
    return f"{folder}: no {'/'.join(ASCEND_TRACE)} in this torch_npu folder; not read"


def _ascend_process(folder: Path) -> Optional[tuple[str, int]]:
    """``<host>-<pid>_<time>_ascend_pt`` (the worker name our collector gives torch_npu)."""
    match = re.match(r"^(.+)-(\d+)_\d+", folder.name)
    if match:
        return match.group(1), int(match.group(2))
    parent = _FOLDER.match(folder.parent.name)
    return (parent.group(1), int(parent.group(2))) if parent else None


def _process_from_folder(path: Path) -> Optional[tuple[str, int]]:
    for parent in path.parents:
        match = _FOLDER.match(parent.name)
        if match:
            return match.group(1), int(match.group(2))
    return None


def _number(value: Any, path: Path, index: int, key: str) -> float:
    try:
        number = float(value)  # torch_npu writes ts as a string to keep its precision
    except (TypeError, ValueError):
        raise OperatorDataError(f"{path}: traceEvents[{index}]: {key} {value!r} is not a "
                                "number") from None
    if not math.isfinite(number):
        raise OperatorDataError(f"{path}: traceEvents[{index}]: {key} {value!r} is not finite")
    return number


def read_torch_trace(path: Path, process_of: Optional[tuple[str, int]] = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, steps) of one Chrome trace written by a torch profiler, aligned.

    Raises :class:`OperatorDataError` naming the file, the entry and the reason.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorDataError(f"{path}: cannot be read ({exc})") from None
    except ValueError as exc:
        raise OperatorDataError(f"{path}: not JSON ({exc}); a trace cut off while it was "
                                "written?") from None
    raw_events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(raw_events, list):
        raise OperatorDataError(f"{path}: no traceEvents list; not a Chrome trace")
    base_us = 0.0
    if isinstance(data, dict) and data.get("baseTimeNanoseconds") is not None:
        base_us = _number(data["baseTimeNanoseconds"], path, -1, "baseTimeNanoseconds") / 1000
    process = process_of or _process_from_folder(path)
    host = process[0] if process else str(data.get("host_name", "") if isinstance(data, dict)
                                           else "")
    names = _process_names(raw_events)
    rows: list[tuple] = []
    marks: list[tuple] = []
    own_pid = process[1] if process else None
    for index, event in enumerate(raw_events):
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        name = str(event.get("name", ""))
        category = str(event.get("cat", ""))
        start = base_us + _number(event.get("ts"), path, index, "ts")
        end = start + max(0.0, _number(event.get("dur", 0), path, index, "dur"))
        if name.startswith(MARKER_PREFIX):
            match = _MARKER.match(name)
            if match is None:
                raise OperatorDataError(f"{path}: traceEvents[{index}]: step mark {name!r} is "
                                        "not step#<n>@<ns>")
            marks.append((_int_or(event.get("tid")), int(match.group(1)),
                          int(match.group(2)) / 1000, start, end, event.get("pid")))
            continue
        kind = _kind(category, event.get("pid"), names)
        if kind is None:
            continue
        rows.append((event.get("pid"), event.get("tid"), name, category, kind, start, end))
    if own_pid is None:
        pids = [m[5] for m in marks] or [r[0] for r in rows if r[4] == "host"]
        own_pid = _int_or(pids[0]) if pids else 0
    offset = _clock_offset(path, marks, base_us, rows)
    events = pd.DataFrame({
        "host": host, "pid": own_pid,
        "tid": [(_int_or(r[1]) if r[4] == "host" else _device_lane(r[0], r[1])) for r in rows],
        "name": [r[2] for r in rows], "category": [r[3] for r in rows],
        "kind": [r[4] for r in rows],
        "start_us": np.array([r[5] for r in rows], dtype="float64") - offset,
        "end_us": np.array([r[6] for r in rows], dtype="float64") - offset,
        "step": np.nan, "source": str(path)}, columns=list(EVENT_COLUMNS))
    steps = pd.DataFrame({
        "host": host, "pid": own_pid, "tid": [m[0] for m in marks],
        "step": [m[1] for m in marks],
        "start_us": np.array([m[3] for m in marks], dtype="float64") - offset,
        "end_us": np.array([m[4] for m in marks], dtype="float64") - offset,
        "source": str(path)}, columns=list(STEP_COLUMNS))
    events["step"] = assign_steps(events, steps)
    return events, steps


def _process_names(raw_events: list) -> dict:
    names = {}
    for event in raw_events:
        if isinstance(event, dict) and event.get("ph") == "M" and \
                event.get("name") == "process_name":
            names[event.get("pid")] = str((event.get("args") or {}).get("name", ""))
    return names


def _kind(category: str, pid: Any, names: dict) -> Optional[str]:
    """``host``, ``device`` or None (not an operator: trace bookkeeping, flows)."""
    if category in DEVICE_CATEGORIES:
        return "device"
    label = names.get(pid, "")
    if "Ascend Hardware" in label or label.startswith("NPU"):
        return "device"  # torch_npu's trace_view.json: device tasks under their own process
    if category in HOST_CATEGORIES or label in ("CANN", "AscendCL"):
        return "host"
    return None


def _int_or(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _device_lane(pid: Any, tid: Any) -> int:
    """Device kernels: one lane per (device, stream); names are kept in the trace's args."""
    return _int_or(pid) * 1000 + _int_or(tid) % 1000


def _clock_offset(path: Path, marks: list, base_us: float, rows: list) -> float:
    """µs to subtract from the profiler's times to get the spans' clock (module docstring)."""
    if marks:
        return min(start - wall for _, _, wall, start, _, _ in marks)
    first = min((r[5] for r in rows), default=0.0)
    if first >= _EPOCH_US_FLOOR:
        _logger.info("%s: no step marks; taken on the profiler's own clock (no alignment)",
                     path)
        return 0.0
    if rows:
        _logger.warning("%s: no step marks and times that are not µs since the epoch; its "
                        "operators cannot be put on the spans' clock and are left out", path)
        raise OperatorDataError(f"{path}: no step marks and no epoch-based clock; left out")
    return 0.0


def assign_steps(events: pd.DataFrame, steps: pd.DataFrame) -> np.ndarray:
    """The step of each event: the mark of its process containing its start, else NaN.

    Host events on the marks' thread and every other thread and device lane of the process
    are attributed by time alone (the mark is the model step's window on the spans' clock).
    """
    result = np.full(len(events), np.nan)
    if events.empty or steps.empty:
        return result
    for (host, pid), marks in steps.groupby(["host", "pid"], sort=False):
        marks = marks.sort_values("start_us")
        starts = marks["start_us"].to_numpy()
        ends = marks["end_us"].to_numpy()
        numbers = marks["step"].to_numpy(dtype="float64")
        mask = ((events["host"] == host) & (events["pid"] == pid)).to_numpy()
        where = np.flatnonzero(mask)
        begin = events["start_us"].to_numpy()[where]
        position = np.searchsorted(starts, begin, side="right") - 1
        inside = (position >= 0) & (begin <= ends[np.clip(position, 0, None)])
        result[where[inside]] = numbers[position[inside]]
    return result


# ----------------------------------------------------------------------------- tables

def _union_us(starts: np.ndarray, ends: np.ndarray) -> float:
    """Length of the union of intervals (nested operators counted once)."""
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    total, current_start, current_end = 0.0, None, None
    for start, end in zip(starts[order].tolist(), ends[order].tolist()):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    return total + (current_end - current_start)


def _step_table(capture: OperatorCapture) -> pd.DataFrame:
    steps = capture.steps.copy()
    steps["step_us"] = steps["end_us"] - steps["start_us"]
    return steps


def _operators(events: pd.DataFrame) -> pd.DataFrame:
    """Operator calls that belong to a profiled step (stack frames, runtime calls and the
    annotations copied onto the GPU timeline left out)."""
    device = (events["kind"] == "device") & (events["category"] != "gpu_user_annotation")
    is_operator = events["category"].isin(OPERATOR_CATEGORIES) | device
    return events[is_operator & events["step"].notna()]


def build_op_summary(capture: OperatorCapture) -> pd.DataFrame:
    """``op_summary.csv``: per operator (name, kind) over every profiled step.

    Durations are inclusive (an operator's time contains the operators it called);
    ``step_share_pct`` is its total time over the total time of the profiled steps (all
    processes), so nested operators' shares overlap and do not sum to 100.
    """
    ops = _operators(capture.events)
    if ops.empty:
        return pd.DataFrame(columns=list(OP_SUMMARY_COLUMNS))
    ops = ops.assign(dur_us=ops["end_us"] - ops["start_us"])
    step_total = float(_step_table(capture)["step_us"].sum())
    table = ops.groupby(["name", "kind"], sort=False)["dur_us"].agg(
        calls="count", total_us="sum", mean_us="mean", max_us="max", min_us="min").reset_index()
    table["step_share_pct"] = (100.0 * table["total_us"] / step_total) if step_total > 0 \
        else np.nan
    table = table.sort_values(["total_us", "name"], ascending=[False, True], kind="stable")
    for column in ("total_us", "mean_us", "max_us", "min_us", "step_share_pct"):
        table[column] = table[column].round(3)
    return table.reset_index(drop=True)[list(OP_SUMMARY_COLUMNS)]


def build_op_statistic(capture: OperatorCapture) -> pd.DataFrame:
    """``op_statistic.csv``: per profiled step, operator time against the step's time.

    ``step_us`` is the step mark (the model runner's ``execute_model``); ``operator_us`` the
    union of the operators that ran on the mark's thread inside it (nested calls counted
    once), or, where the process has device kernels, the union of its device kernels
    (``device_us``). ``host_overhead_us`` = ``step_us`` - ``operator_us``: the step's time
    in which no operator ran (Python, scheduling glue, waiting).
    """
    steps = _step_table(capture)
    if steps.empty:
        return pd.DataFrame(columns=list(OP_STATISTIC_COLUMNS))
    ops = _operators(capture.events)
    grouped = {key: part for key, part in ops.groupby(["host", "pid", "step"], sort=False)}
    rows = []
    for step in steps.itertuples(index=False):
        part = grouped.get((step.host, step.pid, float(step.step)))
        if part is None:
            part = ops.iloc[0:0]
        host_ops = part[(part["kind"] == "host") & (part["tid"] == step.tid)]
        device = part[part["kind"] == "device"]
        host_us = _union_us(host_ops["start_us"].to_numpy(), host_ops["end_us"].to_numpy())
        device_us = (_union_us(device["start_us"].to_numpy(), device["end_us"].to_numpy())
                     if len(device) else math.nan)
        operator_us = device_us if len(device) else host_us
        overhead = max(0.0, step.step_us - operator_us)
        rows.append((step.host, int(step.pid), int(step.step), round(step.start_us, 3),
                     round(step.step_us, 3), round(operator_us, 3),
                     round(device_us, 3) if len(device) else math.nan, len(part),
                     round(overhead, 3),
                     round(100.0 * overhead / step.step_us, 3) if step.step_us > 0 else math.nan))
    table = pd.DataFrame(rows, columns=list(OP_STATISTIC_COLUMNS))
    return table.sort_values(["host", "pid", "step"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- trace

def trace_events(capture: OperatorCapture, origin_us: float,
                 pid_of: Callable[[str, int], int],
                 labels: Optional[Mapping[int, str]] = None) -> list[dict]:
    """Chrome trace events of the operator table, ``ts`` in µs from ``origin_us``.

    Host operators go to a track ``operators thread <tid>`` of their process (beside that
    thread's spans, never interleaved with them, so a µs of alignment error cannot break a
    span's nesting); device kernels to ``device lane <n>``. Processes with operators but no
    records get a process name of their own.
    """
    events = capture.events
    if events.empty:
        return []
    out: list[dict] = []
    tracks: dict = {}
    starts = np.rint((events["start_us"].to_numpy() - origin_us) * 1000).astype("int64")
    ends = np.rint((events["end_us"].to_numpy() - origin_us) * 1000).astype("int64")
    for row, start_ns, end_ns in zip(events.itertuples(index=False), starts.tolist(),
                                     ends.tolist()):
        pid = pid_of(row.host, int(row.pid))
        base = OPERATOR_TID_BASE if row.kind == "host" else DEVICE_TID_BASE
        tid = base + int(row.tid) % 50_000_000
        tracks.setdefault((pid, tid), (row.kind, int(row.tid)))
        args: dict = {"category": row.category}
        if row.step == row.step:
            args["step"] = int(row.step)
        out.append({"ph": "X", "cat": "operator" if row.kind == "host" else "kernel",
                    "name": row.name, "pid": pid, "tid": tid, "ts": start_ns / 1000.0,
                    "dur": max(0, end_ns - start_ns) / 1000.0, "args": args})
    for (pid, tid), (kind, raw) in sorted(tracks.items()):
        label = f"operators thread {raw}" if kind == "host" else f"device lane {raw}"
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                    "args": {"name": label}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                    "args": {"sort_index": 5000 + (0 if kind == "host" else 1)}})
    for pid in sorted({pid for pid, _ in tracks}):
        if labels is not None and pid not in labels:
            out.append({"ph": "M", "name": "process_name", "pid": pid,
                        "args": {"name": f"operators pid {pid}"}})
    return out


def merge_into_trace(trace: Any, capture: OperatorCapture, frame: pd.DataFrame,
                     trace_module: Any = None) -> int:
    """Append the operator events to a built trace (``TraceEvents``); returns how many."""
    if capture is None or capture.events.empty or trace is None:
        return 0
    origin = float(getattr(trace, "origin_us", 0.0))
    processes_class = getattr(trace_module, "_TraceProcesses", None)
    mapping: dict = {}
    if processes_class is not None and not frame.empty:
        try:
            mapping = dict(processes_class(frame).pid_of)
        except Exception:  # the trace builder changed shape: real pids below
            mapping = {}
    # The process names are plain events (``events``), never deferred nor flows.
    labels = {int(e["pid"]): e["args"]["name"] for e in getattr(trace, "events", trace)
              if isinstance(e, dict) and e.get("ph") == "M" and e.get("name") == "process_name"}

    def pid_of(host: str, pid: int) -> int:
        return int(mapping.get((host, pid), pid))

    added = trace_events(capture, origin, pid_of, labels)
    events = getattr(trace, "events", None)
    if events is None:
        return 0
    events.extend(added)
    return len(added)


def read_operator_tables(run: Any, input_path: Union[Path, Sequence[Path]], tables: dict) -> Any:
    """Operator traces under the input: op_summary / op_statistic into ``tables``, each built
    as a stage of ``run`` (output_jobs._Run); returns the operator capture (None without
    one)."""
    capture = run.stage("operator data", read_operators, input_path)
    if capture is None:
        return None
    for problem in capture.problems:
        _logger.warning("%s", problem)
    if capture.empty:
        return None
    _logger.info("read %d operator events of %d profiled steps from %d file(s)",
                 len(capture.events), len(capture.steps), len(capture.sources))
    tables["op_summary"] = run.stage("op_summary.csv", build_op_summary, capture)
    tables["op_statistic"] = run.stage("op_statistic.csv", build_op_statistic, capture)
    return capture
