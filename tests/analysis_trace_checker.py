"""Checker for Chrome trace files that must open cleanly in Perfetto.

Used by the analyzer tests on every ``chrome_tracing.json`` they produce. It enforces the rules
Perfetto's JSON importer depends on (and that the reference analyzer's trace breaks):

* the file is a JSON array of events or an object with a ``traceEvents`` array;
* each event has the fields its ``ph`` needs; ``ts``/``dur`` are finite numbers in µs, ``dur`` >= 0;
* complete (``X``) events on one (pid, tid) track never overlap unless one contains the other;
  ``B``/``E`` pairs match on their track; nestable async ``b``/``e`` pairs match per (cat, id);
* every pid has a ``process_name`` and every (pid, tid) with thread-bound events a
  ``thread_name`` metadata (``M``) event;
* flows: per flow id exactly one start ``s`` and one finish ``f``, steps ``t`` in between,
  all ordered by ``ts``, sharing one name and category, and each bound to a slice of its track
  (``s``/``t`` always, ``f`` when it says ``"bp": "e"``);
* counter (``C``) args are finite numbers.

``check_trace(data)`` returns the list of problems (empty = valid); ``check_trace_file(path)``
loads a file first. Messages name the event index so a failure is easy to find.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Union

# Half a nanosecond: our writer rounds times to whole ns, so a child ending "after" its parent by
# less than this is float noise, not an overlap.
TOLERANCE_US = 0.0005

_THREAD_BOUND = {"X", "B", "E", "s", "t", "f"}
_KNOWN_PH = {"X", "B", "E", "i", "I", "C", "b", "e", "n", "s", "t", "f", "M"}
_METADATA_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index",
                   "process_labels"}
MAX_PROBLEMS = 50


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_trace_file(path: Union[str, Path]) -> list[str]:
    """Load ``path`` and return every rule it breaks (empty list: valid)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{path}: not readable JSON: {exc}"]
    return check_trace(data)


def events_of(data: Any) -> list:
    """The event list of a loaded trace (array form or ``{"traceEvents": [...]}``)."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("traceEvents"), list):
        return data["traceEvents"]
    raise ValueError("trace is neither a JSON array nor an object with a traceEvents array")


def check_trace(data: Any) -> list[str]:
    """Return every Perfetto rule the loaded trace breaks (empty list: valid)."""
    try:
        events = events_of(data)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    valid = []
    for index, event in enumerate(events):
        errors = _field_errors(event)
        if errors:
            problems.extend(f"event {index}: {error}" for error in errors)
        else:
            valid.append((index, event))
    problems += _check_metadata(valid)
    problems += _check_slices(valid)
    problems += _check_async(valid)
    problems += _check_flows(valid)
    return problems[:MAX_PROBLEMS] + (
        [f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else [])


def _field_errors(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return ["not a JSON object"]
    ph = event.get("ph")
    if ph not in _KNOWN_PH:
        return [f"unknown or missing ph {ph!r}"]
    errors = []
    if not _is_id(event.get("pid")):
        errors.append(f"ph {ph}: pid must be an integer, got {event.get('pid')!r}")
    needs_tid = ph in _THREAD_BOUND or (ph in ("i", "I") and event.get("s", "t") == "t") or (
        ph == "M" and str(event.get("name", "")).startswith("thread_"))
    if needs_tid and not _is_id(event.get("tid")):
        errors.append(f"ph {ph}: tid must be an integer, got {event.get('tid')!r}")
    if ph == "M":
        name = event.get("name")
        if name not in _METADATA_NAMES:
            errors.append(f"metadata event with unknown name {name!r}")
        args = event.get("args")
        if not isinstance(args, dict):
            errors.append("metadata event without args object")
        elif name in ("process_name", "thread_name") and not (
                isinstance(args.get("name"), str) and args["name"]):
            errors.append(f"{name} without a non-empty args.name")
        elif name in ("process_sort_index", "thread_sort_index") and not _is_id(
                args.get("sort_index")):
            errors.append(f"{name} without an integer args.sort_index")
        return errors
    if not _is_number(event.get("ts")):
        errors.append(f"ph {ph}: ts must be a finite number of µs, got {event.get('ts')!r}")
    if ph in ("X", "B", "i", "I", "C", "b", "n", "s", "t", "f") and not (
            isinstance(event.get("name"), str) and event["name"]):
        errors.append(f"ph {ph}: name must be a non-empty string")
    if ph == "X":
        dur = event.get("dur")
        if not _is_number(dur) or dur < 0:
            errors.append(f"X: dur must be a finite number >= 0, got {dur!r}")
    if ph in ("i", "I") and event.get("s", "t") not in ("g", "p", "t"):
        errors.append(f"instant scope s must be g, p or t, got {event.get('s')!r}")
    if ph == "C":
        args = event.get("args")
        if not isinstance(args, dict) or not args:
            errors.append("C: args must be a non-empty object")
        else:
            bad = [k for k, v in args.items() if not _is_number(v)]
            if bad:
                errors.append(f"C: non-numeric counter values for {bad}")
    if ph in ("b", "e", "n", "s", "t", "f"):
        if "id" not in event and "id2" not in event:
            errors.append(f"ph {ph}: id is required")
        if not isinstance(event.get("cat"), str):
            errors.append(f"ph {ph}: cat must be a string")
    if "args" in event and not isinstance(event["args"], dict):
        errors.append("args must be an object")
    return errors


def _check_metadata(valid: list) -> list[str]:
    named_pids = set()
    named_threads = set()
    used_pids: dict = {}
    used_threads: dict = {}
    for index, event in valid:
        ph = event["ph"]
        if ph == "M":
            if event["name"] == "process_name":
                named_pids.add(event["pid"])
            elif event["name"] == "thread_name":
                named_threads.add((event["pid"], event["tid"]))
            continue
        used_pids.setdefault(event["pid"], index)
        if ph in _THREAD_BOUND or (ph in ("i", "I") and event.get("s", "t") == "t"):
            used_threads.setdefault((event["pid"], event["tid"]), index)
    problems = [f"pid {pid} (first used by event {index}) has no process_name metadata"
                for pid, index in used_pids.items() if pid not in named_pids]
    problems += [f"track pid {pid} tid {tid} (first used by event {index}) has no thread_name "
                 "metadata" for (pid, tid), index in used_threads.items()
                 if (pid, tid) not in named_threads]
    return problems


def _check_slices(valid: list) -> list[str]:
    problems = []
    tracks: dict = defaultdict(list)
    begin_end: dict = defaultdict(list)
    for index, event in valid:
        if event["ph"] == "X":
            tracks[(event["pid"], event["tid"])].append(
                (event["ts"], -event["dur"], index, event["name"]))
        elif event["ph"] in ("B", "E"):
            begin_end[(event["pid"], event["tid"])].append((event["ts"], index, event))
    for (pid, tid), slices in tracks.items():
        slices.sort()
        stack: list = []  # (end, index, name)
        for ts, neg_dur, index, name in slices:
            end = ts - neg_dur
            while stack and stack[-1][0] <= ts + TOLERANCE_US:
                stack.pop()
            if stack and end > stack[-1][0] + TOLERANCE_US:
                problems.append(
                    f"X event {index} {name!r} [{ts}, {end}] on pid {pid} tid {tid} overlaps "
                    f"event {stack[-1][1]} {stack[-1][2]!r} ending at {stack[-1][0]} without "
                    "being nested in it")
                continue
            stack.append((end, index, name))
    for (pid, tid), marks in begin_end.items():
        marks.sort(key=lambda m: (m[0], m[1]))
        depth = 0
        for _, index, event in marks:
            depth += 1 if event["ph"] == "B" else -1
            if depth < 0:
                problems.append(f"E event {index} on pid {pid} tid {tid} has no open B")
                depth = 0
        if depth:
            problems.append(f"{depth} B event(s) on pid {pid} tid {tid} never end")
    return problems


def _check_async(valid: list) -> list[str]:
    problems = []
    groups: dict = defaultdict(list)
    for index, event in valid:
        if event["ph"] in ("b", "e"):
            key = (event["pid"], event["cat"], event.get("id", event.get("id2")))
            groups[key].append((event["ts"], 0 if event["ph"] == "e" else 1, index, event))
    for key, marks in groups.items():
        marks.sort(key=lambda m: (m[0], m[1], m[2]))
        stack: list = []
        for _, _, index, event in marks:
            if event["ph"] == "b":
                stack.append(event.get("name"))
            elif not stack:
                problems.append(f"async e event {index} (cat/id {key[1:]}) has no open b")
            else:
                stack.pop()
        if stack:
            problems.append(f"async b event(s) {stack} (cat/id {key[1:]}) never end")
    return problems


def _top_level_spans(valid: list) -> dict:
    """Per track: sorted, disjoint [start, end] of the outermost X slices (for flow binding)."""
    raw: dict = defaultdict(list)
    for _, event in valid:
        if event["ph"] == "X":
            raw[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    merged = {}
    for track, spans in raw.items():
        spans.sort()
        starts: list = []
        ends: list = []
        for start, end in spans:
            if ends and start <= ends[-1] + TOLERANCE_US:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        merged[track] = (starts, ends)
    return merged


def _bound_to_slice(spans: dict, event: dict) -> bool:
    starts, ends = spans.get((event["pid"], event["tid"]), ((), ()))
    pos = bisect.bisect_right(starts, event["ts"] + TOLERANCE_US) - 1
    return pos >= 0 and event["ts"] <= ends[pos] + TOLERANCE_US


def _check_flows(valid: list) -> list[str]:
    flows: dict = defaultdict(list)
    for index, event in valid:
        if event["ph"] in ("s", "t", "f"):
            flows[event.get("id", event.get("id2"))].append((index, event))
    if not flows:
        return []
    spans = _top_level_spans(valid)
    problems = []
    for flow_id, members in flows.items():
        phases = [event["ph"] for _, event in members]
        if phases.count("s") != 1 or phases.count("f") != 1:
            problems.append(f"flow {flow_id!r}: {phases.count('s')} start(s) and "
                            f"{phases.count('f')} finish(es), expected exactly one of each")
            continue
        if len({(event["name"], event["cat"]) for _, event in members}) != 1:
            problems.append(f"flow {flow_id!r}: events disagree on name/cat")
        ordered = sorted(members, key=lambda m: (m[1]["ts"], "stf".index(m[1]["ph"])))
        if ordered[0][1]["ph"] != "s" or ordered[-1][1]["ph"] != "f":
            problems.append(f"flow {flow_id!r}: start must come first and finish last by ts "
                            f"(got {[e['ph'] for _, e in ordered]})")
        for index, event in members:
            must_bind = event["ph"] != "f" or event.get("bp") == "e"
            if must_bind and not _bound_to_slice(spans, event):
                problems.append(f"flow {flow_id!r}: {event['ph']} event {index} at ts "
                                f"{event['ts']} lies in no X slice of pid {event['pid']} tid "
                                f"{event['tid']}")
    return problems
