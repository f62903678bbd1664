"""The records' per-process columns (host, role, dp_rank) made per (pid, source) group equal
the columns made of one value per record."""

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis.frame import ProcessInfo, _categories, _process_columns


def test_groups_give_the_per_record_columns():
    rng = np.random.default_rng(3)
    sources = ["f-b", "f-a", "f-c", "f-d"]
    processes = [ProcessInfo("h2", 7, role="engine_core", dp_rank=1, sources=["f-b", "f-a"]),
                 ProcessInfo("h1", 7, role="api_server", sources=["f-c"]),
                 ProcessInfo("h1", 9, role="worker", dp_rank=0, sources=["f-c"])]
    rows = 500
    source = [sources[i] for i in rng.integers(0, 4, rows)]  # f-d: no process
    pid = rng.choice([7, 9, 11], rows).astype(np.int16)  # 11: no process
    cols = {"source": _categories(source), "pid": pid}
    codes = _process_columns(cols, processes)
    by_key = {(p.pid, s): p for p in processes for s in p.sources}
    want = [by_key.get((int(p), s)) for s, p in zip(source, pid)]
    assert cols["host"].tolist() == [p.host if p else "" for p in want]
    assert cols["host"].categories.equals(_categories([p.host if p else "" for p in want])
                                          .categories)
    assert cols["role"].tolist() == [p.role if p else "" for p in want]
    ranks = [p.dp_rank if p else None for p in want]
    assert cols["dp_rank"].equals(pd.array(ranks, dtype="Int64"))
    assert codes.tolist() == pd.factorize(pd.array(source, dtype=object))[0].tolist()


def _groupby_groups(codes, pids):
    keys = pd.DataFrame({"source": codes, "pid": pids})
    grouped = keys.groupby(["source", "pid"], sort=False)
    firsts = grouped.head(1)
    return grouped.ngroup().to_numpy(), list(zip(firsts["source"].tolist(),
                                                 firsts["pid"].tolist()))


@pytest.mark.parametrize("pid_values", [
    [7, 9, 11],  # int16, as real pids
    [0],  # one pid
    [-5, 3, 2**15 - 1, -2**15],  # int16's ends
    [1, 2**40, -2**40],  # a wide span
    [2**62 - 1, 2**61, 5],  # beyond what one key holds: the group-by
    [-2**63, 2**63 - 1],
])
@pytest.mark.parametrize("seed", range(3))
def test_groups_are_the_group_by_of_source_and_pid(pid_values, seed):
    from otel_vllm_ascend.analysis.frame import _groups
    from otel_vllm_ascend.analysis.narrow_ints import narrowest

    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 400))
    codes = rng.integers(0, 5, rows).astype(np.int8)
    pids = narrowest(np.array(pid_values, dtype=np.int64)[rng.integers(0, len(pid_values),
                                                                        rows)],
                     np.int8, np.int16, np.int32)
    group, firsts = _groups(codes, pids)
    want_group, want_firsts = _groupby_groups(codes, pids)
    assert group.tolist() == want_group.tolist()
    assert firsts == want_firsts
    assert all(type(code) is int and type(pid) is int for code, pid in firsts)


def test_groups_of_no_records():
    from otel_vllm_ascend.analysis.frame import _groups

    group, firsts = _groups(np.empty(0, dtype=np.int8), np.empty(0, dtype=np.int16))
    assert len(group) == 0 and firsts == []
