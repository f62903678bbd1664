"""RequestDetail: a batch record's request dicts held compactly, reading like the list."""

import numpy as np

from otel_vllm_ascend.analysis.rid_detail import RequestDetail, compact

ITEMS = [{"rid": "a", "iter": 0, "type": 0, "num_scheduled_tokens": 113},
         {"rid": "b'x", "iter": 7, "type": 1, "num_scheduled_tokens": 1}]


def _copy(items):
    return [dict(item) for item in items]


def test_reads_like_the_list_of_dicts():
    detail = compact(_copy(ITEMS), ["a", "b'x"])
    assert isinstance(detail, RequestDetail)
    assert len(detail) == 2 and bool(detail)
    assert list(detail) == ITEMS and detail[1] == ITEMS[1] and detail[-1:] == ITEMS[-1:]
    assert detail == ITEMS and detail != None  # noqa: E711
    assert repr(detail) == repr(ITEMS)  # batch.csv's res_list
    assert detail.values.dtype == np.int16  # the narrowest type holding the values
    assert detail.column("num_scheduled_tokens").tolist() == [113, 1]
    assert detail.column("num_prompt_tokens") is None


def test_mapped_ids_are_the_ones_kept():
    detail = compact(_copy(ITEMS), ["ext-a", "ext-b"])
    assert [item["rid"] for item in detail] == ["ext-a", "ext-b"]


def test_other_shapes_stay_lists():
    assert compact([{"rid": "a", "iter": 0}, {"iter": 1, "rid": "b"}], ["a", "b"]) is None
    assert compact([{"rid": "a", "iter": 0.5}], ["a"]) is None
    assert compact([{"rid": "a", "iter": True}], ["a"]) is None
    assert compact([{"rid": "a"}, {"rid": "b", "iter": 1}], ["a", "b"]) is None
    assert compact([{"iter": 1}], ["a"]) is None


def test_values_past_int16_take_int32():
    items = [{"rid": "a", "n": 40_000}, {"rid": "b", "n": -7}]
    detail = compact(_copy(items), ["a", "b"])
    assert detail.values.dtype == np.int32 and repr(detail) == repr(items)
    assert detail.column("n").sum() == 39_993


def test_large_values_keep_int64():
    detail = compact([{"rid": "a", "n": 2**40}], ["a"])
    assert detail.values.dtype == np.int64 and repr(detail) == repr([{"rid": "a", "n": 2**40}])


def test_key_with_percent_sign_formats():
    items = [{"rid": "a", "100%": 3}]
    assert repr(compact(_copy(items), ["a"])) == repr(items)
