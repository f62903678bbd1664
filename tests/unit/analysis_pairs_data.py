"""Small inputs shared by the tests of the chunked (record, request) pair passes."""

import numpy as np

from otel_vllm_ascend.analysis import kvcache, spec_decode, steps
from otel_vllm_ascend.analysis.batches import build_batches
from otel_vllm_ascend.analysis.frame import RecordBuilder
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


def frame_with_engine_rows(seed):
    """Requests and engine steps whose entries carry counts (some missing, some too large for
    float16), ids missing or empty in some entries, and steps of plain dicts between compact
    ones."""
    rng = np.random.default_rng(seed)
    b = RecordBuilder()
    ids = [f"q{i}" for i in range(9)]
    mark = 0

    def add(name, rid, start):
        nonlocal mark
        mark += 1
        b.add("s", 1, 1, mark, float(start), float(start) + 1.0, {"name": name, "rid": rid})

    for rid in ids:
        t = float(rng.integers(0, 30))
        add("httpReq", rid, t)
        add("httpRes", rid, t + 20)
    for step in range(13):
        entries = []
        for rid in rng.choice(ids, rng.integers(1, 5), replace=False):
            entry = {"rid": str(rid), "iter": int(rng.integers(0, 3)),
                     "type": int(rng.integers(0, 2)),
                     "num_scheduled_tokens": int(rng.choice([1, 7, 5000, 70000])),
                     "num_prompt_tokens": int(rng.integers(1, 40)),
                     "num_computed_tokens": int(rng.integers(0, 40))}
            if step % 4 == 1:  # a plain dict: a count missing
                del entry["num_computed_tokens"]
            entries.append(entry)
        if step % 5 == 2:
            entries.append({"rid": None, "type": 0})
        if step % 6 == 3:
            entries.append({"rid": "", "type": 1})
        add("modelExec", entries, 2.0 + 3 * step)
    return b.build([])
