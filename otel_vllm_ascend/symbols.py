"""The symbol YAML: which vLLM functions to hook, and how.

Which file is used (the first that applies; the choice is logged):

1. ``PROFILING_SYMBOLS_PATH`` if it ends in ``.yaml``/``.yml``; if that file does not exist the
   packaged default is copied there first, so users get a file to edit;
2. ``~/.config/vllm_ascend/service_profiling_symbols.<vLLM version>.yaml`` if it exists (the file
   vllm-ascend writes for msserviceprofiler);
3. the packaged default, ``otel_vllm_ascend/service_profiling_symbols.yaml``.

The file is a YAML list of entries with the fields ``symbol``, ``handler``, ``domain``, ``name``,
``min_version``, ``max_version``, ``caller_filter``, ``attributes`` and ``level`` (described in
the packaged file's header and in ``docs/configuration.md``). Each entry becomes a
:class:`HookSpec`. Problems in one entry (unknown fields, wrong types, a bad expression, a
duplicate) are logged as one warning naming the file, the entry's number, line and symbol and the
reason; the other entries still load. Entries left out (version gate, duplicate, a reference
handler with no equivalent) are kept in :attr:`SymbolSet.skipped` with the reason. Only a file
that cannot be used at all (unreadable, not YAML, not a list) raises :class:`SymbolsError`.

What real files use, beyond one entry per function:

* wildcard symbols ``package.prefix.*:*.method`` (:mod:`otel_vllm_ascend.wildcards`);
* the same symbol more than once with different handlers: all are kept and the runtime chains
  them in file order (the first entry's handler runs first, around the next); the same handler
  twice is a duplicate and skipped.

Handler strings are only canonicalised here (built-in short names and msserviceprofiler's
handler paths, both layouts, map to :data:`otel_vllm_ascend.handlers.BUILTIN_HANDLERS`; a path in
the reference's packages is never handed on to be imported); importing them is the runtime's job.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from otel_vllm_ascend import file_safety, wildcards
from otel_vllm_ascend.config import ConfigError, parse_level
from otel_vllm_ascend.expr import CompiledExpr, ExprError, compile_expr
from otel_vllm_ascend.handlers import (
    BUILTIN_HANDLERS,
    is_reference_handler,
    reference_handler_gap,
    resolve_builtin,
)
from otel_vllm_ascend.versions import installed_vllm_version, parse_release, version_in_range

_logger = logging.getLogger(__name__)

SYMBOLS_PATH_ENV = "PROFILING_SYMBOLS_PATH"
PACKAGED_SYMBOLS = pathlib.Path(__file__).with_name("service_profiling_symbols.yaml")
USER_SYMBOLS_DIR = pathlib.Path("~/.config/vllm_ascend")
DEFAULT_DOMAIN = "Default"

FIELDS = ("symbol", "handler", "domain", "name", "min_version", "max_version", "caller_filter",
          "attributes", "level")
ATTRIBUTE_FIELDS = ("name", "expr")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SYMBOL_RE = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)$")
_HANDLER_RE = _SYMBOL_RE
_IDENT_RE = re.compile(rf"^{_IDENT}$")

# Why an entry is in SymbolSet.skipped: each reason starts with one of these.
SKIP_VERSION = "skipped by version gate"
SKIP_DUPLICATE = "duplicate"
SKIP_NO_EQUIVALENT = "no equivalent"


class SymbolsError(ValueError):
    """The symbol file as a whole cannot be used."""


@dataclass(frozen=True)
class AttributeSpec:
    """One span attribute read from the hooked call by a compiled expression."""

    name: str
    expr: str
    compiled: CompiledExpr


@dataclass(frozen=True)
class HookSpec:
    """One validated entry of the symbol file."""

    symbol: str
    module: str
    qualname: str
    handler: Optional[str] = None  # None = default timer; else canonical "pkg.mod:func"
    domain: str = DEFAULT_DOMAIN
    name: str = ""
    min_version: Optional[str] = None
    max_version: Optional[str] = None
    caller_filter: Optional[str] = None
    attributes: Tuple[AttributeSpec, ...] = ()
    level: int = 20
    source: str = ""  # "<file>#<entry number>"

    @property
    def is_builtin_handler(self) -> bool:
        return self.handler is not None and self.handler in BUILTIN_HANDLERS.values()

    @property
    def wildcard(self) -> Optional[wildcards.Wildcard]:
        """The parts of a wildcard symbol; None for a concrete one."""
        return wildcards.parse(self.symbol) if "*" in self.symbol else None


@dataclass
class SymbolSet:
    """The hooks that apply to the installed vLLM, and what was left out and why."""

    path: str
    specs: List[HookSpec] = field(default_factory=list)
    skipped: List[Tuple[HookSpec, str]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    vllm_version: Optional[str] = None
    # The file names handlers in the reference tool's layout (vllm-ascend or msserviceprofiler
    # wrote it), whatever they resolved to here.
    reference_layout: bool = False


# ---------------------------------------------------------------------------------------------
# Which file


def _is_yaml_name(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def _copy_atomically(source: pathlib.Path, target: pathlib.Path) -> None:
    """Copy ``source`` to ``target`` unless it exists; never leaves a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".symbols.", suffix=".tmp",
                                             dir=str(target.parent))
    os.close(descriptor)
    try:
        shutil.copyfile(source, temporary)
        try:
            os.link(temporary, target)
        except FileExistsError:
            pass
        except OSError:
            if not target.exists():
                os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def resolve_symbols_path(vllm_version: Optional[str] = None) -> Tuple[pathlib.Path, str]:
    """The symbol file to use and a sentence saying why (see the module docstring)."""
    configured = os.environ.get(SYMBOLS_PATH_ENV, "").strip()
    if configured:
        path = pathlib.Path(os.path.expanduser(os.path.expandvars(configured)))
        if not _is_yaml_name(configured):
            _logger.warning("%s=%r does not end in .yaml or .yml; ignoring it", SYMBOLS_PATH_ENV,
                            configured)
        elif path.is_file():
            return path, f"{SYMBOLS_PATH_ENV} names it"
        else:
            try:
                _copy_atomically(PACKAGED_SYMBOLS, path)
                return path, f"{SYMBOLS_PATH_ENV} names it (created from the packaged default)"
            except OSError as exc:
                _logger.warning("%s=%r does not exist and the default could not be copied "
                                "there (%s); using the next candidate", SYMBOLS_PATH_ENV,
                                configured, exc)
    version = vllm_version if vllm_version is not None else installed_vllm_version()
    if version:
        user_file = (USER_SYMBOLS_DIR / f"service_profiling_symbols.{version}.yaml").expanduser()
        if user_file.is_file():
            return user_file, f"per-version file for vLLM {version}"
    return PACKAGED_SYMBOLS, "packaged default"


# ---------------------------------------------------------------------------------------------
# Loading


def _entry_lines(text: str) -> List[Optional[int]]:
    """1-based line of each top-level list item (best effort; used in messages only)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [child.start_mark.line + 1 for child in node.value]


def read_symbol_document(path: Union[str, pathlib.Path]) -> Tuple[List[Any], List[Optional[int]]]:
    """The raw entries of a symbol file and their line numbers; raises :class:`SymbolsError`.

    A file other than the packaged default must pass :mod:`otel_vllm_ascend.file_safety` first:
    it decides which code runs inside vLLM.
    """
    if os.path.lexists(path) and pathlib.Path(path).resolve() != PACKAGED_SYMBOLS.resolve():
        try:
            file_safety.check(path, "symbol file")
        except file_safety.UnsafeFileError as exc:
            raise SymbolsError(str(exc)) from None
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SymbolsError(f"{path}: cannot read the symbol file ({exc})") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SymbolsError(f"{path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(document, list):
        kind = "an empty document" if document is None else f"a {type(document).__name__}"
        raise SymbolsError(f"{path}: the symbol file must be a YAML list of entries, found {kind}")
    return document, _entry_lines(text)


class _EntryProblem(Exception):
    """The entry cannot be used at all."""


class _Entry:
    """Validates one raw entry, collecting warnings about fields it can repair or ignore."""

    def __init__(self, path: str, index: int, line: Optional[int], raw: Any) -> None:
        self.path = path
        self.index = index
        self.line = line
        self.raw = raw
        self.symbol = raw.get("symbol") if isinstance(raw, dict) else None
        self.warnings: List[str] = []
        self.skip_reason: Optional[str] = None  # set for a reference handler with no equivalent

    def where(self) -> str:
        line = f", line {self.line}" if self.line else ""
        symbol = f" ({self.symbol})" if isinstance(self.symbol, str) else ""
        return f"{self.path}: entry #{self.index}{line}{symbol}"

    def warn(self, reason: str) -> None:
        self.warnings.append(f"{self.where()}: {reason}")

    def fail(self, reason: str) -> _EntryProblem:
        return _EntryProblem(f"{self.where()}: {reason}; entry skipped")

    def text_field(self, key: str, default: Optional[str]) -> Optional[str]:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.warn(f"field {key!r} must be a non-empty string, got {_show(value)}; using "
                      f"{'the default ' + repr(default) if default is not None else 'none'}")
            return default
        return value.strip()

    def version_field(self, key: str) -> Optional[str]:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, float):
            raise self.fail(f"field {key!r} is the number {value!r}; write versions as quoted "
                            f"strings (e.g. {key}: \"0.10\"), a YAML number loses digits")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(f"field {key!r} must be a version string, got {_show(value)}")
        text = str(value).strip()
        try:
            parse_release(text)
        except ValueError:
            raise self.fail(f"field {key!r} is not a version: {text!r}") from None
        return text

    def build(self) -> HookSpec:
        raw = self.raw
        if not isinstance(raw, dict):
            raise self.fail(f"an entry must be a mapping with a 'symbol', got {_show(raw)}")
        for key in raw:
            if key not in FIELDS:
                self.warn(f"unknown field {key!r} ignored (known fields: {', '.join(FIELDS)})")
        symbol = raw.get("symbol")
        if symbol is None:
            raise self.fail("missing the required field 'symbol'")
        if not isinstance(symbol, str):
            raise self.fail(f"field 'symbol' must be a string, got {_show(symbol)}")
        symbol = symbol.strip()
        if "*" in symbol:
            wildcard = wildcards.parse(symbol)
            if wildcard is None:
                raise self.fail(f"wildcard symbol {symbol!r} must look like {wildcards.FORM} "
                                "(every module under the prefix, every class matching the "
                                "pattern that defines the method)")
            module, qualname = wildcard.prefix, f"{wildcard.class_pattern}.{wildcard.method}"
        else:
            match = _SYMBOL_RE.match(symbol)
            if not match:
                raise self.fail(f"symbol {symbol!r} must look like 'package.module:Class.method' "
                                "(dotted module, one ':', dotted attribute path)")
            module, qualname = match.group(1), match.group(2)
        min_version = self.version_field("min_version")
        max_version = self.version_field("max_version")
        if min_version and max_version and parse_release(min_version) > parse_release(
                max_version):
            raise self.fail(f"min_version {min_version} is above max_version {max_version}; "
                            "min_version is the lowest and max_version the highest vLLM "
                            "version the entry applies to")
        caller_filter = self.text_field("caller_filter", None)
        if caller_filter is not None and not _IDENT_RE.match(caller_filter):
            self.warn(f"field 'caller_filter' must be a function name, got {caller_filter!r}; "
                      "ignored")
            caller_filter = None
        level = 20
        if raw.get("level") is not None:
            try:
                level = parse_level(raw["level"])
            except ConfigError as exc:
                self.warn(f"field 'level' has invalid value {_show(raw['level'])} ({exc}); "
                          "using INFO (20)")
        return HookSpec(
            symbol=symbol,
            module=module,
            qualname=qualname,
            handler=self.handler(),
            domain=self.text_field("domain", DEFAULT_DOMAIN) or DEFAULT_DOMAIN,
            name=self.text_field("name", qualname.rsplit(".", 1)[-1]) or qualname,
            min_version=min_version,
            max_version=max_version,
            caller_filter=caller_filter,
            attributes=self.attributes(),
            level=level,
            source=f"{self.path}#{self.index}",
        )

    def handler(self) -> Optional[str]:
        value = self.raw.get("handler")
        if value is None:
            return None
        if not isinstance(value, str):
            self.warn(f"field 'handler' must be a string, got {_show(value)}; using the default "
                      "timer")
            return None
        text = value.strip()
        if text in ("", "timer"):
            return None
        builtin = resolve_builtin(text)
        if builtin is not None:
            return builtin
        gap = reference_handler_gap(text)
        if gap is not None:
            self.skip_reason = f"{SKIP_NO_EQUIVALENT}: handler {text!r}: {gap}"
            return None
        if is_reference_handler(text):
            # Never imported: with CANN installed it would load the reference's own handler,
            # which writes through CANN instead of OpenTelemetry.
            self.warn(f"handler {text!r} is msserviceprofiler's and has no built-in equivalent "
                      f"(built-ins: {', '.join(BUILTIN_HANDLERS)}); using the default timer")
            return None
        if _HANDLER_RE.match(text):
            return text
        if _IDENT_RE.match(text):
            self.warn(f"handler {text!r} is not a built-in handler (built-ins: "
                      f"{', '.join(BUILTIN_HANDLERS)}); using the default timer")
        else:
            self.warn(f"handler {text!r} must be 'timer', a built-in name or "
                      "'package.module:function'; using the default timer")
        return None

    def attributes(self) -> Tuple[AttributeSpec, ...]:
        value = self.raw.get("attributes")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.warn(f"field 'attributes' must be a list of {{name, expr}}, got {_show(value)}; "
                      "ignored")
            return ()
        specs: List[AttributeSpec] = []
        seen: Dict[str, int] = {}
        for number, item in enumerate(value, start=1):
            label = f"attribute #{number}"
            if not isinstance(item, dict):
                self.warn(f"{label} must be a mapping with 'name' and 'expr', got {_show(item)}; "
                          "ignored")
                continue
            for key in item:
                if key not in ATTRIBUTE_FIELDS:
                    self.warn(f"{label}: unknown field {key!r} ignored (known: name, expr)")
            name, text = item.get("name"), item.get("expr")
            if not isinstance(name, str) or not name.strip():
                self.warn(f"{label}: 'name' must be a non-empty string, got {_show(name)}; "
                          "ignored")
                continue
            name = name.strip()
            label = f"attribute {name!r}"
            if not isinstance(text, str):
                self.warn(f"{label}: 'expr' must be a string, got {_show(text)}; ignored")
                continue
            if name in seen:
                self.warn(f"{label} is defined twice (attribute #{seen[name]} and #{number}); "
                          "the second is ignored")
                continue
            try:
                compiled = compile_expr(text.strip())
            except ExprError as exc:
                self.warn(f"{label}: invalid expression: {exc}; ignored")
                continue
            seen[name] = number
            specs.append(AttributeSpec(name=name, expr=text.strip(), compiled=compiled))
        return tuple(specs)


def _show(value: Any) -> str:
    text = repr(value)
    kind = type(value).__name__
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def load_symbols(path: Union[str, pathlib.Path, None] = None,
                 vllm_version: Optional[str] = None) -> SymbolSet:
    """Load and validate a symbol file; ``path`` None = :func:`resolve_symbols_path`.

    ``vllm_version`` None = the installed vLLM. Logs one warning per problem and one line naming
    the file used. Raises :class:`SymbolsError` only when the file as a whole is unusable.
    """
    if vllm_version is None:
        vllm_version = installed_vllm_version()
    if path is None:
        resolved, why = resolve_symbols_path(vllm_version)
    else:
        resolved, why = pathlib.Path(path), "given explicitly"
    entries, lines = read_symbol_document(resolved)
    result = SymbolSet(path=str(resolved), vllm_version=vllm_version)
    result.reference_layout = any(
        isinstance(raw, dict) and isinstance(raw.get("handler"), str)
        and is_reference_handler(raw["handler"]) for raw in entries)
    claimed: Dict[str, List[Tuple[int, Optional[str]]]] = {}  # symbol -> (entry, handler)
    for index, raw in enumerate(entries, start=1):
        entry = _Entry(str(resolved), index, lines[index - 1] if index <= len(lines) else None,
                       raw)
        try:
            spec = entry.build()
        except _EntryProblem as exc:
            result.problems.extend(entry.warnings)
            result.problems.append(str(exc))
            continue
        result.problems.extend(entry.warnings)
        if entry.skip_reason is not None:
            result.problems.append(f"{entry.where()}: {entry.skip_reason.partition(': ')[2]}; "
                                   "entry skipped")
            result.skipped.append((spec, entry.skip_reason))
            continue
        applies, reason = version_in_range(vllm_version, spec.min_version, spec.max_version)
        if not applies:
            result.skipped.append((spec, f"{SKIP_VERSION}: {reason}"))
            continue
        same = [number for number, handler in claimed.get(spec.symbol, ())
                if handler == spec.handler]
        if same:
            what = f"handler {spec.handler}" if spec.handler else "default timer"
            message = (f"{entry.where()}: duplicate symbol, already hooked by entry #{same[0]}; "
                       f"entry skipped (the same {what} twice; entries of one symbol with "
                       "different handlers run chained, and overlapping entries with the same "
                       "handler need disjoint version ranges)")
            result.problems.append(message)
            result.skipped.append((spec, f"{SKIP_DUPLICATE} of entry #{same[0]}"))
            continue
        claimed.setdefault(spec.symbol, []).append((index, spec.handler))
        result.specs.append(spec)
    for problem in result.problems:
        _logger.warning("%s", problem)
    for spec, reason in result.skipped:
        _logger.info("%s: %s %s", spec.source, spec.symbol, reason)
    _logger.info("symbol file %s (%s): %d hooks, %d skipped, %d problems", resolved, why,
                 len(result.specs), len(result.skipped), len(result.problems))
    return result


def load_symbols_or_default(path: Union[str, pathlib.Path, None] = None,
                            vllm_version: Optional[str] = None) -> SymbolSet:
    """:func:`load_symbols`, falling back to the packaged default (with a warning, recorded in
    ``problems``) when the chosen file is unusable as a whole. Never raises for a bad user file.
    """
    try:
        return load_symbols(path, vllm_version)
    except SymbolsError as exc:
        message = f"{exc}; using the packaged default {PACKAGED_SYMBOLS} instead"
        _logger.warning("%s", message)
        fallback = load_symbols(PACKAGED_SYMBOLS, vllm_version)
        fallback.problems.insert(0, message)
        return fallback
