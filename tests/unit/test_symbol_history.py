"""tools/symbol_history.py: static lookup of symbol targets across fake vLLM release trees."""

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # tools/ is no package
import symbol_history as sh  # noqa: E402

COMMON = {
    "vllm/__init__.py": "",
    "vllm/engine/__init__.py": "from .utils import shutdown\n",
    "vllm/base.py": """
        class Base:
            def run(self, x, *args, flag=False, **kw):
                pass
    """,
    # A diamond: Python's MRO for Both is Both, Left, Right, Root, so step comes from Right.
    "vllm/diamond.py": """
        class Root:
            def step(self):
                pass
        class Left(Root):
            pass
        class Right(Root):
            def step(self, fast):
                pass
        class Both(Left, Right):
            pass
    """,
}
RELEASES = {
    "0.1.0": {
        "vllm/helpers.py": "def shutdown(procs):\n    pass\n",
        "vllm/engine/utils.py": "from ..helpers import shutdown  # relative, two levels up\n",
        "vllm/engine/worker.py": """
            from vllm.base import Base as _B
            class Worker(_B):
                pass
        """,
    },
    "0.2.0": {  # shutdown gained a parameter and moved; Worker moved, old name kept as alias
        "vllm/engine/utils.py": "def shutdown(procs, timeout=None):\n    pass\n",
        "vllm/worker_v2.py": """
            from vllm.base import Base
            class Worker(Base):
                def run(self, x):
                    pass
        """,
        "vllm/engine/compat.py": "from vllm.worker_v2 import Worker as _W\nWorker = _W\n",
    },
}
RELEASES["0.10.0"] = dict(RELEASES["0.2.0"])


@pytest.fixture
def src(tmp_path):
    for version, files in RELEASES.items():
        for rel, text in {**COMMON, **files}.items():
            path = tmp_path / version / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
    (tmp_path / "0.3.0").mkdir()  # a release still being unpacked: no vllm folder yet
    (tmp_path / "w-0.4.0" / "vllm").mkdir(parents=True)  # download scratch, not a version
    return tmp_path


def test_release_dirs_sorts_by_version_and_skips_incomplete(src):
    assert sh.release_dirs(src) == ["0.1.0", "0.2.0", "0.10.0"]


def test_function_followed_through_relative_import_and_signature_change(src):
    old = sh.resolve(src / "0.1.0", "vllm.engine.utils:shutdown")
    new = sh.resolve(src / "0.2.0", "vllm.engine.utils:shutdown")
    assert old == sh.Found("vllm.helpers:shutdown", ("procs",), None)
    assert new == sh.Found("vllm.engine.utils:shutdown", ("procs", "timeout"), None)
    # A package re-export (from .utils import ...) resolves the same way.
    assert sh.resolve(src / "0.1.0", "vllm.engine:shutdown").where == "vllm.helpers:shutdown"


def test_inherited_method_through_imported_aliased_base(src):
    found = sh.resolve(src / "0.1.0", "vllm.engine.worker:Worker.run")
    assert found.inherited == "vllm.base:Base"
    assert found.where == "vllm.base:Base.run"
    assert found.params == ("x", "*args", "flag", "**kw")  # self dropped, stars kept


def test_method_lookup_follows_c3_mro_not_depth_first(src):
    found = sh.resolve(src / "0.1.0", "vllm.diamond:Both.step")
    assert found.where == "vllm.diamond:Right.step"
    assert found.params == ("fast",)


def test_missing_targets_and_compat_alias(src):
    assert sh.resolve(src / "0.2.0", "vllm.engine.worker:Worker.run") is None  # module gone
    assert sh.resolve(src / "0.1.0", "vllm.engine.worker:Worker.nope") is None
    assert sh.resolve(src / "0.1.0", "vllm.helpers:shutdown.inner") is None  # not a class
    alias = sh.resolve(src / "0.2.0", "vllm.engine.compat:Worker.run")
    assert alias == sh.Found("vllm.worker_v2:Worker.run", ("x",), None)


def test_ranges_and_signature_variants_across_releases(src):
    versions = sh.release_dirs(src)
    found = [sh.resolve(src / v, "vllm.engine.utils:shutdown") for v in versions]
    assert sh.variants(versions, found, sh.signature) == (
        "(procs) 0.1.0; (procs, timeout) 0.2.0–0.10.0")
    worker = [sh.resolve(src / v, "vllm.engine.worker:Worker.run") for v in versions]
    assert sh.ranges(versions, [f is not None for f in worker]) == "0.1.0"
    assert sh.ranges(versions, [True, False, True]) == "0.1.0, 0.10.0"


def test_gate_problems_with_and_without_sibling_cover(src):
    versions = sh.release_dirs(src)
    entries = [
        {"symbol": "vllm.engine.worker:Worker.run", "max_version": "0.2"},
        {"symbol": "vllm.worker_v2:Worker.run", "min_version": 0.2},  # unquoted YAML float
        {"symbol": "vllm.engine.utils:shutdown", "min_version": "0.2"},
    ]
    found = {e["symbol"]: [sh.resolve(src / v, e["symbol"]) for v in versions] for e in entries}
    assert sh.gate_problems(versions, entries[0], entries, found) == [
        "gate admits versions where the symbol is missing: 0.2.0"]
    assert sh.gate_problems(versions, entries[1], entries, found) == []
    assert sh.gate_problems(versions, entries[2], entries, found) == [
        "symbol exists in versions the gate excludes: 0.1.0 (no sibling entry covers 0.1.0)"]
    # The compat alias exists in 0.2.0+ only, where the sibling worker_v2 entry hooks it already.
    entries.append({"symbol": "vllm.engine.compat:Worker.run", "max_version": "0.1"})
    found[entries[-1]["symbol"]] = [sh.resolve(src / v, entries[-1]["symbol"]) for v in versions]
    assert sh.gate_problems(versions, entries[-1], entries, found) == [
        "gate admits versions where the symbol is missing: 0.1.0",
        "symbol exists in versions the gate excludes: 0.2.0–0.10.0 (a sibling entry covers them)"]


def test_cli_markdown_table(src, tmp_path, capsys):
    yaml_path = tmp_path / "symbols.yaml"
    yaml_path.write_text(
        '- symbol: vllm.engine.utils:shutdown\n  min_version: "0.1"\n'
        "- symbol: vllm.engine.worker:Worker.run\n"
        "- symbol: vllm_ascend.worker:NPUWorker.run\n")
    assert sh.main(["--src", str(src), "--symbols", str(yaml_path), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| entry | exists in | signature changes | gate | agrees? |"
    assert lines[2] == (
        "| `vllm.engine.utils:shutdown` | 0.1.0–0.10.0 (defined in vllm.helpers:shutdown 0.1.0;"
        " as named 0.2.0–0.10.0) | (procs) 0.1.0; (procs, timeout) 0.2.0–0.10.0 | [0.1, *] | yes |")
    assert lines[3] == (
        "| `vllm.engine.worker:Worker.run` | 0.1.0 (inherited from vllm.base:Base) |"
        " (x, *args, flag, **kw) | [*, *] | no: gate admits versions where the symbol is"
        " missing: 0.2.0–0.10.0 |")
    assert lines[4] == "| `vllm_ascend.worker:NPUWorker.run` | not in vLLM |  | [*, *] | n/a |"
    assert lines[-1] == ("3 entries, 2 vLLM targets checked in 3 releases (0.1.0–0.10.0), "
                         "1 gate disagreement(s)")
