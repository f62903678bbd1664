"""Engine steps: each scheduler span joined with the model execution it fed.

vLLM V1 runs, per engine step and on one EngineCore thread, ``Scheduler.schedule``
(``batchFrameworkProcessing`` span) and then ``execute_model`` (``modelExec`` span). Within one
process (host, pid) a ``modelExec`` belongs to the latest schedule span that started before it;
this is how the two are joined (the reference joins on the printed request list instead, which
breaks as soon as two steps schedule the same requests). A schedule span without execution, or an
execution whose schedule span was not captured, is still one step.

:func:`engine_steps` gives one row per step; :func:`step_requests` one row per (step, request).
Both are pure functions of the records frame; the builders accept them precomputed so the CLI
computes them once.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.narrow_ints import fits
from otel_vllm_ascend.analysis.rid_detail import RequestDetail
from otel_vllm_ascend.analysis.rid_lists import RidTable, TableIds, rid_sequence

SCHEDULE_NAMES = ("batchFrameworkProcessing", "BatchSchedule")
EXEC_NAMES = ("modelExec",)

STEP_COLUMNS = (
    "step_id", "host", "pid", "source", "dp_rank", "name", "sched_start_us", "sched_end_us",
    "exec_start_us", "exec_end_us", "sched_dur_us", "exec_dur_us", "batch_type", "rid_detail",
    "rids", "exec_batch_size", "sched_scheduled_tokens",
)

REQUEST_STEP_COLUMNS = (
    "step_id", "rid", "iter", "type", "num_scheduled_tokens", "num_prompt_tokens",
    "num_computed_tokens",
)


def _number_or_nan(value: object) -> float:
    if isinstance(value, bool) or value is None:
        return np.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return np.nan


def step_start_us(steps: pd.DataFrame) -> np.ndarray:
    """Each step's start (µs): its schedule span's, else its execution's (a step whose schedule
    span was not captured); what steps are ordered and numbered by."""
    sched = steps["sched_start_us"].to_numpy(dtype="float64")
    return np.where(np.isnan(sched), steps["exec_start_us"].to_numpy(dtype="float64"), sched)


def engine_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per engine step, ordered by time, ``step_id`` 0..n-1."""
    names = frame["name"]
    sched = frame.loc[names.isin(SCHEDULE_NAMES)]
    exe = frame.loc[names.isin(EXEC_NAMES)]
    if sched.empty and exe.empty:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in STEP_COLUMNS})
    keep = ["host", "pid", "source", "dp_rank", "name", "start_us", "end_us", "dur_us",
            "batch_type",
            "rid_detail", "rids", "attrs", "metrics"]
    sched = sched[keep].reset_index(drop=True)
    sched["sched_idx"] = np.arange(len(sched))
    exe = exe[keep].reset_index(drop=True)
    exe["exec_idx"] = np.arange(len(exe))
    if not sched.empty and not exe.empty:
        left = exe[["host", "pid", "start_us", "exec_idx"]].sort_values("start_us")
        right = sched[["host", "pid", "start_us", "sched_idx"]].sort_values("start_us")
        joined = pd.merge_asof(left, right, on="start_us", by=["host", "pid"],
                               direction="backward")
        joined = joined.dropna(subset=["sched_idx"])
        joined["sched_idx"] = joined["sched_idx"].astype("int64")
        # One execution per schedule span: the first one after it.
        joined = joined.sort_values("start_us").drop_duplicates("sched_idx", keep="first")
        pair = dict(zip(joined["sched_idx"].tolist(), joined["exec_idx"].tolist()))
    else:
        pair = {}
    exec_of = np.full(len(sched), -1, dtype="int64")
    if pair:
        exec_of[np.fromiter(pair.keys(), dtype="int64")] = np.fromiter(pair.values(),
                                                                       dtype="int64")
    matched = exec_of >= 0
    exec_rows = exe.iloc[exec_of[matched]] if len(exe) else exe
    nan = np.full(len(sched), np.nan)
    exec_start = nan.copy()
    exec_end = nan.copy()
    exec_size = nan.copy()
    exec_dur = nan.copy()
    if matched.any():
        exec_dur[matched] = exec_rows["dur_us"].to_numpy()
        exec_start[matched] = exec_rows["start_us"].to_numpy()
        exec_end[matched] = exec_rows["end_us"].to_numpy()
        exec_size[matched] = [_number_or_nan(a.get("batch_size")) for a in exec_rows["attrs"]]
    steps = pd.DataFrame({
        **_record_columns(sched),
        "sched_start_us": sched["start_us"].to_numpy(),
        "sched_end_us": sched["end_us"].to_numpy(),
        "exec_start_us": exec_start,
        "exec_end_us": exec_end,
        "sched_dur_us": sched["dur_us"].to_numpy(),
        "exec_dur_us": exec_dur,
        "exec_batch_size": exec_size,
        "sched_scheduled_tokens": [m.get("num_scheduled_tokens", np.nan)
                                   for m in sched["metrics"]],
    }, copy=False)  # copied once, by the sort below
    used = set(pair.values())
    lone = exe.loc[~exe["exec_idx"].isin(used)]
    if not lone.empty:
        extra = pd.DataFrame({
            **_record_columns(lone),
            "sched_start_us": np.nan,
            "sched_end_us": np.nan,
            "exec_start_us": lone["start_us"].to_numpy(),
            "exec_end_us": lone["end_us"].to_numpy(),
            "sched_dur_us": np.nan,
            "exec_dur_us": lone["dur_us"].to_numpy(),
            "exec_batch_size": [_number_or_nan(a.get("batch_size")) for a in lone["attrs"]],
            "sched_scheduled_tokens": np.nan,
        })
        steps = pd.concat([steps, extra], ignore_index=True)
    steps = steps.iloc[np.argsort(step_start_us(steps), kind="stable")].reset_index(drop=True)
    steps.insert(0, "step_id", np.arange(len(steps), dtype="int64"))
    return steps[list(STEP_COLUMNS)]


def _record_columns(records: pd.DataFrame) -> dict:
    """The columns a step takes from the record it is built from (schedule span or lone exec)."""
    return {
        "host": records["host"].to_numpy(dtype=object),
        "pid": records["pid"].to_numpy(),
        "source": records["source"].to_numpy(dtype=object),
        "dp_rank": records["dp_rank"].array,
        "name": records["name"].to_numpy(dtype=object),
        "batch_type": records["batch_type"].to_numpy(dtype=object),
        "rid_detail": records["rid_detail"].to_numpy(dtype=object),
        # Codes, not lists: the steps table is held for most of the run.
        "rids": records["rids"].array,
    }


def _column(values: list) -> np.ndarray:
    """Numbers (None/absent = NaN) as float64; anything else is coerced or NaN."""
    try:
        array = np.asarray(values, dtype="float64")
        if array.ndim == 1:
            return array
    except (TypeError, ValueError, OverflowError):
        pass
    return np.asarray([_number_or_nan(v) for v in values], dtype="float64")


_DETAIL_KEYS = ("rid", "iter", "type", "num_scheduled_tokens", "num_prompt_tokens",
                "num_computed_tokens")


def step_requests(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, request) from the steps' request dicts (or bare request ids).

    ``step_id`` is int32, the number columns float16 or float32 when every value fits exactly
    (else float64): widen them (``to_numpy(dtype="float64")``) before adding or summing.
    """
    details = steps["rid_detail"].tolist()
    plains = rid_sequence(steps["rids"])  # indexed only for steps without compact dicts
    step_ids = steps["step_id"].to_numpy(dtype="int64")
    # Steps whose dicts are held compactly are read column by column, runs of the others item
    # by item; every piece is copied into columns allocated once at their final length (two
    # million rows at ten times the benchmark capture: pieces then a concatenation would hold
    # the table twice).
    pieces: list = []  # a RequestDetail (with its step id) or the dict of a run of steps
    run: list[int] = []
    for index, detail in enumerate(details):
        if isinstance(detail, RequestDetail):
            if run:
                pieces.append(_dict_rows(run, details, plains, step_ids))
                run = []
            pieces.append((detail, step_ids[index]))
        else:
            run.append(index)
    if run or not pieces:
        pieces.append(_dict_rows(run, details, plains, step_ids))
    total = sum(len(p[0]) if isinstance(p, tuple) else len(p["rid"]) for p in pieces)
    # Step ids are 0..len(steps)-1: int32 unless there are more steps than that holds (an
    # empty table keeps int64, as before the ids were narrowed).
    narrow_ids = total and fits(len(steps) - 1, np.int32)
    step_column = np.empty(total, dtype=np.int32 if narrow_ids else np.int64)
    rid_codes = np.empty(total, dtype=np.int32)
    coder = _RidCoder()
    first = 0
    for piece in pieces:
        if isinstance(piece, tuple):
            detail, step_id = piece
            last = first + len(detail)
            step_column[first:last] = step_id
            rid_codes[first:last] = coder.codes(detail.rids)
        else:
            last = first + len(piece["rid"])
            step_column[first:last] = piece["step_id"]
            rid_codes[first:last] = coder.codes(piece["rid"])
        first = last
    # The table is held through most of the run (two million rows at x10): each number
    # column is kept as float16 or float32 when that holds every value exactly (whole numbers
    # up to 2**11 or 2**24: iterations, request kinds, the token counts of most workloads),
    # else float64; made a chunk of rows at a time (:func:`_number_column`). Readers widen to
    # float64 before any arithmetic.
    groups = _piece_groups(pieces)
    if len(groups) == 1:  # a chunk of steps (StepRequestChunks): each key read once
        numbers = _narrowed(_GroupRows(pieces, groups[0]).columns(_DETAIL_KEYS[1:]))
    else:
        numbers = {key: _number_column(pieces, groups, key) for key in _DETAIL_KEYS[1:]}
    # The ids as category codes (int32 at most, 4 bytes a row against an 8-byte pointer: the
    # table is held from here to request_summary, twenty million rows at x100); a batch entry
    # without an id is the missing code. Read them with rid_values (None where missing).
    rid_column = pd.Categorical.from_codes(rid_codes, categories=coder.categories())
    del rid_codes
    return pd.DataFrame({"step_id": step_column, "rid": rid_column, **numbers}, copy=False)


# Steps per chunk of StepRequestChunks: about 0.16 M rows at x100; a chunk's temporaries
# (its ids as objects among them) were 0.15 GB above request.csv's start with 16,384 steps.
STEP_CHUNK_STEPS = 2_048


class StepRequestChunks:
    """The rows of :func:`step_requests` of ``steps``, made a chunk of steps at a time each time
    they are read, for a reader that goes through them in order (request.csv): the whole table
    is not held (twenty million rows at x100, 0.36 GB).

    Each chunk is ``step_requests`` of those steps: the same rows, in the same order; its number
    columns narrowed by the chunk's own values (widen them before use, as for the whole table)
    and its ``rid`` codes the chunk's own (read them with :func:`rid_values`).
    """

    def __init__(self, steps: pd.DataFrame, steps_per_chunk: int = STEP_CHUNK_STEPS) -> None:
        self.steps = steps
        self.steps_per_chunk = steps_per_chunk

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for begin in range(0, len(self.steps), self.steps_per_chunk):
            yield step_requests(self.steps.iloc[begin:begin + self.steps_per_chunk])

    def whole(self) -> pd.DataFrame:
        """The whole table, for a reader of whole columns."""
        return step_requests(self.steps)

    def rows_where(self, pick: Callable[[pd.DataFrame], np.ndarray]) -> pd.DataFrame:
        """``whole().iloc[rows]``, ``rows`` those ``pick`` gives of each chunk (positions in
        the chunk, sorted), without the whole table: the same values, index (positions in the
        whole table), column types (each the widest of the chunks', as the whole table's is the
        widest of its groups') and id categories (the whole table's: numbered in order of
        first appearance, as each chunk's are within it)."""
        code_of: dict = {}
        kinds: dict = {key: np.float16 for key in _DETAIL_KEYS[1:]}
        parts: list = []
        total = 0
        for part in self:
            rid = part["rid"].array
            translate = np.fromiter((code_of.setdefault(r, len(code_of)) for r in rid.categories),
                                    dtype=np.int32, count=len(rid.categories))
            rows = pick(part)
            local = rid.codes[rows]
            codes = np.full(len(rows), -1, dtype=np.int32)
            codes[local >= 0] = translate[local[local >= 0]]
            parts.append((rows + total, part["step_id"].to_numpy()[rows], codes,
                          [part[key].to_numpy()[rows] for key in _DETAIL_KEYS[1:]]))
            for key in _DETAIL_KEYS[1:]:
                kinds[key] = max(kinds[key], part[key].dtype.type, key=_FLOAT_TYPES.index)
            total += len(part)
        if not parts:  # no steps: the empty table's
            return self.whole().iloc[np.zeros(0, dtype=np.int64)]
        ids = np.empty(len(code_of), dtype=object)
        ids[:] = list(code_of)
        narrow_ids = total and fits(len(self.steps) - 1, np.int32)
        columns = {
            "step_id": np.concatenate([p[1] for p in parts]).astype(
                np.int32 if narrow_ids else np.int64),
            "rid": pd.Categorical.from_codes(np.concatenate([p[2] for p in parts]),
                                             categories=pd.Index(ids, dtype=object)),
            **{key: np.concatenate([p[3][i] for p in parts]).astype(kinds[key])
               for i, key in enumerate(_DETAIL_KEYS[1:])}}
        return pd.DataFrame(columns, index=pd.Index(np.concatenate([p[0] for p in parts])))


def row_chunks(per_request: Any, rows: int) -> Iterator[pd.DataFrame]:
    """The (step, request) rows in order, a chunk at a time: slices of ``rows`` rows of the
    whole table, or the chunks of a :class:`StepRequestChunks`."""
    if isinstance(per_request, StepRequestChunks):
        yield from per_request
        return
    for begin in range(0, len(per_request), rows):
        yield per_request.iloc[begin:begin + rows]


class _RidCoder:
    """The (step, request) rows' ids -> category codes, numbered in order of first appearance;
    None (a batch entry without an id) -> -1. A compact step's ids held in the frame's id table
    (``TableIds``) are coded through that table's codes, no string looked up per row."""

    def __init__(self) -> None:
        self.code_of: dict = {}
        self.by_table: dict[int, tuple[RidTable, np.ndarray]] = {}  # table -> code per table id

    def codes(self, rids: Any) -> np.ndarray:
        if isinstance(rids, TableIds):
            table = rids.table
            known = self.by_table.get(id(table))
            if known is None:
                known = self.by_table[id(table)] = (table, np.full(len(table.ids), -2, np.int32))
            translated = known[1]
            table_codes = table.codes[table.offsets[rids.number]:table.offsets[rids.number + 1]]
            codes = translated[table_codes]
            new = codes == -2
            if new.any():
                for code in table_codes[new].tolist():
                    if translated[code] == -2:
                        translated[code] = self._code(table.ids[code])
                codes = translated[table_codes]
            return codes
        return np.fromiter(map(self._code, rids), dtype=np.int32, count=len(rids))

    def _code(self, rid: Any) -> int:
        if rid is None:
            return -1
        return self.code_of.setdefault(rid, len(self.code_of))

    def categories(self) -> pd.Index:
        ids = np.empty(len(self.code_of), dtype=object)
        ids[:] = list(self.code_of)
        return pd.Index(ids, dtype=object)


def rid_values(column: pd.Series, rows: Any = slice(None)) -> np.ndarray:
    """The ids of a (step, request) table's ``rid`` column (of ``rows``) as an object array,
    None where a batch entry has no id: what the column held before it held codes."""
    values = column.array
    if isinstance(values, pd.Categorical):
        ids = np.append(values.categories.to_numpy(dtype=object), None)  # code -1: the last
        return ids[values.codes[rows]]
    return column.to_numpy(dtype=object)[rows]


_FILLED_ROWS = 1 << 20  # rows of a number column made in float64 at a time


def _piece_groups(pieces: list) -> list[tuple[int, int, int, int]]:
    """(first piece, end piece, first row, end row) of runs of pieces of about
    ``_FILLED_ROWS`` rows (a piece is never split)."""
    groups = []
    first_piece, first_row, row = 0, 0, 0
    for index, piece in enumerate(pieces):
        row += len(piece[0]) if isinstance(piece, tuple) else len(piece["rid"])
        if row - first_row >= _FILLED_ROWS:
            groups.append((first_piece, index + 1, first_row, row))
            first_piece, first_row = index + 1, row
    if first_piece < len(pieces):
        groups.append((first_piece, len(pieces), first_row, row))
    return groups


def _number_column(pieces: list, groups: list, key: str) -> np.ndarray:
    """The column ``key`` of the (step, request) rows in the narrowest of float16 and float32
    that holds every value exactly, else float64.

    The pieces are read twice, a group of rows at a time in float64: first for the type that
    holds every group's values, then into the column in that type (a whole float64 column and
    its narrowed copy were about 0.2 GB above the table at x100). A value that float16 holds
    exactly float32 does too, so the whole column's type is the widest of its groups'."""
    dtype: Any = np.float16
    for group in groups:
        dtype = max(dtype, _narrowest(_group_values(pieces, group, key)),
                    key=_FLOAT_TYPES.index)
        if dtype is np.float64:
            break
    column = np.empty(groups[-1][3] if groups else 0, dtype=dtype)
    for group in groups:
        column[group[2]:group[3]] = _group_values(pieces, group, key)
    return column


_FLOAT_TYPES = [np.float16, np.float32, np.float64]


def _group_values(pieces: list, group: tuple, key: str) -> np.ndarray:
    """The float64 values of ``key`` in one group of pieces; for ``type``, the iteration's
    rule where the dicts lack it."""
    return _GroupRows(pieces, group).columns((key,))[key]


def _narrowed(columns: dict) -> dict:
    """Each float64 column in the narrowest type that holds its values (as
    :func:`_number_column` makes it)."""
    return {key: values.astype(_narrowest(values)) for key, values in columns.items()}


class _GroupRows:
    """The rows of one group of pieces, read a key at a time without a step at a time: the
    compact steps' fields concatenated per layout (one copy per layout, a few layouts), each
    key then one field of that copy put at its rows."""

    def __init__(self, pieces: list, group: tuple) -> None:
        first_piece, end_piece, first_row, end_row = group
        self.size = end_row - first_row
        self.plain: list = []  # (first, last, dict piece)
        by_layout: dict = {}  # (keys, fields' type) -> (a detail, its fields, their firsts)
        first = 0
        for piece in pieces[first_piece:end_piece]:
            if piece.__class__ is tuple:
                detail = piece[0]
                fields = detail.fields
                last = first + len(fields)
                layout = by_layout.get((id(detail.keys), id(fields.dtype)))
                if layout is None:
                    layout = by_layout[(id(detail.keys), id(fields.dtype))] = (detail, [], [])
                layout[1].append(fields)
                layout[2].append(first)
            else:
                last = first + len(piece["rid"])
                self.plain.append((first, last, piece))
            first = last
        whole = len(by_layout) == 1 and not self.plain
        self.layouts = [(detail._value_keys(), _concatenated(fields),
                         None if whole else _rows_of(fields, firsts))
                        for detail, fields, firsts in by_layout.values()]

    def columns(self, keys: Sequence[str]) -> dict:
        """float64 values of ``keys``; for ``type``, the iteration's rule where the dicts
        lack it."""
        columns = {key: self._values(key) for key in keys}
        if "type" in columns:
            # Without a dict ``type``, iteration 0 is the prefill (the reference's rule).
            values = columns["type"]
            iteration = columns["iter"] if "iter" in columns else self._values("iter")
            missing = np.isnan(values) & ~np.isnan(iteration)
            values[missing] = (iteration[missing] > 0).astype("float64")
        return columns

    def _values(self, key: str) -> np.ndarray:
        values = np.empty(self.size, dtype="float64")
        for value_keys, fields, rows in self.layouts:
            field = fields[f"f{value_keys.index(key)}"] if key in value_keys else np.nan
            if rows is None:
                values[:] = field
            else:
                values[rows] = field
        for first, last, piece in self.plain:
            values[first:last] = piece[key]
        return values


def _concatenated(fields: list) -> np.ndarray:
    """Structured arrays of one layout as one: their bytes joined (``np.concatenate`` of
    structured arrays checks their fields' types array by array, most of the group's time)."""
    layout = fields[0].dtype
    if len(fields) == 1:
        return fields[0]
    if not layout.itemsize:
        return np.empty(sum(map(len, fields)), dtype=layout)
    try:
        return np.concatenate([part.view(np.uint8) for part in fields]).view(layout)
    except ValueError:  # an array not laid out in one block
        return np.concatenate(fields)


def _rows_of(fields: list, firsts: list) -> np.ndarray:
    """The group's rows of consecutive runs of ``len(fields[i])`` rows from ``firsts[i]``."""
    lengths = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
    starts = np.asarray(firsts, dtype=np.int64) - (np.cumsum(lengths) - lengths)
    return np.repeat(starts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _narrowest(values: np.ndarray) -> Any:
    """The first of float16 and float32 that holds every value exactly, else float64."""
    for dtype in (np.float16, np.float32):
        with np.errstate(over="ignore"):  # too large for float16: inf, which fails the test
            if np.array_equal(values.astype(dtype), values, equal_nan=True):
                return dtype
    return np.float64


def _dict_rows(indices: list[int], details: list, plains: Sequence, step_ids: np.ndarray
               ) -> dict:
    """The rows of the steps at ``indices`` whose request dicts are plain dicts (or ids)."""
    nan = np.nan
    items: list = []
    lengths: list = []
    for index in indices:
        detail = details[index]
        if detail:
            dicts = [item for item in detail if isinstance(item, dict)]
        else:
            dicts = [{"rid": rid} for rid in plains[index] or ()]
        items.extend(dicts)
        lengths.append(len(dicts))
    try:  # fast path: every dict has every key (one C-level pass instead of six)
        values = list(zip(*map(itemgetter(*_DETAIL_KEYS), items))) or [()] * len(_DETAIL_KEYS)
    except (KeyError, TypeError):
        values = [[d.get(key, "" if key == "rid" else nan) for d in items]
                  for key in _DETAIL_KEYS]
    rid, *numbers = values
    return {
        "step_id": np.repeat(step_ids[indices] if indices else step_ids[:0], lengths),
        "rid": list(rid),
        **{key: _column(list(column)) for key, column in zip(_DETAIL_KEYS[1:], numbers)},
    }
