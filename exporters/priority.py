"""The writer process's CPU priority: below vLLM's processes, so it takes only spare CPU.

vLLM runs three busy processes per server (API server, EngineCore, Worker); on a host with
few cores the writer competes with them for a core, and every time slice it takes from
EngineCore's scheduling loop is throughput lost. The writer's work is not latency-critical
(records wait in bounded buffers, the capture only has to be whole when the server stops), so
it asks the kernel to run it only when vLLM's processes leave CPU over.

``OTEL_VLLM_WRITER_PRIORITY`` (read by the writer at start):

* ``nice`` (the default): niceness 19, the lowest the kernel's fair scheduler gives; the
  writer still gets a small share on a host that never idles, so it cannot starve;
* ``idle``: ``SCHED_IDLE``, run only when nothing else wants the CPU (Linux);
* ``batch``: ``SCHED_BATCH`` at niceness 19 (no wake-up preemption of others; Linux);
* an integer 0-19: that niceness; ``normal`` / ``0`` / ``off``: leave the priority as it was.

A policy the OS refuses (no ``os.sched_setscheduler``, a seccomp filter, a niceness already
higher) falls back to the niceness, then to nothing, said once at debug level: the writer
runs either way. The writer lowers its priority before it starts any thread (threads inherit
it) and tries to raise it back when the server has stopped (:func:`restore`), so on a host
busy with other work the last records are written without waiting for idle CPU; without
``CAP_SYS_NICE`` the kernel refuses that, and the writer then finishes at the low priority
(the starting process waits ``OTEL_VLLM_WRITER_EXIT_WAIT_S`` for it; nothing is lost either
way, the writer runs in its own process group until it has written everything).

The writer shares the server's session (``writer_client.start`` gives it only a process group
of its own). On Linux with the kernel's *autogroup* (the default of most distributions) the
fair scheduler shares the CPU between sessions first and weighs a niceness only within its
session. A writer leading a session of its own was a scheduling group of its own: its
niceness did not weigh against the server's processes, and, even with the group's niceness
raised too, processes of other sessions on the host (the load generator, in our runs) waited
several times longer for a CPU (docs/benchmarks.md, issue 17, ninth part).
"""

from __future__ import annotations

import logging
import os
from typing import List, NamedTuple, Optional

_logger = logging.getLogger("otel_vllm_ascend.writer")

PRIORITY_ENV = "OTEL_VLLM_WRITER_PRIORITY"
DEFAULT = "nice"
LOWEST_NICE = 19
_POLICIES = {"idle": "SCHED_IDLE", "batch": "SCHED_BATCH"}


class Priority(NamedTuple):
    """What to ask for: a scheduling policy name (``os.SCHED_*``) or None, and a niceness."""

    policy: Optional[str]
    nice: int


class Applied(NamedTuple):
    """What the writer runs at (read back), and what it ran at before."""

    policy: Optional[int]
    nice: int
    before_policy: Optional[int]
    before_nice: int


def parse(value: Optional[str]) -> Priority:
    """The setting's value as a :class:`Priority`; an unknown value is the default (logged)."""
    text = (value if value is not None else DEFAULT).strip().lower() or DEFAULT
    if text in ("normal", "off", "none", "no", "false"):
        return Priority(None, 0)
    if text == "nice":
        return Priority(None, LOWEST_NICE)
    if text in _POLICIES:
        return Priority(_POLICIES[text], LOWEST_NICE)
    try:
        return Priority(None, max(0, min(LOWEST_NICE, int(text))))
    except ValueError:
        _logger.warning("otel-vllm-ascend writer: %s=%r is not one of nice, idle, batch, normal "
                        "or a niceness 0-19; using %s", PRIORITY_ENV, value, DEFAULT)
        return parse(DEFAULT)


def _policy() -> Optional[int]:
    getter = getattr(os, "sched_getscheduler", None)
    if getter is None:
        return None
    try:
        return getter(0)
    except OSError:
        return None


def _nice() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def _threads() -> List[int]:
    """The process's thread ids: on Linux both settings are per thread (0: the caller's)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        return [0]


def _set(policy: Optional[int], nice: Optional[int]) -> Optional[OSError]:
    """Set the policy and / or niceness of every thread; the first refusal, if any."""
    refused = None
    for thread in _threads():
        try:
            if policy is not None:
                os.sched_setscheduler(thread, policy, os.sched_param(0))
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, thread, nice)
        except ProcessLookupError:  # the thread ended since the listing: nothing to set
            continue
        except (AttributeError, OSError) as exc:
            refused = refused or OSError(str(exc))
    return refused


def lower(value: Optional[str] = None) -> Applied:
    """Apply ``OTEL_VLLM_WRITER_PRIORITY`` (or ``value``) to the process's threads (and so to
    those they start later: they inherit it); never raises."""
    wanted = parse(os.environ.get(PRIORITY_ENV) if value is None else value)
    before_policy, before_nice = _policy(), _nice()
    if wanted.policy is not None:
        number = getattr(os, wanted.policy, None)
        refused = (_set(number, None) if number is not None
                   else OSError(f"os.{wanted.policy} is not available"))
        if refused is not None:
            _logger.debug("writer priority: %s refused (%s); niceness %d instead",
                          wanted.policy, refused, wanted.nice)
    if wanted.nice > _nice():  # only ever lower the priority here
        refused = _set(None, wanted.nice)
        if refused is not None:
            _logger.debug("writer priority: niceness %d refused (%s)", wanted.nice, refused)
    applied = Applied(_policy(), _nice(), before_policy, before_nice)
    _logger.debug("writer priority: policy %s, niceness %d", applied.policy, applied.nice)
    return applied


def restore(applied: Applied) -> bool:
    """Back to the priority the writer started with (the server has stopped: the last records
    should not wait for idle CPU). True if the kernel allowed it for every live thread;
    without ``CAP_SYS_NICE`` it may allow leaving ``SCHED_IDLE`` and refuse the niceness."""
    policy = applied.before_policy
    if policy is None or policy == applied.policy:
        policy = None
    nice = applied.before_nice if applied.nice != applied.before_nice else None
    if policy is None and nice is None:
        return True
    refused = _set(policy, nice)
    if refused is not None:
        _logger.debug("writer priority: back to policy %s, niceness %d refused (%s)",
                      applied.before_policy, applied.before_nice, refused)
    return refused is None
