"""The input-file rules (regular file, no symlink, not group/other-writable, owner, size)."""

from __future__ import annotations

import os

import pytest

from otel_vllm_ascend import file_safety


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "symbols.yaml"
    path.write_text("[]\n")
    path.chmod(0o644)
    return path


def test_a_private_regular_file_passes(good):
    assert file_safety.problem(good) is None
    file_safety.check(good, "symbol file")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_other_writable_is_refused(good, mode):
    good.chmod(mode)
    assert "writable by group or others" in file_safety.problem(good)
    with pytest.raises(file_safety.UnsafeFileError) as err:
        file_safety.check(good, "profiler config")
    assert str(good) in str(err.value) and "profiler config" in str(err.value)


def test_symlink_directory_missing_and_oversized(good, tmp_path, monkeypatch):
    link = tmp_path / "link.yaml"
    link.symlink_to(good)
    assert "symbolic link" in file_safety.problem(link)
    assert "not a regular file" in file_safety.problem(tmp_path)
    assert "cannot be read" in file_safety.problem(tmp_path / "absent.yaml")
    monkeypatch.setattr(file_safety, "MAX_BYTES", 2)
    assert "larger than" in file_safety.problem(good)


def test_owned_by_another_user(good, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: os.stat(good).st_uid + 12345)
    real_uid = os.stat(good).st_uid
    if real_uid == 0:  # root's files are accepted for every user
        assert file_safety.problem(good) is None
    else:
        assert "owned by another user" in file_safety.problem(good)


def test_an_administrator_accepts_a_shared_file_on_purpose(good, tmp_path, monkeypatch):
    good.chmod(0o666)
    monkeypatch.setenv(file_safety.TRUSTED_ENV, os.pathsep.join(["/elsewhere", str(good)]))
    assert file_safety.problem(good) is None
    other = tmp_path / "other.yaml"
    other.write_text("[]\n")
    other.chmod(0o666)
    assert file_safety.problem(other) is not None
    monkeypatch.setenv(file_safety.TRUSTED_ENV, "*")
    assert file_safety.problem(other) is None


def test_an_unsafe_symbol_file_is_refused_and_the_default_used(tmp_path, caplog):
    from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS, load_symbols_or_default

    shared = tmp_path / "service_profiling_symbols.yaml"
    shared.write_text("- symbol: some.module:function\n  handler: evil.module:run\n")
    shared.chmod(0o666)
    symbols = load_symbols_or_default(shared)
    assert str(symbols.path) == str(PACKAGED_SYMBOLS)
    assert not any(spec.handler == "evil.module:run" for spec in symbols.specs)
    messages = [r.getMessage() for r in caplog.records if str(shared) in r.getMessage()]
    assert len(messages) == 1, messages
    assert "writable by group or others" in messages[0] and "packaged default" in messages[0]


def test_handler_files_are_checked_before_any_of_them_runs(tmp_path, monkeypatch, caplog):
    from otel_vllm_ascend import installer

    package = tmp_path / "site_handlers_pkg"
    package.mkdir()
    marker = tmp_path / "ran"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "mine.py").write_text("def handler(original, this, *args, **kwargs):\n"
                                     "    return original(*args, **kwargs)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    files = installer.module_files("site_handlers_pkg.mine")
    assert files == [str(package / "__init__.py"), str(package / "mine.py")]
    assert not marker.exists(), "finding the files ran none of them"

    (package / "mine.py").chmod(0o666)
    with pytest.raises(installer.HookInstallError) as err:
        installer.resolve_handler("site_handlers_pkg.mine:handler")
    assert "handler file" in str(err.value) and "mine.py" in str(err.value)
    assert "writable by group or others" in str(err.value)
    assert not marker.exists(), "a refused handler package is never imported"

    (package / "mine.py").chmod(0o644)
    assert callable(installer.resolve_handler("site_handlers_pkg.mine:handler"))
    assert marker.exists()


def test_an_unsafe_profiler_config_keeps_collection_off(tmp_path, caplog):
    from otel_vllm_ascend.config import ConfigFile

    path = tmp_path / "ms_service_profiler_config.json"
    path.write_text('{"enable": 1, "prof_dir": "/tmp/somewhere"}\n')
    path.chmod(0o646)
    watched = ConfigFile(str(path))
    assert not watched.current.enable
    messages = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(messages) == 1 and "writable by group or others" in messages[0]
    assert "collection stays off" in messages[0]
    path.chmod(0o644)
    path.write_text('{"enable": 1, "prof_dir": "/tmp/somewhere"}\n ')
    assert watched.poll() is not None and watched.current.enable
