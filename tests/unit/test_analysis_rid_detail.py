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
    # each key in the narrowest type holding its values
    assert [str(detail.fields.dtype[n]) for n in detail.fields.dtype.names] == [
        "int8", "int8", "int8"]
    assert detail.fields.itemsize == 3
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
    assert detail.fields.dtype["f0"] == np.int32
    assert detail.column("n").sum() == 39_993


def test_large_values_keep_int64():
    detail = compact([{"rid": "a", "n": 2**40}], ["a"])
    assert detail.values.dtype == np.int64 and repr(detail) == repr([{"rid": "a", "n": 2**40}])


def test_key_with_percent_sign_formats():
    items = [{"rid": "a", "100%": 3}]
    assert repr(compact(_copy(items), ["a"])) == repr(items)


def test_random_batches_read_as_the_dicts_they_replace():
    """Random keys, widths and magnitudes (each key narrowed on its own): every way of reading
    a RequestDetail gives what the list of dicts gives, also after pickling (parallel reads)."""
    import pickle
    import random

    rng = random.Random(3)
    for _ in range(200):
        keys = ["rid"] + rng.sample(["iter", "type", "n", "m", "k"], rng.randint(0, 5))
        rng.shuffle(keys)
        limits = {key: rng.choice([1, 127, 128, 40_000, 2**33]) for key in keys}
        items = [{key: f"r{i}" if key == "rid" else rng.randint(-limits[key], limits[key])
                  for key in keys} for i in range(rng.randint(1, 30))]
        rids = [item["rid"] for item in items]
        detail = compact(_copy(items), rids)
        for got in (detail, pickle.loads(pickle.dumps(detail))):
            assert list(got) == items and repr(got) == repr(items) and len(got) == len(items)
            index = rng.randrange(len(items))
            assert got[index] == items[index] and got[-index - 1] == items[-index - 1]
            for key in keys:
                if key == "rid":
                    continue
                assert got.column(key).tolist() == [item[key] for item in items]
            assert got.values.tolist() == [[item[k] for k in keys if k != "rid"]
                                           for item in items]
        assert detail.fields.dtype is pickle.loads(pickle.dumps(detail)).fields.dtype
