"""``otel-vllm-ascend check-symbols``: in-process on a generated package, and as the installed
command against the real vLLM 0.32."""

import os
import subprocess
import sys
import textwrap

import pytest
from vllm_tiers import needs_vllm

from otel_vllm_ascend.cli import main
from otel_vllm_ascend.versions import installed_vllm_version

COMMAND = os.path.join(os.path.dirname(sys.executable), "otel-vllm-ascend")


@pytest.fixture
def sample_package(tmp_path, monkeypatch):
    """A real importable package with a class, a broken module and a handler module."""
    root = tmp_path / "site"
    package = root / "samplepkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text(textwrap.dedent("""
        class Engine:
            class Inner:
                def step(self):
                    return 1
            def run(self, batch):
                return batch
            def stop(self):
                return None
            def pause(self):
                return None
    """))
    (package / "broken.py").write_text("raise RuntimeError('import-time failure')\n")
    (package / "hooks.py").write_text(textwrap.dedent("""
        def around(original, this, *args, **kwargs):
            return original(*args, **kwargs)
        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "samplepkg" or m.startswith("samplepkg.")]:
        del sys.modules[name]


def write_symbols(tmp_path, text):
    path = tmp_path / "symbols.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run_main(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def line_of(out, number):
    return next(line for line in out.splitlines() if line.startswith(f"#{number} "))


def test_each_status_with_reason(tmp_path, sample_package, capsys):
    path = write_symbols(tmp_path, """
        - symbol: samplepkg.engine:Engine.run
          handler: samplepkg.hooks:around
        - symbol: samplepkg.engine:Engine.Inner.step
        - symbol: samplepkg.engine:Engine.walk
        - symbol: samplepkg.engine:Nothing.run
        - symbol: samplepkg.absent:Engine.run
        - symbol: notinstalledpkg.mod:f
        - symbol: samplepkg.broken:f
        - {symbol: samplepkg.engine:Engine.run, max_version: "0.1"}
        - symbol: samplepkg.engine:Engine.Inner.step
        - symbol: samplepkg.engine:Engine.stop
          handler: samplepkg.hooks:missing_function
        - symbol: samplepkg.engine:Engine.pause
          handler: samplepkg.nohooks:h
        - symbol: samplepkg.engine:Engine.Inner
          handler: samplepkg.hooks:NOT_CALLABLE
    """)
    code, out = run_main(capsys, "check-symbols", "--symbols", str(path), "--vllm-version",
                         "0.32.0")
    assert code == 0
    assert f"symbol file: {path} (--symbols)" in out
    assert "vLLM version: 0.32.0" in out
    assert line_of(out, 1).endswith("resolves -> handler samplepkg.hooks:around")
    assert line_of(out, 2).endswith("resolves -> timer")
    assert line_of(out, 3).endswith("attribute missing: samplepkg.engine.Engine has no "
                                    "attribute 'walk' -> timer")
    assert line_of(out, 4).endswith("attribute missing: samplepkg.engine has no attribute "
                                    "'Nothing' -> timer")
    assert line_of(out, 5).endswith("module not installed: no module named 'samplepkg.absent'"
                                    " -> timer")
    assert line_of(out, 6).endswith("module not installed: no module named 'notinstalledpkg' "
                                    "-> timer")
    assert line_of(out, 7).endswith("module import failed: RuntimeError: import-time failure "
                                    "-> timer")
    assert line_of(out, 8).endswith("skipped by version gate: vLLM 0.32.0 is above "
                                    "max_version 0.1")
    assert line_of(out, 9).endswith("duplicate: duplicate of entry #2")  # no "->": left out
    assert line_of(out, 10).endswith("-> timer (instead of handler "
                                     "samplepkg.hooks:missing_function)")
    lines = out.splitlines()
    after_10 = lines[lines.index(line_of(out, 10)) + 1]
    assert "handler fallback: handler samplepkg.hooks:missing_function cannot be imported " \
           "(AttributeError: samplepkg.hooks has no attribute 'missing_function'); the " \
           "default timer will be used" in after_10
    assert "no module 'samplepkg.nohooks'" in lines[lines.index(line_of(out, 11)) + 1]
    assert "samplepkg.hooks:NOT_CALLABLE is not callable" in lines[
        lines.index(line_of(out, 12)) + 1]
    # 3, 4, 5 (missing inside an installed package), 7, 9, 10, 11, 12 need attention;
    # 6 (package absent altogether) does not.
    assert "5 resolve, 1 skipped by version gate, 8 need attention, 1 file problems" in out
    assert "problem: " in out and "duplicate symbol, already hooked by entry #2" in out


@pytest.fixture
def wildcard_package(sample_package):
    """samplepkg.models: modules under a prefix, as vLLM's model folder, one that cannot load."""
    models = sample_package / "samplepkg" / "models"
    (models / "vision").mkdir(parents=True)
    (models / "__init__.py").write_text("class AtPackageLevel:\n    def embed(self):\n"
                                        "        return 0\n")
    (models / "llama.py").write_text(textwrap.dedent("""
        class LlamaModel:
            def forward(self):
                return 1
        class LlamaForCausalLM:
            def embed(self):
                return 2
        class Derived(LlamaForCausalLM):
            pass                      # inherits embed: covered by the base's hook
    """))
    (models / "vision" / "__init__.py").write_text("")
    (models / "vision" / "clip.py").write_text(textwrap.dedent("""
        from samplepkg.models.llama import LlamaForCausalLM   # imported, not defined here
        class ClipVision:
            def embed(self):
                return 3
        Alias = ClipVision
    """))
    (models / "needs_extra.py").write_text("import not_installed_extra\n")
    return sample_package


def test_wildcard_lists_each_match(tmp_path, wildcard_package, capsys):
    path = write_symbols(tmp_path, """
        - symbol: "samplepkg.models.*:*.embed"
          name: embedding
        - symbol: "samplepkg.models.*:Clip*.embed"
          handler: samplepkg.hooks:around
        - symbol: "samplepkg.models.*:*.nothing_defines_this"
        - symbol: "notinstalledpkg.models.*:*.embed"
    """)
    code, out = run_main(capsys, "check-symbols", "--symbols", str(path), "--vllm-version",
                         "0.32.0")
    assert code == 0
    lines = out.splitlines()
    first = lines.index(line_of(out, 1))
    assert line_of(out, 1).endswith(
        "wildcard: 2 matches in 3 modules; 1 could not be imported here "
        "(samplepkg.models.needs_extra) -> timer")
    assert lines[first + 1:first + 3] == [
        "     match: samplepkg.models.llama:LlamaForCausalLM.embed",
        "     match: samplepkg.models.vision.clip:ClipVision.embed"]
    second = lines.index(line_of(out, 2))
    assert "wildcard: 1 match in 3 modules" in lines[second]
    assert lines[second].endswith("-> handler samplepkg.hooks:around")
    assert lines[second + 1] == "     match: samplepkg.models.vision.clip:ClipVision.embed"
    assert "wildcard: 0 matches in 3 modules" in line_of(out, 3)
    assert line_of(out, 4).endswith(
        "module not installed: no module named 'notinstalledpkg' -> timer")
    # 1 and 2 resolve; 3 matches nothing (attention); 4's package is absent altogether.
    assert "2 resolve, 0 skipped by version gate, 1 need attention, 0 file problems" in out


def test_chained_entries_and_reference_paths(tmp_path, sample_package, capsys):
    new = "ms_service_profiler.patcher.vllm.handlers.v1"
    path = write_symbols(tmp_path, f"""
        - symbol: samplepkg.engine:Engine.run
          handler: {new}.model_handlers:execute_model
        - symbol: samplepkg.engine:Engine.stop
          handler: msserviceprofiler.vllm_profiler.vllm_v0.model_hookers:begin_forward
        - symbol: samplepkg.engine:Engine.run
          handler: samplepkg.hooks:around
        - symbol: samplepkg.engine:Engine.pause
          handler: {new}.meta_handlers:make_stats
        - symbol: samplepkg.engine:Engine.run
    """)
    code, out = run_main(capsys, "check-symbols", "--symbols", str(path), "--vllm-version",
                         "0.32.0")
    assert code == 0
    assert line_of(out, 1).endswith(
        "resolves -> built-in execute_model, chained 1 of 3 (#1, #3, #5)")
    assert line_of(out, 3).endswith(
        "resolves -> handler samplepkg.hooks:around, chained 2 of 3 (#1, #3, #5)")
    assert line_of(out, 5).endswith("resolves -> timer, chained 3 of 3 (#1, #3, #5)")
    assert "skipped, no equivalent: handler 'msserviceprofiler.vllm_profiler.vllm_v0." \
           "model_hookers:begin_forward': it only prepares" in line_of(out, 2)
    assert "-> " not in line_of(out, 2) and "-> " not in line_of(out, 4)
    assert "meta_handlers:make_stats': writes Prometheus metrics" in line_of(out, 4)
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2
    assert problems[0].startswith(f"problem: {path}: entry #2, line ")


def test_strict_fails_on_problems(tmp_path, sample_package, capsys):
    bad = write_symbols(tmp_path, "- symbol: samplepkg.engine:Engine.walk\n")
    assert run_main(capsys, "check-symbols", "--symbols", str(bad), "--strict")[0] == 1
    good = write_symbols(tmp_path, "- symbol: samplepkg.engine:Engine.run\n"
                                   "- symbol: notinstalledpkg.mod:f\n")
    code, out = run_main(capsys, "check-symbols", "--symbols", str(good), "--strict")
    assert code == 0, out


def test_entry_problems_are_printed(tmp_path, sample_package, capsys):
    path = write_symbols(tmp_path, "- symbol: samplepkg.engine:Engine.run\n- 42\n")
    code, out = run_main(capsys, "check-symbols", "--symbols", str(path))
    assert code == 0
    assert (f"problem: {path}: entry #2, line 2: an entry must be a mapping with a 'symbol', "
            "got int 42; entry skipped") in out


@pytest.mark.parametrize("text, reason", [
    ("not: a list\n", "must be a YAML list of entries, found a dict"),
    ("- [unclosed\n", "not valid YAML"),
])
def test_invalid_file_exits_2(tmp_path, capsys, text, reason):
    path = write_symbols(tmp_path, text)
    code, out = run_main(capsys, "check-symbols", "--symbols", str(path))
    assert code == 2
    assert f"INVALID FILE: {path}: " in out and reason in out


def test_missing_file_exits_2(tmp_path, capsys):
    code, out = run_main(capsys, "check-symbols", "--symbols", str(tmp_path / "none.yaml"))
    assert code == 2 and "cannot read the symbol file" in out


def test_no_subcommand_prints_usage(capsys):
    assert main([]) == 2
    assert "check-symbols" in capsys.readouterr().err


@needs_vllm("0.12", what="the default file's gates: EngineCore.execute_model hooks end at 0.11")
@pytest.mark.subprocess
def test_installed_command_on_the_default_file_against_real_vllm(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONWARNINGS="ignore")
    env.pop("PROFILING_SYMBOLS_PATH", None)
    done = subprocess.run([COMMAND, "check-symbols"], capture_output=True, text=True, env=env,
                          timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "(packaged default)" in out and f"vLLM version: {installed_vllm_version()}" in out
    statuses = {}
    for line in out.splitlines():
        if line.startswith("#"):
            _, symbol, status = line.split(None, 2)
            statuses[symbol] = status.split(" -> ")[0]
    vllm_entries = {s: st for s, st in statuses.items() if s.startswith("vllm.")}
    assert len(vllm_entries) >= 12
    for symbol, status in vllm_entries.items():
        assert status == "resolves" or status.startswith("skipped by version gate"), (
            symbol, status)
    for symbol in ("vllm.v1.engine.core:EngineCore.execute_model",
                   "vllm.v1.executor.abstract:UniProcExecutor.execute_model"):
        assert statuses[symbol].startswith("skipped by version gate"), symbol
    ascend = {s: st for s, st in statuses.items() if s.startswith("vllm_ascend.")}
    assert ascend and all(st.startswith(("module not installed: no module named 'vllm_ascend'",
                                         "skipped by version gate")) for st in ascend.values())


@pytest.mark.subprocess
def test_installed_command_invalid_file_exit_code(tmp_path):
    path = write_symbols(tmp_path, "{}\n")
    done = subprocess.run([COMMAND, "check-symbols", "--symbols", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "must be a YAML list of entries, found a dict" in done.stdout
