"""Symbol YAML: resolution order, entry validation messages, version gates, the default file."""

import logging
import textwrap

import pytest
import yaml

from otel_vllm_ascend import symbols
from otel_vllm_ascend.handlers import BUILTIN_HANDLERS
from otel_vllm_ascend.symbols import (
    PACKAGED_SYMBOLS,
    HookSpec,
    SymbolsError,
    load_symbols,
    resolve_symbols_path,
)

LOGGER = "otel_vllm_ascend.symbols"


def yaml_file(tmp_path, text, name="symbols.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and
            r.levelno == logging.WARNING]


# --- resolution order -------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PROFILING_SYMBOLS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_packaged_default_when_nothing_else(clean_env):
    path, why = resolve_symbols_path("0.32.0+cpu")
    assert path == PACKAGED_SYMBOLS and why == "packaged default"


def test_per_version_user_file(clean_env):
    folder = clean_env / "home" / ".config" / "vllm_ascend"
    folder.mkdir(parents=True)
    user_file = folder / "service_profiling_symbols.0.32.0+cpu.yaml"
    user_file.write_text("[]\n")
    assert resolve_symbols_path("0.32.0+cpu") == (user_file, "per-version file for vLLM 0.32.0+cpu")
    assert resolve_symbols_path("0.31.0")[0] == PACKAGED_SYMBOLS


def test_env_path_wins(clean_env, monkeypatch):
    folder = clean_env / "home" / ".config" / "vllm_ascend"
    folder.mkdir(parents=True)
    (folder / "service_profiling_symbols.0.32.0.yaml").write_text("[]\n")
    mine = yaml_file(clean_env, "[]\n", "mine.yml")
    monkeypatch.setenv("PROFILING_SYMBOLS_PATH", str(mine))
    assert resolve_symbols_path("0.32.0") == (mine, "PROFILING_SYMBOLS_PATH names it")


def test_env_path_missing_gets_a_copy_of_the_default(clean_env, monkeypatch):
    target = clean_env / "new" / "dir" / "symbols.yaml"
    monkeypatch.setenv("PROFILING_SYMBOLS_PATH", str(target))
    path, why = resolve_symbols_path("0.32.0")
    assert path == target and "created from the packaged default" in why
    assert target.read_bytes() == PACKAGED_SYMBOLS.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["symbols.yaml"]
    # A second start does not overwrite the user's edits.
    target.write_text("[]\n")
    assert resolve_symbols_path("0.32.0")[0] == target
    assert target.read_text() == "[]\n"


def test_env_path_without_yaml_suffix_is_ignored(clean_env, monkeypatch, caplog):
    other = yaml_file(clean_env, "[]\n", "symbols.txt")
    monkeypatch.setenv("PROFILING_SYMBOLS_PATH", str(other))
    assert resolve_symbols_path("0.32.0")[0] == PACKAGED_SYMBOLS
    assert any("does not end in .yaml or .yml; ignoring it" in m for m in warnings_of(caplog))


def test_env_path_that_cannot_be_created_falls_through(clean_env, monkeypatch, caplog):
    monkeypatch.setenv("PROFILING_SYMBOLS_PATH", "/proc/otel_vllm_ascend_test/s.yaml")
    assert resolve_symbols_path("0.32.0")[0] == PACKAGED_SYMBOLS
    assert any("the default could not be copied there" in m for m in warnings_of(caplog))


def test_load_symbols_logs_the_file_used(clean_env, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    load_symbols(vllm_version="0.32.0")
    assert any(m.startswith(f"symbol file {PACKAGED_SYMBOLS} (packaged default)")
               for m in (r.getMessage() for r in caplog.records))


# --- valid entries ----------------------------------------------------------------------------


def test_full_entry(tmp_path):
    path = yaml_file(tmp_path, """
        - symbol: pkg.mod:Outer.Inner.method
          handler: pkg.handlers:my_handler
          domain: Custom
          name: innerMethod
          min_version: "0.10"
          max_version: "0.40"
          caller_filter: step
          level: DETAILED
          attributes:
            - name: size
              expr: "args[1] | len"
    """)
    result = load_symbols(path, vllm_version="0.32.0")
    assert result.problems == [] and result.skipped == []
    (spec,) = result.specs
    assert isinstance(spec, HookSpec)
    assert (spec.module, spec.qualname) == ("pkg.mod", "Outer.Inner.method")
    assert spec.handler == "pkg.handlers:my_handler" and not spec.is_builtin_handler
    assert (spec.domain, spec.name, spec.level, spec.caller_filter) == (
        "Custom", "innerMethod", 30, "step")
    assert (spec.min_version, spec.max_version) == ("0.10", "0.40")
    assert spec.attributes[0].name == "size"
    assert spec.attributes[0].compiled.evaluate({"args": (None, [1, 2])}) == 2
    assert spec.source == f"{path}#1"


def test_defaults_of_an_entry(tmp_path):
    path = yaml_file(tmp_path, "- symbol: pkg.mod:func\n- {symbol: pkg.mod:Cls.meth, "
                               "handler: timer}\n")
    first, second = load_symbols(path, vllm_version="0.32.0").specs
    assert (first.handler, first.domain, first.name, first.level) == (None, "Default", "func", 20)
    assert (second.handler, second.name) == (None, "meth")


@pytest.mark.parametrize("written, canonical", [
    ("schedule", BUILTIN_HANDLERS["schedule"]),
    (BUILTIN_HANDLERS["free"], BUILTIN_HANDLERS["free"]),
    ("msserviceprofiler.vllm_profiler.vllm_v1.batch_hookers:schedule",
     BUILTIN_HANDLERS["schedule"]),
    ("msserviceprofiler.vllm_profiler.vllm_v1.model_hookers:execute_model",
     BUILTIN_HANDLERS["execute_model"]),
    ("ms_service_profiler.vllm_profiler.vllm_v1.model_hookers:execute_model",
     BUILTIN_HANDLERS["execute_model"]),
    ("ms_service_profiler.patcher.vllm.handlers.v1.model_handlers:execute_model",
     BUILTIN_HANDLERS["execute_model"]),
    ("ms_service_profiler.patcher.vllm.handlers.v1.batch_handlers:add_request",
     BUILTIN_HANDLERS["add_request"]),
    ("ms_service_profiler.patcher.vllm.handlers.v1.meta_handlers:init_data_parallel_worker",
     BUILTIN_HANDLERS["init_data_parallel_worker"]),
    ("", None),
    ("timer", None),
])
def test_handler_canonicalisation(tmp_path, written, canonical):
    path = yaml_file(tmp_path, f"- symbol: pkg.mod:f\n  handler: '{written}'\n")
    result = load_symbols(path, vllm_version="0.32.0")
    assert result.specs[0].handler == canonical
    assert result.problems == []


def test_same_symbol_with_disjoint_version_ranges(tmp_path):
    path = yaml_file(tmp_path, """
        - {symbol: pkg.mod:f, max_version: "0.10", name: old}
        - {symbol: pkg.mod:f, min_version: "0.11", name: new}
    """)
    result = load_symbols(path, vllm_version="0.32.0+cpu")
    assert [s.name for s in result.specs] == ["new"]
    assert result.problems == []
    (skipped, reason), = result.skipped
    assert skipped.name == "old"
    assert reason == "skipped by version gate: vLLM 0.32.0+cpu is above max_version 0.10"


@pytest.mark.parametrize("version, applies", [
    ("0.32.0+cpu", False), ("0.11.0rc1", True), ("0.10.2.dev123+g1234", True),
    ("0.1.dev5+gdeadbee", True), (None, True), ("0.9.0", False),
])
def test_version_gates_are_enforced(tmp_path, monkeypatch, version, applies):
    path = yaml_file(tmp_path, '- {symbol: pkg.mod:f, min_version: "0.10", max_version: "0.11"}\n')
    if version is None:
        monkeypatch.setattr(symbols, "installed_vllm_version", lambda: None)
    result = load_symbols(path, vllm_version=version)
    assert (len(result.specs) == 1) is applies
    assert (len(result.skipped) == 1) is (not applies)


def test_installed_version_is_used_by_default(tmp_path, monkeypatch):
    # Whatever vLLM is (or is not) installed: the default comes from installed_vllm_version.
    monkeypatch.setattr(symbols, "installed_vllm_version", lambda: "7.1.0")
    path = yaml_file(tmp_path, '- {symbol: pkg.mod:f, max_version: "0.31"}\n')
    result = load_symbols(path)
    assert result.vllm_version == "7.1.0"
    assert result.specs == [] and len(result.skipped) == 1


# --- files that cannot be used at all ---------------------------------------------------------


@pytest.mark.parametrize("text, reason", [
    ("symbol: pkg.mod:f\n", "must be a YAML list of entries, found a dict"),
    ("", "must be a YAML list of entries, found an empty document"),
    ("just text\n", "must be a YAML list of entries, found a str"),
    ("- symbol: [unclosed\n", "not valid YAML at line 2"),
    ("- a: b\n - c\n", "not valid YAML at line"),
    ("@reserved\n", "not valid YAML at line 1, column 1"),
])
def test_unusable_file_raises(tmp_path, text, reason):
    path = yaml_file(tmp_path, text)
    with pytest.raises(SymbolsError) as info:
        load_symbols(path, vllm_version="0.32.0")
    assert str(info.value).startswith(f"{path}: ")
    assert reason in str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(SymbolsError, match="cannot read the symbol file"):
        load_symbols(tmp_path / "absent.yaml", vllm_version="0.32.0")


def test_binary_file_raises(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SymbolsError, match="cannot read the symbol file"):
        load_symbols(path, vllm_version="0.32.0")


# --- bad entries: one message each naming file, entry, line, symbol and reason ----------------

BAD_ENTRIES = [
    # (entry YAML, expected text in the message, entry still loads?)
    ("- just a string", "entry #2, line 2: an entry must be a mapping with a 'symbol', got "
                        "str 'just a string'; entry skipped", False),
    ("- [1, 2]", "an entry must be a mapping with a 'symbol', got list", False),
    ("- {handler: timer}", "entry #2, line 2: missing the required field 'symbol'; entry "
                           "skipped", False),
    ("- {symbol: 42}", "field 'symbol' must be a string, got int 42; entry skipped", False),
    ("- {symbol: 'pkg.mod.func'}", "(pkg.mod.func): symbol 'pkg.mod.func' must look like "
                                   "'package.module:Class.method'", False),
    ("- {symbol: 'pkg:mod:func'}", "symbol 'pkg:mod:func' must look like", False),
    ("- {symbol: 'pkg.mod:'}", "symbol 'pkg.mod:' must look like", False),
    ("- {symbol: 'pkg..mod:f'}", "symbol 'pkg..mod:f' must look like", False),
    ("- {symbol: 'pkg.mod:Cls.'}", "symbol 'pkg.mod:Cls.' must look like", False),
    ("- {symbol: '1pkg:f'}", "symbol '1pkg:f' must look like", False),
    ("- {symbol: 'pkg.mod:f', min_version: 0.10}",
     "field 'min_version' is the number 0.1; write versions as quoted strings", False),
    ("- {symbol: 'pkg.mod:f', max_version: [1]}",
     "field 'max_version' must be a version string, got list [1]", False),
    ("- {symbol: 'pkg.mod:f', max_version: 'latest'}",
     "field 'max_version' is not a version: 'latest'", False),
    ("- {symbol: 'pkg.mod:f', min_version: '0.20', max_version: '0.10'}",
     "min_version 0.20 is above max_version 0.10; min_version is the lowest", False),
    ("- {symbol: 'pkg.mod:f', min_version: true}",
     "field 'min_version' must be a version string, got bool True", False),
    ("- {symbol: 'pkg.mod:f', colour: red}",
     "(pkg.mod:f): unknown field 'colour' ignored (known fields: symbol, handler", True),
    ("- {symbol: 'pkg.mod:f', domain: 5}",
     "field 'domain' must be a non-empty string, got int 5; using the default 'Default'", True),
    ("- {symbol: 'pkg.mod:f', name: ''}",
     "field 'name' must be a non-empty string, got str ''; using the default 'f'", True),
    ("- {symbol: 'pkg.mod:f', handler: 7}",
     "field 'handler' must be a string, got int 7; using the default timer", True),
    ("- {symbol: 'pkg.mod:f', handler: nosuchhandler}",
     "handler 'nosuchhandler' is not a built-in handler (built-ins: add_request_async", True),
    ("- {symbol: 'pkg.mod:f', handler: 'pkg.mod'}",
     "handler 'pkg.mod' must be 'timer', a built-in name or 'package.module:function'", True),
    ("- {symbol: 'pkg.mod:f', handler: 'msserviceprofiler.vllm_profiler.vllm_v1.b:process_inputs'}",
     "is msserviceprofiler's and has no built-in equivalent", True),
    ("- {symbol: 'pkg.mod:f', handler: 'ms_service_profiler.patcher.vllm.handlers.v1.x:y'}",
     "handler 'ms_service_profiler.patcher.vllm.handlers.v1.x:y' is msserviceprofiler's and has "
     "no built-in equivalent", True),
    ("- {symbol: 'pkg.mod:f', handler: 'ms_service_profiler.patcher.vllm.handlers.v0."
     "model_handlers:begin_forward'}", "repeats the modelRunnerExec timing; no equivalent",
     False),
    ("- {symbol: 'pkg.mod:f', handler: 'ms_service_profiler.patcher.vllm.handlers.v1."
     "meta_handlers:make_stats'}", "writes Prometheus metrics", False),
    ("- {symbol: 'pkg.*.mod:*.f'}", "wildcard symbol 'pkg.*.mod:*.f' must look like "
                                    "'package.prefix.*:*.method'", False),
    ("- {symbol: 'pkg.mod:*.f'}", "wildcard symbol 'pkg.mod:*.f' must look like", False),
    ("- {symbol: 'pkg.*:Cls.*'}", "wildcard symbol 'pkg.*:Cls.*' must look like", False),
    ("- {symbol: 'pkg.*:*'}", "wildcard symbol 'pkg.*:*' must look like", False),
    ("- {symbol: 'pkg.*:*.Inner.f'}", "wildcard symbol 'pkg.*:*.Inner.f' must look like", False),
    ("- {symbol: 'pkg.mod:f', caller_filter: 'not a name'}",
     "field 'caller_filter' must be a function name, got 'not a name'; ignored", True),
    ("- {symbol: 'pkg.mod:f', level: LOUD}",
     "field 'level' has invalid value str 'LOUD' (unknown level name", True),
    ("- {symbol: 'pkg.mod:f', attributes: {name: a, expr: b}}",
     "field 'attributes' must be a list of {name, expr}, got dict", True),
    ("- {symbol: 'pkg.mod:f', attributes: [a]}",
     "attribute #1 must be a mapping with 'name' and 'expr', got str 'a'; ignored", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{expr: x}]}",
     "attribute #1: 'name' must be a non-empty string, got NoneType None; ignored", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{name: a}]}",
     "attribute 'a': 'expr' must be a string, got NoneType None; ignored", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{name: a, expr: x, unit: ms}]}",
     "attribute #1: unknown field 'unit' ignored (known: name, expr)", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{name: a, expr: 'x + 1'}]}",
     "attribute 'a': invalid expression: column 3: operator '+' is not allowed", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{name: a, expr: 'x.__class__'}]}",
     "attribute 'a': invalid expression: column 3: name '__class__' is not allowed", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{name: a, expr: 'x | upper'}]}",
     "invalid expression: column 5: unknown pipe operation 'upper'", True),
    ("- {symbol: 'pkg.mod:f', attributes: [{name: a, expr: x}, {name: a, expr: y}]}",
     "attribute 'a' is defined twice (attribute #1 and #2); the second is ignored", True),
    ("- {symbol: 'pkg.first:f'}",
     "entry #2, line 2 (pkg.first:f): duplicate symbol, already hooked by entry #1; entry "
     "skipped (the same default timer twice", False),
]


@pytest.mark.parametrize("entry, expected, loads", BAD_ENTRIES)
def test_bad_entry_message(tmp_path, caplog, entry, expected, loads):
    path = yaml_file(tmp_path, "- symbol: pkg.first:f\n" + entry + "\n- symbol: pkg.last:g\n")
    result = load_symbols(path, vllm_version="0.32.0")
    assert len(result.problems) == 1, result.problems
    message = result.problems[0]
    assert message.startswith(f"{path}: entry #2, line 2")
    assert expected in message
    assert warnings_of(caplog) == result.problems  # logged once each
    loaded = [spec.symbol for spec in result.specs]
    assert loaded[0] == "pkg.first:f" and loaded[-1] == "pkg.last:g"  # others still load
    assert (len(loaded) == 3) is loads


def test_one_symbol_with_different_handlers_is_kept_in_file_order(tmp_path):
    path = yaml_file(tmp_path, """
        - {symbol: pkg.mod:Runner.execute, handler: my.hooks:first}
        - {symbol: pkg.mod:other}
        - {symbol: pkg.mod:Runner.execute, handler: execute_model}
        - {symbol: pkg.mod:Runner.execute, name: runnerSpan}
        - symbol: pkg.mod:Runner.execute
          handler: ms_service_profiler.patcher.vllm.handlers.v1.model_handlers:execute_model
        - {symbol: pkg.mod:Runner.execute, handler: my.hooks:first, min_version: "0.33"}
    """)
    result = load_symbols(path, vllm_version="0.32.0")
    chain = [s for s in result.specs if s.qualname == "Runner.execute"]
    assert [(s.source.rsplit("#")[1], s.handler) for s in chain] == [
        ("1", "my.hooks:first"), ("3", BUILTIN_HANDLERS["execute_model"]), ("4", None)]
    # entry 5 is the built-in of entry 3 again; entry 6 does not apply to 0.32
    assert [(s.source.rsplit("#")[1], why.split(" ")[0]) for s, why in result.skipped] == [
        ("5", "duplicate"), ("6", "skipped")]
    (problem,) = result.problems
    assert "entry #5" in problem and "already hooked by entry #3" in problem
    assert f"the same handler {BUILTIN_HANDLERS['execute_model']} twice" in problem


def test_wildcard_entry(tmp_path):
    path = yaml_file(tmp_path, """
        - symbol: "vllm.model_executor.models.*:*.embed_multimodal"
          name: multimodalEmbedding
        - symbol: "pkg.models.*:Clip*Model.forward"
    """)
    result = load_symbols(path, vllm_version="0.32.0")
    assert result.problems == []
    first, second = result.specs
    assert (first.module, first.qualname, first.name) == (
        "vllm.model_executor.models", "*.embed_multimodal", "multimodalEmbedding")
    assert first.wildcard == ("vllm.model_executor.models", "*", "embed_multimodal")
    assert second.wildcard.class_pattern == "Clip*Model" and second.name == "forward"
    assert load_symbols(yaml_file(tmp_path, "- symbol: pkg.mod:f\n", "c.yaml"),
                        vllm_version="0.32.0").specs[0].wildcard is None


def test_reference_handler_paths_are_never_handed_on_for_import(tmp_path):
    """With CANN's ms_service_profiler importable these would load the reference's own
    handlers, which write through CANN instead of OpenTelemetry."""
    handlers = ["ms_service_profiler.patcher.vllm.handlers.v1.model_handlers:not_a_handler",
                "msserviceprofiler.vllm_profiler.vllm_v1.model_hookers:not_a_handler",
                "ms_service_metric.adapters.vllm.handlers.metric_handlers:anything"]
    path = yaml_file(tmp_path, "".join(f"- {{symbol: 'pkg.m{i}:f', handler: '{h}'}}\n"
                                       for i, h in enumerate(handlers)))
    result = load_symbols(path, vllm_version="0.32.0")
    assert [s.handler for s in result.specs] == [None, None, None]
    assert len(result.problems) == 3
    for problem, handler in zip(result.problems, handlers):
        assert f"handler {handler!r} is msserviceprofiler's and has no built-in equivalent" in \
            problem and problem.endswith("using the default timer")


def test_valid_attributes_survive_a_bad_sibling(tmp_path):
    path = yaml_file(tmp_path, """
        - symbol: pkg.mod:f
          attributes:
            - {name: bad, expr: "eval(x)"}
            - {name: good, expr: "len(x)"}
    """)
    result = load_symbols(path, vllm_version="0.32.0")
    assert [a.name for a in result.specs[0].attributes] == ["good"]
    assert "call of 'eval' is not allowed" in result.problems[0]


# --- the packaged default ---------------------------------------------------------------------


def test_default_file_is_clean_for_every_supported_version():
    raw = yaml.safe_load(PACKAGED_SYMBOLS.read_text())
    for version in ("0.9.2", "0.10.1", "0.11.0rc1", "0.32.0+cpu", "0.33.0"):
        result = load_symbols(PACKAGED_SYMBOLS, vllm_version=version)
        assert result.problems == [], (version, result.problems)
        assert len(result.specs) + len(result.skipped) == len(raw)
        hooked = [spec.symbol for spec in result.specs]
        assert len(hooked) == len(set(hooked))


def test_default_file_gates_what_vllm_moved():
    new = {s.symbol for s in load_symbols(PACKAGED_SYMBOLS, vllm_version="0.32.0+cpu").specs}
    old = {s.symbol for s in load_symbols(PACKAGED_SYMBOLS, vllm_version="0.9.2").specs}
    assert "vllm.v1.engine.core:EngineCore.execute_model" in old - new
    assert "vllm.v1.executor.abstract:UniProcExecutor.execute_model" in old - new
    assert "vllm.v1.executor.uniproc_executor:UniProcExecutor.execute_model" in new - old
    assert "vllm_ascend.core.scheduler:AscendScheduler.schedule" in old - new
    assert not any(s.endswith(":Executor.execute_model") for s in new | old)


def test_default_file_handlers_are_builtins():
    result = load_symbols(PACKAGED_SYMBOLS, vllm_version="0.32.0")
    handlers = {spec.handler for spec in result.specs if spec.handler}
    assert handlers <= set(BUILTIN_HANDLERS.values())
    assert {spec.domain for spec in result.specs} <= {
        "Engine", "Schedule", "Schedule.KVCache", "Execute", "ModelExecute", "KVTransfer",
        "Default"}


def test_unusable_user_file_falls_back_to_the_packaged_default(tmp_path, caplog):
    from otel_vllm_ascend.symbols import load_symbols_or_default

    path = yaml_file(tmp_path, "symbol: not-a-list\n")
    result = load_symbols_or_default(path, vllm_version="0.32.0")
    assert result.path == str(PACKAGED_SYMBOLS)
    assert len(result.specs) > 10
    expected = (f"{path}: the symbol file must be a YAML list of entries, found a dict; using "
                f"the packaged default {PACKAGED_SYMBOLS} instead")
    assert result.problems == [expected]
    assert warnings_of(caplog) == [expected]
    good = yaml_file(tmp_path, "- symbol: pkg.mod:f\n", "good.yaml")
    assert load_symbols_or_default(good, vllm_version="0.32.0").path == str(good)
