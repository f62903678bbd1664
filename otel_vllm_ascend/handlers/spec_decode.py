"""Speculative decoding (n-gram, draft models, EAGLE, MTP): drafted and accepted tokens per step.

Worker side, two hook points per step, in the order the model runner reaches them:

* the rejection sampler (vLLM's ``RejectionSampler.forward``, vllm-ascend's
  ``AscendRejectionSampler.forward`` or its ``rejection_sample`` function): records nothing. Its
  output holds one row per request of the batch, ``drafts + 1`` slots wide, ``-1`` in every
  rejected or unused slot; the valid slots are the accepted drafts plus one recovered or bonus
  token, so a row's accepted drafts = valid slots - 1. Kept until the step's proposal.
* the runner's ``propose_draft_token_ids`` -> span ``specDecoding`` (domain ``Execute``) around
  the drafter, in steps that verified drafts. Per request whose drafts were verified in this
  step (``ms.rid_detail``): ``rid``, ``num_computed_tokens`` (of the step, as EngineCore's batch
  record has it, so the analyzer can find the engine step), ``num_spec_output_tokens`` (drafts
  verified) and ``num_spec_accepted_tokens``; for the step ``ms.metric.num_spec_output_tokens``,
  ``ms.metric.num_spec_accepted_tokens``, ``accepted_ratio`` (accepted / drafted) and
  ``accepted_ratio_per_pos`` (per draft position p: of the requests with more than p drafts,
  the fraction that accepted more than p). Without the rejection sampler's output the accepted
  counts and ratios are left out, never guessed.

The rejection sampler's rows follow the runner's batch order (``input_batch.req_ids``), which the
proposal hook reads on the same runner; a verification whose requests do not match the step's
scheduled drafts is not used. Reading the output costs one small reduction and a copy to the
host of ``requests`` numbers per speculative step (a device sync on NPU/GPU, as the reference's
hook also does).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, List, NamedTuple, Optional

from otel_vllm_ascend import contract, handoff, native_thread, recorder, wrapping
from otel_vllm_ascend.handlers import common

DOMAIN = "Execute"
RECORD_NAME = "specDecoding"
REJECTED = -1  # vLLM's PLACEHOLDER_TOKEN_ID


class Verification(NamedTuple):
    """What the rejection sampler decided for one batch, one entry per batch row."""

    accepted: List[int]
    drafted: Optional[List[int]]  # from its metadata; None when it did not say


class StepState:
    """The worker's current step: the verification waiting for the proposal, and the step's
    accepted drafts per request (for ``modelRunnerExec``)."""

    __slots__ = ("verification", "accepted_by_request")

    def __init__(self) -> None:
        self.verification: Optional[Verification] = None
        self.accepted_by_request: Optional[dict] = None


_step = StepState()


def begin_step() -> None:
    """A new model-runner step: nothing of the previous one carries over."""
    _step.verification = None
    _step.accepted_by_request = None


def step_acceptance() -> Optional[dict]:
    """Accepted drafts per request id of this step, when known by now."""
    return _step.accepted_by_request


# -- the rejection sampler ---------------------------------------------------------------------

def accepted_per_row(token_ids: Any) -> Optional[List[int]]:
    """Accepted drafts per row of a ``[rows, drafts + 1]`` token tensor (``-1`` = rejected)."""
    if getattr(token_ids, "ndim", None) != 2:
        return None
    valid = (token_ids != REJECTED).sum(dim=-1).tolist()
    return [count - 1 if count > 0 else 0 for count in valid]


def _draft_counts(args: tuple, kwargs: dict) -> Optional[List[int]]:
    """Drafts per row: ``metadata.num_draft_tokens`` (``RejectionSampler.forward``) or the
    ``num_draft_tokens`` argument (``rejection_sample``)."""
    metadata = kwargs.get("metadata", args[0] if args else None)
    counts = getattr(metadata, "num_draft_tokens", None)
    if counts is None:
        counts = kwargs.get("num_draft_tokens", args[1] if len(args) > 1 else None)
    if isinstance(counts, (list, tuple)) and all(type(n) is int for n in counts):
        return list(counts)
    return None


def _rejection_after(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                     error: Optional[BaseException]) -> None:
    accepted = accepted_per_row(getattr(result, "sampled_token_ids", result))
    if accepted is None:
        return
    drafted = _draft_counts(args, kwargs)
    if drafted is not None:
        if len(drafted) != len(accepted):
            return  # not the shape we understand: better nothing than a wrong count
        accepted = [min(a, d) for a, d in zip(accepted, drafted)]
    _step.verification = Verification(accepted, drafted)


capture_rejection_output = wrapping.AroundHandler(
    wrapping.always, _rejection_after, "capture_rejection_output",
    "Rejection sampler: keeps the accepted drafts per batch row for ``specDecoding``.")


# -- the proposal ------------------------------------------------------------------------------

def _scheduler_output(args: tuple, kwargs: dict) -> Any:
    """The SchedulerOutput among the arguments (its position differs between vLLM's and
    vllm-ascend's runners)."""
    found = kwargs.get("scheduler_output")
    if found is not None:
        return found
    for value in args:
        if hasattr(value, "scheduled_spec_decode_tokens"):
            return value
    return None


def _computed_tokens(output: Any) -> dict:
    """Request id -> computed tokens at this step (as EngineCore's batch details say)."""
    computed = {request.req_id: request.num_computed_tokens
                for request in getattr(output, "scheduled_new_reqs", None) or ()}
    ids, counts = common.cached_requests(getattr(output, "scheduled_cached_reqs", None))
    computed.update(zip(ids, counts))
    return computed


def verified_requests(runner: Any, output: Any, verification: Optional[Verification]
                      ) -> List[tuple]:
    """(request id, computed tokens, drafts verified, drafts accepted or None) per request
    whose drafts were verified in this step, in batch order when the verification is used."""
    scheduled = getattr(output, "scheduled_spec_decode_tokens", None) or {}
    expected = {rid: len(tokens) for rid, tokens in scheduled.items() if tokens}
    if not expected:
        return []
    computed = _computed_tokens(output)
    batch = getattr(getattr(runner, "input_batch", None), "req_ids", None)
    if verification is not None and batch is not None and \
            len(verification.accepted) <= len(batch):
        drafted = verification.drafted
        rows = []
        for index, accepted in enumerate(verification.accepted):
            rid = batch[index]
            count = drafted[index] if drafted is not None else expected.get(rid, 0)
            if count:
                rows.append((rid, computed.get(rid), count, accepted))
        # The verification must be this step's: the same requests with the same drafts.
        if {row[0]: row[2] for row in rows} == expected:
            return rows
    return [(rid, computed.get(rid), count, None) for rid, count in expected.items()]


def _propose_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    verification, _step.verification = _step.verification, None
    output = _scheduler_output(args, kwargs)
    rows = verified_requests(this, output, verification)
    if not rows:
        return None
    common.ensure_role("worker")
    if rows[0][3] is not None:
        _step.accepted_by_request = {row[0]: row[3] for row in rows}
    start, tid = native_thread.stamp()
    return rows, start, tid


def details_json(rows: List[tuple]) -> str:
    """``ms.rid_detail`` text of the verified requests."""
    items = []
    for rid, computed, drafted, accepted in rows:
        item = {"rid": rid, "num_computed_tokens": computed, "num_spec_output_tokens": drafted}
        if accepted is not None:
            item["num_spec_accepted_tokens"] = accepted
        items.append(item)
    return json.dumps(items, separators=(",", ":"))


def accepted_ratio_per_pos(rows: List[tuple]) -> tuple:
    """Per draft position p: of the requests with more than p drafts, the fraction that
    accepted more than p (acceptance is a prefix: a rejected draft ends the row)."""
    ratios = []
    for position in range(max(row[2] for row in rows)):
        drafted = [row for row in rows if row[2] > position]
        accepted = sum(1 for row in drafted if row[3] > position)
        ratios.append(round(accepted / len(drafted), 4))
    return tuple(ratios)


handoff.register_value(details_json, "spec_decode.details_json")
handoff.register_value(accepted_ratio_per_pos, "spec_decode.accepted_ratio_per_pos")


def _propose_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                   error: Optional[BaseException]) -> None:
    rows, start, tid = state
    drafted = sum(row[2] for row in rows)
    attributes = {
        contract.DOMAIN: DOMAIN,
        contract.RID: [row[0] for row in rows],
        contract.RID_DETAIL: recorder.Deferred(details_json, rows),
        contract.METRIC_PREFIX + "num_spec_output_tokens": drafted,
    }
    if rows[0][3] is not None:
        accepted = sum(row[3] for row in rows)
        attributes[contract.METRIC_PREFIX + "num_spec_accepted_tokens"] = accepted
        attributes["accepted_ratio"] = round(accepted / drafted, 4)
        attributes["accepted_ratio_per_pos"] = recorder.Deferred(accepted_ratio_per_pos, rows)
    recorder.record_span(RECORD_NAME, start, time.time_ns(), attributes, exception=error,
                         thread_id=tid)


propose_draft_token_ids = wrapping.AroundHandler(
    _propose_before, _propose_after, "propose_draft_token_ids",
    "Runner ``propose_draft_token_ids``: span ``specDecoding`` with the step's acceptance.",
    after_errors=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=begin_step)
