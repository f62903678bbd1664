"""request_summary's inter-token gaps, computed a chunk of (record, request) pairs at a time,
against the plain whole-array computation: sort every pair by request rank then time, take
the differences within each kept request."""

import numpy as np
import pytest
from analysis_pairs_data import random_outputs, tables_of

from otel_vllm_ascend.analysis import summaries


def _whole(codes, rows, times, ranks, kept):
    pair_times = times[rows]
    order = np.lexsort((pair_times, ranks[codes]))  # by rank, then time, ties in pair order
    code, time = codes[order], pair_times[order]
    keep = kept[code]
    code, time = code[keep], time[keep]
    return np.diff(time)[code[1:] == code[:-1]]


def _case(seed, in_order, with_nan=False):
    rng = np.random.default_rng(seed)
    requests, records = 13, 60
    times = np.round(rng.uniform(0, 50, records), 1)  # rounded: ties between records
    if in_order:
        times = np.sort(times)
    if with_nan:
        times[rng.integers(0, records, 3)] = np.nan
    lengths = rng.integers(0, 6, records)
    rows = np.repeat(np.arange(records), lengths)
    codes = rng.integers(0, requests, len(rows)).astype(np.int32)
    ranks = rng.permutation(requests).astype(np.int32)
    kept = rng.random(requests) < 0.7
    return codes, rows, times, ranks, kept


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("in_order, with_nan", [(True, False), (False, False), (False, True)])
def test_chunked_gaps_equal_the_whole_computation(monkeypatch, chunk, seed, in_order, with_nan):
    monkeypatch.setattr(summaries, "CHUNK_PAIRS", chunk)
    case = _case(seed, in_order, with_nan)
    got = summaries._gaps_by_request(*case).us()
    want = _whole(*case)
    assert got.shape == want.shape and len(want) > 0
    np.testing.assert_array_equal(got, want)  # same values in the same order, NaN alike


def test_no_pairs():
    empty = np.zeros(0, dtype=np.int32)
    got = summaries._gaps_by_request(empty, empty, np.zeros(0), np.arange(2), np.ones(2, bool))
    assert len(got) == 0 and got.ms().size == 0


@pytest.mark.parametrize("chunk", [1, 3])
def test_time_order_checked_across_chunks(monkeypatch, chunk):
    monkeypatch.setattr(summaries, "CHUNK_PAIRS", chunk)
    rows = np.array([0, 1, 2, 3])
    assert summaries._pairs_in_time_order(rows, np.array([1.0, 2.0, 2.0, 3.0]))
    assert not summaries._pairs_in_time_order(rows, np.array([1.0, 2.0, 3.0, 2.5]))
    assert not summaries._pairs_in_time_order(rows, np.array([1.0, 2.0, np.nan, 3.0]))


@pytest.mark.parametrize("with_nan", [False, True])
def test_statistics_of_an_owned_array_are_those_of_a_copy(with_nan):
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 100, 1001) / 3.0
    if with_nan:
        values[[5, 17]] = [np.nan, np.inf]
    kept = values.copy()
    want = summaries.statistics_row("gaps", values)
    assert np.array_equal(values, kept, equal_nan=True)  # not owned: left as it was
    assert summaries.statistics_row("gaps", values, owned=True) == want


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("in_order, with_nan", [(True, False), (False, False), (True, True)])
def test_gaps_of_output_records_read_twice_in_chunks(monkeypatch, chunk, seed, in_order,
                                                     with_nan):
    # pooled_gaps counts the outputs' pairs a chunk of whole records at a time, then
    # reads them again to place the gaps (records in time order), or falls back to every pair
    # at once: against the whole computation on every pair.
    import pandas as pd

    from otel_vllm_ascend.analysis import rid_pairs

    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(11)]
    records = 50
    rid_lists, times = random_outputs(rng, ids, records, 50, in_order, with_nan)
    names = np.where(rng.random(records) < 0.85, "detokenize", "httpRes")
    frame = pd.DataFrame({"name": names, "rids": pd.Series(rid_lists, dtype=object),
                          "start_us": times})
    partial = rng.random(len(ids)) < 0.3
    requests = pd.DataFrame({"http_rid": ids, "partial": partial})

    outputs = frame.loc[frame["name"] == "detokenize"]
    whole = rid_pairs.RequestCodes()
    codes, rows = rid_pairs.pair_codes(outputs["rids"].tolist(), whole)
    kept = np.asarray([not partial[ids.index(rid)] for rid in whole.ids()])
    want = _whole(codes, rows, outputs["start_us"].to_numpy(), whole.ranks(), kept) / 1000.0

    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    monkeypatch.setattr(summaries, "CHUNK_PAIRS", chunk)
    got = summaries.pooled_gaps(frame, requests).ms()
    assert got.shape == want.shape and len(want) > 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("chunk", [1, 3])
def test_pair_counts_and_time_order_across_chunks(monkeypatch, chunk):
    from otel_vllm_ascend.analysis import rid_pairs

    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    lists = [["a", "b"], [], ["b"], ["c", "a"]]
    coder = rid_pairs.RequestCodes()
    counts, ordered = rid_pairs.pair_counts(lists, np.array([1.0, 5.0, 2.0, 2.0]), coder)
    assert list(coder.ids()) == ["a", "b", "c"] and counts.tolist() == [2, 2, 1]
    assert ordered  # the empty record's time (5.0) is no pair's
    for late in ([1.0, 0.0, 2.0, 1.5], [np.nan, 0.0, 2.0, 3.0], [1.0, 0.0, 2.0, np.nan]):
        assert not rid_pairs.pair_counts(lists, np.array(late), rid_pairs.RequestCodes())[1]
    # Only codes below 1 ("a") counted and checked: "c" (code 2) out of order does not count.
    coder = rid_pairs.RequestCodes()
    counts, ordered = rid_pairs.pair_counts(lists, np.array([1.0, 5.0, 2.0, 3.0]), coder,
                                            below=1)
    assert counts.tolist() == [2, 0, 0] and ordered


def test_gaps_from_the_steps_read_only_step_ids_and_request_ids():
    # Without output records the gaps come from the engine steps: the CLI passes only the
    # (step_id, rid) columns of the (step, request) table by then.
    import pandas as pd

    from otel_vllm_ascend.analysis.frame import RecordBuilder

    b = RecordBuilder()
    mark = iter(range(100))
    for rid in ("a", "b"):
        b.add("s", 1, 1, next(mark), 0.0, 1.0, {"name": "httpReq", "rid": rid})
    for at, rids in ((1.0, ["a"]), (3.0, ["a", "b"]), (6.5, ["a", "b"]), (10.0, ["b"])):
        detail = [{"rid": r, "iter": 0, "type": 1, "num_scheduled_tokens": 1} for r in rids]
        b.add("s", 1, 1, next(mark), at, at + 0.5, {"name": "batchFrameworkProcessing",
                                                     "rid": detail})
        b.add("s", 1, 1, next(mark), at + 0.5, at + 2.0, {"name": "modelExec", "rid": detail})
    for rid in ("a", "b"):
        b.add("s", 1, 1, next(mark), 12.0, 12.0, {"name": "httpRes", "rid": rid})
    frame = b.build([])
    requests, per_request, batches = tables_of(frame)
    gaps = summaries.pooled_gaps(frame, requests, per_request, batches).ms()
    np.testing.assert_array_equal(gaps, [0.002, 0.0035, 0.0035, 0.0035])  # a, then b
    narrow = per_request[["step_id", "rid"]]
    np.testing.assert_array_equal(
        summaries.pooled_gaps(frame, requests, narrow, batches).ms(), gaps)
    pd.testing.assert_frame_equal(
        summaries.request_summary(frame, requests, narrow, batches),
        summaries.request_summary(frame, requests, per_request, batches))


def test_gaps_from_steps_only_without_named_output_records():
    # The CLI keeps the (step, request) columns for request_summary only when this is true.
    import pandas as pd

    def frame(names, rids):
        return pd.DataFrame({"name": names, "rids": pd.Series(rids, dtype=object),
                             "start_us": np.arange(len(names), dtype="float64")})

    assert summaries.gaps_from_steps(frame(["httpReq", "httpRes"], [["a"], ["a"]]))
    assert summaries.gaps_from_steps(frame(["detokenize", "httpRes"], [[], ["a"]]))
    assert not summaries.gaps_from_steps(frame(["detokenize", "detokenize"], [[], ["a"]]))


def _quarter_gaps(rng, size):
    """Gaps as a real capture gives them: differences of float64 µs since the epoch."""
    times = 1.76e15 + np.cumsum(rng.integers(0, 400_000, size + 1)) * 0.25
    if size > 3:
        times[3] = times[2]  # a zero gap
    return np.diff(times)


@pytest.mark.parametrize("block", [8, 128, 1000, 1 << 20])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 100, 129, 1001, 4097, 70_001])
def test_quarter_gap_statistics_are_those_of_the_float64_array(monkeypatch, block, size):
    # The store holds whole quarter µs (int32); its statistics (the mean's pairwise sum a
    # block at a time, the percentiles from the quarters' order statistics) against
    # statistics_row of the float64 ms array the gaps were before.
    monkeypatch.setattr(summaries, "_MEAN_BLOCK", block)
    rng = np.random.default_rng(size)
    gaps_us = _quarter_gaps(rng, size)
    store = summaries.PooledGaps(size)
    order = rng.permutation(size)
    for part in np.array_split(order, 3):
        store.put(part, gaps_us[part])
    assert store.values.dtype == np.int32
    np.testing.assert_array_equal(store.us(), gaps_us)
    want_ms = gaps_us / 1000.0
    np.testing.assert_array_equal(store.ms(), want_ms)
    want = summaries.statistics_row("gaps", want_ms.copy())
    assert store.statistics_row("gaps") == want
    # Unrounded: the mean and the percentiles exactly as numpy gives them.
    monkeypatch.setattr(summaries, "round", lambda value, digits: value, raising=False)
    store = summaries.PooledGaps(size)
    store.put(np.arange(size), gaps_us)
    got = store.statistics_row("gaps")
    assert got["Average"] == float(np.mean(want_ms))
    assert [got["P50"], got["P90"], got["P99"]] == np.percentile(want_ms, [50, 90, 99]).tolist()


@pytest.mark.parametrize("odd", [0.1, np.nan, np.inf, 2.0 ** 31])
def test_a_gap_not_in_quarters_turns_the_store_to_float64(odd):
    rng = np.random.default_rng(5)
    gaps_us = _quarter_gaps(rng, 50)
    gaps_us[30] = odd if odd != 0.1 else gaps_us[30] + odd
    store = summaries.PooledGaps(50)
    store.put(np.arange(30), gaps_us[:30])
    assert store.values.dtype == np.int32
    store.put(np.arange(30, 50), gaps_us[30:])
    assert store.values.dtype == np.float64
    np.testing.assert_array_equal(store.us(), gaps_us)
    want = summaries.statistics_row("gaps", gaps_us / 1000.0)
    assert store.statistics_row("gaps") == want
