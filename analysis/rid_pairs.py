"""(record, request) pairs as two int32 arrays: the request's code and the record's row.

Records list the requests they are about (``rids``), hundreds for a batch record; exploding
them into a column of id strings costs about 60 bytes per pair once sorted, factorized and
filtered (millions of pairs at ten times the benchmark capture). Here the ids become int32
codes a chunk of pairs at a time, so the pairs cost 8 bytes each and the strings are never
repeated.
"""

from __future__ import annotations

from itertools import chain, repeat
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.rid_lists import RidLists, rid_lengths

# Pairs read at a time: each pass holds about 100 bytes of temporaries a pair of its chunk
# (26 MB at 262,144, on top of what it keeps); more, smaller chunks cost little time.
CHUNK_PAIRS = 65_536


class RequestCodes:
    """Request ids -> int32 codes, numbered in order of first appearance."""

    def __init__(self) -> None:
        self.code_of: dict = {}

    def __len__(self) -> int:
        return len(self.code_of)

    def codes(self, rids: np.ndarray) -> np.ndarray:
        """The codes of ``rids`` (an object array), new ids numbered on."""
        code_of = self.code_of
        local, uniques = pd.factorize(rids)
        known = np.fromiter((code_of.setdefault(rid, len(code_of)) for rid in uniques),
                            dtype=np.int32, count=len(uniques))
        return known[local] if len(local) else np.empty(0, dtype=np.int32)

    def ids(self) -> np.ndarray:
        """The ids in code order (object array)."""
        out = np.empty(len(self.code_of), dtype=object)
        out[:] = list(self.code_of)
        return out

    def ranks(self) -> np.ndarray:
        """Per code, the position of its id among the ids sorted as text."""
        order = np.argsort(self.ids(), kind="stable")
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        return rank


def pair_chunks(rid_lists: Sequence, coder: RequestCodes, rows_at: Optional[np.ndarray] = None,
                lengths: Optional[np.ndarray] = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(request code, row in ``rid_lists``) of the pairs of the records at ``rows_at`` (all by
    default), in order, a chunk of about ``CHUNK_PAIRS`` pairs (whole records) at a time.
    ``lengths``: the lists' lengths, when the caller has them already."""
    if lengths is None:
        lengths = rid_lengths(rid_lists)
    if rows_at is None:
        rows_at = np.arange(len(rid_lists))
    row_lengths = lengths[rows_at]
    ends = np.cumsum(row_lengths)
    begin = 0
    while begin < len(rows_at):
        done = ends[begin - 1] if begin else 0
        stop = max(int(np.searchsorted(ends, done + CHUNK_PAIRS, side="right")), begin + 1)
        part = rows_at[begin:stop]
        if isinstance(rid_lists, RidLists):  # the ids straight from the codes: no list made
            codes, record = rid_lists.codes_of(part)  # record: each pair's place in ``part``
            flat, rows = rid_lists.table.ids[codes], part.astype(np.int32)[record]
        else:
            flat = np.empty(int(ends[stop - 1] - done), dtype=object)
            flat[:] = list(chain.from_iterable([rid_lists[i] for i in part.tolist()]))
            rows = np.repeat(part.astype(np.int32), row_lengths[begin:stop])
        yield coder.codes(flat), rows
        begin = stop


def pair_codes(rid_lists: Sequence, coder: RequestCodes) -> tuple[np.ndarray, np.ndarray]:
    """(request code, row in ``rid_lists``) of every pair, in order (filled a chunk at a time
    into arrays of their final length: chunks then a concatenation would hold them twice)."""
    lengths = rid_lengths(rid_lists)
    total = int(lengths.sum())
    codes = np.empty(total, dtype=np.int32)
    rows = np.empty(total, dtype=np.int32)
    filled = 0
    for part_codes, part_rows in pair_chunks(rid_lists, coder, lengths=lengths):
        codes[filled:filled + len(part_codes)] = part_codes
        rows[filled:filled + len(part_rows)] = part_rows
        filled += len(part_codes)
    return codes, rows


def rows_by_request(rid_lists: Sequence, coder: RequestCodes,
                    values: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The row in ``rid_lists`` of every (record, request) pair (or ``values[row]``, in
    ``values``' type), grouped by request code (each request's pairs in row order), and where each
    code's group begins.

    :func:`by_code` of :func:`pair_codes`, without holding the pairs: they are counted, then
    read again and each row written to its place (twenty million pairs at x100). With
    ``values`` (the callers' record numbers of the rows) each pair's value is written
    instead: the rows are never held beside the values."""
    counts, _ = pair_counts(rid_lists, None, coder)
    begins = np.cumsum(counts) - counts
    grouped = np.empty(int(counts.sum()), dtype=np.int32 if values is None else values.dtype)
    place = begins.copy()
    for codes, rows in pair_chunks(rid_lists, coder):
        place_by_code(grouped, place, codes, rows if values is None else values[rows])
    return grouped, begins


def by_code(codes: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` grouped by their ``codes`` (0..n-1; each group in the given order), and
    where each code's group begins.

    The same as ``values`` stably sorted by code, but without the sort order or the sorted
    codes (8 + 4 bytes a value, twenty million (record, request) pairs at x100): each value
    is written straight to its place, a chunk at a time.
    """
    counts = np.bincount(codes, minlength=n)
    begins = np.cumsum(counts) - counts
    del counts
    grouped = np.empty(len(values), dtype=values.dtype)
    place = begins.copy()  # each code's next free place
    for first in range(0, len(codes), CHUNK_PAIRS):
        stop = min(first + CHUNK_PAIRS, len(codes))
        place_by_code(grouped, place, codes[first:stop], values[first:stop])
    return grouped, begins


def place_by_code(grouped: np.ndarray, place: np.ndarray, codes: np.ndarray,
                  values: np.ndarray) -> None:
    """Write one chunk of ``values`` into ``grouped``, each at its code's next free place
    (``place``, moved on): chunk after chunk, each code's values in the order they came."""
    local = np.argsort(codes, kind="stable")
    code = codes[local]
    value = values[local]
    del local
    starts = np.flatnonzero(np.diff(code, prepend=-1))
    sizes = np.diff(np.append(starts, len(code)))
    index = np.arange(len(code)) - np.repeat(starts, sizes)
    grouped[place[code] + index] = value
    place[code[starts]] += sizes


def pair_counts(rid_lists: Sequence, times: Optional[np.ndarray], coder: RequestCodes,
                below: Optional[int] = None) -> tuple[np.ndarray, bool]:
    """Pairs of ``rid_lists`` per request code (every id coded; with ``below``, only the
    pairs of the codes below it counted), and whether those pairs come in time order
    (``times[row]`` never decreasing, no NaN; not checked without ``times``), read a chunk
    of pairs at a time: a caller can
    then read them again (:func:`pair_chunks`) and place each where it belongs, never holding
    them all."""
    counts = np.zeros(0, dtype="int64")
    ordered = True
    previous = None
    for codes, rows in pair_chunks(rid_lists, coder):
        if below is not None:
            keep = codes < below
            codes, rows = codes[keep], rows[keep]
        part = times[rows] if times is not None else rows[:0]
        if ordered and len(part):
            ordered = (in_time_order(part) and not np.isnan(part[0])
                       and (previous is None or part[0] >= previous))
            previous = part[-1]
        here = np.bincount(codes, minlength=len(coder))
        here[:len(counts)] += counts
        counts = here
    if len(counts) < len(coder):  # ids of the last chunks with no pair counted
        counts = np.append(counts, np.zeros(len(coder) - len(counts), dtype="int64"))
    return counts, ordered


def named(rids: np.ndarray) -> np.ndarray:
    """Which entries of ``rids`` (an object array) are request ids: batch entries without
    one hold None and belong to no request."""
    return np.fromiter(map(isinstance, rids, repeat(str)), dtype=bool, count=len(rids))


def in_time_order(times: np.ndarray) -> bool:
    """Whether ``times`` never decrease: records come in time order, and then need no sort."""
    return len(times) < 2 or bool((times[1:] >= times[:-1]).all())
