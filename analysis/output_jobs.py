"""Outputs as jobs: each reports its own failure and the others go on, and half of them can
run in a forked child on a second core.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from otel_vllm_ascend.analysis.allocator import give_back_free_memory

_logger = logging.getLogger("otel_vllm_ascend.analysis")


class _Run:
    """One analysis: each stage reports its own failure and the others go on."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[Path] = []
        self.failed: list[str] = []
        self.forked = False  # a forked child's run: what only the parent needs may go

    def stage(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # one message per failed output, never a traceback
            _logger.error("could not produce %s: %s: %s", what, type(exc).__name__, exc)
            _logger.debug("details", exc_info=True)
            self.failed.append(what)
            return None
        finally:
            give_back_free_memory()  # the stage's temporaries: not held into the next one

    def wrote(self, path: Optional[Path]) -> None:
        if path is not None:
            self.written.append(Path(path))


def _in_background(jobs: Callable[[_Run], None], run: _Run,
                   what: str) -> Callable[[], None]:
    """Run ``jobs`` in a forked child when a second core exists; returns the function to join.

    The child reports what it wrote and what failed through a pipe; without ``fork`` (or with
    ``OTEL_VLLM_ANALYZE_SERIAL=1``, or one core) the jobs simply run here, now.
    """
    serial = (not hasattr(os, "fork") or (os.cpu_count() or 1) < 2
              or os.environ.get("OTEL_VLLM_ANALYZE_SERIAL") == "1")
    if not serial:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            serial = True
    if serial:
        jobs(run)
        return lambda: None
    if pid == 0:  # the child: do the jobs, send the outcome, leave without cleanup
        code = 0
        try:
            os.close(read_fd)
            child = _Run(run.out)
            child.forked = True
            try:
                jobs(child)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                child.failed.append(f"background writer ({type(exc).__name__}: {exc})")
            payload = json.dumps({"written": [str(p) for p in child.written],
                                  "failed": child.failed})
            with os.fdopen(write_fd, "w") as pipe:
                pipe.write(payload)
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)

    def join() -> None:
        with os.fdopen(read_fd) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        try:
            outcome = json.loads(text)
        except ValueError:
            _logger.error("the background writer (%s) ended without a result", what)
            run.failed.append(what)
            return
        run.written.extend(Path(p) for p in outcome["written"])
        run.failed.extend(outcome["failed"])

    return join
