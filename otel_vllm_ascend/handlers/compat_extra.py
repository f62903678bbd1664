"""Request-state handlers for msserviceprofiler's hook points that have no other built-in.

msserviceprofiler's development line (and the symbol file vllm-ascend writes) hooks three more
places to track request states; the analyzer turns these ``ReqState`` events (domain
``Schedule``) into request status counts and waiting times:

* ``Scheduler._free_request(request)`` -> after the original: ``ReqState`` with
  ``ms.rid`` = the request id and ``ms.metric_inc.FINISHED`` = 1 (message ``FINISHED+: 1``);
* ``Scheduler.add_request(request)`` -> after the original: ``ReqState`` with
  ``ms.metric_inc.WAITING`` = 1, then the built-in ``Enqueue`` record;
* ``InputProcessor.process_inputs(request_id, ...)`` (``Processor`` before vLLM 0.11) -> after
  the original: ``ReqState`` with ``ms.rid`` = the given request id (API server).

They are what msserviceprofiler's handler paths ``...batch_hookers:free_request``,
``...:add_request`` and ``...:process_inputs`` resolve to (see
:data:`otel_vllm_ascend.handlers.REFERENCE_HANDLER_ALIASES`). Each calls the original exactly
once and returns its result; an exception from the original passes through and records nothing.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any, Callable, Optional

from otel_vllm_ascend import contract, control, recorder

_logger = logging.getLogger(__name__)

DOMAIN = "Schedule"
REQ_STATE = "ReqState"


def _record_state(request_id: Any, metric: Optional[str]) -> None:
    if request_id is None or not control.allows(DOMAIN):
        return
    attributes = {contract.DOMAIN: DOMAIN, contract.RID: str(request_id)}
    if metric is not None:
        attributes[contract.METRIC_INC_PREFIX + metric] = 1
    recorder.record_event(REQ_STATE, attributes, timestamp_ns=time.time_ns())


def free_request(original: Any, this: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    """``Scheduler._free_request``: ``ReqState`` ``FINISHED+`` after the request is freed."""
    result = original(request, *args, **kwargs)
    _record_state(getattr(request, "request_id", None), "FINISHED")
    return result


def process_inputs(original: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """``InputProcessor.process_inputs``: ``ReqState`` for the request id it was given."""
    result = original(*args, **kwargs)
    _record_state(kwargs.get("request_id", args[0] if args else None), None)
    return result


# The built-in Enqueue handler, looked up once at first use (it lives in another module).
_enqueue_lock = threading.Lock()
_enqueue_handler: list[Optional[Callable]] = []


def _builtin_add_request() -> Optional[Callable]:
    if not _enqueue_handler:
        with _enqueue_lock:
            if not _enqueue_handler:
                from otel_vllm_ascend.handlers import BUILTIN_HANDLERS

                module, _, name = BUILTIN_HANDLERS["add_request"].partition(":")
                try:
                    _enqueue_handler.append(getattr(importlib.import_module(module), name))
                except (ImportError, AttributeError) as exc:
                    _logger.warning("otel-vllm-ascend: built-in add_request handler %s is not "
                                    "available (%s); ReqState is recorded without Enqueue",
                                    BUILTIN_HANDLERS["add_request"], exc)
                    _enqueue_handler.append(None)
    return _enqueue_handler[0]


def add_request(original: Any, this: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    """``Scheduler.add_request``: ``ReqState`` ``WAITING+`` then the built-in ``Enqueue``."""
    request_id = getattr(request, "request_id", None)

    def original_then_state(*call_args: Any, **call_kwargs: Any) -> Any:
        result = original(*call_args, **call_kwargs)
        _record_state(request_id, "WAITING")
        return result

    enqueue = _builtin_add_request()
    if enqueue is None:
        return original_then_state(request, *args, **kwargs)
    return enqueue(original_then_state, this, request, *args, **kwargs)
