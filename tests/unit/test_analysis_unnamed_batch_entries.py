"""Batch entries without a request id (``{"rid": null}``) are left out, never mis-coded."""

import numpy as np
from analysis_pairs_data import tables_of

from otel_vllm_ascend.analysis import stages, summaries
from otel_vllm_ascend.analysis.frame import RecordBuilder


def _tables(batch_rid):
    b = RecordBuilder()
    b.add("s", 1, 1, 0, 0.0, 1.0, {"name": "httpReq", "rid": "a"})
    b.add("s", 1, 1, 1, 1.0, 2.0, {"name": "batchFrameworkProcessing", "rid": batch_rid})
    b.add("s", 1, 1, 2, 2.0, 3.0, {"name": "modelExec", "rid": batch_rid})
    b.add("s", 1, 1, 3, 3.5, 3.5, {"name": "httpRes", "rid": "a"})
    frame = b.build([])
    requests, per_request, batches = tables_of(frame)
    return frame, requests, per_request, batches


def test_request_summary_with_only_unnamed_entries():
    frame, requests, per_request, batches = _tables([{"rid": None}])
    assert summaries.pooled_gaps(frame, requests, per_request, batches).ms().size == 0
    assert not summaries.request_summary(frame, requests, per_request, batches).empty


def test_unnamed_entry_beside_a_named_one_is_not_taken_for_it():
    frame, requests, per_request, batches = _tables(
        [{"rid": None, "type": 0}, {"rid": "a", "type": 0}])
    assert [isinstance(r, str) for r in per_request["rid"]] == [False, True]
    out = stages._output_processing(frame, batches, per_request)
    assert np.isnan(out).all()  # no output records in this capture: nothing found, no error
