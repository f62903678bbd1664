"""Request-state transitions: preemptions, swaps and aborts per request.

vLLM's V0 engine reports every transition of a request between its scheduler queues as a
``ReqState`` record whose ``<STATE>+`` keys say which state it entered (+1) and left (-1)
(``WAITING``, ``RUNNING``, ``SWAPPED``, ``FINISHED``, ``FINISHED_ABORTED``; this project's V0
handlers and msserviceprofiler's write the same form). Counted per request:

* ``preemptions``: the request lost its place while running (RUNNING -1 and WAITING +1, vLLM's
  recompute preemption, or SWAPPED +1, preemption by swapping its blocks out);
* ``swaps``: its blocks were swapped out to CPU memory (SWAPPED +1);
* ``aborted``: it ended as ``FINISHED_ABORTED`` (client gone, or vLLM gave up on it).

Captures without ``ReqState`` records (vLLM V1) count 0 everywhere.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

STATE_COLUMNS = ("preemptions", "swaps", "aborted")


def request_state_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per request that has ``ReqState`` records, indexed by request id."""
    rows = frame.loc[frame["name"] == "ReqState"] if len(frame) else frame
    counts = {column: Counter() for column in STATE_COLUMNS}
    for rids, changes in zip(rows["rids"].tolist(), rows["metric_incs"].tolist()):
        if not rids or not changes:
            continue
        left_running = (changes.get("RUNNING") or 0) < 0
        swapped_out = (changes.get("SWAPPED") or 0) > 0
        back_to_waiting = (changes.get("WAITING") or 0) > 0
        aborted = (changes.get("FINISHED_ABORTED") or 0) > 0
        for rid in rids:
            if left_running and (swapped_out or back_to_waiting):
                counts["preemptions"][rid] += 1
            if swapped_out:
                counts["swaps"][rid] += 1
            if aborted:
                counts["aborted"][rid] += 1
    ids = sorted(set().union(*counts.values()))
    return pd.DataFrame({column: [counts[column][rid] for rid in ids]
                         for column in STATE_COLUMNS}, index=pd.Index(ids, dtype=object),
                        dtype="int64")
