"""Is an input file safe to act on inside a vLLM process?

The symbol YAML decides which code runs inside vLLM (its handlers), the profiler config where
captures go, a custom handler file is code itself. Before any of them is read it must be:

* a regular file, reached without a symbolic link at the file itself;
* not writable by group or others;
* owned by the user running vLLM (or by root);
* at most :data:`MAX_BYTES` long.

A file that fails is refused with one message naming the file and the rule; the caller keeps
vLLM serving (collection stays off for that file). An administrator who shares a file on purpose
accepts it by listing its path in ``OTEL_VLLM_TRUSTED_FILES`` (``os.pathsep``-separated), or every
file with ``OTEL_VLLM_TRUSTED_FILES=*``.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Union

MAX_BYTES = 10 * 1024 * 1024
TRUSTED_ENV = "OTEL_VLLM_TRUSTED_FILES"


class UnsafeFileError(Exception):
    """An input file that fails a safety rule; the message names the file and the rule."""


def _trusted(path: str) -> bool:
    listed = os.environ.get(TRUSTED_ENV, "")
    if listed.strip() == "*":
        return True
    wanted = os.path.realpath(path)
    return any(item and os.path.realpath(item) == wanted for item in listed.split(os.pathsep))


def problem(path: Union[str, os.PathLike[str]]) -> Optional[str]:
    """Why ``path`` must not be used, or None when it may."""
    path = os.fspath(path)
    if _trusted(path):
        return None
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link (name the file it points to, or list it in " \
               f"{TRUSTED_ENV})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}; " \
               "chmod go-w it)"
    if hasattr(os, "getuid") and info.st_uid not in (os.getuid(), 0):
        return f"is owned by another user (uid {info.st_uid}, not {os.getuid()})"
    if info.st_size > MAX_BYTES:
        return f"is larger than {MAX_BYTES // (1024 * 1024)} MiB ({info.st_size} bytes)"
    return None


def check(path: Union[str, os.PathLike[str]], what: str) -> None:
    """Raise :class:`UnsafeFileError` naming ``what`` (e.g. "symbol file"), the file and the
    rule when ``path`` fails a rule."""
    reason = problem(path)
    if reason is not None:
        raise UnsafeFileError(f"{what} {os.fspath(path)} refused: it {reason}; "
                              f"see docs/security.md ({TRUSTED_ENV} accepts it on purpose)")
