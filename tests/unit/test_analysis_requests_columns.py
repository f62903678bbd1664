"""request.csv reads the records frame's columns in place (category codes, RidLists,
RecordDicts at the records' positions): the same table as from a frame of plain object
columns (names as text, lists, dicts), at every chunk size of the pair passes."""

import numpy as np
import pandas as pd
import pytest
from analysis_pairs_data import frame_with_engine_rows, tables_of

from otel_vllm_ascend.analysis import requests, rid_pairs, steps
from otel_vllm_ascend.analysis.frame import RecordBuilder
from otel_vllm_ascend.analysis.record_dicts import RecordDicts, key_values


def _random_frame(seed):
    """Requests with API-server, queue, cache and state records in a random order of times,
    batch records listing several of them, links, and records without a request."""
    rng = np.random.default_rng(seed)
    b = RecordBuilder()
    ids = [f"r{i}" for i in range(12)]
    mark = 0

    def add(name, rid, start, **keys):
        nonlocal mark
        mark += 1
        b.add("s", 1, 1, mark, float(start), float(start) + float(rng.uniform(0, 3)),
              {"name": name, "rid": rid, **keys})

    for rid in ids:
        t = round(float(rng.uniform(0, 40)), 1)  # rounded: records of a request tie
        if rng.random() < 0.9:
            add("httpReq", rid, t)
        add("Enqueue", rid, t + 1)
        for queue in rng.choice(["waiting", "RUNNING", "Waiting"], rng.integers(0, 3)):
            add("Dequeue", rid, t + rng.integers(1, 4), **{"scope#QueueName": str(queue)})
        if rng.random() < 0.7:
            hit = [None, 0.5, True, 1][rng.integers(0, 4)]
            keys = {} if hit is None else {"hitCache": hit}
            add("CacheHitRate", rid, t + 2, **keys)
        if rng.random() < 0.3:
            add("ReqState", rid, t + 2, **{"RUNNING+": -1, "WAITING+": 1})
        for _ in range(rng.integers(0, 3)):
            add("detokenize", rid, t + rng.integers(3, 8))
        if rng.random() < 0.85:
            keys = {"recvTokenSize=": int(rng.integers(1, 99))} if rng.random() < 0.8 else {}
            if rng.random() < 0.8:
                keys["replyTokenSize="] = int(rng.integers(1, 50))
            add("httpRes", rid, t + rng.integers(5, 12), **keys)
    for _ in range(8):
        batch = [{"rid": str(r), "type": 0} for r in rng.choice(ids, rng.integers(1, 5),
                                                                replace=False)]
        add("modelExec", batch, rng.uniform(0, 50))
    add("link", ids[0], 1.0)
    add("nothing", None, 2.0)
    return b.build([])


def _plain(frame):
    """The same records in object columns: names as text, lists, dicts."""
    plain = frame.copy()
    plain["name"] = frame["name"].astype(object)
    plain["rids"] = pd.Series(frame["rids"].tolist(), dtype=object)
    for column in ("metrics", "metric_incs", "scopes", "attrs"):
        plain[column] = pd.Series(frame[column].tolist(), dtype=object)
    return plain


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_typed_frame_and_chunks_give_the_plain_frames_table(monkeypatch, seed, chunk):
    frame = _random_frame(seed)
    assert isinstance(frame["name"].dtype, pd.CategoricalDtype)
    assert isinstance(frame["metrics"].array, RecordDicts)
    want = tables_of(_plain(frame))[0]
    if chunk is not None:
        monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
        monkeypatch.setattr(requests, "ENGINE_CHUNK_ROWS", chunk)
    got = tables_of(frame)[0]
    assert len(want) == 12
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("seed", range(3))
def test_key_values_of_some_rows_are_those_rows_of_every_value(seed):
    frame = _random_frame(seed)
    rows = np.flatnonzero(np.random.default_rng(seed).random(len(frame)) < 0.4)
    for column, key in (("metrics", "recvTokenSize"), ("scopes", "QueueName"),
                        ("attrs", "hitCache")):
        for series in (frame[column], _plain(frame)[column]):
            got = key_values(series, key, "x", rows=rows)
            want = key_values(series, key, "x")[rows]
            assert got.dtype == object and got.tolist() == want.tolist()
            assert [type(v) for v in got] == [type(v) for v in want]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("steps_per_chunk", [1, 2, 5, 1000])
def test_rows_made_a_chunk_of_steps_at_a_time_give_the_whole_tables_table(seed,
                                                                          steps_per_chunk):
    """request.csv from steps.StepRequestChunks (the (step, request) table never whole), some
    batch entries without an id and some counts missing: the table of the whole table."""
    frame = frame_with_engine_rows(seed)
    step_table = steps.engine_steps(frame)
    assert len(step_table) == 13
    want = requests.build_requests(frame, step_table, steps.step_requests(step_table))
    got = requests.build_requests(frame, step_table,
                                  steps.StepRequestChunks(step_table, steps_per_chunk))
    pd.testing.assert_frame_equal(got, want)
    assert (want["steps"] > 0).any()
