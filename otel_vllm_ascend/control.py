"""Live collection control for one process.

The profiler config file (``SERVICE_PROF_CONFIG_PATH``) is re-read while vLLM runs:

* ``enable`` 0 -> 1 starts recording without a restart, 1 -> 0 stops it;
* ``timelimit`` (seconds, 0 = none) stops recording that long after it was enabled; recording
  resumes only after the file changes again with ``enable: 1``;
* ``profiler_step_num`` (engine steps, < 1 = none) stops recording once that many engine steps
  were recorded (:func:`engine_step`, called by the EngineCore step handlers) and sets
  ``enable: 0`` in the file, so the service's other processes stop at their next poll too;
* ``domain`` (allow-list) and ``profiler_level`` decide which hooks record.

A daemon thread (``otel-vllm-control``) polls the file about every 0.5 s (a cheap ``mtime``
check). Whenever the effective state changes, every registered listener is called with the new
:class:`LiveState`; the instrumentor uses that to set one ``active`` flag per hook, so a
disabled hook costs a single attribute check on vLLM's thread. Samplers listen too.

In a forked child the thread does not exist; it is restarted there automatically
(``os.register_at_fork``). Spawned children start their own when they install hooks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

_logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class LiveState:
    """What this process records right now."""

    recording: bool = False
    config: Any = None  # the ProfilerConfig in force (None before the first load)
    enabled_at: Optional[float] = None  # time.monotonic() when recording started
    reason: str = "not started"

    def allows(self, domain: str, level: int = 20) -> bool:
        """True when a record of ``domain`` at ``level`` is kept now."""
        if not self.recording or self.config is None:
            return False
        try:
            return bool(self.config.allows(domain, level))
        except Exception:  # a config object without allows(): keep everything
            return True


Listener = Callable[[LiveState], None]


@dataclass
class _Controller:
    state: LiveState = field(default_factory=LiveState)
    listeners: List[Listener] = field(default_factory=list)
    config_file: Any = None  # ConfigFile, when a file is watched
    thread: Optional[threading.Thread] = None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.RLock = field(default_factory=threading.RLock)
    expired: bool = False  # timelimit or step limit reached for the current file version
    poll_interval: float = POLL_INTERVAL_S
    # profiler_step_num: read on EngineCore's thread by engine_step(), without the lock.
    step_limit: int = 0  # of the recording in force; 0 = none (or not recording)
    steps: int = 0  # engine steps seen since recording started
    step_marker: Any = None  # the last step's SchedulerOutput: schedule and modelExec count once
    step_allowed: bool = True


_ctl = _Controller()


def current() -> LiveState:
    """The state in force now."""
    return _ctl.state


def is_recording() -> bool:
    return _ctl.state.recording


# The answers of allows() for the state in force, as (state, {(domain, level): answer}):
# handlers ask every engine step, the state changes a few times per run (a new LiveState
# object each time). One tuple swapped whole, so a thread never reads another state's answers.
_answers: tuple = (None, {})


def allows(domain: str, level: int = 20) -> bool:
    """For handlers whose records span several domains: is this one kept now?"""
    global _answers
    state = _ctl.state
    answers = _answers
    if answers[0] is not state:
        answers = _answers = (state, {})
    answer = answers[1].get((domain, level))
    if answer is None:
        answer = answers[1][(domain, level)] = state.allows(domain, level)
    return answer


class Switch:
    """Whether records of one domain are kept now, as an attribute (``on``) kept current by
    every change of the live state: for a handler's second domain, read once per engine step,
    where a call to :func:`allows` costs a few microseconds with cold caches."""

    __slots__ = ("domain", "level", "on")

    def __init__(self, domain: str, level: int = 20) -> None:
        self.domain, self.level = domain, level
        self.on = _ctl.state.allows(domain, level)
        _switches.append(self)


_switches: List[Switch] = []


def add_listener(listener: Listener) -> None:
    """Call ``listener(state)`` now and on every change of the live state."""
    with _ctl.lock:
        if listener not in _ctl.listeners:
            _ctl.listeners.append(listener)
        state = _ctl.state
    _notify_one(listener, state)


def remove_listener(listener: Listener) -> None:
    with _ctl.lock:
        if listener in _ctl.listeners:
            _ctl.listeners.remove(listener)


def start(config_file: Any = None, config: Any = None,
          poll_interval: float = POLL_INTERVAL_S) -> LiveState:
    """Start live control.

    ``config_file`` is a ``config.ConfigFile`` to watch (its ``enable`` rules); without one,
    ``config`` is applied as is and never changes (used under ``opentelemetry-instrument``
    without ``SERVICE_PROF_CONFIG_PATH``, where collection is on with the default config).
    Calling it again replaces the previous source.
    """
    with _ctl.lock:
        _stop_thread()
        _ctl.config_file = config_file
        _ctl.expired = False
        _ctl.poll_interval = poll_interval
        first = config_file.current if config_file is not None else config
        _apply(first, "config loaded")
        if config_file is not None or _timelimit(first) > 0:
            _start_thread()
        return _ctl.state


def stop() -> None:
    """Stop the watcher and recording (uninstrument, tests)."""
    with _ctl.lock:
        _stop_thread()
        _ctl.config_file = None
        _set(LiveState(recording=False, config=_ctl.state.config, reason="stopped"))


def poll_now() -> LiveState:
    """One watcher iteration on the calling thread (tests, and the thread's own loop)."""
    with _ctl.lock:
        config_file = _ctl.config_file
        if config_file is not None:
            try:
                new_config = config_file.poll()
            except Exception:  # ConfigFile.poll never raises by contract; stay safe anyway
                _logger.debug("config poll failed", exc_info=True)
                new_config = None
            if new_config is not None:
                _ctl.expired = False
                _apply(new_config, "config changed")
                return _ctl.state
        state = _ctl.state
        limit = _timelimit(state.config)
        if (state.recording and limit > 0 and state.enabled_at is not None
                and time.monotonic() - state.enabled_at >= limit):
            _ctl.expired = True
            _logger.info("otel-vllm-ascend: timelimit of %ss reached, recording stopped", limit)
            _set(LiveState(recording=False, config=state.config, reason="timelimit reached"))
        return _ctl.state


def engine_step(marker: Any) -> bool:
    """Count one engine step (``marker``: its SchedulerOutput; the same one counts once).

    False for a step beyond ``profiler_step_num``: the caller records nothing for it, and
    recording stops (on a short thread: listeners may join threads, not on vLLM's).
    """
    ctl = _ctl
    if marker is ctl.step_marker:
        return ctl.step_allowed
    ctl.step_marker = marker
    limit = ctl.step_limit
    if limit < 1:
        ctl.step_allowed = True
        return True
    ctl.steps += 1
    allowed = ctl.steps <= limit
    ctl.step_allowed = allowed
    if ctl.steps == limit + 1:
        threading.Thread(target=_stop_at_step_limit, args=(limit,), name="otel-vllm-step-limit",
                         daemon=True).start()
    return allowed


def _stop_at_step_limit(limit: int) -> None:
    with _ctl.lock:
        state = _ctl.state
        if not state.recording:
            return
        _ctl.expired = True
        _logger.info("otel-vllm-ascend: profiler_step_num of %d engine steps reached, recording "
                     "stopped (pid %d)", limit, os.getpid())
        _set(LiveState(recording=False, config=state.config, reason="profiler_step_num reached"))
        config_file = _ctl.config_file
    if config_file is not None:
        from otel_vllm_ascend.config import switch_off

        switch_off(config_file.path)


def _timelimit(config: Any) -> float:
    try:
        return float(getattr(config, "timelimit", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def _apply(config: Any, reason: str) -> None:
    enable = bool(getattr(config, "enable", False)) and not _ctl.expired
    old = _ctl.state
    if enable:
        enabled_at = old.enabled_at if old.recording else time.monotonic()
        if not old.recording:  # a new recording counts its own steps
            _ctl.steps = 0
            _ctl.step_marker = None
        new = LiveState(recording=True, config=config, enabled_at=enabled_at, reason=reason)
    else:
        new = LiveState(recording=False, config=config, reason=reason)
    if old.recording != new.recording:
        _logger.info("otel-vllm-ascend: recording %s (pid %d)",
                     "started" if new.recording else "stopped", os.getpid())
    _set(new)


def _set(state: LiveState) -> None:
    _ctl.state = state
    try:
        limit = int(getattr(state.config, "profiler_step_num", 0) or 0)
    except (TypeError, ValueError):
        limit = 0
    _ctl.step_limit = limit if state.recording else 0
    for switch in _switches:
        switch.on = state.allows(switch.domain, switch.level)
    for listener in list(_ctl.listeners):
        _notify_one(listener, state)


def _notify_one(listener: Listener, state: LiveState) -> None:
    try:
        listener(state)
    except Exception:
        _logger.warning("otel-vllm-ascend: live-control listener %r failed", listener,
                        exc_info=True)


def _start_thread() -> None:
    stop_event = threading.Event()
    _ctl.stop = stop_event
    thread = threading.Thread(target=_run, args=(stop_event,), name="otel-vllm-control",
                              daemon=True)
    _ctl.thread = thread
    thread.start()


def _stop_thread() -> None:
    thread = _ctl.thread
    _ctl.stop.set()
    _ctl.thread = None
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=2)


def _run(stop_event: threading.Event) -> None:
    while not stop_event.wait(_ctl.poll_interval):
        try:
            poll_now()
        except Exception:  # the watcher must outlive any single bad poll
            _logger.debug("live-control poll failed", exc_info=True)


def _after_fork_in_child() -> None:
    # Locks may be held by threads that do not exist here; the watcher thread is gone.
    had_thread = _ctl.thread is not None
    _ctl.lock = threading.RLock()
    _ctl.thread = None
    _ctl.stop = threading.Event()
    if had_thread:
        _start_thread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
