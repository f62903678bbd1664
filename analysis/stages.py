"""Stage breakdown (``split``): where the time of prefill and decode engine steps goes.

Each engine step (a ``batch.csv`` row) is cut into stages, in ms:

=====================  ==========================================================================
``scheduling``         the schedule span (``batchFrameworkProcessing``)
``model_execution``    EngineCore's ``modelExec`` span: the whole ``execute_model`` call
``model_forward``      the Workers' ``forward`` spans of the step (summed per process; the
                       slowest process counts, as the step waits for all of them)
``logits_sampling``    the Workers' ``computing_logits`` and ``sample`` spans of the step (summed
                       per process, the slowest process counts)
``output_processing``  from the end of ``modelExec`` to the first output record of the API server
                       (``detokenize`` or ``httpRes``) for the step's first request that gets a
                       token from it (a decode, or a prefill that completes its prompt):
                       EngineCore's output update, the hand-over to the API server and its
                       output handling; empty for a step that yields no token (a prompt chunk)
``step_total``         from the start of this step to the start of the next step of the same
                       process (the reference's ``AllTime``); empty for a process's last step
=====================  ==========================================================================

A Worker record belongs to the step whose ``modelExec`` window holds its start
(:mod:`.step_match`). A stage whose records the capture lacks is empty for that step, never 0.

Phases, as in ``batch_summary.csv``: a **prefill** step holds at least one prefill (mixed
prefill + decode steps included); a **decode** step holds decodes only.

Selections: ``all`` (every step of the phase) always; then one per chosen batch size
(``batch_size=B``: steps of B requests) and per chosen request id (``rid=R``: for prefill the
steps that ran R's prompt, for decode those that ran its decodes); ``number`` keeps the first N
steps of each selection by time. Per (selection, stage): ``steps`` (steps selected), ``count``
(steps with a value for the stage), ``max(ms)``, ``min(ms)``, ``mean(ms)``, ``std(ms)`` (sample
standard deviation, empty below two values). Written as ``prefill.csv`` and ``decode.csv``
(the reference's names) and shown in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.rid_lists import rid_sequence
from otel_vllm_ascend.analysis.rid_pairs import (
    CHUNK_PAIRS,
    RequestCodes,
    by_code,
    in_time_order,
    named,
    pair_chunks,
    pair_counts,
    place_by_code,
)
from otel_vllm_ascend.analysis.step_match import NO_STEP, step_of_records
from otel_vllm_ascend.analysis.steps import StepRequestChunks, rid_values, step_start_us

STAGES = ("scheduling", "model_execution", "model_forward", "logits_sampling",
          "output_processing", "step_total")
FORWARD_NAMES = ("forward",)
LOGITS_NAMES = ("computing_logits", "sample")
OUTPUT_NAMES = ("detokenize", "httpRes")
PHASES = ("prefill", "decode")
CSV_COLUMNS = ("selection", "name", "steps", "count", "max(ms)", "min(ms)", "mean(ms)",
               "std(ms)")
CSV_FILES = {"prefill": "prefill.csv", "decode": "decode.csv"}


@dataclass(frozen=True)
class StageSelection:
    """Which steps the breakdown covers beyond ``all`` (the command line's ``--split-*``)."""

    batch_sizes: Sequence[int] = field(default_factory=tuple)
    rids: Sequence[str] = field(default_factory=tuple)
    number: Optional[int] = None


def _worker_stage(frame: pd.DataFrame, batches: pd.DataFrame, names: Sequence[str]
                  ) -> np.ndarray:
    """Per step (ms): the named Worker spans summed per process, the largest process sum."""
    out = np.full(len(batches), np.nan)
    # Only the columns read (step_of_records: host, pid, dp_rank, start_us): a copy of every
    # column of these records was most of the breakdown's peak at x100.
    rows = frame.loc[frame["name"].isin(list(names)).to_numpy(),
                     ["host", "pid", "dp_rank", "start_us", "dur_us"]]
    if rows.empty:
        return out
    position = step_of_records(rows, batches)
    hit = position != NO_STEP
    if not hit.any():
        return out
    per_process = pd.DataFrame({"step": position[hit],
                                "host": rows["host"].to_numpy(dtype=object)[hit],
                                "pid": rows["pid"].to_numpy(dtype="int64")[hit],
                                "dur": rows["dur_us"].to_numpy(dtype="float64")[hit]})
    sums = per_process.groupby(["step", "host", "pid"], sort=False)["dur"].sum()
    slowest = sums.groupby(level="step").max()
    out[slowest.index.to_numpy(dtype="int64")] = slowest.to_numpy() / 1000.0
    return out


def _output_processing(frame: pd.DataFrame, batches: pd.DataFrame,
                       per_request: pd.DataFrame) -> np.ndarray:
    """Per step (ms): the first API-server output after ``modelExec`` for the step's first
    request that gets a token from it."""
    out = np.full(len(batches), np.nan)
    outputs = frame.loc[frame["name"].isin(OUTPUT_NAMES), ["rids", "start_us"]]
    if outputs.empty or per_request.empty:
        return out
    per_request = per_request.iloc[_first_yielding_rows(per_request)]
    # A step whose first such entry has no request id (None) has no output to find.
    per_request = per_request.loc[named(rid_values(per_request["rid"]))]
    # The outputs' (record, request) pairs as int32 codes: twenty million pairs at x100; only
    # those of the requests asked about are kept, a chunk of pairs at a time.
    coder = RequestCodes()
    asked_codes = coder.codes(rid_values(per_request["rid"]))
    asked = len(coder)
    output_us = outputs["start_us"].to_numpy(dtype="float64")
    exec_end = batches["exec_end_us"].to_numpy(dtype="float64")
    row = _rows_of_steps(batches, per_request["step_id"].to_numpy(dtype="int64"))
    asked_time = np.where(row >= 0, exec_end[row], np.nan)
    finite = np.isfinite(asked_time)
    row, asked_codes, asked_time = row[finite], asked_codes[finite], asked_time[finite]
    if not len(row):
        return out
    # Each asked step's first output of its request at or after its modelExec end.
    rid_lists = rid_sequence(outputs["rids"])
    first = _first_outputs_in_time_order(rid_lists, output_us, coder, asked, asked_codes,
                                         asked_time)
    if first is None:  # outputs out of time order: the asked ones' grouped, then searched
        grouped, begins = _asked_output_rows(rid_lists, output_us, coder, asked)
        if not len(grouped):
            return out
        first = _first_at_or_after(grouped, begins, asked_codes, asked_time, output_us)
    found = ~np.isnan(first)
    row = row[found]
    out[row] = (first[found] - exec_end[row]) / 1000.0
    return out


def _first_outputs_in_time_order(rid_lists: Sequence, start_us: np.ndarray,
                                 coder: RequestCodes, asked: int, codes: np.ndarray,
                                 times: np.ndarray) -> Optional[np.ndarray]:
    """For each asked (``codes[i]`` below ``asked``, ``times[i]`` finite): the time of its
    request's first output at or after ``times[i]``, NaN if none; ``None`` when the asked
    requests' output pairs are not in time order (then :func:`_asked_output_rows`).

    The pairs are read once, a chunk at a time, in time order: an asked time is answered by
    the first chunk holding a pair of its request at or after it. Nothing is held a pair at a
    time (grouping the asked requests' output rows held 4 bytes a pair, twenty million pairs
    at x100: most of the breakdown's peak)."""
    result = np.full(len(codes), np.nan)
    by_time = np.argsort(times, kind="stable")  # the asked ones, let in in time order
    sorted_times = times[by_time]
    admitted = 0
    waiting = np.zeros(0, dtype=np.int64)  # let in, not answered yet
    previous = None
    for part_codes, part_rows in pair_chunks(rid_lists, coder):
        keep = part_codes < asked
        part_codes = part_codes[keep]
        part_times = start_us[part_rows[keep]]
        del keep, part_rows
        if not len(part_times):
            continue
        if not in_time_order(part_times) or np.isnan(part_times[0]) or (
                previous is not None and not part_times[0] >= previous):
            return None
        previous = part_times[-1]
        # The asked times up to this chunk's last pair can be answered from here on.
        upto = int(np.searchsorted(sorted_times, previous, side="right"))
        if upto > admitted:
            waiting = np.concatenate((waiting, by_time[admitted:upto]))
            admitted = upto
        if len(waiting):
            waiting = waiting[_answer(result, waiting, codes, times, part_codes, part_times)]
    return result


def _answer(result: np.ndarray, waiting: np.ndarray, codes: np.ndarray, times: np.ndarray,
            pair_codes: np.ndarray, pair_times: np.ndarray) -> np.ndarray:
    """Write into ``result`` the answers that one chunk of pairs (in time order) gives the
    ``waiting`` asked ones; returns which of ``waiting`` stay unanswered. Sorted together by
    (request, time), an asked one before the pairs of its time, an asked one's answer is the
    next pair if that is of its request."""
    n = len(waiting)
    code = np.concatenate((codes[waiting], pair_codes))
    time = np.concatenate((times[waiting], pair_times))
    order = np.lexsort((np.arange(len(code)) >= n, time, code))
    is_pair = order >= n
    place = np.arange(len(order))
    following = np.where(is_pair, place, len(order))
    following = np.minimum.accumulate(following[::-1])[::-1]  # the next pair's place
    mine = place[~is_pair]
    after = following[mine]
    found = after < len(order)
    found[found] = code[order[after[found]]] == code[order[mine[found]]]
    index = order[mine]  # positions in ``waiting``
    result[waiting[index[found]]] = time[order[after[found]]]
    left = np.zeros(n, dtype=bool)
    left[index[~found]] = True
    return left


def _asked_output_rows(rid_lists: Sequence, start_us: np.ndarray, coder: RequestCodes,
                       asked: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The output records (rows of ``rid_lists``, int32) of each request ``coder`` held
    before (the asked ones), grouped by code, each in time order, and where each code's group
    begins (:func:`by_code`; every id of ``rid_lists`` gets its code).

    The outputs' pairs are counted, then read again and each asked one's row written to its
    place (twenty million pairs at x100 were held, then the asked ones' codes and times; their
    times, 8 bytes a pair, were held grouped until the rows, 4 bytes, were); pairs out of time
    order are sorted first, all at once. ``asked``: the codes below it are the asked ones
    (all that ``coder`` holds by default)."""
    asked = len(coder) if asked is None else asked
    counts, ordered = pair_counts(rid_lists, start_us, coder, below=asked)
    if not ordered:
        codes, rows = _asked_pairs(rid_lists, coder, asked)
        order = np.argsort(start_us[rows], kind="stable")
        return by_code(codes[order], rows[order], len(coder))
    begins = np.cumsum(counts) - counts
    grouped = np.empty(int(counts.sum()), dtype=np.int32)
    place = begins.copy()
    for codes, rows in pair_chunks(rid_lists, coder):
        keep = codes < asked
        place_by_code(grouped, place, codes[keep], rows[keep])
    return grouped, begins


def _asked_pairs(rid_lists: Sequence, coder: RequestCodes, asked: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(request code, row in ``rid_lists``) of the pairs whose code is below ``asked`` (the
    ids ``coder`` held before any output was coded: codes are numbered in order of first
    appearance), in order; every other id gets its code too."""
    codes, rows = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)]
    for part_codes, part_rows in pair_chunks(rid_lists, coder):
        keep = part_codes < asked
        codes.append(part_codes[keep])
        rows.append(part_rows[keep].astype(np.int32, copy=False))
    return np.concatenate(codes), np.concatenate(rows)


def _first_at_or_after(grouped: np.ndarray, begins: np.ndarray, codes: np.ndarray,
                       times: np.ndarray, values: Optional[np.ndarray] = None) -> np.ndarray:
    """For each (``codes[i]``, ``times[i]``): the first of its code's times (``grouped``, in
    time order, each code's from ``begins``; with ``values``, ``grouped`` holds positions in
    it) at or after ``times[i]``; NaN if none."""
    result = np.full(len(codes), np.nan)
    stops = np.append(begins[1:], len(grouped))
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.diff(sorted_codes, prepend=-1))
    ends = np.append(starts[1:], len(order))
    for start, end in zip(starts.tolist(), ends.tolist()):  # one search per request asked
        code = sorted_codes[start]
        mine = grouped[begins[code]:stops[code]]
        if values is not None:
            mine = values[mine]
        which = order[start:end]
        at = np.searchsorted(mine, times[which], side="left")
        inside = at < len(mine)
        result[which[inside]] = mine[at[inside]]
    return result


def _first_yielding_rows(per_request: pd.DataFrame) -> np.ndarray:
    """Per step, in row order, the row of its first request that gets a token from it: a
    decode, or a prefill that completes its prompt (or of unknown prompt length).

    Read a chunk of rows at a time: a mask and a copy of the (step, request) table's yielding
    rows (nearly all of them) would be held at once (twenty million rows at x100).
    """
    first = _FirstYielding()
    picked = [np.zeros(0, dtype="int64")]
    for begin in range(0, len(per_request), CHUNK_PAIRS):
        picked.append(first.rows_of(per_request.iloc[begin:begin + CHUNK_PAIRS]) + begin)
    return np.sort(np.concatenate(picked))


class _FirstYielding:
    """Each step's first token-yielding row, the rows read a chunk at a time in order."""

    def __init__(self) -> None:
        self.found = np.zeros(0, dtype=bool)  # per step id: its row found in an earlier chunk

    def rows_of(self, part: pd.DataFrame) -> np.ndarray:
        """The rows of ``part`` (positions in it) that are their step's first yielding row."""
        kind = part["type"].to_numpy()
        prompt = part["num_prompt_tokens"].to_numpy()
        # Added in float64 (the columns may be float16/32: their sum would round).
        done = np.add(part["num_computed_tokens"].to_numpy(),
                      part["num_scheduled_tokens"].to_numpy(), dtype="float64") >= prompt
        yields = (kind == 1) | ((kind == 0) & (done | np.isnan(prompt)))
        rows = np.flatnonzero(yields)
        steps, first = np.unique(part["step_id"].to_numpy()[rows], return_index=True)
        if len(steps) and steps[-1] >= len(self.found):
            self.found = np.concatenate(
                [self.found, np.zeros(int(steps[-1]) + 1 - len(self.found), dtype=bool)])
        new = ~self.found[steps]
        self.found[steps[new]] = True
        return rows[first[new]]


def _rows_of_steps(batches: pd.DataFrame, step_ids: np.ndarray) -> np.ndarray:
    """Positions in ``batches`` of ``step_ids`` (-1 where absent)."""
    ids = batches["step_id"].to_numpy(dtype="int64")
    if np.array_equal(ids, np.arange(len(ids))):  # batch.csv as built: step_id = position
        return np.where((step_ids >= 0) & (step_ids < len(ids)), step_ids, -1)
    row_of_step = dict(zip(ids.tolist(), range(len(ids))))
    return np.asarray([row_of_step.get(s, -1) for s in step_ids.tolist()], dtype="int64")


def _step_total(batches: pd.DataFrame) -> np.ndarray:
    start = step_start_us(batches)
    keys = pd.DataFrame({"host": batches["host"].to_numpy(dtype=object),
                         "pid": batches["pid"].to_numpy(dtype="int64"), "start": start})
    following = keys.sort_values("start", kind="stable").groupby(
        ["host", "pid"], sort=False)["start"].shift(-1)
    return (following.reindex(keys.index).to_numpy(dtype="float64") - start) / 1000.0


def step_stages(frame: pd.DataFrame, batches: pd.DataFrame,
                per_request: pd.DataFrame) -> pd.DataFrame:
    """One row per ``batches`` row: ``step_id``, ``phase``, ``batch_size``, then ``STAGES``."""
    prefill = batches["Prefill_batch_size"].to_numpy(dtype="float64")
    decode = batches["Decode_batch_size"].to_numpy(dtype="float64")
    phase = np.where(prefill > 0, "prefill", np.where(decode > 0, "decode", ""))
    sched = batches["sched_dur_us"].to_numpy(dtype="float64") / 1000.0
    return pd.DataFrame({
        "step_id": batches["step_id"].to_numpy(dtype="int64"),
        "phase": phase.astype(object),
        "batch_size": batches["total_batch_size"].to_numpy(dtype="float64"),
        "start_us": step_start_us(batches),
        "scheduling": sched,
        "model_execution": batches["model_exec_time(ms)"].to_numpy(dtype="float64"),
        "model_forward": _worker_stage(frame, batches, FORWARD_NAMES),
        "logits_sampling": _worker_stage(frame, batches, LOGITS_NAMES),
        "output_processing": _output_processing(frame, batches, per_request),
        "step_total": _step_total(batches),
    })


def _statistics(selection: str, stages: pd.DataFrame) -> list[dict]:
    rows = []
    for stage in STAGES:
        values = stages[stage].to_numpy(dtype="float64")
        values = values[np.isfinite(values)]
        row = {"selection": selection, "name": stage, "steps": len(stages),
               "count": int(values.size)}
        if values.size:
            row.update({"max(ms)": round(float(values.max()), 4),
                        "min(ms)": round(float(values.min()), 4),
                        "mean(ms)": round(float(values.mean()), 4),
                        "std(ms)": round(float(values.std(ddof=1)), 4) if values.size > 1
                        else np.nan})
        rows.append(row)
    return rows


def stage_breakdown(stages: pd.DataFrame, per_request: pd.DataFrame,
                    selection: Optional[StageSelection] = None) -> dict[str, pd.DataFrame]:
    """``{"prefill": table, "decode": table}`` of ``CSV_COLUMNS`` from :func:`step_stages`."""
    selection = selection or StageSelection()
    stages = stages.sort_values("start_us", kind="stable")
    tables = {}
    for phase in PHASES:
        mine = stages.loc[stages["phase"] == phase]
        chosen = [("all", mine)]
        for size in dict.fromkeys(selection.batch_sizes):
            chosen.append((f"batch_size={size}", mine.loc[mine["batch_size"] == size]))
        kind = 0 if phase == "prefill" else 1
        for rid in dict.fromkeys(selection.rids):
            held = per_request.loc[(per_request["rid"] == rid) & (per_request["type"] == kind),
                                   "step_id"]
            chosen.append((f"rid={rid}", mine.loc[mine["step_id"].isin(held)]))
        rows = []
        for name, steps in chosen:
            if selection.number is not None:
                steps = steps.iloc[:selection.number]
            rows.extend(_statistics(name, steps))
        tables[phase] = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    return tables


def breakdown_rows(per_request: Any, selection: Optional[StageSelection] = None
                   ) -> pd.DataFrame:
    """The (step, request) rows the breakdown reads, in their order: each step's first
    token-yielding row and every row of the selected request ids. The breakdown of these is
    that of the whole table, which can then go before the detail tables are built (twenty
    million rows at x100, one per step are left)."""
    if isinstance(per_request, StepRequestChunks):  # the same rows, the table never whole
        first = _FirstYielding()

        def pick(part: pd.DataFrame) -> np.ndarray:
            return _selected(part, np.sort(first.rows_of(part)), selection)

        return per_request.rows_where(pick)
    return per_request.iloc[_selected(per_request, _first_yielding_rows(per_request),
                                      selection)]


def _selected(per_request: pd.DataFrame, rows: np.ndarray,
              selection: Optional[StageSelection]) -> np.ndarray:
    """``rows`` and the rows of the selected request ids, in order."""
    if selection is not None and selection.rids:
        selected = np.flatnonzero(per_request["rid"].isin(list(selection.rids)).to_numpy())
        rows = np.union1d(rows, selected)
    return rows


def build_stage_breakdown(frame: pd.DataFrame, batches: pd.DataFrame, per_request: pd.DataFrame,
                          selection: Optional[StageSelection] = None
                          ) -> dict[str, pd.DataFrame]:
    """``prefill.csv`` and ``decode.csv`` tables (see the module docstring)."""
    return stage_breakdown(step_stages(frame, batches, per_request), per_request, selection)


def unknown_selections(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Chosen selections (not ``all``) that matched no step in either phase."""
    counts: dict[str, int] = {}
    for table in tables.values():
        for name, steps in zip(table["selection"], table["steps"]):
            counts[name] = max(counts.get(name, 0), int(steps))
    return [name for name, steps in counts.items() if name != "all" and steps == 0]
