"""The records' per-process columns (host, role, dp_rank) made per (pid, source) group equal
the columns made of one value per record."""

import numpy as np
import pandas as pd

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
