"""(record, request) pairs as codes: filled a chunk at a time, and grouped by request without
a sort of all pairs, against the plain whole-array computations (chunks cutting through
records and requests)."""

from itertools import chain

import numpy as np
import pytest

from otel_vllm_ascend.analysis import rid_pairs
from otel_vllm_ascend.analysis.rid_pairs import RequestCodes, pair_codes, rows_by_request


def _lists(seed):
    rng = np.random.default_rng(seed)
    ids = [f"req-{i}" for i in range(15)]
    return [[ids[i] for i in rng.choice(15, rng.integers(0, 7), replace=False)]
            for _ in range(40)]


@pytest.mark.parametrize("chunk", [1, 3, 10, 100_000])
@pytest.mark.parametrize("seed", range(5))
def test_pairs_and_their_grouping_equal_the_whole_computation(monkeypatch, chunk, seed):
    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    lists = _lists(seed)
    flat = list(chain.from_iterable(lists))
    order_seen = list(dict.fromkeys(flat))  # codes: in order of first appearance
    want_codes = np.array([order_seen.index(rid) for rid in flat])
    want_rows = np.repeat(np.arange(len(lists)), [len(x) for x in lists])

    codes, rows = pair_codes(lists, RequestCodes())
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(rows, want_rows)
    assert codes.dtype == rows.dtype == np.int32

    coder = RequestCodes()
    grouped, begins = rows_by_request(lists, coder)
    np.testing.assert_array_equal(grouped, want_rows[np.argsort(want_codes, kind="stable")])
    np.testing.assert_array_equal(begins, np.flatnonzero(np.diff(np.sort(want_codes),
                                                                 prepend=-1)))
    assert coder.ids().tolist() == order_seen and grouped.dtype == np.int32
    # With values: each pair's value in the row's place (what indexing ``values`` by the
    # grouped rows gives), in the values' type.
    for dtype in (np.int32, np.int64):
        values = np.random.default_rng(seed).permutation(10 * len(lists))[:len(lists)]
        values = values.astype(dtype)
        got, got_begins = rows_by_request(lists, RequestCodes(), values)
        np.testing.assert_array_equal(got, values[grouped])
        np.testing.assert_array_equal(got_begins, begins)
        assert got.dtype == dtype


def test_no_pairs():
    grouped, begins = rows_by_request([[], []], RequestCodes())
    assert grouped.size == 0 and begins.size == 0
    codes, rows = pair_codes([], RequestCodes())
    assert codes.size == rows.size == 0
