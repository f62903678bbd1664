"""Clock gaps between hosts, from the requests an API server and an engine share."""

import pandas as pd

from otel_vllm_ascend.analysis.host_clocks import clock_gaps


def _frame(engine_shift_us: float) -> pd.DataFrame:
    rows = []
    for i, arrival in enumerate((1_000.0, 5_000.0)):
        rid = f"r{i}"
        rows.append(("a", "api_server", "httpReq", arrival, arrival + 10, [rid]))
        rows.append(("a", "api_server", "httpRes", arrival + 3_000, arrival + 3_000, [rid]))
        first = arrival + 200 + engine_shift_us  # the engine sees it 0.2 ms after arrival
        rows.append(("b", "engine_core", "Enqueue", first, first, [rid]))
        rows.append(("b", "engine_core", "Free", first + 9_000, first + 9_000, [rid]))
    return pd.DataFrame(rows, columns=["host", "role", "name", "start_us", "end_us", "rids"])


def test_one_host_has_no_gap():
    frame = _frame(0.0)
    frame["host"] = "a"
    assert clock_gaps(frame) == []


def test_agreeing_clocks_bound_the_offset_around_zero():
    (gap,) = clock_gaps(_frame(0.0))
    assert (gap.api_host, gap.host, gap.requests) == ("a", "b", 2)
    assert gap.high_ms == 0.2 and gap.low_ms == -2.8  # first record - arrival / - end
    assert not gap.apart and "agree" in gap.message()


def test_a_clock_ahead_is_reported_with_its_least_distance():
    (gap,) = clock_gaps(_frame(50_000.0))  # engine's clock 50 ms ahead
    assert gap.apart and abs(gap.low_ms - 47.2) < 1e-9
    assert "47.200 ms or more ahead of host a's" in gap.message()


def test_a_clock_behind_is_reported():
    (gap,) = clock_gaps(_frame(-10_000.0))
    assert gap.apart and abs(gap.high_ms + 9.8) < 1e-9
    assert "9.800 ms or more behind" in gap.message()
