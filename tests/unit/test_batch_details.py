"""``ms.rid_detail`` text: the row-by-row formatter writes exactly what json.dumps writes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from otel_vllm_ascend.handlers.common import DETAIL_KEYS, details_json

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
