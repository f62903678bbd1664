"""The request spans' order in the trace: by (start, finish), ties in the order the requests
were listed, as the stable sort of per-request tuples gave before the spans were arrays."""

import random

import numpy as np

from otel_vllm_ascend.analysis.trace_requests import _span_order


def _tuple_order(starts, finishes):
    spans = [(start, finish, position) for position, (start, finish) in
             enumerate(zip(starts, finishes))]
    spans.sort(key=lambda s: (s[0], s[1]))
    return [s[2] for s in spans]


def test_span_order_matches_the_tuple_sort_ties_included():
    rng = random.Random(13)
    for size in (0, 1, 2, 7, 200, 5_000):
        # Few distinct values: many ties on start, on finish and on both.
        starts = [rng.randrange(-3, 12) for _ in range(size)]
        finishes = [start + rng.randrange(3, 6) for start in starts]
        got = _span_order(np.array(starts, dtype="int64"), np.array(finishes, dtype="int64"))
        assert got.tolist() == _tuple_order(starts, finishes)


def test_span_order_large_times_and_equal_spans_keep_their_order():
    base = 2**62
    starts = np.array([base + 5, base, base + 5, base, base], dtype="int64")
    finishes = np.array([base + 9, base + 9, base + 8, base + 9, base + 3], dtype="int64")
    assert _span_order(starts, finishes).tolist() == [4, 1, 3, 2, 0]
