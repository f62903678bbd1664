"""The profiler configuration file, ``ms_service_profiler_config.json``.

Its path comes from the environment variable ``SERVICE_PROF_CONFIG_PATH`` (the same file and
keys msserviceprofiler uses, so existing set-ups keep working)::

    {"enable": 1, "prof_dir": "~/.ms_server_profiler", "profiler_level": "INFO",
     "domain": "Schedule; Execute", "timelimit": 600}

Every key, its range and default is listed in ``docs/configuration.md``. Loading never stops the
server: a bad value is replaced by its default with one warning naming the file, the key, the
value and the default; an unknown key gets one warning; malformed JSON gets one warning and
collection stays off. A missing file is created with the defaults (``enable: 0``), written to a
temporary file and linked into place so that two processes starting at once neither corrupt nor
overwrite each other's file.

:class:`ConfigFile` re-reads the file when its modification time, size or inode changes; a
watcher thread calls :meth:`ConfigFile.poll` to switch collection on and off live.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from otel_vllm_ascend import file_safety

_logger = logging.getLogger(__name__)

CONFIG_PATH_ENV = "SERVICE_PROF_CONFIG_PATH"
DEFAULT_PROF_DIR = "~/.ms_server_profiler"

LEVELS: Dict[str, int] = {
    "ERROR": 10,
    "L0": 10,
    "LEVEL_CORE_TRACE": 10,
    "LEVEL_OUTLIER_EVENT": 10,
    "LEVEL_OUTLIER_ENENT": 10,  # the reference library's spelling
    "INFO": 20,
    "L1": 20,
    "LEVEL_NORMAL_TRACE": 20,
    "DETAILED": 30,
    "L2": 30,
    "LEVEL_DETAILED_TRACE": 30,
    "VERBOSE": 40,
    "LEVEL_VERBOSE_TRACE": 40,
}

FREQ_RANGE = (1, 50)
TIMELIMIT_RANGE = (0, 7200)
ACL_TASK_TIME_VALUES = (0, 1, 2, 3)
ACL_PROF_LEVELS = ("L0", "L1", "L2")
ACL_PROF_DURATION_RANGE = (1, 999)
DEFAULT_AICORE_METRICS = "ACL_AICORE_PIPE_UTILIZATION"


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


@dataclass(frozen=True)
class ProfilerConfig:
    """The effective profiler configuration (every value already validated)."""

    enable: bool = False
    prof_dir: str = field(default_factory=lambda: _expand(DEFAULT_PROF_DIR))
    profiler_level: int = 20
    host_system_usage_freq: int = -1
    npu_memory_usage_freq: int = -1
    acl_task_time: int = 0
    acl_prof_task_time_level: str = ""
    acl_prof_level: Optional[str] = None
    acl_prof_duration_s: Optional[int] = None
    api_filter: Tuple[str, ...] = ()
    kernel_filter: Tuple[str, ...] = ()
    timelimit: int = 0
    domain: FrozenSet[str] = frozenset()
    torch_prof_stack: bool = False
    torch_prof_modules: bool = False
    torch_prof_step_num: int = 0
    profiler_step_num: int = 0  # engine steps to record, then stop; < 1: no limit
    aclprofAicoreMetrics: str = DEFAULT_AICORE_METRICS  # spelled as in the file
    aclDataTypeConfig: str = ""

    def allows(self, domain: Optional[str], level: int = 20) -> bool:
        """True if a record of ``domain`` at ``level`` should be collected now."""
        if not self.enable or level > self.profiler_level:
            return False
        return not self.domain or domain in self.domain


def _expand(path: str) -> str:
    return os.path.expanduser(os.path.expandvars(path))


# ---------------------------------------------------------------------------------------------
# Value parsers: each returns the typed value or raises ConfigError with the reason.


def parse_level(value: Any) -> int:
    """A profiler level from a name (ERROR, INFO, DETAILED, VERBOSE, L0-L2, LEVEL_*) or int."""
    if isinstance(value, bool):
        raise ConfigError(f"a level must be a name or a non-negative integer, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("a level must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        level = LEVELS.get(text.upper())
        if level is not None:
            return level
        raise ConfigError(f"unknown level name (use one of {', '.join(sorted(LEVELS))} or an "
                          "integer)")
    raise ConfigError(f"a level must be a name or a non-negative integer, not "
                      f"{type(value).__name__}")


def _parse_switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise ConfigError("must be 0 or 1 (or true/false)")


def _parse_int(value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        else:
            raise ConfigError("must be an integer")
    if low is not None and value < low:
        raise ConfigError(f"must be at least {low}")
    if high is not None and value > high:
        raise ConfigError(f"must be at most {high}")
    return value


def _parse_freq(value: Any) -> int:
    number = _parse_int(value)
    if number == -1 or FREQ_RANGE[0] <= number <= FREQ_RANGE[1]:
        return number
    raise ConfigError(f"must be {FREQ_RANGE[0]}-{FREQ_RANGE[1]} Hz, or -1 (off)")


def _parse_acl_task_time(value: Any) -> int:
    number = _parse_int(value)
    if number not in ACL_TASK_TIME_VALUES:
        raise ConfigError("must be 0 (off), 1 (aclprof), 2 (MSPTI) or 3 (torch_npu profiler)")
    return number


def parse_acl_prof_task_time_level(value: Any) -> Tuple[str, Optional[str], Optional[int]]:
    """``"L1"``, ``"L1,10"`` or ``"L1;10"`` -> (normalised text, level, duration in s)."""
    if not isinstance(value, str):
        raise ConfigError("must be a string such as \"L1\", \"L1,10\" or \"L1;10\"")
    text = value.strip()
    if not text:
        return "", None, None
    separator = ";" if ";" in text else ","
    parts = [part.strip() for part in text.split(separator)]
    if len(parts) > 2:
        raise ConfigError("must be a level optionally followed by one duration, e.g. \"L1;10\"")
    level = parts[0].upper()
    if level not in ACL_PROF_LEVELS:
        raise ConfigError(f"level must be one of {', '.join(ACL_PROF_LEVELS)}")
    duration: Optional[int] = None
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ConfigError("the duration after the level must be whole seconds")
        duration = int(parts[1])
        low, high = ACL_PROF_DURATION_RANGE
        if not low <= duration <= high:
            raise ConfigError(f"the duration must be {low}-{high} s")
    normalised = level if duration is None else f"{level};{duration}"
    return normalised, level, duration


def _parse_list(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(";")
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise ConfigError("must be a ';'-separated string")
    return tuple(item.strip() for item in items if item.strip())


def _parse_domain(value: Any) -> FrozenSet[str]:
    return frozenset(_parse_list(value))


def _parse_prof_dir(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be a non-empty path")
    return _expand(value.strip())


def _parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError("must be a string")
    return value.strip()


def _parse_step_num(value: Any) -> int:
    return _parse_int(value, low=0)


def _parse_profiler_step_num(value: Any) -> int:
    # Any integer: values below 1 mean "no limit" (msserviceprofiler 26.x's key).
    return max(0, _parse_int(value))


def _parse_timelimit(value: Any) -> int:
    return _parse_int(value, *TIMELIMIT_RANGE)


# key -> parser. acl_prof_task_time_level is handled separately (it sets three fields).
_PARSERS: Dict[str, Callable[[Any], Any]] = {
    "enable": _parse_switch,
    "prof_dir": _parse_prof_dir,
    "profiler_level": parse_level,
    "host_system_usage_freq": _parse_freq,
    "npu_memory_usage_freq": _parse_freq,
    "acl_task_time": _parse_acl_task_time,
    "api_filter": _parse_list,
    "kernel_filter": _parse_list,
    "timelimit": _parse_timelimit,
    "domain": _parse_domain,
    "torch_prof_stack": _parse_switch,
    "torch_prof_modules": _parse_switch,
    "torch_prof_step_num": _parse_step_num,
    "profiler_step_num": _parse_profiler_step_num,
    "aclprofAicoreMetrics": _parse_text,
    "aclDataTypeConfig": _parse_text,
}
KNOWN_KEYS = frozenset(_PARSERS) | {"acl_prof_task_time_level"}

# What a missing file is replaced with (the reference library's default keys).
DEFAULT_FILE_CONTENT: Dict[str, Any] = {
    "enable": 0,
    "prof_dir": DEFAULT_PROF_DIR,
    "profiler_level": "INFO",
    "acl_task_time": 0,
    "acl_prof_task_time_level": "",
    "api_filter": "",
    "kernel_filter": "",
    "timelimit": 0,
    "domain": "",
}


def _default_shown(key: str) -> str:
    if key in DEFAULT_FILE_CONTENT:
        return json.dumps(DEFAULT_FILE_CONTENT[key])
    default = {f.name: f for f in fields(ProfilerConfig)}[key].default
    if isinstance(default, (tuple, frozenset)):
        return '""'
    return json.dumps(default)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_config(data: Any, path: str = "<config>") -> Tuple[ProfilerConfig, List[str]]:
    """The config described by a decoded JSON document, and the problems found in it."""
    problems: List[str] = []
    if not isinstance(data, dict):
        problems.append(f"{path}: the file must hold a JSON object, not "
                        f"{type(data).__name__}; collection stays off")
        return ProfilerConfig(), problems
    values: Dict[str, Any] = {}
    for key, raw in data.items():
        if key not in KNOWN_KEYS:
            problems.append(f"{path}: unknown key {key!r} ignored (known keys: "
                            f"{', '.join(sorted(KNOWN_KEYS))})")
            continue
        try:
            if key == "acl_prof_task_time_level":
                text, level, duration = parse_acl_prof_task_time_level(raw)
                values.update(acl_prof_task_time_level=text, acl_prof_level=level,
                              acl_prof_duration_s=duration)
            else:
                values[key] = _PARSERS[key](raw)
        except ConfigError as exc:
            problems.append(f"{path}: key {key!r} has invalid value {_short(raw)} ({exc}); "
                            f"using the default {_default_shown(key)}")
    return ProfilerConfig(**values), problems


def _read(path: str) -> Tuple[ProfilerConfig, List[str]]:
    if os.path.lexists(path):
        try:
            file_safety.check(path, "profiler config")
        except file_safety.UnsafeFileError as exc:
            return ProfilerConfig(), [f"{exc}; collection stays off"]
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return _create_default(path)
    except (OSError, UnicodeDecodeError) as exc:
        return ProfilerConfig(), [f"{path}: cannot read the profiler config ({exc}); "
                                  "collection stays off"]
    try:
        data = json.loads(text)
    except ValueError as exc:
        return ProfilerConfig(), [f"{path}: malformed JSON ({exc}); collection stays off"]
    return parse_config(data, path)


def _create_default(path: str) -> Tuple[ProfilerConfig, List[str]]:
    try:
        write_default_config(path)
    except OSError as exc:
        return ProfilerConfig(), [f"{path}: the profiler config does not exist and the default "
                                  f"could not be written ({exc}); collection stays off"]
    _logger.info("%s: profiler config did not exist; wrote the default (enable: 0)", path)
    return ProfilerConfig(), []


def write_default_config(path: str) -> bool:
    """Create ``path`` with the default content unless it exists; True if this call created it.

    The content goes to a temporary file in the same folder first and is then hard-linked into
    place, which fails if another process got there first, so an existing file is never replaced
    and nobody ever sees a half-written one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".ms_service_profiler_config.",
                                             suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(DEFAULT_FILE_CONTENT, handle, indent=4)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o640)
        try:
            os.link(temporary, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            # File systems without hard links: replace is still atomic; every starter writes
            # the same content, so losing the race is harmless.
            if os.path.exists(path):
                return False
            os.replace(temporary, path)
            return True
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def switch_off(path: str) -> bool:
    """Rewrite ``path`` with ``"enable": 0``, every other key kept; True if it was rewritten.

    What msserviceprofiler's library does when ``profiler_step_num`` is reached: every process
    of the service watches the file, so all of them stop. The new text goes to a temporary file
    in the same folder that then replaces the file (same permissions), so a reader never sees a
    half-written one. A file that is not a JSON object is left alone.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        mode = os.stat(path).st_mode & 0o777
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        _logger.warning("%s: could not read the profiler config to set enable 0 (%s)", path, exc)
        return False
    if not isinstance(data, dict):
        return False
    data["enable"] = 0
    folder = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=".ms_service_profiler_config.",
                                                 suffix=".tmp", dir=folder)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=4)
                handle.write("\n")
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except OSError as exc:
        _logger.warning("%s: could not set enable 0 in the profiler config (%s)", path, exc)
        return False
    return True


def load_config(path: str) -> ProfilerConfig:
    """Read the config at ``path``; never raises, logs one warning per problem."""
    config, problems = _read(str(path))
    for problem in problems:
        _logger.warning("%s", problem)
    return config


def config_path_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The config path named by ``SERVICE_PROF_CONFIG_PATH`` (``~`` expanded), or None."""
    value = (os.environ if environ is None else environ).get(CONFIG_PATH_ENV, "").strip()
    return _expand(value) if value else None


class ConfigFile:
    """A config file that is re-read only when it changes on disk.

    :meth:`poll` costs one ``os.stat`` when nothing changed, may be called from any thread, and
    logs each distinct problem once however often it is seen.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._warned: set = set()
        self._stamp = self._stat()
        config, problems = _read(self.path)
        self._warn(problems)
        if self._stamp is None:  # the default may just have been written
            self._stamp = self._stat()
        self.current: ProfilerConfig = config

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _warn(self, problems: List[str]) -> None:
        for problem in problems:
            if problem not in self._warned:
                self._warned.add(problem)
                _logger.warning("%s", problem)

    def poll(self) -> Optional[ProfilerConfig]:
        """The new config if the file changed into a different config since the last call."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            if stamp is None:
                self._warn([f"{self.path}: the profiler config disappeared; keeping the last "
                            "settings"])
                return None
            config, problems = _read(self.path)
            self._warn(problems)
            if config == self.current:
                return None
            self.current = config
            return config
