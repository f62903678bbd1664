"""A built wheel installs ``otel_vllm_ascend`` with its two mapped sub-packages and nothing at the
top level besides it; every source module and the default symbol file are inside."""

import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Source folder -> where its files land in the wheel (pyproject's [tool.setuptools.package-dir]).
MAPPED = {"otel_vllm_ascend": "otel_vllm_ascend", "exporters": "otel_vllm_ascend/exporters",
          "analysis": "otel_vllm_ascend/analysis"}

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build from a copy of the sources, so the shared work tree gets no build/ or egg-info."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in MAPPED:
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd"))
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(out),
         str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("otel_vllm_ascend-*.whl")
    return built


def source_modules():
    expected = set()
    for folder, target in MAPPED.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            expected.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return expected


def test_wheel_holds_every_module_and_the_default_symbols(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules missing from the wheel (add their packages to pyproject): " \
                        f"{missing}"
    assert "otel_vllm_ascend/service_profiling_symbols.yaml" in names
    assert "otel_vllm_ascend/py.typed" in names
    # the compiled hot path, built by the wheel's own build (setup.py)
    assert {f"otel_vllm_ascend/_hotpath{suffix}" for suffix in EXTENSION_SUFFIXES} & names
    # report.html's markup (package data of the analysis package)
    assert {f"otel_vllm_ascend/analysis/templates/{t.name}"
            for t in (ROOT / "analysis" / "templates").iterdir()} <= names
    top_level = {name.split("/", 1)[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"otel_vllm_ascend"}


def test_wheel_declares_the_commands(wheel):
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "otel-vllm-ascend = otel_vllm_ascend.cli:main" in text
    assert "otel-vllm-analyze = otel_vllm_ascend.analysis.command:run" in text


def test_serving_install_needs_no_analysis_packages(wheel):
    archive = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1].strip() for line in archive.read(metadata).decode()
                .splitlines() if line.startswith("Requires-Dist:")]
    from packaging.requirements import Requirement

    always = {Requirement(r).name.lower() for r in requires if "extra ==" not in r}
    assert not always & {"pandas", "numpy", "matplotlib"}, always
    assert {"opentelemetry-sdk", "wrapt", "pyyaml"} <= always
    analysis = " ".join(r for r in requires if "extra == \"analysis\"" in r)
    assert all(name in analysis for name in ("pandas", "numpy", "matplotlib")), requires


CHECK = """
import importlib.util, sys
target, dependencies = sys.argv[1], sys.argv[2]
sys.path[:0] = [target]
sys.path.append(dependencies)  # plain entry: its .pth files (the editable install) stay inactive
import otel_vllm_ascend, otel_vllm_ascend.exporters, otel_vllm_ascend.analysis
import otel_vllm_ascend.symbols
for module in (otel_vllm_ascend, otel_vllm_ascend.exporters, otel_vllm_ascend.analysis):
    assert module.__file__.startswith(target), module.__file__
print(len(otel_vllm_ascend.symbols.load_symbols(vllm_version="0.32.0").specs))
print(importlib.util.find_spec("exporters"), importlib.util.find_spec("analysis"))
"""


def test_installed_wheel_imports_all_three_packages(wheel, tmp_path):
    target = tmp_path / "target"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    installed = {p.name for p in target.iterdir()}
    assert "exporters" not in installed and "analysis" not in installed
    assert {n for n in installed if not n.endswith(".dist-info")} <= {"otel_vllm_ascend", "bin"}
    # -I -S: no site-packages, no .pth files, no PYTHONPATH, no current folder.
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHECK, str(target), sysconfig.get_paths()["purelib"]],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    hooks, absent = run.stdout.strip().splitlines()
    assert int(hooks) > 10  # the packaged YAML was found next to the installed package
    assert absent == "None None"


WITHOUT_PANDAS = """
import sys


class NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoPandas())
sys.argv = ["otel-vllm-analyze", "--input-path", "."]
from otel_vllm_ascend.analysis.command import run
run()
"""


def test_analyzer_without_its_extra_says_what_to_install(tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_PANDAS], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "otel-vllm-analyze: pandas is not installed; the analyzer needs the 'analysis' extra: "
        "pip install 'otel-vllm-ascend[analysis]'"]
