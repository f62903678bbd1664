"""The writer's CPU priority (``exporters/priority.py``): parsed, applied, read back.

Applied in a spawned interpreter (the setting is per thread and lasts for the process), read
back there with ``os.getpriority`` / ``os.sched_getscheduler`` for the main thread and for a
thread started afterwards (the export threads start after the writer lowers its priority).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from otel_vllm_ascend.exporters import priority

ROOT = Path(priority.__file__).resolve().parents[2]  # this tree, not an installed one

CHILD = textwrap.dedent('''
    import json, os, sys, threading
    from otel_vllm_ascend.exporters import priority

    def state():
        tid = threading.get_native_id()
        return [os.sched_getscheduler(tid) if hasattr(os, "sched_getscheduler") else None,
                os.getpriority(os.PRIO_PROCESS, tid)]

    applied = priority.lower(sys.argv[1] if len(sys.argv) > 1 else None)
    later = []
    thread = threading.Thread(target=lambda: later.append(state()))
    thread.start()
    thread.join()
    print(json.dumps({"main": state(), "thread": later[0], "applied": list(applied),
                      "restored": priority.restore(applied), "after": state()}))
''')


def _spawn(*argv: str, env: dict = None) -> dict:
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=environ,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_parse():
    assert priority.parse(None) == priority.parse(priority.DEFAULT)
    assert priority.parse("nice") == priority.Priority(None, 19)
    assert priority.parse("idle") == priority.Priority("SCHED_IDLE", 19)
    assert priority.parse(" Batch ") == priority.Priority("SCHED_BATCH", 19)
    assert priority.parse("normal") == priority.Priority(None, 0)
    assert priority.parse("0") == priority.Priority(None, 0)
    assert priority.parse("7") == priority.Priority(None, 7)
    assert priority.parse("99") == priority.Priority(None, 19)


def test_unknown_value_is_the_default_and_said(caplog):
    assert priority.parse("fast") == priority.parse(priority.DEFAULT)
    assert "OTEL_VLLM_WRITER_PRIORITY='fast'" in caplog.text


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no os.getpriority")
def test_default_lowers_main_thread_and_later_threads():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    seen = _spawn(env={"OTEL_VLLM_WRITER_PRIORITY": ""})  # empty: the default
    assert seen["main"][1] == max(start, 19)
    assert seen["thread"][1] == max(start, 19)  # inherited by a thread started later


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no os.getpriority")
def test_environment_variable_is_read():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    assert _spawn(env={"OTEL_VLLM_WRITER_PRIORITY": "5"})["main"][1] == max(start, 5)
    assert _spawn(env={"OTEL_VLLM_WRITER_PRIORITY": "normal"})["main"][1] == start


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this OS")
def test_idle_policy_read_back_and_restored_when_allowed():
    seen = _spawn("idle")
    assert seen["main"][0] == os.SCHED_IDLE
    assert seen["thread"][0] == os.SCHED_IDLE
    if seen["restored"]:  # CAP_SYS_NICE (root): back to where it started
        assert seen["after"][0] == seen["applied"][2]
        assert seen["after"][1] == seen["applied"][3]
    else:  # refused, nothing raised; a kernel may still let an unprivileged thread leave
        # SCHED_IDLE (within RLIMIT_NICE) while it refuses the lower niceness
        assert seen["after"][0] in (os.SCHED_IDLE, seen["applied"][2])
        assert seen["after"][1] == seen["applied"][1]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this OS")
def test_batch_policy_also_lowers_the_niceness():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    seen = _spawn("batch")
    assert seen["main"] == [os.SCHED_BATCH, max(start, 19)]


def test_refused_policy_falls_back_to_the_niceness(monkeypatch, caplog):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
    monkeypatch.setattr(os, "setpriority", refuse, raising=False)
    caplog.set_level("DEBUG", logger="otel_vllm_ascend.writer")
    applied = priority.lower("idle")  # both refused: nothing raised, both refusals said
    assert applied.nice == applied.before_nice
    assert "SCHED_IDLE refused" in caplog.text
    assert "niceness 19 refused" in caplog.text or applied.before_nice >= 19


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no os.getpriority")
def test_a_thread_ended_since_the_listing_is_not_a_refusal(monkeypatch):
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    # an id no live thread has (the listing raced with a thread's end): ESRCH, not EPERM
    monkeypatch.setattr(priority, "_threads", lambda: [0, ended.native_id, 2 ** 22 + 7])
    assert priority._set(None, os.getpriority(os.PRIO_PROCESS, 0)) is None
