"""The trace's flow events in parts: held columns and parts made a chunk at a time read as one
sequence, whatever the chunk size (the request flows themselves: tests/unit/test_trace.py)."""

import json

import numpy as np
import pytest

from otel_vllm_ascend.analysis.trace_file import FlowChunk, _flow_json_lines, _FlowParts


def _chunk(phase, flow_id, pid, tid, ts_ns):
    return FlowChunk(*(np.asarray(c, dtype="int64") for c in (phase, flow_id, pid, tid, ts_ns)))


def _parts():
    flows = _FlowParts()
    flows.add_held(_chunk([0, 2], [1, 1], [5, 5], [7, 7], [1_001, 2_002]))
    made = _chunk([1] * 7, range(10, 17), [5] * 7, [2**40] * 7, range(3_003, 3_010))
    calls = []

    def make(first, stop):
        calls.append((first, stop))
        return FlowChunk(*(c[first:stop] for c in made))

    flows.add_made(7, make)
    flows.add_made(0, make)  # an empty part adds nothing
    return flows, calls


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_chunks_read_every_part_in_order_whatever_the_size(size):
    flows, calls = _parts()
    assert len(flows) == 9
    rows = [row for chunk in flows.chunks(size) for row in chunk.rows()]
    assert [r[0] for r in rows] == [0, 2] + [1] * 7
    assert [r[1] for r in rows] == [1, 1] + list(range(10, 17))
    assert [r[4] for r in rows] == [1_001, 2_002] + list(range(3_003, 3_010))
    assert all(stop - first <= size for first, stop in calls)
    assert calls[0][0] == 0 and calls[-1][1] == 7


def test_events_read_like_dicts_and_json_lines():
    flows, _ = _parts()
    events = list(flows)
    assert [e["ph"] for e in events] == ["s", "f"] + ["t"] * 7
    assert events[1]["bp"] == "e" and "bp" not in events[2]
    assert [flows.event(i) for i in range(9)] == events
    with pytest.raises(IndexError):
        flows.event(9)
    text = ",\n".join(_flow_json_lines(chunk) for chunk in flows.chunks(4))
    assert json.loads("[" + text + "]") == events
    assert text.endswith('"id":16,"pid":5,"tid":1099511627776,"ts":3.009}')
