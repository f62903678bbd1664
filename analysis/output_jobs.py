"""Outputs as jobs: each reports its own failure and the others go on, and half of them can
run in a forked child on a second core.

The child shares this process's pages until either writes them: what each then allocates,
and what the child touches of the tables, is held twice. Beside a large capture's analysis
(0.9 GB held at a hundred times the benchmark capture) the two processes held 1.37 GB where
one holds 1.05 GB; so the child is forked only while this process holds less than
``FORK_BELOW_BYTES``, and above that the jobs run here, first.
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

FORK_BELOW_BYTES = 512 * 2**20  # resident: two processes then stay within about 1 GB


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

    def place(self, path: Optional[Path], written_at: int, failed_at: int) -> None:
        """The stage just run listed at a given place: ``path`` among the written files, or,
        when it failed (``path`` None), its entry (the last failure) among the failed."""
        if path is not None:
            self.written.insert(written_at, Path(path))
        else:
            self.failed.insert(failed_at, self.failed.pop())


def _in_background(jobs: Callable[[_Run], None], run: _Run,
                   what: str) -> Callable[[], None]:
    """Run ``jobs`` in a forked child when a second core exists; returns the function to join.

    The child reports what it wrote and what failed through a pipe; without ``fork`` (or with
    ``OTEL_VLLM_ANALYZE_SERIAL=1``, or one core, or this process holding ``FORK_BELOW_BYTES``
    or more) the jobs simply run here, now. Either way what they wrote and what failed are
    added to ``run`` when joined, after what this process added until then.
    """
    serial = (not hasattr(os, "fork") or (os.cpu_count() or 1) < 2
              or os.environ.get("OTEL_VLLM_ANALYZE_SERIAL") == "1"
              or _resident_bytes() >= FORK_BELOW_BYTES)
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
        here = _Run(run.out)
        jobs(here)

        def join_here() -> None:
            run.written.extend(here.written)
            run.failed.extend(here.failed)

        return join_here
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


def _resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc/self/statm``); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0
