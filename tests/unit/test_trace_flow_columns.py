"""The trace's flow columns: int32 while the values fit, int64 once one does not."""

import numpy as np

from otel_vllm_ascend.analysis.trace_file import _FlowColumns


def test_flow_columns_narrow_then_widen_without_changing_values():
    flows = _FlowColumns()
    flows.extend(np.array([0, 2], dtype="int8"), [1, 1], [5, 5], [7, 7], [1_001, 2_002])
    assert flows.flow_id.dtype == flows.pid.dtype == flows.tid.dtype == np.int32
    flows.extend(lambda: np.array([1], dtype="int8"), lambda: np.array([2]), [5],
                 lambda: np.array([2**40]), [3_003])
    assert flows.tid.dtype == np.int64 and flows.flow_id.dtype == np.int32
    assert [e["tid"] for e in flows] == [7, 7, 2**40]
    assert [e["ph"] for e in flows] == ["s", "f", "t"]
    assert flows.json_lines(2, 3).endswith('"id":2,"pid":5,"tid":1099511627776,"ts":3.003}')
