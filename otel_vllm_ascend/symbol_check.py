"""Does each entry of a symbol file resolve against the installed vLLM, and what does it become?
(``check-symbols``)

Unlike the runtime, which hooks modules lazily as vLLM imports them, this imports every target
module now (for a wildcard entry, every module under its prefix, to count the matches), so it is
meant for the command line, not for a serving process.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from otel_vllm_ascend import symbols as symbols_module
from otel_vllm_ascend import wildcards
from otel_vllm_ascend.handlers import BUILTIN_HANDLERS, resolve_builtin
from otel_vllm_ascend.symbols import HookSpec, SymbolSet

RESOLVES = "resolves"
MODULE_NOT_INSTALLED = "module not installed"
IMPORT_FAILED = "module import failed"
ATTRIBUTE_MISSING = "attribute missing"
SKIPPED = "skipped by version gate"
DUPLICATE = "duplicate"
NO_EQUIVALENT = "skipped, no equivalent"
WILDCARD = "wildcard"
HANDLER_FALLBACK = "handler fallback"


@dataclass(frozen=True)
class EntryStatus:
    """What ``check-symbols`` reports for one entry."""

    spec: HookSpec
    status: str
    reason: str = ""
    handler_note: Optional[str] = None  # set when the handler will fall back to the timer
    package_absent: bool = False  # the whole top-level package (e.g. vllm_ascend) is absent
    becomes: str = ""  # what a kept entry turns into: "built-in schedule", "timer", ...
    matches: Tuple[str, ...] = ()  # a wildcard's concrete symbols

    @property
    def ok(self) -> bool:
        """False when the entry needs attention on this installation.

        An entry for a package that is not installed at all (vllm_ascend on a CPU machine) is
        fine; a missing module inside an installed package means vLLM moved it.
        """
        if self.handler_note is not None:
            return False
        if self.status == MODULE_NOT_INSTALLED:
            return self.package_absent
        if self.status == WILDCARD:
            return bool(self.matches)
        # An entry with no equivalent handler is reported among the file's problems.
        return self.status in (RESOLVES, SKIPPED, NO_EQUIVALENT)


def import_target(module: str, qualname: str) -> Tuple[Any, str, Any]:
    """Import ``module`` and walk ``qualname``: (owner, last attribute name, object).

    Raises ``ModuleNotFoundError``/``ImportError`` from the import and ``AttributeError`` naming
    the missing part of the path.
    """
    owner: Any = importlib.import_module(module)
    parts = qualname.split(".")
    path = module
    for part in parts[:-1]:
        try:
            owner = getattr(owner, part)
        except AttributeError:
            raise AttributeError(f"{path} has no attribute {part!r}") from None
        path = f"{path}.{part}"
    try:
        target = getattr(owner, parts[-1])
    except AttributeError:
        raise AttributeError(f"{path} has no attribute {parts[-1]!r}") from None
    return owner, parts[-1], target


def _module_missing(exc: ModuleNotFoundError, module: str) -> bool:
    missing = exc.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def check_handler(handler: Optional[str]) -> Optional[str]:
    """None if the handler imports, else why the runtime will fall back to the timer."""
    if handler is None:
        return None
    module, _, function = handler.partition(":")
    try:
        _, _, target = import_target(module, function)
    except ModuleNotFoundError as exc:
        return f"handler {handler} cannot be imported (no module {exc.name!r}); the default " \
               "timer will be used"
    except Exception as exc:  # any failure of the user's module is reported, not raised
        return f"handler {handler} cannot be imported ({type(exc).__name__}: {exc}); the " \
               "default timer will be used"
    if not callable(target):
        return f"handler {handler} is not callable; the default timer will be used"
    return None


def check_spec(spec: HookSpec) -> EntryStatus:
    """Resolve one applicable entry against the installed packages."""
    handler_note = check_handler(spec.handler)
    try:
        import_target(spec.module, spec.qualname)
    except ModuleNotFoundError as exc:
        if _module_missing(exc, spec.module):
            top = spec.module.split(".", 1)[0]
            return EntryStatus(spec, MODULE_NOT_INSTALLED, f"no module named {exc.name!r}",
                               handler_note, package_absent=exc.name == top)
        return EntryStatus(spec, IMPORT_FAILED, f"{type(exc).__name__}: {exc}", handler_note)
    except AttributeError as exc:
        return EntryStatus(spec, ATTRIBUTE_MISSING, str(exc), handler_note)
    except Exception as exc:  # importing vLLM modules can fail in many ways
        return EntryStatus(spec, IMPORT_FAILED, f"{type(exc).__name__}: {exc}", handler_note)
    return EntryStatus(spec, RESOLVES, "", handler_note)


def check_wildcard(spec: HookSpec) -> EntryStatus:
    """Import every module under a wildcard's prefix and list the classes it would hook."""
    wildcard = spec.wildcard
    handler_note = check_handler(spec.handler)
    try:
        package = importlib.import_module(wildcard.prefix)
    except ModuleNotFoundError as exc:
        if _module_missing(exc, wildcard.prefix):
            top = wildcard.prefix.split(".", 1)[0]
            return EntryStatus(spec, MODULE_NOT_INSTALLED, f"no module named {exc.name!r}",
                               handler_note, package_absent=exc.name == top)
        return EntryStatus(spec, IMPORT_FAILED, f"{type(exc).__name__}: {exc}", handler_note)
    except Exception as exc:
        return EntryStatus(spec, IMPORT_FAILED, f"{type(exc).__name__}: {exc}", handler_note)
    if not hasattr(package, "__path__"):
        return EntryStatus(spec, WILDCARD, f"0 matches: {wildcard.prefix} is a module, not a "
                           "package, so nothing is under it", handler_note)
    failed: List[str] = []
    matches: List[str] = []
    imported = 0
    for info in pkgutil.walk_packages(package.__path__, wildcard.prefix + ".",
                                      onerror=failed.append):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # a model file whose optional dependency is absent, ...
            failed.append(info.name)
            continue
        imported += 1
        matches += [f"{info.name}:{name}.{wildcard.method}"
                    for name in wildcards.classes_defining(module, wildcard)]
    reason = f"{len(matches)} match{'' if len(matches) == 1 else 'es'} in {imported} modules"
    if failed:
        shown = ", ".join(sorted(set(failed))[:3])
        more = ", ..." if len(set(failed)) > 3 else ""
        reason += f"; {len(set(failed))} could not be imported here ({shown}{more})"
    return EntryStatus(spec, WILDCARD, reason, handler_note, matches=tuple(matches))


def check_symbol_set(symbols: SymbolSet) -> List[EntryStatus]:
    """One status per entry (applicable and skipped), in file order, each kept entry with what
    it becomes (handler, chain position)."""
    statuses = [check_wildcard(spec) if spec.wildcard else check_spec(spec)
                for spec in symbols.specs]
    statuses = _with_outcomes(statuses)
    for spec, reason in symbols.skipped:
        if reason.startswith(symbols_module.SKIP_DUPLICATE):
            statuses.append(EntryStatus(spec, DUPLICATE, reason))
        elif reason.startswith(symbols_module.SKIP_NO_EQUIVALENT):
            statuses.append(EntryStatus(spec, NO_EQUIVALENT, reason.partition(": ")[2]))
        else:
            statuses.append(EntryStatus(spec, SKIPPED, reason.replace(f"{SKIPPED}: ", "")))
    return sorted(statuses, key=lambda status: _entry_number(status.spec.source))


def describe_handler(handler: Optional[str]) -> str:
    """``timer``, ``built-in <name>`` or ``handler <module:function>``."""
    if handler is None:
        return "timer"
    canonical = resolve_builtin(handler)
    if canonical is None:
        return f"handler {handler}"
    short = [name for name, path in BUILTIN_HANDLERS.items() if path == canonical]
    return f"built-in {short[0] if short else canonical.rsplit('.', 1)[-1]}"


def _with_outcomes(statuses: List[EntryStatus]) -> List[EntryStatus]:
    chains: Dict[str, List[str]] = {}
    for status in statuses:
        chains.setdefault(status.spec.symbol, []).append(status.spec.source.rsplit("#", 1)[-1])
    result = []
    for status in statuses:
        becomes = describe_handler(status.spec.handler)
        if status.handler_note is not None:
            becomes = f"timer (instead of {becomes})"
        chain = chains[status.spec.symbol]
        if len(chain) > 1:
            number = status.spec.source.rsplit("#", 1)[-1]
            becomes += (f", chained {chain.index(number) + 1} of {len(chain)} "
                        f"({', '.join(f'#{n}' for n in chain)})")
        result.append(dataclasses.replace(status, becomes=becomes))
    return result


def _entry_number(source: str) -> int:
    try:
        return int(source.rsplit("#", 1)[1])
    except (IndexError, ValueError):
        return 0
