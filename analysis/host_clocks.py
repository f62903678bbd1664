"""How far apart the clocks of the capture's hosts are, from the requests they share.

Every record carries its host's wall-clock time; nothing in a capture (no Meta row, no link
record) states one host's clock against another's. What the records do bound is the offset:
a request that reached the API server on host A at ``arrival`` and left at ``end`` was seen by
an engine on host B between those two instants, so with B's clock ``offset`` ahead of A's, every
such request gives ``arrival <= B's first record - offset <= end`` (the first record only: an
engine may still free a request's cache blocks after the response left). Over all shared
requests this is an interval ``[low, high]`` for the offset:

* it holds 0: the two clocks agree as far as the records can tell (the analysis keeps the
  times as written);
* it does not hold 0: the clocks are apart by at least the distance from 0 to the interval,
  and the latencies that mix the two hosts (queue wait, time to first token) are off by about
  as much. :func:`clock_gaps` describes it in one message per host pair; the times are not
  shifted (a bound is not a measurement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.frame import ROLE_API_SERVER


@dataclass(frozen=True)
class ClockGap:
    """Bounds, in ms, of ``host``'s clock minus ``api_host``'s, from ``requests`` shared ones."""

    api_host: str
    host: str
    low_ms: float
    high_ms: float
    requests: int

    @property
    def apart(self) -> bool:
        return self.low_ms > 0 or self.high_ms < 0

    def message(self) -> str:
        if not self.apart:
            return (f"clocks of hosts {self.api_host} and {self.host} agree within what"
                    f" {self.requests} shared requests show (offset between"
                    f" {self.low_ms:.3f} and {self.high_ms:.3f} ms)")
        least = self.low_ms if self.low_ms > 0 else -self.high_ms
        side = "ahead of" if self.low_ms > 0 else "behind"
        return (f"the clock of host {self.host} is {least:.3f} ms or more {side} host"
                f" {self.api_host}'s ({self.requests} shared requests); latencies that mix the"
                " two hosts (queue wait, time to first token) are off by about as much")


def clock_gaps(frame: pd.DataFrame) -> list[ClockGap]:
    """One :class:`ClockGap` per (API server host, other host) pair sharing requests."""
    if frame.empty or frame["host"].nunique() < 2:
        return []
    api_rows = frame["role"].to_numpy(dtype=object) == ROLE_API_SERVER
    names = frame["name"].to_numpy(dtype=object)
    bounds = _api_bounds(frame.loc[api_rows & np.isin(names, ("httpReq", "httpRes"))])
    gaps = []
    for api_host, (arrival, end) in bounds.items():
        others = frame.loc[~api_rows & (frame["host"] != api_host).to_numpy()]
        for host, rows in others.groupby("host", sort=True, observed=True):
            gap = _gap(api_host, str(host), rows, arrival, end)
            if gap is not None:
                gaps.append(gap)
    return gaps


def _api_bounds(rows: pd.DataFrame) -> dict[str, tuple[dict, dict]]:
    """Per API server host: request -> arrival (httpReq start), request -> end (httpRes end)."""
    out: dict[str, tuple[dict, dict]] = {}
    for host, name, start, end, rids in zip(rows["host"].tolist(), rows["name"].tolist(),
                                            rows["start_us"].tolist(), rows["end_us"].tolist(),
                                            rows["rids"].tolist()):
        arrival, finish = out.setdefault(host, ({}, {}))
        for rid in rids:
            if name == "httpReq":
                arrival[rid] = min(arrival.get(rid, start), start)
            else:
                finish[rid] = max(finish.get(rid, end), end)
    return out


def _gap(api_host: str, host: str, rows: pd.DataFrame, arrival: dict, end: dict
         ) -> Optional[ClockGap]:
    first: dict = {}
    for start, rids in zip(rows["start_us"].tolist(), rows["rids"].tolist()):
        for rid in rids:
            if rid in arrival and start < first.get(rid, np.inf):
                first[rid] = start
    shared = [rid for rid in first if rid in end]
    if not shared:
        return None
    high = min(first[rid] - arrival[rid] for rid in shared) / 1000.0
    low = max(first[rid] - end[rid] for rid in shared) / 1000.0
    return ClockGap(api_host, host, low, high, len(shared))
