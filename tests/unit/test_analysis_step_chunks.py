"""The (step, request) rows made a chunk of steps at a time (steps.StepRequestChunks): the
stage breakdown's rows and batch.csv's counts are those of the whole table."""

import numpy as np
import pandas as pd
import pytest
from analysis_pairs_data import frame_with_engine_rows

from otel_vllm_ascend.analysis import batches, stages, steps
from otel_vllm_ascend.analysis.kvcache import build_kvcache
from otel_vllm_ascend.analysis.spec_decode import build_spec_decode, empty_spec_decode


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("steps_per_chunk", [1, 2, 5, 1000])
@pytest.mark.parametrize("rids", [(), ("q1", "q4", "nobody")])
def test_breakdown_rows_of_chunks_are_the_whole_tables(seed, steps_per_chunk, rids):
    frame = frame_with_engine_rows(seed)
    step_table = steps.engine_steps(frame)
    selection = stages.StageSelection((), rids, None)
    want = stages.breakdown_rows(steps.step_requests(step_table), selection)
    got = stages.breakdown_rows(steps.StepRequestChunks(step_table, steps_per_chunk), selection)
    pd.testing.assert_frame_equal(got, want, check_index_type=True)
    assert list(got["rid"].cat.categories) == list(want["rid"].cat.categories)
    assert len(want)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("steps_per_chunk", [1, 3, 1000])
def test_batches_and_spec_decode_of_chunks_are_the_whole_tables(seed, steps_per_chunk):
    frame = frame_with_engine_rows(seed)
    step_table = steps.engine_steps(frame)
    chunks = steps.StepRequestChunks(step_table, steps_per_chunk)
    whole = steps.step_requests(step_table)
    kv = build_kvcache(frame)
    want = batches.build_batches(frame, step_table, whole, kv, empty_spec_decode())
    got = batches.build_batches(frame, step_table, chunks, kv, empty_spec_decode())
    pd.testing.assert_frame_equal(got.astype(str), want.astype(str))
    assert np.isfinite(want["total_scheduled_tokens"].to_numpy(dtype=float)).any()
    pd.testing.assert_frame_equal(build_spec_decode(frame, step_table, chunks),
                                  build_spec_decode(frame, step_table, whole))


def test_rows_where_of_no_steps_is_the_empty_table():
    frame = frame_with_engine_rows(0)
    empty = steps.engine_steps(frame).iloc[:0]
    got = steps.StepRequestChunks(empty).rows_where(lambda part: np.arange(len(part)))
    assert len(got) == 0 and list(got.columns) == list(steps.step_requests(empty).columns)
