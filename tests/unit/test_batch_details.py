"""``ms.rid_detail`` text: the row-by-row formatter writes exactly what json.dumps writes;
queue changes between two snapshots."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from otel_vllm_ascend.handlers.common import DETAIL_KEYS, details_json, queue_changes

_numbers = st.one_of(st.integers(-10**12, 10**12), st.booleans(), st.floats(allow_nan=False))
_rows = st.tuples(st.one_of(st.text(max_size=12), st.integers()), _numbers, _numbers, _numbers,
                  st.one_of(st.none(), _numbers), _numbers)


@given(st.lists(_rows, max_size=6))
def test_same_text_as_json_dumps(rows):
    expected = json.dumps([dict(zip(DETAIL_KEYS, row)) for row in rows], separators=(",", ":"))
    assert details_json(rows) == expected


def test_typical_batch():
    rows = [(f"cmpl-{i:016x}-0", i, i % 2, 1, None if i == 3 else 64, 64 + i) for i in range(8)]
    rows.append(('quote"and\\é\n', 0, 0, 1, 2, 3))
    text = details_json(rows)
    assert json.loads(text)[3]["num_prompt_tokens"] is None
    assert text == json.dumps([dict(zip(DETAIL_KEYS, r)) for r in rows], separators=(",", ":"))


def test_queue_changes_match_a_pass_over_each_queue():
    """Left / joined members by set operations, ordered as in their queue."""
    import random

    class Member:
        def __init__(self, index):
            self.request_id = f"r{index}"

    def by_passes(before, after):
        return ([m.request_id for m in before if m not in set(after)],
                [m.request_id for m in after if m not in set(before)])

    pool = [Member(i) for i in range(40)]
    rng = random.Random(7)
    for _ in range(500):
        before = rng.sample(pool, rng.randint(0, 20))
        after = [m for m in before if rng.random() > 0.2] + rng.sample(pool, rng.randint(0, 4))
        after = list(dict.fromkeys(after))  # members are in a queue at most once
        if rng.random() < 0.3:
            rng.shuffle(after)
        assert queue_changes(before, after) == by_passes(before, after)
        assert queue_changes(tuple(before), iter(after)) == by_passes(before, after)
    # the shapes of a real step (front left, end joined), which take the slice comparisons,
    # and their near misses: a member moved from the front to the end, one put back in front
    for _ in range(500):
        before = rng.sample(pool, rng.randint(0, 20))
        rest = [m for m in pool if m not in before]
        k = rng.randint(0, len(before))
        after = before[k:] + rng.sample(rest, rng.randint(0, 4))
        if before and rng.random() < 0.3:
            after.append(before[0])  # left the front, back at the end: no change for it
            after = list(dict.fromkeys(after))
        if rng.random() < 0.2:
            after.insert(0, rng.choice(pool))
            after = list(dict.fromkeys(after))
        assert queue_changes(before, after) == by_passes(before, after)
