"""Which engine step a Worker record ran in (``step_match``), worked out by hand.

Steps (exec windows, arbitrary µs):   0  h/200 rank 0  [0, 10]      1  h/201 rank 1  [2, 5]
                                      2  h/200 rank 0  [12, 20]     3  h2/300 no rank [0, 100]
"""

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.step_match import NO_STEP, step_of_records

STEPS = pd.DataFrame({
    "host": ["h", "h", "h", "h2"],
    "pid": [200, 201, 200, 300],
    "dp_rank": pd.array([0, 1, 0, None], dtype="Int64"),
    "exec_start_us": [0.0, 2.0, 12.0, 0.0],
    "exec_end_us": [10.0, 5.0, 20.0, 100.0],
})


def records(*rows):
    host, pid, dp, start = zip(*rows)
    return pd.DataFrame({"host": list(host), "pid": list(pid),
                         "dp_rank": pd.array(list(dp), dtype="Int64"),
                         "start_us": list(start)})


def test_steps_by_process_rank_host_and_window():
    found = step_of_records(records(
        ("h", 300, 0, 3.0),     # rank 0 Worker: rank 0's window [0, 10]
        ("h", 301, 1, 3.0),     # rank 1 Worker: rank 1's window [2, 5]
        ("h", 302, None, 7.0),  # no rank: the latest window opened before 7 that holds it
        ("h", 302, None, 11.0),  # between windows: none
        ("h", 200, None, 12.0),  # EngineCore itself: its own step
        ("h2", 1, None, 50.0),  # another host's only step
        ("h3", 1, None, 5.0),   # a host without steps
        ("h", 301, 1, 7.0),     # rank 1, outside rank 1's windows: never rank 0's step
    ), STEPS)
    assert found.tolist() == [0, 1, 0, NO_STEP, 2, 3, NO_STEP, NO_STEP]


def test_steps_without_an_execution_window_are_skipped():
    steps = STEPS.assign(exec_start_us=[0.0, np.nan, 12.0, 0.0])
    found = step_of_records(records(("h", 301, 1, 3.0), ("h", 302, None, 3.0)), steps)
    # rank 1's only step has no modelExec: the host's steps are searched instead
    assert found.tolist() == [0, 0]


def test_no_steps_or_no_records():
    assert step_of_records(records(("h", 1, None, 1.0)), STEPS.iloc[0:0]).tolist() == [NO_STEP]
    assert step_of_records(records(("h", 1, None, 1.0)).iloc[0:0], STEPS).tolist() == []
