"""``kvcache.csv``: the KV-cache block pool over time, one row per KV record.

Rows are the records of domain ``Schedule.KVCache`` / ``KVCache`` except ``CacheHitRate``: for
vLLM, ``KVCacheStatus`` (after every scheduling step) and ``Free`` (a finished request's blocks
returned); on the V0 engine also ``Allocate`` (a prompt's blocks), ``AppendSlot`` (a block taken
while decoding), ``SwapOut`` / ``SwapIn`` (a preempted request's blocks moved to CPU memory and
back). Per row:

* ``total_blocks``: ``TotalBlocks=``; ``Free`` rows carry none and take the process's last known
  total;
* ``free_blocks``: ``FreeBlocks=`` (``FreeBlocksAfter=`` for MindIE), else ``deviceBlock=``;
* ``used_blocks``: ``UsedBlocks=`` when given, else total − free;
* ``blocks_allocated``: ``AllocatedBlocks=`` (MindIE: free before − free after, if positive);
* ``blocks_freed``: rise of the free count since the process's previous KV row (``Free`` and
  ``SwapOut`` rows);
* ``kvcache_usage_rate``: ``UsagePercent=`` as a fraction 0..1 (values above 1 are taken as
  percentages), else used / total.

The reference computes none of these for vLLM (every value 0); here each row is computed on its
own, so one record without a key cannot zero the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.date_cells import datetime_column_us
from otel_vllm_ascend.analysis.record_dicts import key_floats

KV_DOMAINS = ("Schedule.KVCache", "KVCache")
# Records of blocks going back to the free pool: a finished request's (``Free``), a preempted
# one's swapped out to CPU memory (V0 ``SwapOut``).
RELEASE_NAMES = ("Free", "SwapOut")
# Per-request records of the V0 engine; a step's pool state is its ``KVCacheStatus``.
REQUEST_KV_NAMES = RELEASE_NAMES + ("Allocate", "AppendSlot", "SwapIn")
KVCACHE_COLUMNS = ("domain", "name", "start_time", "total_blocks", "used_blocks", "free_blocks",
                   "blocks_allocated", "blocks_freed", "kvcache_usage_rate")
EXTRA_COLUMNS = ("start_us", "host", "pid", "dp_rank")


def _metric(metrics: pd.Series, *names: str) -> np.ndarray:
    """The first of ``names`` each record's metrics have a value (not NaN) for, else NaN."""
    out = np.full(len(metrics), np.nan)
    for name in names:
        missing = np.isnan(out)
        out[missing] = key_floats(metrics, name)[missing]
    return out


def build_kvcache(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per KV record: ``KVCACHE_COLUMNS`` then ``EXTRA_COLUMNS`` (internal)."""
    rows = frame.loc[frame["domain"].isin(KV_DOMAINS) & (frame["name"] != "CacheHitRate")]
    rows = rows.sort_values(["host", "pid", "start_us"], kind="stable")
    metrics = rows["metrics"]
    total = pd.Series(_metric(metrics, "TotalBlocks"), index=rows.index)
    free = _metric(metrics, "FreeBlocksAfter", "FreeBlocks", "deviceBlock")
    used_given = _metric(metrics, "UsedBlocks")
    allocated = _metric(metrics, "AllocatedBlocks")
    before = _metric(metrics, "FreeBlocksBefore")
    usage = _metric(metrics, "UsagePercent")
    keys = [rows["host"], rows["pid"]]
    total = total.groupby(keys, sort=False, observed=True).ffill().to_numpy()
    used = np.where(np.isnan(used_given), total - free, used_given)
    mindie_alloc = np.clip(before - free, 0, None)
    allocated = np.where(np.isnan(allocated), mindie_alloc, allocated)
    free_series = pd.Series(free, index=rows.index)
    known_free = free_series.groupby(keys, sort=False, observed=True).ffill()
    previous = known_free.groupby(keys, sort=False, observed=True).shift(1).to_numpy()
    freed = np.clip(free - previous, 0, None)
    is_free_row = rows["name"].isin(RELEASE_NAMES).to_numpy()
    freed = np.where(is_free_row, np.nan_to_num(freed, nan=0.0), 0.0)
    allocated = np.where(is_free_row, 0.0, np.nan_to_num(allocated, nan=0.0))
    usage = np.where(usage > 1, usage / 100.0, usage)
    with np.errstate(invalid="ignore", divide="ignore"):
        derived = np.where(total > 0, used / total, np.nan)
    usage = np.where(np.isnan(usage), derived, usage)
    out = pd.DataFrame({
        "domain": rows["domain"].to_numpy(dtype=object),
        "name": rows["name"].to_numpy(dtype=object),
        "start_time": datetime_column_us(rows["start_us"].to_numpy()),
        "total_blocks": total,
        "used_blocks": used,
        "free_blocks": free,
        "blocks_allocated": allocated,
        "blocks_freed": freed,
        "kvcache_usage_rate": usage,
        "start_us": rows["start_us"].to_numpy(),
        "host": rows["host"].to_numpy(dtype=object),
        "pid": rows["pid"].to_numpy(),
        "dp_rank": rows["dp_rank"].array,
    }, copy=False)  # copied once, by the sort below
    order = np.argsort(out["start_us"].to_numpy(), kind="stable")
    return out.iloc[order].reset_index(drop=True)
