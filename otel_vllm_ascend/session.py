"""The collection folder shared by every process of one service.

msserviceprofiler writes all processes of a service (API server, EngineCore, Workers) into one
folder ``<prof_dir>/<MMDD-HHMM>/`` named after the local time at which the service started. Here
the first process that needs the folder picks the name and publishes it in the environment
variable ``OTEL_VLLM_SESSION_DIR``; spawn and fork children inherit it, so they write into the
same folder. Set the variable yourself to choose the folder.

``prof_dir`` comes from the profiler config file named by ``SERVICE_PROF_CONFIG_PATH``
(``"prof_dir"`` key), default ``~/.ms_server_profiler``. The folder is created lazily, at the
first write, with mode 0750.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

_logger = logging.getLogger(__name__)

SESSION_ENV = "OTEL_VLLM_SESSION_DIR"
CONFIG_ENV = "SERVICE_PROF_CONFIG_PATH"
DEFAULT_PROF_DIR = "~/.ms_server_profiler"
DIR_MODE = 0o750


def prof_dir_from_config() -> Path:
    """The output root: ``prof_dir`` of the config file, else ``~/.ms_server_profiler``."""
    path = os.environ.get(CONFIG_ENV)
    prof_dir: Optional[str] = None
    if path:
        prof_dir = _configured_prof_dir(path)
    return Path(os.path.expanduser(prof_dir or DEFAULT_PROF_DIR))


def _configured_prof_dir(path: str) -> Optional[str]:
    try:
        from otel_vllm_ascend.config import load_config  # written concurrently; may be absent
    except ImportError:
        load_config = None
    if load_config is not None:
        try:
            value = getattr(load_config(path), "prof_dir", None)
            return str(value) if value else None
        except Exception:  # load_config is documented never to raise; stay safe anyway
            _logger.debug("load_config(%s) failed", path, exc_info=True)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None  # the config loader reports unreadable files; the default root applies
    value = data.get("prof_dir") if isinstance(data, dict) else None
    return os.path.expandvars(value) if isinstance(value, str) and value else None


def session_name(now: Optional[float] = None) -> str:
    """``MMDD-HHMM`` in local time, as msserviceprofiler names its collection folders."""
    return time.strftime("%m%d-%H%M", time.localtime(now))


def session_dir() -> Path:
    """This service's collection folder; chosen once and inherited by child processes."""
    chosen = os.environ.get(SESSION_ENV)
    if chosen:
        return Path(chosen)
    folder = prof_dir_from_config() / session_name()
    os.environ[SESSION_ENV] = str(folder)
    return folder


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) with mode 0750; an existing folder is kept."""
    if folder.is_dir():
        return
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for created in missing:
        try:
            os.chmod(created, DIR_MODE)  # mkdir's mode is filtered by the umask
        except OSError:
            pass
