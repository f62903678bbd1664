"""``spec_decode.csv``: speculative decoding, one row per (engine step, request) with drafts.

Built from the Worker's ``specDecoding`` records (docs/span-contract.md): each carries, per
request whose drafts were verified in the step, ``num_spec_output_tokens`` (drafts verified) and
``num_spec_accepted_tokens``. Columns, the reference's first:

``rid`` (the API server's id when known), ``iter`` (the request's step number, from the engine
step it belongs to), ``prof_id`` (source file stem), ``start_datetime`` / ``end_datetime`` /
``during_time(ms)`` (the ``specDecoding`` span: the drafter proposing the next drafts),
``spec_tokens`` (drafts verified), ``accepted_tokens`` (of them accepted; empty when the capture
does not say), ``accepted_ratio`` (accepted / drafted), ``draft_model_time_ms`` (the reference's
name for ``during_time(ms)``); then ``step_id`` (``batch.csv``'s step, empty when not found),
``host``, ``pid``, ``dp_rank`` (the Worker's).

The step of a row is the engine step, on EngineCore, whose batch details hold the same request
with the same ``num_computed_tokens`` (the latest such step that began before the record);
with tensor parallelism every rank writes the same record and one row per (step, request) is
kept.

Captures of msserviceprofiler 26.x write ``specDecoding`` while drafting, with 0 accepted (and
an empty ``accepted_ratio_per_pos`` mapping); their accepted counts arrive on the next
``modelRunnerExec`` of the process as ``spec_decode_accepted_by_req``, which is where they are
read from for those records (the reference analyzer's pairing).

:func:`step_acceptance` sums the rows per step for ``batch.csv``: ``num_spec_output_tokens``,
``num_spec_accepted_tokens``, ``accepted_ratio`` and ``accepted_ratio_per_pos`` (JSON list; entry
p: of the step's requests with more than p drafts, the fraction that accepted more than p).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.frame import format_datetime_us
from otel_vllm_ascend.analysis.steps import (
    StepRequestChunks,
    engine_steps,
    rid_values,
    step_requests,
    step_start_us,
)

RECORD_NAME = "specDecoding"
RUNNER_RECORD = "modelRunnerExec"
SPEC_COLUMNS = ("rid", "iter", "prof_id", "start_datetime", "end_datetime", "during_time(ms)",
                "spec_tokens", "accepted_tokens", "accepted_ratio", "draft_model_time_ms")
SPEC_EXTRA_COLUMNS = ("step_id", "host", "pid", "dp_rank")
CSV_COLUMNS = SPEC_COLUMNS + SPEC_EXTRA_COLUMNS
ACCEPTANCE_COLUMNS = ("num_spec_output_tokens", "num_spec_accepted_tokens", "accepted_ratio",
                      "accepted_ratio_per_pos")


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan


def _accepted_mapping(value: Any) -> Optional[dict]:
    """``spec_decode_accepted_by_req`` as written: a JSON object or its text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _reference_acceptance(frame: pd.DataFrame, spec: pd.DataFrame) -> list:
    """Per ``specDecoding`` record: the accepted counts of the next ``modelRunnerExec`` of the
    process for msserviceprofiler's draft-time records, else None."""
    out: list = [None] * len(spec)
    placeholder = [isinstance(a.get("accepted_ratio_per_pos"), dict) for a in spec["attrs"]]
    if not any(placeholder):
        return out
    runners = frame.loc[frame["name"] == RUNNER_RECORD, ["source", "pid", "start_us", "attrs"]]
    by_process = {key: group.sort_values("start_us") for key, group in
                  runners.groupby(["source", "pid"], sort=False, observed=True)}
    for index, (source, pid, end) in enumerate(zip(spec["source"], spec["pid"],
                                                   spec["end_us"])):
        group = by_process.get((source, pid))
        if not placeholder[index] or group is None:
            continue
        starts = group["start_us"].to_numpy()
        position = int(np.searchsorted(starts, end, side="left"))
        if position < len(group):
            out[index] = _accepted_mapping(group["attrs"].iloc[position].get(
                "spec_decode_accepted_by_req")) or {}
    return out


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (record, request) of the ``specDecoding`` records, as written."""
    spec = frame.loc[frame["name"] == RECORD_NAME]
    later = _reference_acceptance(frame, spec)
    columns: dict[str, list] = {name: [] for name in (
        "record", "rid", "computed", "iter", "spec_tokens", "accepted")}
    for record, (detail, rids) in enumerate(zip(spec["rid_detail"], spec["rids"])):
        items = [d for d in detail if isinstance(d, dict)] if detail else \
            [{"rid": rid} for rid in rids or ()]
        accepted_later = later[record]
        for item in items:
            rid = item.get("rid")
            spec_tokens = item.get("num_spec_output_tokens", item.get("num_scheduled_tokens"))
            if accepted_later is not None:  # the reference's draft-time record
                accepted = accepted_later.get(str(rid))
                computed = None  # its num_computed_tokens repeats the draft count
            else:
                accepted = item.get("num_spec_accepted_tokens")
                computed = item.get("num_computed_tokens")
            columns["record"].append(record)
            columns["rid"].append(rid)
            columns["computed"].append(_number(computed))
            columns["iter"].append(_number(item.get("iter")))
            columns["spec_tokens"].append(_number(spec_tokens))
            columns["accepted"].append(_number(accepted))
    rows = pd.DataFrame({key: pd.array(values, dtype=object) if key == "rid"
                         else np.asarray(values, dtype="float64" if key != "record" else "int64")
                         for key, values in columns.items()})
    record = rows["record"].to_numpy()
    for name in ("source", "host", "pid", "start_us", "end_us", "dur_us"):
        rows[name] = spec[name].to_numpy()[record] if len(spec) else []
    rows["dp_rank"] = spec["dp_rank"].array.take(record) if len(spec) else pd.array(
        [], dtype="Int64")
    return rows


def _step_of(rows: pd.DataFrame, steps: pd.DataFrame,
             per_request: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(step_id, iter) per row: the latest step that began before the record and holds the
    request with the same computed tokens; NaN where none does."""
    n = len(rows)
    step_id = np.full(n, np.nan)
    iteration = np.full(n, np.nan)
    if n == 0:
        return step_id, iteration
    if isinstance(per_request, StepRequestChunks):  # made whole only when records need it
        per_request = per_request.whole()
    if per_request.empty:
        return step_id, iteration
    step_start = dict(zip(steps["step_id"].tolist(), step_start_us(steps).tolist()))
    candidates = per_request[["step_id", "iter", "num_computed_tokens"]].astype(
        {"num_computed_tokens": "float64"})  # joined with the records' float64 counts
    candidates["rid"] = rid_values(per_request["rid"])  # joined with the records' ids
    candidates["step_start"] = candidates["step_id"].map(step_start)
    left = pd.DataFrame({"row": np.arange(n), "rid": rows["rid"].to_numpy(dtype=object),
                         "num_computed_tokens": rows["computed"].to_numpy(),
                         "start_us": rows["start_us"].to_numpy(dtype="float64")})
    left = left.dropna(subset=["num_computed_tokens"])
    joined = left.merge(candidates, on=["rid", "num_computed_tokens"], how="inner")
    joined = joined.loc[joined["step_start"] <= joined["start_us"]]
    if joined.empty:
        return step_id, iteration
    best = joined.sort_values("step_start").drop_duplicates("row", keep="last")
    positions = best["row"].to_numpy(dtype="int64")
    step_id[positions] = best["step_id"].to_numpy(dtype="float64")
    iteration[positions] = best["iter"].to_numpy(dtype="float64")
    return step_id, iteration


def _counts(values: np.ndarray) -> pd.arrays.IntegerArray:
    """Whole numbers as nullable integers (written without a fraction; NaN -> empty)."""
    return pd.array(np.round(values), dtype="Float64").astype("Int64")


def build_spec_decode(frame: pd.DataFrame, steps: Optional[pd.DataFrame] = None,
                      per_request: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per (step, request) that verified drafts: ``CSV_COLUMNS``, plus ``start_us``;
    ``steps``/``per_request`` may be passed precomputed."""
    if steps is None:
        steps = engine_steps(frame)
    if per_request is None:
        per_request = step_requests(steps)
    rows = _rows(frame)
    step_id, iteration = _step_of(rows, steps, per_request)
    iteration = np.where(np.isnan(iteration), rows["iter"].to_numpy(dtype="float64"), iteration)
    spec_tokens = rows["spec_tokens"].to_numpy(dtype="float64")
    accepted = rows["accepted"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(spec_tokens > 0, np.round(accepted / spec_tokens, 4), np.nan)
    during = rows["dur_us"].to_numpy(dtype="float64") / 1000.0
    out = pd.DataFrame({
        "rid": rows["rid"].to_numpy(dtype=object),
        "iter": _counts(iteration),
        "prof_id": rows["source"].to_numpy(dtype=object),
        "start_datetime": format_datetime_us(rows["start_us"].to_numpy()).to_numpy(),
        "end_datetime": format_datetime_us(rows["end_us"].to_numpy()).to_numpy(),
        "during_time(ms)": during,
        "spec_tokens": _counts(spec_tokens),
        "accepted_tokens": _counts(accepted),
        "accepted_ratio": ratio,
        "draft_model_time_ms": during,
        "step_id": _counts(step_id),
        "host": rows["host"].to_numpy(dtype=object),
        "pid": rows["pid"].to_numpy(),
        "dp_rank": rows["dp_rank"],
        "start_us": rows["start_us"].to_numpy(dtype="float64"),
    })
    out = out.iloc[np.argsort(out["start_us"].to_numpy(), kind="stable")]
    # Tensor parallelism: every rank writes the step's record; keep the first per request.
    matched = out["step_id"].notna().to_numpy()
    duplicate = np.zeros(len(out), dtype=bool)
    if matched.any():
        duplicate[matched] = out.loc[matched].duplicated(["step_id", "rid"]).to_numpy()
    return out.loc[~duplicate].reset_index(drop=True)


def empty_spec_decode() -> pd.DataFrame:
    """The table with its columns and no row."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in CSV_COLUMNS + ("start_us",)})


def _ratio_per_position(spec_tokens: np.ndarray, accepted: np.ndarray) -> str:
    if not len(spec_tokens) or np.isnan(accepted).any():
        return ""
    ratios = []
    for position in range(int(spec_tokens.max())):
        drafted = spec_tokens > position
        ratios.append(round(float((accepted[drafted] > position).mean()), 4))
    return json.dumps(ratios)


def step_acceptance(spec_decode: pd.DataFrame, step_ids: np.ndarray) -> dict[str, np.ndarray]:
    """``ACCEPTANCE_COLUMNS`` for the steps ``step_ids`` (NaN / empty where none verified
    drafts, or where the accepted counts are unknown)."""
    n = len(step_ids)
    out: dict[str, Any] = {name: np.full(n, np.nan) for name in ACCEPTANCE_COLUMNS[:3]}
    per_pos = np.full(n, "", dtype=object)
    rows = spec_decode.loc[spec_decode["step_id"].notna()] if len(spec_decode) else spec_decode
    if len(rows):
        where = {step: i for i, step in enumerate(np.asarray(step_ids).tolist())}
        for step, group in rows.groupby("step_id", sort=False):
            i = where.get(int(step))
            if i is None:
                continue
            drafted = group["spec_tokens"].to_numpy(dtype="float64", na_value=np.nan)
            accepted = group["accepted_tokens"].to_numpy(dtype="float64", na_value=np.nan)
            out["num_spec_output_tokens"][i] = drafted.sum()
            if not np.isnan(accepted).any():
                out["num_spec_accepted_tokens"][i] = accepted.sum()
                if drafted.sum() > 0:
                    out["accepted_ratio"][i] = round(accepted.sum() / drafted.sum(), 4)
            per_pos[i] = _ratio_per_position(drafted, accepted)
    out["accepted_ratio_per_pos"] = per_pos
    return out
