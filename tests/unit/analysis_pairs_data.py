"""Small inputs shared by the tests of the chunked (record, request) pair passes."""

import numpy as np

from otel_vllm_ascend.analysis import kvcache, spec_decode, steps
from otel_vllm_ascend.analysis.batches import build_batches
from otel_vllm_ascend.analysis.requests import build_requests


def random_outputs(rng, ids, records, span, in_order, with_nan):
    """Records listing up to four of ``ids`` each, and their start times (rounded, so some
    tie; sorted when ``in_order``; two NaN with ``with_nan``)."""
    rid_lists = [list(rng.choice(ids, rng.integers(0, 5), replace=False))
                 for _ in range(records)]
    times = np.round(rng.uniform(0, span, records), 1)
    if in_order:
        times = np.sort(times)
    if with_nan:
        times[rng.integers(0, records, 2)] = np.nan
    return rid_lists, times


def tables_of(frame):
    """(requests, per_request, batches) of a records frame, as the CLI builds them."""
    step_table = steps.engine_steps(frame)
    per_request = steps.step_requests(step_table)
    requests = build_requests(frame, step_table, per_request)
    batches = build_batches(frame, step_table, per_request, kvcache.build_kvcache(frame),
                            spec_decode.empty_spec_decode())
    return requests, per_request, batches
