"""``request_summary.csv``, ``batch_summary.csv``, ``dp_summary.csv``, ``service_summary.csv``.

The first two have columns ``Metric, Average, Max, Min, P50, P90, P99`` (mean, max, min and
linearly interpolated percentiles, rounded to 4 decimals); a metric with no value at all leaves
its statistics empty (the reference writes 0, which reads as a measurement).
``service_summary.csv`` has ``Metric, Value``.

``request_summary.csv`` (complete requests, i.e. with both ``httpReq`` and ``httpRes``; ms):
``first_token_latency (ms)`` (TTFT), ``subsequent_token_latency (ms)`` (gaps between consecutive
outputs of a request, pooled over requests; from the API server's ``detokenize`` records, else
from the ends of the engine steps that ran the request), ``total_time (ms)`` (end-to-end),
``exec_time (ms)`` (sum of the request's ``modelExec`` durations), ``waiting_time (ms)`` (queue
wait), ``input_token_num``, ``generated_token_num``, and beyond the reference
``time_per_output_token (ms)``.

``batch_summary.csv`` (engine steps; every step counts, mixed prefill+decode ones too):
``prefill_batch_num`` (prefill requests per step, over steps holding any),
``decode_batch_num`` (decode requests per step, over steps holding any),
``prefill_exec_time (ms)`` (model execution of steps holding a prefill, mixed ones included),
``decode_exec_time (ms)`` (model execution of decode-only steps), and beyond the reference
``batch_size`` (requests per step), ``scheduled_tokens`` (tokens per step), ``exec_time (ms)`` and
``schedule_time (ms)`` over all steps.

``dp_summary.csv`` (only for a capture with data-parallel ranks): one row per rank (``hostname``,
``dp_rank``) of the engine steps, to see whether the ranks share the load: ``engine_step_num``,
``scheduled_tokens`` (with ``prefill_tokens`` and ``decode_tokens``) and ``token_share`` (of all
ranks' tokens), ``batch_size_mean`` / ``batch_size_max`` (requests per step), ``exec_time (ms)``
(the rank's model execution, summed) and ``busy_rate`` (that time over the window from the first
step of any rank to the last end of any: the same window for every rank).

``service_summary.csv``: ``total_input_token_num``, ``total_generated_token_num`` (complete
requests), ``generate_token_speed (token/s)`` = generated / T and
``generate_all_token_speed (token/s)`` = (input + generated) / T with T = last ``httpRes`` −
first ``httpReq`` in s; beyond the reference ``request_num``, ``complete_request_num``,
``partial_request_num``, ``engine_step_num``, ``preemption_num``, ``swap_out_num`` (V0 engine
request states, :mod:`.request_states`), ``duration (s)``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.rid_lists import rid_lengths, rid_sequence
from otel_vllm_ascend.analysis.rid_pairs import (
    CHUNK_PAIRS,
    RequestCodes,
    in_time_order,
    named,
    pair_chunks,
    pair_codes,
    pair_counts,
)
from otel_vllm_ascend.analysis.steps import rid_values

STAT_COLUMNS = ("Metric", "Average", "Max", "Min", "P50", "P90", "P99")


def statistics_row(metric: str, values: object, owned: bool = False) -> dict:
    """One summary row over the finite ``values``.

    ``owned``: ``values`` is an array of the caller's that may be reordered (the percentiles
    are then found in place instead of in a copy: the pooled gaps are millions of values).
    """
    data = np.asarray(values, dtype="float64")
    finite = np.isfinite(data)
    if not finite.all():  # a copy only when needed
        data = data[finite]
        owned = True
    del finite
    if data.size == 0:
        return {"Metric": metric, **{c: np.nan for c in STAT_COLUMNS[1:]}}
    return _row(metric, data.mean(), data.max(), data.min(),
                np.percentile(data, _PERCENTILES, overwrite_input=owned))


def _row(metric: str, average: float, largest: float, smallest: float,
         percentiles: Sequence[float]) -> dict:
    """One summary row: ``STAT_COLUMNS`` rounded as the CSV files write them."""
    p50, p90, p99 = (round(float(value), 4) for value in percentiles)
    return {"Metric": metric, "Average": round(float(average), 4),
            "Max": round(float(largest), 4), "Min": round(float(smallest), 4),
            "P50": p50, "P90": p90, "P99": p99}


def _interpolated(n: int, ms_at: Callable[[np.ndarray, np.ndarray], tuple]) -> list:
    """P50 / P90 / P99 of ``n`` values as ``np.percentile`` (method ``linear``) interpolates
    them; ``ms_at(below, above)`` gives, in ms, the values of those order statistics (the
    k-th smallest; -1: the largest)."""
    virtual = (n - 1) * np.true_divide(_PERCENTILES, 100.0)
    below = np.floor(virtual)
    above = below + 1
    below[virtual >= n - 1] = above[virtual >= n - 1] = -1  # the last value
    below, above = below.astype(np.intp), above.astype(np.intp)
    gamma = virtual - below
    low, high = ms_at(below, above)
    diff = high - low
    return np.where(gamma >= 0.5, high - diff * (1 - gamma), low + diff * gamma).tolist()


_QUARTERS_MAX = float(np.iinfo(np.int32).max)
_PERCENTILES = (50, 90, 99)
_MEAN_BLOCK = 1 << 17  # gaps converted to ms at a time for the mean (1 MB, three copies)


class PooledGaps:
    """request_summary's pooled gaps (µs), each written to its place once.

    Held as whole quarter µs in int32, 4 bytes a gap (25 M gaps at x100: 0.1 GB instead of
    0.19): a float64 time in µs since the epoch is a multiple of 0.25 from 2^50 µs (1970 +
    35 years) on, so the difference of two is exactly ``k / 4``. The first gap that is not
    (times of a hand-made frame, NaN, a gap over 536 s) turns the store to float64, the
    values written so far kept. Either way the gaps in ms and their statistics are those of
    the float64 array ``gaps / 1000.0`` (:meth:`statistics_row` finds them without it).
    """

    def __init__(self, size: int) -> None:
        self.values = np.empty(size, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.values)

    def put(self, places: np.ndarray, gaps_us: np.ndarray) -> None:
        if self.values.dtype == np.int32:
            quarters = gaps_us * 4.0
            if bool(((quarters == np.rint(quarters)) & (np.abs(quarters) <= _QUARTERS_MAX)
                     ).all()):
                self.values[places] = quarters
                return
            self.values = self.us()
        self.values[places] = gaps_us

    def us(self) -> np.ndarray:
        """The gaps in µs (float64)."""
        if self.values.dtype != np.int32:
            return self.values
        out = self.values.astype("float64")
        out *= 0.25
        return out

    def ms(self) -> np.ndarray:
        """The gaps in ms (float64): the µs divided by 1000."""
        out = self.us()
        return np.divide(out, 1000.0, out=out if out is not self.values else None)

    def statistics_row(self, metric: str) -> dict:
        """:func:`statistics_row` of :meth:`ms`, the gaps reordered (the percentiles are found
        in place), without the float64 array of every gap when they are quarter µs: the
        mean's sum is numpy's pairwise sum of that array (the same halves, each block's sum
        by numpy), the extremes and the percentiles' order statistics are read from the
        quarters (ms is an increasing function of them) and interpolated as ``np.percentile``
        does (method ``linear``)."""
        if self.values.dtype != np.int32:
            gaps = self.values
            gaps /= 1000.0
            return statistics_row(metric, gaps, owned=True)
        quarters = self.values
        n = len(quarters)
        if n == 0:
            return statistics_row(metric, [])
        average = _pairwise_sum(quarters, 0, n) / n
        largest, smallest = _quarters_ms(quarters.max()), _quarters_ms(quarters.min())

        def ms_at(below: np.ndarray, above: np.ndarray) -> tuple:
            quarters.partition(np.unique(np.concatenate((below, above)) % n))
            return _quarters_ms(quarters[below]), _quarters_ms(quarters[above])

        return _row(metric, average, largest, smallest, _interpolated(n, ms_at))


class GapCounts:
    """Pooled gaps (:class:`PooledGaps`) added part after part and held as how many times each
    value occurs: real captures' gaps are whole quarter µs of a few thousand distinct values,
    so this stays small however many gaps are added. Its :meth:`statistics_row` is that of
    all the parts' gaps pooled: the same extremes and percentiles (the order statistics read
    from the counts, interpolated as PooledGaps does), the mean from the exact sum (equal to
    the pooled array's to the digits written). A part of float64 gaps (not quarter µs) is
    held as it is."""

    def __init__(self) -> None:
        self.values = np.zeros(0, dtype=np.int64)  # distinct quarter µs, increasing
        self.counts = np.zeros(0, dtype=np.int64)
        self.floats: list = []  # parts that are not quarter µs, in µs

    def add(self, part: Optional[PooledGaps]) -> None:
        if part is None or not len(part):
            return
        if part.values.dtype != np.int32:
            self.floats.append(part.us())
            return
        values, counts = np.unique(part.values, return_counts=True)
        values = np.concatenate((self.values, values.astype(np.int64)))
        merged, where = np.unique(values, return_inverse=True)
        total = np.zeros(len(merged), dtype=np.int64)
        np.add.at(total, where, np.concatenate((self.counts, counts)))
        self.values, self.counts = merged, total

    def statistics_row(self, metric: str) -> dict:
        if self.floats:  # some part not in quarter µs: every gap, pooled
            pooled = PooledGaps(0)
            pooled.values = np.concatenate(self.floats + [self.values.repeat(self.counts)
                                                          * 0.25])
            return pooled.statistics_row(metric)
        n = int(self.counts.sum())
        if n == 0:
            return statistics_row(metric, [])
        total = sum(v * c for v, c in zip(self.values.tolist(), self.counts.tolist()))  # exact
        ends = np.cumsum(self.counts)  # the order statistic k is values[first end > k]

        def ms_at(*orders: np.ndarray) -> tuple:
            return tuple(_quarters_ms(self.values[np.searchsorted(ends, k % n, side="right")])
                         for k in orders)

        return _row(metric, total * 0.25 / 1000.0 / n, _quarters_ms(self.values[-1]),
                    _quarters_ms(self.values[0]), _interpolated(n, ms_at))


def _quarters_ms(quarters: np.ndarray) -> np.ndarray:
    """Quarter µs -> ms as float64, as ``(k * 0.25) / 1000.0`` (the product exact)."""
    return np.asarray(quarters, dtype="float64") * 0.25 / 1000.0


def _pairwise_sum(quarters: np.ndarray, begin: int, size: int) -> float:
    """``np.add.reduce`` of the ms of ``quarters[begin:begin + size]``, a block at a time:
    numpy sums a contiguous float64 array by halves (the first half's length rounded down
    to a multiple of 8) down to blocks of at most 128; halving the same way down to blocks
    of at most ``_MEAN_BLOCK`` and letting numpy sum each gives the same additions in the
    same order."""
    if size <= max(_MEAN_BLOCK, 128):  # numpy sums up to 128 values in one block
        return float(np.add.reduce(_quarters_ms(quarters[begin:begin + size])))
    half = size // 2
    half -= half % 8
    return (_pairwise_sum(quarters, begin, half)
            + _pairwise_sum(quarters, begin + half, size - half))


def pooled_gaps(frame: pd.DataFrame, requests: pd.DataFrame,
                per_request: Optional[pd.DataFrame] = None,
                batches: Optional[pd.DataFrame] = None) -> PooledGaps:
    """Gaps between consecutive outputs of each complete request, pooled, in order of request
    id (as text), then of time (``.ms()``: in ms; 4 bytes a gap, not 8, when they are whole
    quarter µs, as the times of a real capture make them). Without output records, from the
    engine steps: ``per_request`` (only its ``step_id`` and ``rid`` are read) and
    ``batches``."""
    complete = set(requests.loc[~requests["partial"].astype(bool), "http_rid"].tolist())
    outputs = frame.loc[(frame["name"] == "detokenize").to_numpy(), ["rids", "start_us"]]
    coder = RequestCodes()
    rid_lists = rid_sequence(outputs["rids"])
    times = outputs["start_us"].to_numpy(dtype="float64")  # per record; a pair's: rows
    counts, ordered = pair_counts(rid_lists, times, coder)
    if len(coder) and ordered:  # the usual case: pairs read again a chunk at a time, never held
        kept = _complete(coder, complete)
        del complete  # every complete request's id: not held through the pass
        return _gaps_of_chunks(counts, pair_chunks(rid_lists, coder), times, coder.ranks(), kept)
    if len(coder):
        codes, rows = pair_codes(rid_lists, coder)
        return _gaps_by_request(codes, rows, times, coder.ranks(), _complete(coder, complete))
    if per_request is not None and batches is not None and len(per_request):
        times = batches["exec_end_us"].to_numpy(dtype="float64")  # per step; a pair's: rows
        rids = rid_values(per_request["rid"])
        # Batch entries without a request id (None) have no code: left out, as in request.csv.
        with_id = named(rids)
        codes = coder.codes(rids[with_id])
        rows = per_request["step_id"].to_numpy()[with_id]
        del rids, with_id
        return _gaps_by_request(codes, rows, times, coder.ranks(), _complete(coder, complete))
    return PooledGaps(0)


def gaps_from_steps(frame: pd.DataFrame) -> bool:
    """Whether :func:`pooled_gaps` reads the engine steps: no output record names a
    request. Otherwise the caller need not keep the (step, request) table for it."""
    outputs = frame.loc[(frame["name"] == "detokenize").to_numpy(), "rids"]
    return not rid_lengths(outputs).any()


def _complete(coder: RequestCodes, complete: set) -> np.ndarray:
    """Per code, whether its request is complete."""
    return np.fromiter((rid in complete for rid in coder.ids()), dtype=bool, count=len(coder))


def _gaps_by_request(codes: np.ndarray, rows: np.ndarray, times: np.ndarray,
                     ranks: np.ndarray, kept: np.ndarray) -> PooledGaps:
    """The gaps between consecutive times of each kept request, requests by ``ranks``, each
    request's in time order (ties in pair order): pair ``i`` is request ``codes[i]`` at
    ``times[rows[i]]``.

    The same as sorting every pair by request, then time, and taking the differences, but
    with the pairs read a chunk at a time (twenty million at a hundred times the benchmark
    capture) and each gap written straight to its place: a gap's place is its request's
    first place (requests counted in rank order) plus how many of the request's pairs came
    before it.
    """
    # Pairs in time order: as they come when the records are in time order (always for the
    # API server's outputs), else stably sorted by time.
    sequence = None if _pairs_in_time_order(rows, times) else np.argsort(times[rows],
                                                                        kind="stable")
    chunks = ((codes[part], rows[part]) for part in (
        slice(begin, begin + CHUNK_PAIRS) if sequence is None else
        sequence[begin:begin + CHUNK_PAIRS] for begin in range(0, len(codes), CHUNK_PAIRS)))
    return _gaps_of_chunks(np.bincount(codes, minlength=len(ranks)), chunks, times, ranks,
                           kept)


def _gaps_of_chunks(counts: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                    times: np.ndarray, ranks: np.ndarray, kept: np.ndarray) -> PooledGaps:
    """:func:`_gaps_by_request` of the pairs ``chunks`` gives in time order, a (codes, rows)
    chunk at a time; ``counts``: the pairs of each code."""
    n = len(ranks)
    gap_counts = np.where(kept, np.maximum(counts - 1, 0), 0)
    del counts
    code_at_rank = np.empty(n, dtype="int64")
    code_at_rank[ranks] = np.arange(n)
    first_place = np.empty(n, dtype="int64")
    first_place[code_at_rank] = np.cumsum(gap_counts[code_at_rank]) - gap_counts[code_at_rank]
    out = PooledGaps(int(gap_counts.sum()))
    seen = np.zeros(n, dtype="int64")  # pairs of each request read so far
    last_time = np.zeros(n, dtype="float64")  # the time of its latest one
    for part_codes, part_rows in chunks:
        if not len(part_codes):  # a chunk of records about no request
            continue
        local = np.argsort(part_codes, kind="stable")  # by request, each in time order
        code = part_codes[local]
        time = times[part_rows[local]]
        del local, part_codes, part_rows
        starts = np.flatnonzero(np.diff(code, prepend=-1))  # each request's first pair here
        stops = np.append(starts[1:], len(code))
        request = code[starts]
        previous = np.empty_like(time)
        previous[1:] = time[:-1]
        previous[starts] = last_time[request]
        index = seen[code] + np.arange(len(code)) - np.repeat(starts, stops - starts)
        write = kept[code] & (index > 0)
        out.put(first_place[code[write]] + index[write] - 1, time[write] - previous[write])
        last_time[request] = time[stops - 1]
        seen[request] += stops - starts
    return out


def _pairs_in_time_order(rows: np.ndarray, times: np.ndarray) -> bool:
    """Whether ``times[rows]`` never decrease, read a chunk at a time."""
    previous = None
    for begin in range(0, len(rows), CHUNK_PAIRS):
        part = times[rows[begin:begin + CHUNK_PAIRS]]
        if not in_time_order(part) or (previous is not None and not part[0] >= previous):
            return False
        previous = part[-1]
    return True


_SUMMARY_COLUMNS = ("ttft_ms", "exec_ms", "steps", "e2e_ms", "queue_wait_ms", "prompt_tokens",
                    "reply_tokens", "tpot_ms")


def request_summary(frame: Optional[pd.DataFrame], requests: pd.DataFrame,
                    per_request: Optional[pd.DataFrame] = None,
                    batches: Optional[pd.DataFrame] = None,
                    gaps: Optional[PooledGaps | GapCounts] = None) -> pd.DataFrame:
    """``request_summary.csv`` rows (``gaps``: the pooled gaps when already found, else from
    ``frame``)."""
    # The gaps first: the copy of the columns read below is not held through their pass.
    if gaps is None and len(requests):
        gaps = pooled_gaps(frame, requests, per_request, batches)
    gaps = gaps.statistics_row("subsequent_token_latency (ms)") if gaps is not None and len(
        requests) else statistics_row("subsequent_token_latency (ms)", [])
    if requests.empty:
        done = requests
    else:  # the columns read, not a copy of every column
        done = requests.loc[~requests["partial"].astype(bool).to_numpy(),
                            [c for c in _SUMMARY_COLUMNS if c in requests.columns]]
    col = (lambda name: done[name].to_numpy(dtype="float64")) if len(done) else (
        lambda name: np.zeros(0))
    exec_ms = col("exec_ms")
    steps = done["steps"].to_numpy() if len(done) else np.zeros(0)
    rows = [
        statistics_row("first_token_latency (ms)", col("ttft_ms")),
        gaps,
        statistics_row("total_time (ms)", col("e2e_ms")),
        statistics_row("exec_time (ms)", exec_ms[steps > 0] if len(exec_ms) else exec_ms),
        statistics_row("waiting_time (ms)", col("queue_wait_ms")),
        statistics_row("input_token_num", col("prompt_tokens")),
        statistics_row("generated_token_num", col("reply_tokens")),
        statistics_row("time_per_output_token (ms)", col("tpot_ms")),
    ]
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def batch_summary(batches: pd.DataFrame) -> pd.DataFrame:
    """``batch_summary.csv`` rows."""
    if batches.empty:
        return pd.DataFrame([statistics_row(m, []) for m in (
            "prefill_batch_num", "decode_batch_num", "prefill_exec_time (ms)",
            "decode_exec_time (ms)", "batch_size", "scheduled_tokens", "exec_time (ms)",
            "schedule_time (ms)")], columns=list(STAT_COLUMNS))
    prefill = batches["Prefill_batch_size"].to_numpy(dtype="float64")
    decode = batches["Decode_batch_size"].to_numpy(dtype="float64")
    exec_ms = batches["model_exec_time(ms)"].to_numpy(dtype="float64")
    has_prefill = prefill > 0
    decode_only = (decode > 0) & ~has_prefill
    sched_ms = batches["sched_dur_us"].to_numpy(dtype="float64") / 1000.0
    rows = [
        statistics_row("prefill_batch_num", prefill[has_prefill]),
        statistics_row("decode_batch_num", decode[decode > 0]),
        statistics_row("prefill_exec_time (ms)", exec_ms[has_prefill]),
        statistics_row("decode_exec_time (ms)", exec_ms[decode_only]),
        statistics_row("batch_size", batches["total_batch_size"].to_numpy(dtype="float64")),
        statistics_row("scheduled_tokens",
                       batches["total_scheduled_tokens"].to_numpy(dtype="float64")),
        statistics_row("exec_time (ms)", exec_ms),
        statistics_row("schedule_time (ms)", sched_ms),
    ]
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


DP_COLUMNS = ("hostname", "dp_rank", "engine_step_num", "scheduled_tokens", "prefill_tokens",
              "decode_tokens", "token_share", "batch_size_mean", "batch_size_max",
              "exec_time (ms)", "busy_rate")


def dp_summary(batches: pd.DataFrame) -> Optional[pd.DataFrame]:
    """``dp_summary.csv`` rows; None when no engine step has a data-parallel rank."""
    if batches is None or batches.empty or not batches["dp_rank"].notna().any():
        return None
    steps = pd.DataFrame({
        "hostname": batches["host"].astype(str).to_numpy(),
        "dp_rank": batches["dp_rank"].to_numpy(dtype="float64", na_value=np.nan),
        "tokens": batches["total_scheduled_tokens"].to_numpy(dtype="float64"),
        "prefill": batches["Prefill_scheduled_tokens"].to_numpy(dtype="float64"),
        "decode": batches["Decode_scheduled_tokens"].to_numpy(dtype="float64"),
        "size": batches["total_batch_size"].to_numpy(dtype="float64"),
        "exec_ms": batches["model_exec_time(ms)"].to_numpy(dtype="float64"),
    })
    starts = batches["sched_start_us"].to_numpy(dtype="float64")
    ends = np.fmax(batches["sched_end_us"].to_numpy(dtype="float64"),
                   batches["exec_end_us"].to_numpy(dtype="float64"))
    window_ms = (np.nanmax(ends) - np.nanmin(starts)) / 1000.0
    ranked = steps.loc[steps["dp_rank"].notna()]
    table = ranked.groupby(["hostname", "dp_rank"], sort=True).agg(
        engine_step_num=("tokens", "size"), scheduled_tokens=("tokens", "sum"),
        prefill_tokens=("prefill", "sum"), decode_tokens=("decode", "sum"),
        batch_size_mean=("size", "mean"), batch_size_max=("size", "max"),
        exec_ms=("exec_ms", "sum")).reset_index()
    total = table["scheduled_tokens"].sum()
    table["token_share"] = table["scheduled_tokens"] / total if total else np.nan
    table["busy_rate"] = table["exec_ms"] / window_ms if window_ms > 0 else np.nan
    table = table.rename(columns={"exec_ms": "exec_time (ms)"})
    for column in ("dp_rank", "engine_step_num", "scheduled_tokens", "prefill_tokens",
                   "decode_tokens", "batch_size_max"):
        table[column] = table[column].round().astype("Int64")
    for column in ("token_share", "busy_rate", "batch_size_mean", "exec_time (ms)"):
        table[column] = table[column].round(4)
    return table[list(DP_COLUMNS)]


def _total(requests: pd.DataFrame, column: str) -> int:
    return int(requests[column].sum()) if column in requests and len(requests) else 0


def service_summary(requests: pd.DataFrame, batches: Optional[pd.DataFrame] = None
                    ) -> pd.DataFrame:
    """``service_summary.csv`` rows (``Metric``, ``Value``)."""
    total = len(requests)
    if total:
        done = requests.loc[~requests["partial"].astype(bool)]
    else:
        done = requests
    n_done = len(done)
    if n_done:
        inputs = float(np.nansum(done["prompt_tokens"].to_numpy(dtype="float64")))
        generated = float(np.nansum(done["reply_tokens"].to_numpy(dtype="float64")))
        first = np.nanmin(requests["arrival_us"].to_numpy(dtype="float64"))
        last = np.nanmax(requests["end_us"].to_numpy(dtype="float64"))
        duration = round((last - first) / 1e6, 4)
    else:
        inputs = generated = 0.0
        duration = np.nan
    speed = round(generated / duration, 4) if duration and duration > 0 else np.nan
    all_speed = round((inputs + generated) / duration, 4) if duration and duration > 0 else np.nan
    rows = [
        ("total_input_token_num", int(inputs) if float(inputs).is_integer() else inputs),
        ("total_generated_token_num",
         int(generated) if float(generated).is_integer() else generated),
        ("generate_token_speed (token/s)", speed),
        ("generate_all_token_speed (token/s)", all_speed),
        ("request_num", total),
        ("complete_request_num", n_done),
        ("partial_request_num", total - n_done),
        ("engine_step_num", 0 if batches is None else len(batches)),
        ("preemption_num", _total(requests, "preemptions")),
        ("swap_out_num", _total(requests, "swaps")),
        ("duration (s)", duration),
    ]
    # Object column: counts stay integers, speeds stay floats.
    return pd.DataFrame({"Metric": [r[0] for r in rows],
                         "Value": pd.array([r[1] for r in rows], dtype=object)})
