"""The stage breakdown's first token-yielding request per step, found a chunk of (step,
request) rows at a time, against the whole-table computation (chunks cutting through steps)."""

import numpy as np
import pandas as pd
import pytest
from analysis_pairs_data import random_outputs

from otel_vllm_ascend.analysis import stages


def _table(seed):
    rng = np.random.default_rng(seed)
    rows = 80
    step_id = np.sort(rng.integers(0, 25, rows)).astype(np.int32)
    prompt = rng.integers(1, 20, rows).astype("float64")
    prompt[rng.random(rows) < 0.1] = np.nan  # unknown prompt length
    kind = rng.integers(0, 2, rows).astype("float64")
    kind[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame({
        "step_id": step_id, "rid": [f"r{i % 9}" for i in range(rows)],
        "type": kind.astype(np.float32),
        "num_scheduled_tokens": rng.integers(0, 10, rows).astype(np.float32),
        "num_prompt_tokens": prompt.astype(np.float32),
        "num_computed_tokens": rng.integers(0, 15, rows).astype(np.float32)})


def _whole(table):
    kind = table["type"].to_numpy()
    done = (np.add(table["num_computed_tokens"].to_numpy(),
                   table["num_scheduled_tokens"].to_numpy(), dtype="float64")
            >= table["num_prompt_tokens"].to_numpy())
    unknown = np.isnan(table["num_prompt_tokens"].to_numpy())
    yields = (kind == 1) | ((kind == 0) & (done | unknown))
    return table.loc[yields].drop_duplicates("step_id", keep="first")


@pytest.mark.parametrize("chunk", [1, 4, 13, 1000])
@pytest.mark.parametrize("seed", range(5))
def test_first_yielding_rows_equal_the_whole_table_computation(monkeypatch, chunk, seed):
    monkeypatch.setattr(stages, "CHUNK_PAIRS", chunk)
    table = _table(seed)
    got = table.iloc[stages._first_yielding_rows(table)]
    want = _whole(table)
    assert len(want) > 3
    pd.testing.assert_frame_equal(got, want)


def test_no_rows():
    assert stages._first_yielding_rows(_table(0).iloc[:0]).size == 0


@pytest.mark.parametrize("seed", range(6))
def test_first_output_at_or_after_equals_merge_asof(seed):
    # Each request's outputs grouped by code (rid_pairs.by_code), then one search per
    # request asked: the same values as a forward merge_asof by request over all outputs.
    from otel_vllm_ascend.analysis.rid_pairs import by_code

    rng = np.random.default_rng(seed)
    requests = 12
    out_codes = rng.integers(0, requests, 200).astype(np.int32)
    out_times = np.sort(np.round(rng.uniform(0, 100, 200), 1))  # ties between outputs
    asked_codes = rng.integers(0, requests + 3, 40).astype(np.int32)  # some never output
    asked_times = np.round(rng.uniform(0, 110, 40), 1)
    asked_times[:5] = out_times[rng.integers(0, 200, 5)]  # exact matches count
    grouped, begins = by_code(out_codes, out_times, requests + 3)
    got = stages._first_at_or_after(grouped, begins, asked_codes, asked_times)
    # The same with the outputs' positions grouped and their times looked up.
    positions, _ = by_code(out_codes, np.arange(200, dtype=np.int32), requests + 3)
    np.testing.assert_array_equal(
        stages._first_at_or_after(positions, begins, asked_codes, asked_times, out_times), got)
    asked = pd.DataFrame({"i": np.arange(40), "rid": asked_codes, "time": asked_times})
    emitted = pd.DataFrame({"rid": out_codes, "time": out_times, "out": out_times})
    want = pd.merge_asof(asked.sort_values("time", kind="stable"), emitted, on="time",
                         by="rid", direction="forward").sort_values("i")["out"].to_numpy()
    assert np.isnan(want).any() and (~np.isnan(want)).sum() > 10
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
@pytest.mark.parametrize("seed", range(4))
def test_asked_pairs_equal_the_whole_pair_computation(monkeypatch, chunk, seed):
    # The outputs' pairs of the asked requests, kept a chunk of pairs at a time (chunks of
    # whole records, cutting through requests), against every pair coded then filtered.
    from otel_vllm_ascend.analysis import rid_pairs

    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(12)]
    rid_lists, start_us = random_outputs(rng, ids, 40, 100, True, False)
    asked = list(rng.choice(ids, 5, replace=False))

    whole = rid_pairs.RequestCodes()
    asked_codes = whole.codes(np.asarray(asked, dtype=object))
    codes, rows = rid_pairs.pair_codes(rid_lists, whole)
    wanted = np.zeros(len(whole), dtype=bool)
    wanted[asked_codes] = True
    keep = wanted[codes]

    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    coder = rid_pairs.RequestCodes()
    coder.codes(np.asarray(asked, dtype=object))
    got_codes, got_rows = stages._asked_pairs(rid_lists, coder, len(asked))
    assert keep.any() and not keep.all()
    np.testing.assert_array_equal(got_codes, codes[keep])
    np.testing.assert_array_equal(got_rows, rows[keep])
    assert coder.code_of == whole.code_of  # every id coded, in the same order


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("in_order, with_nan", [(True, False), (False, False), (True, True)])
def test_asked_output_rows_equal_the_whole_grouping(monkeypatch, chunk, seed, in_order,
                                                     with_nan):
    # Counted, then placed a chunk of pairs at a time (or sorted at once when out of time
    # order): against every pair coded, the asked ones kept, sorted by time, grouped by code.
    from otel_vllm_ascend.analysis import rid_pairs

    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(12)]
    rid_lists, start_us = random_outputs(rng, ids, 40, 100, in_order, with_nan)
    asked = np.asarray(rng.choice(ids, 5, replace=False), dtype=object)

    whole = rid_pairs.RequestCodes()
    whole.codes(asked)
    codes, rows = rid_pairs.pair_codes(rid_lists, whole)
    keep = codes < len(asked)
    codes, times = codes[keep], start_us[rows[keep]]
    order = np.argsort(times, kind="stable")
    want_grouped, want_begins = rid_pairs.by_code(codes[order], times[order], len(whole))

    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    coder = rid_pairs.RequestCodes()
    coder.codes(asked)
    grouped, begins = stages._asked_output_rows(rid_lists, start_us, coder)
    assert len(want_grouped) > 0 and coder.code_of == whole.code_of
    assert grouped.dtype == np.int32
    np.testing.assert_array_equal(start_us[grouped], want_grouped)
    np.testing.assert_array_equal(begins, want_begins)


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("in_order, with_nan", [(True, False), (False, False), (True, True)])
def test_first_outputs_in_one_pass_equal_the_grouped_search(monkeypatch, chunk, seed,
                                                            in_order, with_nan):
    # Read once in time order, a chunk of pairs at a time: the same answers as the asked
    # requests' outputs grouped, then searched; None (the caller groups) out of time order.
    from otel_vllm_ascend.analysis import rid_pairs

    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(12)]
    rid_lists, start_us = random_outputs(rng, ids, 40, 100, in_order, with_nan)
    asked_ids = np.asarray(rng.choice(ids + ["never"], 30), dtype=object)  # repeats
    asked_times = np.round(rng.uniform(-5, 110, 30), 1)
    asked_times[:6] = start_us[rng.integers(0, 40, 6)]  # exact matches count
    asked_times[np.isnan(asked_times)] = 50.0

    whole = rid_pairs.RequestCodes()
    asked_codes = whole.codes(asked_ids)
    grouped, begins = stages._asked_output_rows(rid_lists, start_us, whole)
    want = stages._first_at_or_after(grouped, begins, asked_codes, asked_times, start_us)

    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    coder = rid_pairs.RequestCodes()
    codes = coder.codes(asked_ids)
    got = stages._first_outputs_in_time_order(rid_lists, start_us, coder, len(coder), codes,
                                              asked_times)
    check = rid_pairs.RequestCodes()
    check.codes(asked_ids)
    _, ordered = rid_pairs.pair_counts(rid_lists, start_us, check, below=len(check))
    assert ordered == (got is not None)  # only the asked requests' pairs' order counts
    if got is None:
        assert not in_order or with_nan
        return
    assert np.isnan(want).any() and (~np.isnan(want)).sum() > 5
    np.testing.assert_array_equal(got, want)
