"""The per-(step, request) table: compact and plain request dicts read alike, each number
column narrowed on its own (float16 or float32 only when every value survives), step ids
int32."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder
from otel_vllm_ascend.analysis.rid_detail import compact
from otel_vllm_ascend.analysis.rid_lists import TableIds
from otel_vllm_ascend.analysis.steps import rid_values, step_requests


def _item(rid, it, kind, scheduled, prompt=8, computed=0):
    return {"rid": rid, "iter": it, "type": kind, "num_scheduled_tokens": scheduled,
            "num_prompt_tokens": prompt, "num_computed_tokens": computed}


def _steps(details, rids):
    return pd.DataFrame({"step_id": np.arange(len(details), dtype="int64"),
                         "rid_detail": pd.Series(details, dtype=object),
                         "rids": pd.Series(rids, dtype=object)})


def test_pieces_of_every_kind_in_step_order():
    first = [_item("a", 0, 0, 8), _item("b", 0, 0, 5, prompt=5)]
    held = compact(first, ["a", "b"])
    assert held is not None
    plain = [{"rid": "a", "iter": 1, "num_scheduled_tokens": 1},  # no type: iter 1 = decode
             {"rid": "c", "iter": 0, "num_scheduled_tokens": "x"}]  # not a number: NaN
    table = step_requests(_steps([held, plain, None], [["a", "b"], ["a", "c"], ["d"]]))
    assert table["step_id"].tolist() == [0, 0, 1, 1, 2]
    assert table["rid"].tolist() == ["a", "b", "a", "c", "d"]
    assert table["type"].tolist()[:4] == [0.0, 0.0, 1.0, 0.0]
    assert math.isnan(table["type"].iloc[4])  # neither type nor iter: unknown
    assert table["num_scheduled_tokens"].tolist()[:3] == [8.0, 5.0, 1.0]
    assert math.isnan(table["num_scheduled_tokens"].iloc[3])
    assert table["num_prompt_tokens"].tolist()[:2] == [8.0, 5.0]
    assert table["step_id"].dtype == np.int32
    assert all(table[c].dtype == np.float16 for c in table.columns[2:])


def test_a_column_past_float32_stays_float64_and_the_others_narrow():
    big = 2**24 + 1  # float32 would round it
    items = [_item("a", 0, 0, 8, prompt=big), _item("b", 3, 1, 1)]
    table = step_requests(_steps([compact(items, ["a", "b"])], [["a", "b"]]))
    assert table["num_prompt_tokens"].dtype == np.float64
    assert table["num_prompt_tokens"].tolist() == [float(big), 8.0]
    assert table["iter"].dtype == table["num_scheduled_tokens"].dtype == np.float16
    assert table["iter"].tolist() == [0.0, 3.0]


def test_float16_only_when_every_value_survives_it():
    # 2049 rounds in float16 (whole numbers are exact up to 2**11), 70000 overflows it; 4096
    # is exact. None may be rounded or turned into inf, and the overflow warns nowhere.
    items = [_item("a", 2049, 0, 4096, prompt=70000, computed=0.5),
             _item("b", 3, 1, 1, prompt=8, computed=2.25)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = step_requests(_steps([items], [["a", "b"]]))  # fractions: plain dicts
    assert table["iter"].dtype == table["num_prompt_tokens"].dtype == np.float32
    assert table["num_scheduled_tokens"].dtype == table["num_computed_tokens"].dtype == np.float16
    assert table["iter"].tolist() == [2049.0, 3.0]
    assert table["num_prompt_tokens"].tolist() == [70000.0, 8.0]
    assert table["num_scheduled_tokens"].tolist() == [4096.0, 1.0]
    assert table["num_computed_tokens"].tolist() == [0.5, 2.25]


def test_no_requests_at_all():
    table = step_requests(_steps([None], [[]]))
    assert len(table) == 0 and table["step_id"].dtype == np.int64
    assert list(table.columns) == ["step_id", "rid", "iter", "type", "num_scheduled_tokens",
                                   "num_prompt_tokens", "num_computed_tokens"]


def test_kinds_without_a_type_come_from_the_held_iterations():
    # The kinds are made after the iterations are narrowed: from the narrowed values, which
    # are the iterations exactly (float32 here: 70000 is past float16).
    items = [{"rid": "a", "iter": 70000}, {"rid": "b", "iter": 0}, {"rid": "c", "type": 0,
                                                                     "iter": 5},
             {"rid": "d"}]
    table = step_requests(_steps([items], [["a", "b", "c", "d"]]))
    assert table["iter"].dtype == np.float32
    assert table["type"].tolist()[:3] == [1.0, 0.0, 0.0]
    assert math.isnan(table["type"].iloc[3])


def _whole_column_type(column):
    """The type the table's columns were narrowed to before they were made a group of rows at
    a time: the first of float16 and float32 that the whole float64 column survives."""
    for dtype in (np.float16, np.float32):
        with np.errstate(over="ignore"):
            if np.array_equal(column.astype(dtype), column, equal_nan=True):
                return np.dtype(dtype)
    return np.dtype(np.float64)


@pytest.mark.parametrize("seed", range(4))
def test_columns_made_a_group_of_rows_at_a_time_are_the_whole_columns(monkeypatch, seed):
    """Each number column made a few rows at a time (the type found over every group, then
    the column filled in it) has the values and the type of the whole float64 column
    narrowed at once: values that need float32 or float64, NaN and a missing ``type`` in a
    random step, compact and plain steps mixed."""
    import otel_vllm_ascend.analysis.steps as steps_module

    rng = np.random.default_rng(seed)
    details, rids = [], []
    for step in range(30):
        names = [f"r{step}-{i}" for i in range(rng.integers(1, 6))]
        items = [_item(name, int(rng.integers(0, 3)), int(rng.integers(0, 2)),
                       int(rng.integers(1, 2048))) for name in names]
        if rng.random() < 0.3 or step == 7 + seed:  # plain dicts: some without a type
            for item in items:
                if rng.random() < 0.5:
                    del item["type"]
            if step == 7 + seed:
                items[0]["num_scheduled_tokens"] = 2049 if seed % 2 else 0.1
                items[-1]["num_prompt_tokens"] = float("nan")
            details.append(items)
        else:
            details.append(compact(items, names))
        rids.append(names)
    steps_table = _steps(details, rids)
    monkeypatch.setattr(steps_module, "_FILLED_ROWS", 1 << 30)
    whole = step_requests(steps_table)
    for chunk in (1, 3, 7):
        monkeypatch.setattr(steps_module, "_FILLED_ROWS", chunk)
        pd.testing.assert_frame_equal(step_requests(steps_table), whole)
    for key in ("iter", "type", "num_scheduled_tokens", "num_prompt_tokens",
                "num_computed_tokens"):
        assert whole[key].dtype == _whole_column_type(whole[key].to_numpy(dtype="float64"))
    assert whole["num_scheduled_tokens"].dtype == (np.float32 if seed % 2 else np.float64)


def test_request_ids_are_codes_into_object_categories():
    """Codes (4 bytes a row at most, not an 8-byte pointer) into object categories (not pandas
    3's inferred string dtype, whose inference from millions of ids was the largest transient
    of the table's build), numbered in order of first appearance; rid_values gives the ids,
    None for a batch entry without one."""
    held = compact([_item("b", 0, 0, 8), _item("a", 0, 0, 5)], ["b", "a"])
    plain = [{"rid": None, "iter": 1}, {"rid": "c", "iter": 1}, {"iter": 2}]
    table = step_requests(_steps([held, plain, None], [["b", "a"], ["c"], ["a"]]))
    assert isinstance(table["rid"].dtype, pd.CategoricalDtype)
    assert table["rid"].cat.categories.dtype == object
    assert table["rid"].cat.categories.tolist() == ["b", "a", "c", ""]
    assert rid_values(table["rid"]).tolist() == ["b", "a", None, "c", "", "a"]
    assert rid_values(table["rid"], slice(1, 3)).tolist() == ["a", None]
    assert rid_values(pd.Series(["x", None], dtype=object)).tolist() == ["x", None]


def test_request_ids_read_through_the_frames_id_table():
    """A compact step's ids held in the frame's id table are coded through the table's codes:
    the same ids as the ids read one by one, for steps whose lists share ids."""
    builder = RecordBuilder()
    batches = [["r1", "r2", "r3"], ["r2", "r3"], ["r4", "r1"], ["r3"]]
    for index, rids in enumerate(batches):
        builder.add("src", 1, 1, index, float(index), float(index) + 1.0,
                    {"name": "modelExec", "type": 2,
                     "rid": [_item(rid, 1, 1, 1) for rid in rids]})
    frame = builder.build([ProcessInfo("h", 1, sources=["src"])])
    details = frame["rid_detail"].tolist()
    assert all(isinstance(detail.rids, TableIds) for detail in details)
    table = step_requests(_steps(details, [list(rids) for rids in batches]))
    assert rid_values(table["rid"]).tolist() == [rid for rids in batches for rid in rids]
    assert table["rid"].cat.categories.tolist() == ["r1", "r2", "r3", "r4"]


@pytest.mark.parametrize("seed", range(3))
def test_compact_steps_read_a_layout_at_a_time_are_their_dicts(seed):
    """A chunk's compact steps are read by layout (their fields joined, then put at their
    rows): every value is the one its dict holds, whatever the mix of layouts (field widths
    from int8 to int64, a key some layouts lack, dicts of an id only) and plain steps."""
    rng = np.random.default_rng(seed)
    details, rids, expected = [], [], []
    for step in range(40):
        names = [f"r{step}-{i}" for i in range(rng.integers(1, 5))]
        shape = rng.integers(0, 4)
        items = []
        for name in names:
            item = _item(name, int(rng.integers(0, 3)), int(rng.integers(0, 2)),
                         int(rng.choice([5, 300, 70000, 2**40])))
            if shape == 1:
                del item["num_computed_tokens"], item["type"]
            elif shape == 2:
                item = {"rid": name}
            items.append(item)
        expected += items
        details.append(items if shape == 3 else compact(items, names))
        assert shape == 3 or details[-1] is not None
        rids.append(names)
    table = step_requests(_steps(details, rids))
    assert table["rid"].tolist() == [item["rid"] for item in expected]
    for key in ("iter", "num_scheduled_tokens", "num_prompt_tokens", "num_computed_tokens"):
        want = [float(item.get(key, np.nan)) for item in expected]
        np.testing.assert_array_equal(table[key].to_numpy(dtype="float64"), want)
    kinds = [float(item["type"]) if "type" in item
             else (float(item["iter"] > 0) if "iter" in item else np.nan) for item in expected]
    np.testing.assert_array_equal(table["type"].to_numpy(dtype="float64"), kinds)
