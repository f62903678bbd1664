"""The report's engine series (report_figures._engine_keys): each (host, pid) pair made text
once, against every row made text as before."""

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis import report_figures


def _every_row(table, mask):
    if "pid" not in table.columns:
        return [("", mask)]
    hosts = table["host"].astype(str).to_numpy() if "host" in table.columns else np.full(
        len(table), "")
    pids = table["pid"].astype(str).to_numpy()
    keys = sorted(set(zip(hosts[mask].tolist(), pids[mask].tolist())))
    if len(keys) <= 1:
        return [("", mask)]
    return [(f"{host} {pid}".strip(), mask & (hosts == host) & (pids == pid))
            for host, pid in keys]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("hosts", [None, ["h1"], ["h1", "h2", ""]])
@pytest.mark.parametrize("pids", [[7], [7, 12, 100], [3, 30]])
def test_engine_keys_are_those_of_every_row(seed, hosts, pids):
    rng = np.random.default_rng(seed)
    rows = 200
    table = pd.DataFrame({"pid": np.asarray(rng.choice(pids, rows), dtype=np.int16)})
    if hosts is not None:
        table["host"] = pd.Categorical(rng.choice(hosts, rows))
    for mask in (np.ones(rows, dtype=bool), rng.random(rows) < 0.3, np.zeros(rows, dtype=bool)):
        got = report_figures._engine_keys(table, mask)
        want = _every_row(table, mask)
        assert [label for label, _ in got] == [label for label, _ in want]
        for (_, got_mask), (_, want_mask) in zip(got, want):
            np.testing.assert_array_equal(got_mask, want_mask)


def test_no_pid_column():
    mask = np.array([True, False])
    [(label, got)] = report_figures._engine_keys(pd.DataFrame({"x": [1, 2]}), mask)
    assert label == "" and got is mask
