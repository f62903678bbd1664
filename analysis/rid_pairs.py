"""(record, request) pairs as two int32 arrays: the request's code and the record's row.

Records list the requests they are about (``rids``), hundreds for a batch record; exploding
them into a column of id strings costs about 60 bytes per pair once sorted, factorized and
filtered (millions of pairs at ten times the benchmark capture). Here the ids become int32
codes a chunk of pairs at a time, so the pairs cost 8 bytes each and the strings are never
repeated.
"""

from __future__ import annotations

from itertools import chain, repeat

import numpy as np
import pandas as pd

CHUNK_PAIRS = 262_144


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


def pair_codes(rid_lists: list, coder: RequestCodes) -> tuple[np.ndarray, np.ndarray]:
    """(request code, row in ``rid_lists``) of every pair, in order."""
    lengths = np.fromiter(map(len, rid_lists), dtype="int64", count=len(rid_lists))
    ends = np.cumsum(lengths)
    codes, rows = [], []
    begin = 0
    while begin < len(rid_lists):
        done = ends[begin - 1] if begin else 0
        stop = max(int(np.searchsorted(ends, done + CHUNK_PAIRS, side="right")), begin + 1)
        flat = np.empty(int(ends[stop - 1] - done), dtype=object)
        flat[:] = list(chain.from_iterable(rid_lists[begin:stop]))
        codes.append(coder.codes(flat))
        rows.append(np.repeat(np.arange(begin, stop, dtype=np.int32), lengths[begin:stop]))
        begin = stop
    if not codes:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32)
    return np.concatenate(codes), np.concatenate(rows)


def named(rids: np.ndarray) -> np.ndarray:
    """Which entries of ``rids`` (an object array) are request ids: batch entries without
    one hold None and belong to no request."""
    return np.fromiter(map(isinstance, rids, repeat(str)), dtype=bool, count=len(rids))


def in_time_order(times: np.ndarray) -> bool:
    """Whether ``times`` never decrease: records come in time order, and then need no sort."""
    return len(times) < 2 or bool((times[1:] >= times[:-1]).all())
