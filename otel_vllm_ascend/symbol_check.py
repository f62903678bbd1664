"""Does each entry of a symbol file resolve against the installed vLLM? (``check-symbols``)

Unlike the runtime, which hooks modules lazily as vLLM imports them, this imports every target
module now, so it is meant for the command line, not for a serving process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from otel_vllm_ascend.symbols import HookSpec, SymbolSet

RESOLVES = "resolves"
MODULE_NOT_INSTALLED = "module not installed"
IMPORT_FAILED = "module import failed"
ATTRIBUTE_MISSING = "attribute missing"
SKIPPED = "skipped by version gate"
DUPLICATE = "duplicate"
HANDLER_FALLBACK = "handler fallback"


@dataclass(frozen=True)
class EntryStatus:
    """What ``check-symbols`` reports for one entry."""

    spec: HookSpec
    status: str
    reason: str = ""
    handler_note: Optional[str] = None  # set when the handler will fall back to the timer
    package_absent: bool = False  # the whole top-level package (e.g. vllm_ascend) is absent

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
        return self.status in (RESOLVES, SKIPPED)


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


def check_symbol_set(symbols: SymbolSet) -> List[EntryStatus]:
    """One status per entry (applicable and skipped), in file order."""
    statuses = [check_spec(spec) for spec in symbols.specs]
    for spec, reason in symbols.skipped:
        if reason.startswith("duplicate"):
            statuses.append(EntryStatus(spec, DUPLICATE, reason))
        else:
            statuses.append(EntryStatus(spec, SKIPPED, reason.replace(f"{SKIPPED}: ", "")))
    return sorted(statuses, key=lambda status: _entry_number(status.spec.source))


def _entry_number(source: str) -> int:
    try:
        return int(source.rsplit("#", 1)[1])
    except (IndexError, ValueError):
        return 0
