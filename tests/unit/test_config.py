"""The profiler config file: typed model, validation messages, default file, live re-reading."""

import json
import logging
import multiprocessing
import os
import threading

import pytest

from otel_vllm_ascend.config import (
    DEFAULT_FILE_CONTENT,
    LEVELS,
    ConfigError,
    ConfigFile,
    ProfilerConfig,
    config_path_from_env,
    load_config,
    parse_level,
)

LOGGER = "otel_vllm_ascend.config"


def write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and
            r.levelno == logging.WARNING]


# --- the model --------------------------------------------------------------------------------


def test_defaults():
    config = ProfilerConfig()
    assert config.enable is False
    assert config.prof_dir == os.path.expanduser("~/.ms_server_profiler")
    assert config.profiler_level == 20
    assert (config.host_system_usage_freq, config.npu_memory_usage_freq) == (-1, -1)
    assert (config.acl_task_time, config.timelimit, config.torch_prof_step_num) == (0, 0, 0)
    assert config.domain == frozenset() and config.api_filter == ()
    assert config.acl_prof_level is None and config.acl_prof_duration_s is None
    assert config.aclprofAicoreMetrics == "ACL_AICORE_PIPE_UTILIZATION"


def test_every_key_is_parsed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROF_ROOT", str(tmp_path / "root"))
    path = write(tmp_path / "c.json", {
        "enable": 1, "prof_dir": "$PROF_ROOT/out", "profiler_level": "detailed",
        "host_system_usage_freq": 50, "npu_memory_usage_freq": 1, "acl_task_time": 2,
        "acl_prof_task_time_level": "l1;10", "api_filter": "matmul; add ;",
        "kernel_filter": "Cast", "timelimit": 7200, "domain": " Schedule ; Execute;",
        "torch_prof_stack": True, "torch_prof_modules": 1, "torch_prof_step_num": 5,
        "aclprofAicoreMetrics": "ACL_AICORE_NONE", "aclDataTypeConfig": "ACL_PROF_ACL_API",
    })
    config = load_config(str(path))
    assert warnings_of(caplog) == []
    assert config == ProfilerConfig(
        enable=True, prof_dir=str(tmp_path / "root" / "out"), profiler_level=30,
        host_system_usage_freq=50, npu_memory_usage_freq=1, acl_task_time=2,
        acl_prof_task_time_level="L1;10", acl_prof_level="L1", acl_prof_duration_s=10,
        api_filter=("matmul", "add"), kernel_filter=("Cast",), timelimit=7200,
        domain=frozenset({"Schedule", "Execute"}), torch_prof_stack=True,
        torch_prof_modules=True, torch_prof_step_num=5, aclprofAicoreMetrics="ACL_AICORE_NONE",
        aclDataTypeConfig="ACL_PROF_ACL_API")


@pytest.mark.parametrize("text, level, duration, normalised", [
    ("L1", "L1", None, "L1"), ("L1,10", "L1", 10, "L1;10"), ("L0;999", "L0", 999, "L0;999"),
    (" l2 , 1 ", "L2", 1, "L2;1"), ("", None, None, ""),
])
def test_acl_prof_task_time_level_forms(tmp_path, text, level, duration, normalised):
    config = load_config(str(write(tmp_path / "c.json", {"acl_prof_task_time_level": text})))
    assert (config.acl_prof_level, config.acl_prof_duration_s) == (level, duration)
    assert config.acl_prof_task_time_level == normalised


def test_prof_dir_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(str(write(tmp_path / "c.json", {"prof_dir": "~/prof"})))
    assert config.prof_dir == str(tmp_path / "prof")


@pytest.mark.parametrize("name, value", sorted(LEVELS.items()))
def test_level_names(name, value):
    assert parse_level(name) == value
    assert parse_level(name.lower()) == value


def test_level_integers():
    assert parse_level(0) == 0 and parse_level(35) == 35 and parse_level(" 25 ") == 25


@pytest.mark.parametrize("config, domain, level, allowed", [
    (ProfilerConfig(), "Schedule", 20, False),
    (ProfilerConfig(enable=True), "Schedule", 20, True),
    (ProfilerConfig(enable=True), None, 20, True),
    (ProfilerConfig(enable=True), "Schedule", 30, False),
    (ProfilerConfig(enable=True, profiler_level=40), "Schedule", 30, True),
    (ProfilerConfig(enable=True, profiler_level=10), "Schedule", 20, False),
    (ProfilerConfig(enable=True, domain=frozenset({"Execute"})), "Schedule", 20, False),
    (ProfilerConfig(enable=True, domain=frozenset({"Execute"})), "Execute", 20, True),
    (ProfilerConfig(enable=True, domain=frozenset({"Execute"})), None, 20, False),
])
def test_allows(config, domain, level, allowed):
    assert config.allows(domain, level) is allowed


def test_config_path_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVICE_PROF_CONFIG_PATH", raising=False)
    assert config_path_from_env() is None
    monkeypatch.setenv("SERVICE_PROF_CONFIG_PATH", "  ")
    assert config_path_from_env() is None
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SERVICE_PROF_CONFIG_PATH", "~/c.json")
    assert config_path_from_env() == str(tmp_path / "c.json")
    assert config_path_from_env({"SERVICE_PROF_CONFIG_PATH": "/x.json"}) == "/x.json"


# --- bad values: one warning each, naming file, key, value and default ------------------------

BAD_VALUES = [
    ("enable", 2, "must be 0 or 1", "0"),
    ("enable", "yes", "must be 0 or 1", "0"),
    ("enable", [1], "must be 0 or 1", "0"),
    ("prof_dir", "", "must be a non-empty path", '"~/.ms_server_profiler"'),
    ("prof_dir", 5, "must be a non-empty path", '"~/.ms_server_profiler"'),
    ("profiler_level", "LOUD", "unknown level name", '"INFO"'),
    ("profiler_level", -1, "must not be negative", '"INFO"'),
    ("profiler_level", True, "a level must be a name or a non-negative integer", '"INFO"'),
    ("profiler_level", 2.5, "not float", '"INFO"'),
    ("host_system_usage_freq", 0, "must be 1-50 Hz, or -1 (off)", "-1"),
    ("host_system_usage_freq", 51, "must be 1-50 Hz, or -1 (off)", "-1"),
    ("npu_memory_usage_freq", -2, "must be 1-50 Hz, or -1 (off)", "-1"),
    ("npu_memory_usage_freq", "fast", "must be an integer", "-1"),
    ("npu_memory_usage_freq", 10.5, "must be an integer", "-1"),
    ("acl_task_time", 4, "must be 0 (off), 1 (aclprof), 2 (MSPTI) or 3", "0"),
    ("acl_task_time", True, "must be an integer", "0"),
    ("acl_prof_task_time_level", "L3", "level must be one of L0, L1, L2", '""'),
    ("acl_prof_task_time_level", "L1;0", "the duration must be 1-999 s", '""'),
    ("acl_prof_task_time_level", "L1,1000", "the duration must be 1-999 s", '""'),
    ("acl_prof_task_time_level", "L1;ten", "the duration after the level must be whole", '""'),
    ("acl_prof_task_time_level", "L1;1;2", "optionally followed by one duration", '""'),
    ("acl_prof_task_time_level", 1, "must be a string such as", '""'),
    ("timelimit", 7201, "must be at most 7200", "0"),
    ("timelimit", -5, "must be at least 0", "0"),
    ("timelimit", None, "must be an integer", "0"),
    ("domain", 3, "must be a ';'-separated string", '""'),
    ("domain", ["a", 1], "must be a ';'-separated string", '""'),
    ("api_filter", {"a": 1}, "must be a ';'-separated string", '""'),
    ("torch_prof_stack", "maybe", "must be 0 or 1", "false"),
    ("torch_prof_step_num", -1, "must be at least 0", "0"),
    ("aclprofAicoreMetrics", 7, "must be a string", '"ACL_AICORE_PIPE_UTILIZATION"'),
]


@pytest.mark.parametrize("key, value, reason, default", BAD_VALUES)
def test_bad_value_gets_one_warning_and_the_default(tmp_path, caplog, key, value, reason, default):
    path = write(tmp_path / "c.json", {"enable": 1, key: value})
    config = load_config(str(path))
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith(f"{path}: key {key!r} has invalid value {json.dumps(value)}")
    assert reason in message
    assert message.endswith(f"using the default {default}")
    assert getattr(config, key) == getattr(ProfilerConfig(), key)
    if key != "enable":
        assert config.enable is True  # the rest of the file still applies


def test_unknown_key_one_warning(tmp_path, caplog):
    path = write(tmp_path / "c.json", {"enable": 1, "enabled": 1})
    config = load_config(str(path))
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert messages[0].startswith(f"{path}: unknown key 'enabled' ignored (known keys: ")
    assert config.enable is True


@pytest.mark.parametrize("text, reason", [
    ('{"enable": 1,', "malformed JSON"),
    ("{'enable': 1}", "malformed JSON"),
    ("", "malformed JSON"),
    ("[1, 2]", "the file must hold a JSON object, not list"),
    ("1", "the file must hold a JSON object, not int"),
])
def test_unusable_document_keeps_collection_off(tmp_path, caplog, text, reason):
    path = write(tmp_path / "c.json", text)
    config = load_config(str(path))
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert messages[0].startswith(f"{path}: {reason}")
    assert messages[0].endswith("collection stays off")
    assert config == ProfilerConfig()


def test_unreadable_path_keeps_collection_off(tmp_path, caplog):
    config = load_config(str(tmp_path))  # a directory
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "is not a regular file" in messages[0]
    assert "collection stays off" in messages[0]
    assert config.enable is False


def test_invalid_utf8_keeps_collection_off(tmp_path, caplog):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"enable": 1, "domain": "\xff"}')
    assert load_config(str(path)).enable is False
    assert "cannot read the profiler config" in warnings_of(caplog)[0]


def test_parse_level_rejects_garbage():
    with pytest.raises(ConfigError, match="unknown level name"):
        parse_level("LOUDEST")
    with pytest.raises(ConfigError, match="not list"):
        parse_level([20])


# --- missing file ----------------------------------------------------------------------------


def test_missing_file_is_created_with_defaults(tmp_path, caplog):
    path = tmp_path / "deep" / "dir" / "c.json"
    config = load_config(str(path))
    assert config == ProfilerConfig()
    assert json.loads(path.read_text()) == DEFAULT_FILE_CONTENT
    assert json.loads(path.read_text())["enable"] == 0
    assert warnings_of(caplog) == []
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temp file left


def test_existing_file_is_never_overwritten(tmp_path):
    from otel_vllm_ascend.config import write_default_config

    path = tmp_path / "c.json"
    path.write_text('{"enable": 1}')
    assert write_default_config(str(path)) is False
    assert path.read_text() == '{"enable": 1}'


def test_parent_is_a_file_warns_and_stays_off(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = load_config(str(blocker / "c.json"))
    assert config.enable is False
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "cannot read the profiler config" in messages[0]


def test_unwritable_location_warns_and_stays_off(caplog):
    # Nothing can be created under /proc, not even by root.
    config = load_config("/proc/otel_vllm_ascend_test/c.json")
    assert config.enable is False
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert "does not exist and the default could not be written" in messages[0]


def _start_and_load(path, barrier, results):
    barrier.wait()
    config = load_config(path)
    results.put((config.enable, open(path).read()))


def test_concurrent_starters_create_one_intact_file(tmp_path):
    path = str(tmp_path / "race" / "c.json")
    ctx = multiprocessing.get_context("spawn")
    workers = 6
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    processes = [ctx.Process(target=_start_and_load, args=(path, barrier, results))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    expected = json.dumps(DEFAULT_FILE_CONTENT, indent=4) + "\n"
    assert all(enable is False and text == expected for enable, text in outcomes)
    assert os.listdir(tmp_path / "race") == ["c.json"]


# --- live re-reading --------------------------------------------------------------------------


def rewrite(path, data):
    before = os.stat(path).st_mtime_ns
    path.write_text(json.dumps(data))
    # Make the change visible even on file systems with coarse timestamps.
    os.utime(path, ns=(before + 10_000_000, before + 10_000_000))


def test_poll_returns_only_changes(tmp_path):
    path = write(tmp_path / "c.json", {"enable": 0})
    watched = ConfigFile(str(path))
    assert watched.current.enable is False
    assert watched.poll() is None
    rewrite(path, {"enable": 1})
    new = watched.poll()
    assert new is not None and new.enable is True and watched.current is new
    assert watched.poll() is None
    rewrite(path, {"enable": 1, "unknown": 1})  # changed on disk, same config
    assert watched.poll() is None
    rewrite(path, {"enable": 0})
    assert watched.poll().enable is False


def test_poll_warns_once_per_distinct_problem(tmp_path, caplog):
    path = write(tmp_path / "c.json", {"enable": 1, "timelimit": -1})
    watched = ConfigFile(str(path))
    for stamp in range(3):
        rewrite(path, {"enable": 1, "timelimit": -1, "pad": "x" * stamp})
        watched.poll()
    timelimit = [m for m in warnings_of(caplog) if "'timelimit'" in m]
    assert len(timelimit) == 1
    pads = [m for m in warnings_of(caplog) if "'pad'" in m]
    assert len(pads) == 1


def test_poll_malformed_turns_collection_off_and_recovers(tmp_path, caplog):
    path = write(tmp_path / "c.json", {"enable": 1})
    watched = ConfigFile(str(path))
    assert watched.current.enable is True
    before = os.stat(path).st_mtime_ns
    path.write_text('{"enable": 1')
    os.utime(path, ns=(before + 10**7, before + 10**7))
    assert watched.poll().enable is False
    rewrite(path, {"enable": 1})
    assert watched.poll().enable is True


def test_poll_keeps_settings_when_file_disappears(tmp_path, caplog):
    path = write(tmp_path / "c.json", {"enable": 1})
    watched = ConfigFile(str(path))
    path.unlink()
    assert watched.poll() is None and watched.poll() is None
    assert watched.current.enable is True
    gone = [m for m in warnings_of(caplog) if "disappeared" in m]
    assert len(gone) == 1


def test_config_file_creates_missing_file(tmp_path):
    path = tmp_path / "c.json"
    watched = ConfigFile(str(path))
    assert path.exists() and watched.current.enable is False
    assert watched.poll() is None


def test_poll_is_thread_safe(tmp_path):
    path = write(tmp_path / "c.json", {"enable": 0})
    watched = ConfigFile(str(path))
    rewrite(path, {"enable": 1})
    seen = []
    start = threading.Barrier(8)

    def poll():
        start.wait()
        seen.append(watched.poll())

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    changes = [config for config in seen if config is not None]
    assert len(changes) == 1 and changes[0].enable is True
