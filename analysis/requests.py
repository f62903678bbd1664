"""``request.csv``: one row per request, API-server and EngineCore records joined.

A request is keyed by the API server's (external) id; EngineCore records use internal ids that
the frame has already mapped through the link records. Columns (times in ms, datetimes UTC):

==========================  ======================================================================
``http_rid``                the request id
``start_datetime``          arrival: start of the first ``httpReq`` (first record of any kind for
                            partial requests)
``recv_token_size``         prompt tokens (``recvTokenSize=`` of ``httpRes``; else the engine's
                            ``num_prompt_tokens``)
``reply_token_size``        generated tokens: ``replyTokenSize=`` of ``httpRes``, summed over the
                            request's ``httpRes`` (one per completion when a request asks for
                            ``n`` > 1, as the client's ``usage`` counts them all)
``execution_time(ms)``      end-to-end latency: end of the last ``httpRes`` − arrival
``queue_wait_time(ms)``     first scheduling − entering the waiting queue (first ``Enqueue``, else
                            arrival); first scheduling = the first ``Dequeue`` from ``WAITING``,
                            else the end of the first schedule span that holds the request
``first_token_latency(ms)`` TTFT: the first output the API server handled for the request
                            (``detokenize`` or ``httpRes``) − arrival; without API-server output
                            records, the end of the engine step that finished its prefill
``cache_hit_rate``          ``hitCache`` of the first ``CacheHitRate`` record, ``N/A`` if none
``time_per_output_token(ms)`` (e2e − TTFT) / (generated tokens − 1), vLLM's TPOT (per completion:
                            the tokens of one of the ``n`` that ran side by side)
``partial``                 ``True`` when the capture lacks the request's ``httpReq`` or
                            ``httpRes`` (collection started or stopped while it ran); latencies
                            that need the missing record are left empty
``preemptions``, ``swaps``  times the request was preempted / had its blocks swapped out (V0
                            ``ReqState`` records, :mod:`.request_states`; without them, vLLM
                            V1's: a ``Dequeue`` from ``RUNNING`` during a schedule call, and no
                            swapping)
==========================  ======================================================================

Rows are sorted by arrival. The frame returned also holds the internal columns listed in
``INTERNAL_COLUMNS`` (µs instants and float ms) used by the summaries, the trace and the report.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.date_cells import datetime_column_us
from otel_vllm_ascend.analysis.frame import canonical_rid
from otel_vllm_ascend.analysis.record_dicts import key_values
from otel_vllm_ascend.analysis.request_states import request_state_counts
from otel_vllm_ascend.analysis.rid_lists import RidLists, rid_lengths
from otel_vllm_ascend.analysis.rid_pairs import RequestCodes, named, pair_chunks
from otel_vllm_ascend.analysis.steps import engine_steps, rid_values, row_chunks, step_requests

REQUEST_COLUMNS = ("http_rid", "start_datetime", "recv_token_size", "reply_token_size",
                   "execution_time(ms)", "queue_wait_time(ms)", "first_token_latency(ms)",
                   "cache_hit_rate")
REQUEST_EXTRA_COLUMNS = ("time_per_output_token(ms)", "partial", "preemptions", "swaps")
CSV_COLUMNS = REQUEST_COLUMNS + REQUEST_EXTRA_COLUMNS
INTERNAL_COLUMNS = ("arrival_us", "enqueue_us", "first_scheduled_us", "first_token_us", "end_us",
                    "ttft_ms", "queue_wait_ms", "e2e_ms", "tpot_ms", "exec_ms", "prompt_tokens",
                    "reply_tokens", "steps", "has_arrival", "has_end", "start_us")

OUTPUT_NAMES = ("detokenize", "httpRes")


class _PerRequest:
    """Per-request reductions over (record, request) pairs, keyed by integer request codes.

    Batch records list up to hundreds of requests each (eight million pairs at ten times the
    benchmark capture), so the pairs are never held all at once: every pass over them goes a
    chunk of pairs at a time (:func:`rid_pairs.pair_chunks`), accumulating in pair order, so
    the results are those of one pass over all pairs. Codes are numbered in order of first
    appearance (records, then the engine's rows), as one ``pd.factorize`` over every pair
    would number them.

    The records read are the frame's at ``at`` ("rows" below are positions in ``at``); their
    columns are read from the frame where needed, not copied (a copy of the eight columns
    read, the names as objects and the engine rows' codes were about 0.3 GB at x100).
    """

    def __init__(self, frame: pd.DataFrame, at: np.ndarray, engine_rows: _EngineRows) -> None:
        self.frame = frame
        self.at = at
        rids = frame["rids"].array if len(frame) else []
        # A RidLists selection is its list numbers only (4 bytes a record).
        self.rid_lists = rids[at] if isinstance(rids, RidLists) else [rids[i] for i in at.tolist()]
        self.lengths = rid_lengths(self.rid_lists)
        self._names = _NameCodes(frame["name"], at) if len(frame) else None
        self.start = _floats_of(frame, "start_us")  # the frame's own arrays, by frame position
        self.end = _floats_of(frame, "end_us")
        coder = self.coder = RequestCodes()
        # Earliest record of each request, reduced chunk by chunk while the codes are assigned.
        first_seen = np.empty(0)
        for codes, row_of in self._chunks(np.arange(len(self.rid_lists))):
            if len(coder) > len(first_seen):
                first_seen = np.concatenate([first_seen,
                                             np.full(len(coder) - len(first_seen), np.nan)])
            np.fmin.at(first_seen, codes, self.start[at[row_of]])
        # The engine rows' ids numbered here; their codes are looked up again a chunk at a time
        # when read (:func:`_engine_side`) rather than held (4 bytes a row, 80 MB at x100).
        for _, ids in engine_rows:
            coder.codes(ids)
        self.n = len(coder)
        self.uniques = coder.ids()
        self.first_seen = np.full(self.n, np.nan)
        self.first_seen[:len(first_seen)] = first_seen

    def _chunks(self, rows_at: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(request code, row number) of the pairs of the records at ``rows_at``, in chunks."""
        return pair_chunks(self.rid_lists, self.coder, rows_at, self.lengths)

    def rows_named(self, *names: str) -> np.ndarray:
        if self._names is None:
            return np.zeros(len(self.at), dtype=bool)
        return self._names.isin(names)

    def values_at(self, column: str, key: str, row_mask: np.ndarray,
                  missing: Any = None) -> np.ndarray:
        """``d.get(key, missing)`` of the dicts in ``column`` of the rows in ``row_mask`` (in
        row order): what :meth:`first` reads."""
        return key_values(self.frame[column], key, missing,
                          rows=self.at[np.flatnonzero(row_mask)])

    def reduce(self, row_mask: np.ndarray, values: np.ndarray, func: np.ufunc
               ) -> np.ndarray:
        """``func`` (np.fmin / np.fmax) of the values of each request; NaN if none.
        ``values``: one per frame record (:attr:`start`, :attr:`end`)."""
        out = np.full(self.n, np.nan)
        at = self.at
        for codes, row_of in self._chunks(np.flatnonzero(row_mask)):
            func.at(out, codes, values[at[row_of]])
        return out

    def total(self, row_mask: np.ndarray, row_values: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Each request's sum of its values in ``row_mask`` (NaN where none has one), and how
        many it has. ``row_values``: one per row in ``row_mask``, in row order
        (:meth:`values_at`)."""
        out = np.zeros(self.n)
        count = np.zeros(self.n)
        masked = np.flatnonzero(row_mask)
        for codes, rows in self._chunks(masked):
            values = _floats(row_values[np.searchsorted(masked, rows)])
            known = ~np.isnan(values)
            np.add.at(out, codes[known], values[known])
            np.add.at(count, codes[known], 1)
        out[count == 0] = np.nan
        return out, count

    def first(self, row_mask: np.ndarray, row_values: np.ndarray) -> np.ndarray:
        """Each request's value from its earliest record in ``row_mask`` with a value.
        ``row_values``: one per row in ``row_mask``, in row order (:meth:`values_at`)."""
        out = np.full(self.n, None, dtype=object)
        best = np.full(self.n, np.nan)  # start of the record ``out`` was taken from
        found = np.zeros(self.n, dtype=bool)
        masked = np.flatnonzero(row_mask)
        for codes, rows in self._chunks(masked):
            values = row_values[np.searchsorted(masked, rows)]
            known = np.asarray([v is not None and v == v for v in values], dtype=bool)
            rows, codes, values = rows[known], codes[known], values[known]
            starts = self.start[self.at[rows]]
            order = np.argsort(starts, kind="stable")
            unique_codes, first = np.unique(codes[order], return_index=True)
            picked = order[first]
            # An earlier chunk keeps ties: its records come first, as in one stable sort.
            new_start = starts[picked]
            old_start = best[unique_codes]
            better = (~found[unique_codes] | (new_start < old_start)
                      | (np.isnan(old_start) & ~np.isnan(new_start)))
            unique_codes, picked = unique_codes[better], picked[better]
            out[unique_codes] = values[picked]
            best[unique_codes] = starts[picked]
            found[unique_codes] = True
        return out


class _EngineRows:
    """The (step, request) rows with a request id, a chunk at a time, each time iterated:
    (rows, their ids as an object array). Batch entries without an id (None or empty) count in
    batches, not here.

    ``per_request`` is the whole table (read a slice at a time) or
    :class:`steps.StepRequestChunks` (each chunk made when read: the table, twenty million rows
    at x100, is then never held whole); the rows come in the same order either way.
    """

    def __init__(self, per_request: Any) -> None:
        self.per_request = per_request

    def __iter__(self) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        for part in row_chunks(self.per_request, ENGINE_CHUNK_ROWS):
            ids = rid_values(part["rid"])
            known = named(ids) & (ids != "")
            if not known.all():
                part, ids = part.loc[known], ids[known]
            if len(part):
                yield part, ids


class _NameCodes:
    """The names of the records at ``at`` as their category codes (1 byte a record; an object
    array of the names took 8)."""

    def __init__(self, column: pd.Series, at: np.ndarray) -> None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            self.categories = column.cat.categories
            self.codes = column.cat.codes.to_numpy()[at]
        else:  # frames made by hand
            self.categories = None
            self.codes = column.to_numpy(dtype=object)[at]

    def isin(self, names: tuple) -> np.ndarray:
        if self.categories is None:
            return np.isin(self.codes, names)
        wanted = [code for code, name in enumerate(self.categories) if name in names]
        return np.isin(self.codes, np.asarray(wanted, dtype=self.codes.dtype))


def _floats_of(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy(dtype="float64") if len(frame) else np.empty(0)


def _floats(values: np.ndarray) -> np.ndarray:
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
        dtype="float64")


def _linked_ids(frame: pd.DataFrame, requests: pd.Index) -> np.ndarray:
    """Per request, how many ids of the engine's are linked to it: one per completion of a
    request with ``n`` > 1 (V1 child requests, V0 sequence groups). Counts completions where
    ``httpRes`` does not: V0 writes one for all of a request's completions."""
    rows = np.flatnonzero((frame["name"] == "link").to_numpy()) if len(frame) else []
    if not len(rows):
        return np.zeros(len(requests))
    # ids as the link mapping reads them (frame.canonical_rid): a malformed value (a list, a
    # dict) is text then, not an unhashable cell
    pairs = pd.DataFrame({key: [None if value is None or value != value else canonical_rid(value)
                                for value in key_values(frame["attrs"], key, None, rows=rows)]
                          for key in ("from", "to")})
    pairs = pairs[pairs["from"] != pairs["to"]].dropna().drop_duplicates()
    return pairs["from"].value_counts().reindex(requests, fill_value=0).to_numpy(dtype=float)


def build_requests(frame: pd.DataFrame, steps: Optional[pd.DataFrame] = None,
                   per_request: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per request id: ``CSV_COLUMNS`` then ``INTERNAL_COLUMNS``."""
    if steps is None:
        steps = engine_steps(frame)
    if per_request is None:
        per_request = step_requests(steps)
    # The (step, request) rows' ids read a chunk at a time: the table holds them as codes, an
    # object array of all of them would be 8 bytes a row (twenty million rows at x100).
    engine_rows = _EngineRows(per_request)
    if len(frame):
        has_rid = rid_lengths(frame["rids"]) > 0
        at = np.flatnonzero(has_rid & (frame["name"] != "link").to_numpy())
        del has_rid
        at = at.astype(np.int32) if len(frame) < 2 ** 31 else at
    else:
        at = np.empty(0, dtype=np.int64)
    per = _PerRequest(frame, at, engine_rows)
    if per.n == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object)
                             for c in CSV_COLUMNS + INTERNAL_COLUMNS})
    fmin, fmax = np.fmin, np.fmax
    start, end = per.start, per.end
    table = pd.DataFrame(index=pd.Index(per.uniques, name="rid"))
    table["arrival_us"] = per.reduce(per.rows_named("httpReq"), start, fmin)
    is_res = per.rows_named("httpRes")
    table["end_us"] = per.reduce(is_res, end, fmax)
    table["recv"] = _floats(per.first(is_res, per.values_at("metrics", "recvTokenSize", is_res)))
    table["reply_tokens"], responses = per.total(
        is_res, per.values_at("metrics", "replyTokenSize", is_res))
    table["completions"] = np.fmax(responses, _linked_ids(frame, table.index))
    table["first_output_us"] = per.reduce(per.rows_named(*OUTPUT_NAMES), start, fmin)
    table["first_seen_us"] = per.first_seen
    table["enqueue_us"] = per.reduce(per.rows_named("Enqueue"), start, fmin)
    is_dequeue = per.rows_named("Dequeue")
    left_running = np.zeros_like(is_dequeue)
    if is_dequeue.any():
        # The queue names of the dequeue records only (upper-cased strings made for those).
        queue = np.asarray([str(name).upper() for name in
                            per.values_at("scopes", "QueueName", is_dequeue, "").tolist()],
                           dtype=object)
        running = np.flatnonzero(is_dequeue)[queue == "RUNNING"]
        is_dequeue[running] = False
        left_running[running] = True
    table["dequeue_us"] = per.reduce(is_dequeue, end, fmin)
    # vLLM V1 takes a request out of RUNNING inside schedule() only to preempt it (finished
    # ones leave in update_from_output): the schedule span's Dequeue from RUNNING.
    table["left_running"] = per.total(left_running, np.ones(int(left_running.sum())))[1]

    for column, values in _engine_side(per, steps, engine_rows).items():
        table[column] = values
    is_hit = per.rows_named("CacheHitRate")
    hit_values = per.values_at("attrs", "hitCache", is_hit)
    hit_values[np.asarray([v is None for v in hit_values], dtype=bool)] = 0
    hits = pd.Series(per.first(is_hit, hit_values), index=table.index)
    index = table.index

    has_arrival = table["arrival_us"].notna()
    has_end = table["end_us"].notna()
    arrival = table["arrival_us"]
    first_token = table["first_output_us"].fillna(table["engine_first_token_us"])
    first_scheduled = table["dequeue_us"].fillna(table["first_step_us"])
    enqueue = table["enqueue_us"].fillna(arrival)
    ttft = (first_token - arrival) / 1000.0
    e2e = (table["end_us"] - arrival) / 1000.0
    wait = (first_scheduled - enqueue) / 1000.0
    reply = table["reply_tokens"]
    per_completion = reply / table["completions"]  # n > 1: the completions run side by side
    tpot = ((e2e - ttft) / (per_completion - 1)).where(per_completion > 1)
    prompt = table["recv"].fillna(table["engine_prompt"])
    cache = hits.astype(object).where(hits.notna(), "N/A")
    start = arrival.fillna(table["first_seen_us"]).fillna(table["first_step_us"])
    out = pd.DataFrame({
        "http_rid": index.to_numpy(dtype=object),
        "start_datetime": datetime_column_us(start.to_numpy()),
        "recv_token_size": prompt.to_numpy(),
        "reply_token_size": reply.to_numpy(),
        "execution_time(ms)": e2e.to_numpy(),
        "queue_wait_time(ms)": wait.to_numpy(),
        "first_token_latency(ms)": ttft.to_numpy(),
        "cache_hit_rate": cache.to_numpy(dtype=object),
        "time_per_output_token(ms)": tpot.to_numpy(),
        "partial": (~(has_arrival & has_end)).to_numpy(),
        "arrival_us": arrival.to_numpy(),
        "enqueue_us": enqueue.to_numpy(),
        "first_scheduled_us": first_scheduled.to_numpy(),
        "first_token_us": first_token.to_numpy(),
        "end_us": table["end_us"].to_numpy(),
        "ttft_ms": ttft.to_numpy(),
        "queue_wait_ms": wait.to_numpy(),
        "e2e_ms": e2e.to_numpy(),
        "tpot_ms": tpot.to_numpy(),
        "exec_ms": table["exec_ms"].fillna(0.0).to_numpy(),
        "prompt_tokens": prompt.to_numpy(),
        "reply_tokens": reply.to_numpy(),
        "steps": table["steps"].fillna(0).to_numpy(dtype="int64"),
        "has_arrival": has_arrival.to_numpy(),
        "has_end": has_end.to_numpy(),
        "start_us": start.to_numpy(),  # what rows are sorted by: arrival, else first record
        "_left_running": table["left_running"].to_numpy(dtype="int64"),
    }, copy=False)  # copied once, by the sort below
    out = out.sort_values("start_us", kind="stable").reset_index(drop=True)
    # Only the ReqState records and the two columns read (V1 captures have none).
    is_state = (frame["name"] == "ReqState").to_numpy() if len(frame) else np.zeros(0, bool)
    states = request_state_counts(
        frame.loc[is_state, ["name", "rids", "metric_incs"]] if len(frame) else frame)
    for column in ("preemptions", "swaps"):
        out[column] = out["http_rid"].map(states[column]).fillna(0).astype("int64")
    if not is_state.any():  # vLLM V1 (V0 says it in ReqState; its Dequeue from RUNNING ends)
        out["preemptions"] = out["_left_running"]
    return out[list(CSV_COLUMNS + INTERNAL_COLUMNS)]


ENGINE_CHUNK_ROWS = 262_144


def _engine_side(per: _PerRequest, steps: pd.DataFrame, engine_rows: _EngineRows) -> dict:
    """Per-request reductions of the (step, request) rows, a chunk of rows at a time.

    Each reduction accumulates in row order (``np.fmin.at`` / ``np.add.at`` into one array),
    so the result is the same as over all rows at once, with a dozen step-long temporaries
    (two million rows at ten times the benchmark capture) held for one chunk only.
    """
    n = per.n
    first_step = np.full(n, np.nan)
    exec_sum = np.zeros(n)
    engine_prompt = np.full(n, np.nan)
    engine_first_token = np.full(n, np.nan)
    step_counts = np.zeros(n, dtype="int64")
    columns = {"first_step_us": first_step, "exec_ms": exec_sum, "steps": step_counts,
               "engine_prompt": engine_prompt, "engine_first_token_us": engine_first_token}
    if not len(steps):  # no steps, no rows
        return {column: np.full(n, np.nan) for column in columns}
    sched_end_of = steps["sched_end_us"].to_numpy(dtype="float64")
    exec_start_of = steps["exec_start_us"].to_numpy(dtype="float64")
    exec_end_of = steps["exec_end_us"].to_numpy(dtype="float64")
    exec_dur_of = steps["exec_dur_us"].to_numpy(dtype="float64")
    read = 0
    for part, ids in engine_rows:
        read += len(part)
        codes = per.coder.codes(ids)
        step_idx = part["step_id"].to_numpy()
        # As held (float16/32 where exact); widened to float64 here.
        nst, nct, npt = (part[key].to_numpy().astype("float64") for key in (
            "num_scheduled_tokens", "num_computed_tokens", "num_prompt_tokens"))
        counts_known = ~(np.isnan(nst) | np.isnan(nct) | np.isnan(npt))
        prefill_done = np.where(counts_known,
                                (part["type"].to_numpy() == 0) & (nct + nst >= npt),
                                part["iter"].to_numpy() == 0)
        sched_end = sched_end_of[step_idx]
        scheduled = np.where(np.isnan(sched_end), exec_start_of[step_idx], sched_end)
        np.fmin.at(first_step, codes, scheduled)
        np.add.at(exec_sum, codes, np.nan_to_num(exec_dur_of[step_idx] / 1000.0, nan=0.0))
        step_counts += np.bincount(codes, minlength=n)
        np.fmax.at(engine_prompt, codes, npt)
        np.fmin.at(engine_first_token, codes,
                   np.where(prefill_done, exec_end_of[step_idx], np.nan))
    if not read:
        return {column: np.full(n, np.nan) for column in columns}
    columns["exec_ms"] = np.where(step_counts > 0, exec_sum, np.nan)
    return columns
