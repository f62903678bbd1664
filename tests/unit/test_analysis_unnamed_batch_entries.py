"""Batch entries without a request id (``{"rid": null}``) are left out, never mis-coded."""

import numpy as np

from otel_vllm_ascend.analysis import kvcache, spec_decode, stages, steps, summaries
from otel_vllm_ascend.analysis.batches import build_batches
from otel_vllm_ascend.analysis.frame import RecordBuilder
from otel_vllm_ascend.analysis.requests import build_requests


def _tables(batch_rid):
    b = RecordBuilder()
    b.add("s", 1, 1, 0, 0.0, 1.0, {"name": "httpReq", "rid": "a"})
    b.add("s", 1, 1, 1, 1.0, 2.0, {"name": "batchFrameworkProcessing", "rid": batch_rid})
    b.add("s", 1, 1, 2, 2.0, 3.0, {"name": "modelExec", "rid": batch_rid})
    b.add("s", 1, 1, 3, 3.5, 3.5, {"name": "httpRes", "rid": "a"})
    frame = b.build([])
    step_table = steps.engine_steps(frame)
    per_request = steps.step_requests(step_table)
    requests = build_requests(frame, step_table, per_request)
    batches = build_batches(frame, step_table, per_request, kvcache.build_kvcache(frame),
                            spec_decode.empty_spec_decode())
    return frame, requests, per_request, batches


def test_request_summary_with_only_unnamed_entries():
    frame, requests, per_request, batches = _tables([{"rid": None}])
    assert summaries.inter_token_gaps_ms(frame, requests, per_request, batches).size == 0
    assert not summaries.request_summary(frame, requests, per_request, batches).empty


def test_unnamed_entry_beside_a_named_one_is_not_taken_for_it():
    frame, requests, per_request, batches = _tables(
        [{"rid": None, "type": 0}, {"rid": "a", "type": 0}])
    assert [isinstance(r, str) for r in per_request["rid"]] == [False, True]
    out = stages._output_processing(frame, batches, per_request)
    assert np.isnan(out).all()  # no output records in this capture: nothing found, no error
