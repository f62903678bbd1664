"""batch.csv's per-step counts and token sums, a chunk of (step, request) rows at a time,
against one bincount over all rows (chunks cutting through steps; token values that are not
whole numbers, so a different order of addition would show)."""

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis import batches


def _table(seed, steps):
    rng = np.random.default_rng(seed)
    rows = 120
    tokens = rng.uniform(0, 1000, rows) / 7.0  # inexact sums: the order of addition shows
    tokens[rng.random(rows) < 0.15] = np.nan
    kind = rng.integers(0, 3, rows).astype("float64")  # 2: neither prefill nor decode
    kind[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame({"step_id": np.sort(rng.integers(0, steps, rows)).astype(np.int32),
                         "type": kind, "num_scheduled_tokens": tokens})


def _whole(table, n):
    idx = table["step_id"].to_numpy()
    kind = table["type"].to_numpy()
    tokens = table["num_scheduled_tokens"].to_numpy(dtype="float64")
    tok = np.nan_to_num(tokens, nan=0.0)
    sums = [np.bincount(idx[mask], weights=tok[mask], minlength=n)
            for mask in (kind == 0, kind == 1, np.ones(len(idx), bool))]
    return (np.bincount(idx, minlength=n).astype("float64"),
            np.bincount(idx[kind == 0], minlength=n).astype("float64"),
            np.bincount(idx[kind == 1], minlength=n).astype("float64"),
            np.bincount(idx[~np.isnan(tokens)], minlength=n) > 0, *sums)


@pytest.mark.parametrize("chunk", [1, 5, 17, 10_000])
@pytest.mark.parametrize("seed", range(4))
def test_chunked_step_counts_equal_one_pass(monkeypatch, chunk, seed):
    monkeypatch.setattr(batches, "STEP_CHUNK_ROWS", chunk)
    n = 30  # some steps have no rows
    table = _table(seed, n - 2)
    got = batches._step_counts(table, n)
    want = _whole(table, n)
    assert len(got) == len(want)
    for mine, theirs in zip(got, want):
        np.testing.assert_array_equal(mine, theirs)  # exactly, not approximately
    assert got[0].sum() == len(table) and got[4].sum() > 0
