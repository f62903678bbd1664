"""RecordDicts: the records' dict columns as typed tables per key tuple, read like the column
of dicts they replace (random dicts, shared and unshared; selections, sorting, concatenation,
one key's values)."""

import math
import pickle
import random

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis.record_dicts import RecordDicts, has_keys, key_values


def _same(a, b):
    """Equal dicts with the same key order and value types (NaN equal to NaN)."""
    assert list(a) == list(b)
    for key in a:
        x, y = a[key], b[key]
        assert type(x) is type(y), (key, x, y)
        if isinstance(x, float) and math.isnan(x):
            assert math.isnan(y)
        else:
            assert x == y
            if isinstance(x, float):
                assert math.copysign(1.0, x) == math.copysign(1.0, y)


def _random_dicts(seed, n=600):
    rng = random.Random(seed)
    shared = [{"QueueSize": float(rng.randrange(5))} for _ in range(4)]
    shared.append({"batch_size": rng.randrange(3)})
    out = []
    for _ in range(n):
        kind = rng.randrange(8)
        if kind == 0:
            out.append({})
        elif kind == 1:
            out.append(rng.choice(shared))
        elif kind == 2:  # a KV status: floats only, some special
            out.append({"TotalBlocks": 100.0, "UsedBlocks": float(rng.randrange(100)),
                        "UsagePercent": rng.choice([0.5, -0.0, float("nan"), 1e-300])})
        elif kind == 3:  # the same keys in another order
            out.append({"UsedBlocks": 3.0, "TotalBlocks": 9.0})
        elif kind == 4:  # a link: strings
            out.append({"from": f"r{rng.randrange(50)}", "to": str(rng.randrange(50))})
        elif kind == 5:  # values of mixed types, as written: 1, 1.0 and True are kept apart
            out.append({"hitCache": rng.choice([1, 1.0, True, None, "x", 0, -0.0])})
        elif kind == 6:  # values that are lists and dicts (two of equal length)
            out.append({"accepted": [rng.randrange(3), 1], "per_pos": {"0": 0.5},
                        "pair": [1, 2]})
        else:
            out.append({"a": float(rng.randrange(3)), "b": rng.randrange(3)})
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reads_like_the_dicts(seed):
    dicts = _random_dicts(seed)
    column = RecordDicts.from_dicts(dicts)
    assert len(column) == len(dicts)
    made = column.tolist()
    for a, b in zip(made, dicts):
        _same(a, b)
    for row in (0, 7, len(dicts) - 1):
        _same(column[row], dicts[row])
    for a, b in zip(column.to_numpy(dtype=object), dicts):
        _same(a, b)
    for a, b in zip(iter(column), dicts):
        _same(a, b)
    # A dict object shared by several records is stored once, and read back as one dict.
    first = {}
    for index, d in enumerate(dicts):
        first.setdefault(id(d), index)
    assert sum(len(t) for t in column.table.values) == len(
        {id(d) for d in dicts if d})
    for index, d in enumerate(dicts):
        assert made[index] is made[first[id(d)]]
    assert column.shapes.dtype == np.int8 and column.rows.dtype == np.int32
    assert column.table.values[1].dtype == np.float64 or any(
        t.dtype == np.float64 for t in column.table.values)


@pytest.mark.parametrize("seed", [4, 5])
def test_selections_sorting_and_concatenation_keep_the_dicts(seed):
    dicts = _random_dicts(seed, 300)
    rng = np.random.default_rng(seed)
    series = pd.Series(RecordDicts.from_dicts(dicts))
    plain = pd.Series(dicts, dtype=object)
    mask = rng.random(len(dicts)) < 0.4
    for got, want in ((series[mask], plain[mask]), (series.iloc[5:40], plain.iloc[5:40]),
                      (series.iloc[::-3], plain.iloc[::-3])):
        assert isinstance(got.array, RecordDicts)
        assert got.index.tolist() == want.index.tolist()
        for a, b in zip(got.tolist(), want.tolist()):
            _same(a, b)
    order = rng.permutation(len(dicts))
    frame = pd.DataFrame({"d": series, "k": np.arange(len(dicts))}).iloc[order]
    for a, b in zip(frame["d"].tolist(), [dicts[i] for i in order]):
        _same(a, b)
    both = pd.concat([series.iloc[:100], series.iloc[200:]], ignore_index=True)
    assert isinstance(both.array, RecordDicts)
    for a, b in zip(both.tolist(), dicts[:100] + dicts[200:]):
        _same(a, b)
    other = pd.Series(RecordDicts.from_dicts(dicts[:50]))  # another table
    mixed = pd.concat([series.iloc[:20], other], ignore_index=True)
    for a, b in zip(mixed.tolist(), dicts[:20] + dicts[:50]):
        _same(a, b)
    copied = frame.copy()
    for a, b in zip(copied["d"].tolist(), frame["d"].tolist()):
        _same(a, b)


@pytest.mark.parametrize("seed", [6, 7])
def test_one_key_is_the_dicts_get(seed):
    dicts = _random_dicts(seed)
    series = pd.Series(RecordDicts.from_dicts(dicts))
    plain = pd.Series(dicts, dtype=object)
    for key in ("QueueSize", "UsedBlocks", "UsagePercent", "hitCache", "from", "accepted",
                "pair", "b", "missing"):
        for got_column in (series, series.iloc[::2]):
            want_column = plain.loc[got_column.index]
            got = key_values(got_column, key)
            want = key_values(want_column, key)
            assert got.dtype == object and want.dtype == object
            assert len(got) == len(want_column)
            for x, y in zip(got.tolist(), want.tolist()):
                if isinstance(y, float) and math.isnan(y):
                    assert isinstance(x, float) and math.isnan(x)
                else:
                    assert type(x) is type(y) and x == y
    assert has_keys(series).tolist() == [bool(d) for d in dicts]
    assert has_keys(plain).tolist() == [bool(d) for d in dicts]
    floats = series.array.key_floats("UsedBlocks")
    want = [d.get("UsedBlocks", float("nan")) for d in dicts]
    assert np.array_equal(floats, np.array(want, dtype=float), equal_nan=True)


def test_empty_and_all_empty():
    column = RecordDicts.from_dicts([])
    assert len(column) == 0 and column.tolist() == []
    column = RecordDicts.from_dicts([{}, {}])
    assert column.tolist() == [{}, {}] and not has_keys(pd.Series(column)).any()
    assert column.key_values("a").tolist() == [None, None]


def test_missing_keys_give_the_default_and_present_none_stays_none():
    dicts = [{}, {"QueueName": None}, {"QueueName": "running"}, {"other": 1}]
    for series in (pd.Series(RecordDicts.from_dicts(dicts)), pd.Series(dicts, dtype=object)):
        assert key_values(series, "QueueName", "").tolist() == ["", None, "running", ""]
        assert key_values(series, "QueueName").tolist() == [None, None, "running", None]


def _same_tables(got, want):
    """The same shapes, tables (dtype, values, NaN alike), shape codes and rows."""
    assert got.table.shapes == want.table.shapes
    for a, b in zip(got.table.values, want.table.values):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == np.float64:
            np.testing.assert_array_equal(a, b)
        else:
            for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
                _same({"v": x}, {"v": y})
    assert got.shapes.dtype == want.shapes.dtype
    np.testing.assert_array_equal(got.shapes, want.shapes)
    np.testing.assert_array_equal(got.rows, want.rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("parts", [1, 2, 5, 9])
def test_parts_concatenated_are_the_table_of_all_their_dicts(seed, parts):
    """The parallel reader's parts (each pickled on its own, so no dict is shared between
    parts), their tables concatenated: what one table of every dict would be."""
    dicts = _random_dicts(seed, n=300)
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(dicts) + 1) for _ in range(parts - 1))
    bounds = [0, *cuts, len(dicts)]  # equal cuts make empty parts
    pieces = [pickle.loads(pickle.dumps(dicts[a:b])) for a, b in zip(bounds, bounds[1:])]
    got = RecordDicts.concat_parts([RecordDicts.from_dicts(piece) for piece in pieces])
    want = RecordDicts.from_dicts([d for piece in pieces for d in piece])
    _same_tables(got, want)
    for a, b in zip(got.tolist(), want.tolist()):
        _same(a, b)
    assert RecordDicts.from_dicts(got) is got  # made already: taken as is


def test_parts_of_floats_and_of_objects_under_one_key_tuple():
    float_part = RecordDicts.from_dicts([{"x": 1.0}, {"x": 2.5}])
    mixed_part = RecordDicts.from_dicts([{"x": 1}, {"x": -0.0}])
    got = RecordDicts.concat_parts([float_part, mixed_part, float_part])
    assert got.table.values[1].dtype == object
    want = RecordDicts.from_dicts([{"x": 1.0}, {"x": 2.5}, {"x": 1}, {"x": -0.0},
                                   {"x": 1.0}, {"x": 2.5}])
    _same_tables(got, want)
    empty = RecordDicts.concat_parts([])
    _same_tables(empty, RecordDicts.from_dicts([]))
