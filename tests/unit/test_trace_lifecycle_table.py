"""The trace's request lifecycle as ids and an int64 table (trace_requests._request_lifecycle)
against the dict of tuples it was: same ids in the same order, same values."""

import math

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis.trace_requests import _request_lifecycle, _RequestSlices

NONE = _RequestSlices._NONE


def _reference(requests, origin_us):
    """The dict the function returned before (the request table's path)."""
    def column(name):
        if name not in requests.columns:
            return [None] * len(requests)
        values = requests[name].to_numpy(dtype="float64", na_value=np.nan)
        return [None if not math.isfinite(v) else int(round((v - origin_us) * 1000))
                for v in values.tolist()]

    lifecycle = {}
    for index, (rid, *times) in enumerate(zip(
            requests["http_rid"].tolist(), column("arrival_us"), column("first_scheduled_us"),
            column("first_token_us"), column("end_us"))):
        lifecycle[str(rid)] = (*times, index)
    return lifecycle


def _requests(rng, rows, duplicates, drop):
    ids = [f"r{i}" for i in range(rows)]
    if duplicates and rows > 2:
        for _ in range(rows // 3):
            ids[int(rng.integers(0, rows))] = ids[int(rng.integers(0, rows))]
    table = {"http_rid": ids}
    for name in ("arrival_us", "first_scheduled_us", "first_token_us", "end_us"):
        values = rng.uniform(1.7e15, 1.7e15 + 1e9, rows)
        values[rng.random(rows) < 0.2] = np.nan
        values[rng.random(rows) < 0.05] = np.inf
        halves = rng.random(rows) < 0.2  # half ns after the origin's quarter µs: to even
        values[halves] = np.round(values[halves]) + 0.0005
        table[name] = values
    frame = pd.DataFrame(table)
    return frame.drop(columns=[drop]) if drop else frame


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("drop", [None, "first_token_us"])
def test_the_table_is_the_dict_of_tuples(seed, duplicates, drop):
    rng = np.random.default_rng(seed)
    requests = _requests(rng, int(rng.integers(1, 300)), duplicates, drop)
    origin = 1.7e15 - 123.25
    rids, table = _request_lifecycle(pd.DataFrame(), requests, np.empty(0, np.int64),
                                     np.empty(0, np.int64), [], origin)
    want = _reference(requests, origin)
    assert rids == list(want)
    assert table.dtype == np.int64 and table.shape == (len(want), 5)
    assert [tuple(None if v == NONE else v for v in row) for row in table.tolist()] == \
        list(want.values())


def test_without_a_request_table_the_records_time_the_requests():
    names = ["httpReq", "batchFrameworkProcessing", "httpRes", "other", "httpReq", "httpRes",
             "batchFrameworkProcessing"]
    rids = [["a"], ["a", "b"], ["a"], ["c"], ["b"], ["b"], ["a"]]
    start = np.array([10, 20, 30, 35, 5, 50, 15], dtype=np.int64)
    end = start + 7
    frame = pd.DataFrame({"rids": pd.Series(rids, dtype=object)})
    got_rids, table = _request_lifecycle(frame, None, start, end, names, 0.0)
    assert got_rids == ["a", "b"]
    assert table.tolist() == [[10, 15, NONE, 37, NONE], [5, 20, NONE, 57, NONE]]
    empty_rids, empty = _request_lifecycle(frame.iloc[:0], None, start[:0], end[:0], [], 0.0)
    assert empty_rids == [] and empty.shape == (0, 5)
