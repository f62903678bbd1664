"""Installing and removing hooks for compiled symbol specs.

For every spec the target module is hooked *now* when it is already imported, otherwise through a
``wrapt`` post-import hook the moment it is imported. Hooks go onto the class (or module) before
vLLM builds its objects, so methods vLLM binds at construction (``EngineCore.step`` into
``step_fn``) are the wrapped ones. An attribute that already holds one of our wrappers is never
wrapped again, so instrumenting twice (``opentelemetry-instrument`` and the vLLM plugin in one
process) installs each hook once.

Entries of one symbol with different handlers are chained: each hook wraps the next, the
file's first entry outermost, so its handler runs first and the original runs once, inside the
last. Wildcard entries are expanded as matching modules are imported
(:class:`otel_vllm_ascend.wildcards.ImportWatcher`), never by importing them here.

A spec that cannot be installed (module attribute missing, handler not importable, a property
instead of a method) gets one warning naming the symbol file, the entry and the reason; the others
are installed regardless.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import logging
import os
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import wrapt

from otel_vllm_ascend import file_safety, wildcards, wrapping

_logger = logging.getLogger(__name__)

SUMMARY_DELAY_S = 10.0


class HookInstaller:
    """Owns the hooks of one instrumentation session (``instrument()`` .. ``uninstrument()``)."""

    def __init__(self, specs: Sequence[Any]) -> None:
        self._specs_by_module: Dict[str, List[Any]] = {}
        self._wildcards: List[Any] = []  # (spec, Wildcard)
        for spec in install_order(specs):
            wildcard = _wildcard_of(spec)
            if wildcard is not None:
                self._wildcards.append((spec, wildcard))
            else:
                self._specs_by_module.setdefault(spec.module, []).append(spec)
        self._watcher: Optional[wildcards.ImportWatcher] = None
        self.hooks: List[wrapping.Hook] = []
        self.problems: List[str] = []
        self._lock = threading.RLock()
        self._live: Any = None
        self._closed = False
        self._summary_timer: Optional[threading.Timer] = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Hook loaded modules now; register post-import hooks for the rest."""
        for module_name in self._specs_by_module:
            # Calls back at once when the module is already imported.
            wrapt.register_post_import_hook(self._on_import, module_name)
        if self._wildcards:
            self._watcher = wildcards.ImportWatcher(
                [wildcard.prefix for _, wildcard in self._wildcards], self._on_wildcard_import)
            self._watcher.start()

    def close(self) -> None:
        """Restore every original; later imports install nothing."""
        with self._lock:
            self._closed = True
            if self._watcher is not None:
                self._watcher.stop()
            if self._summary_timer is not None:
                self._summary_timer.cancel()
            # Newest first, so each hook of a chain is outermost when its turn comes (one that
            # removed itself earlier, inside a chain, is restored now as well).
            for hook in reversed(self.hooks):
                hook.remove()
            self.hooks.clear()

    def set_live_state(self, live: Any) -> None:
        with self._lock:
            self._live = live
            for hook in self.hooks:
                hook.set_state(live)

    @property
    def pending_modules(self) -> List[str]:
        import sys
        return [name for name in self._specs_by_module if name not in sys.modules]

    # -- installation ---------------------------------------------------------------------
    def _on_import(self, module: Any) -> None:
        with self._lock:
            if self._closed:
                return
            for spec in self._specs_by_module.get(module.__name__, ()):
                self._install(spec, module)
            _logger.debug("otel-vllm-ascend: hooked %s", module.__name__)
            self._schedule_summary()

    def _on_wildcard_import(self, module: Any) -> None:
        with self._lock:
            if self._closed:
                return
            installed = 0
            for spec, wildcard in self._wildcards:
                if not wildcard.matches_module(module.__name__):
                    continue
                for class_name in wildcards.classes_defining(module, wildcard):
                    installed += self._install(wildcards.expand(spec, module.__name__,
                                                                class_name), module)
            if installed:
                _logger.debug("otel-vllm-ascend: hooked %d wildcard matches in %s", installed,
                              module.__name__)
                self._schedule_summary()

    def _install(self, spec: Any, module: Any) -> int:
        """Install one spec; 1 if a hook was added, 0 if not (problems are reported)."""
        try:
            hook = install(spec, module)
        except HookInstallError as err:
            self._problem(spec, str(err))
            return 0
        except Exception as err:  # never let an import fail because of us
            self._problem(spec, f"{type(err).__name__}: {err}")
            return 0
        if hook is None:
            return 0
        self.hooks.append(hook)
        if self._live is not None:
            hook.set_state(self._live)
        return 1

    def _schedule_summary(self) -> None:
        """One INFO line per process once imports have settled (no new hook for a while)."""
        if self._summary_timer is not None:
            self._summary_timer.cancel()
        timer = threading.Timer(SUMMARY_DELAY_S, self._log_summary)
        timer.daemon = True
        self._summary_timer = timer
        timer.start()

    def _log_summary(self) -> None:
        with self._lock:
            if self._closed:
                return
            names = ", ".join(f"{h.owner.__name__}.{h.attr}" if hasattr(h.owner, "__name__")
                              else h.attr for h in self.hooks)
            _logger.info("otel-vllm-ascend: pid %d: %d hooks installed: %s", os.getpid(),
                         len(self.hooks), names)

    def _problem(self, spec: Any, reason: str) -> None:
        source = getattr(spec, "source", "") or "symbol file"
        message = f"{source}: entry {spec.symbol!r} not installed: {reason}"
        self.problems.append(message)
        _logger.warning("otel-vllm-ascend: %s", message)


class HookInstallError(Exception):
    """A spec that cannot be applied to the imported module."""


def install_order(specs: Sequence[Any]) -> List[Any]:
    """Specs in the order to install them: the entries of one symbol last-listed first, so the
    file's first entry ends up outermost (its handler runs first)."""
    by_symbol: Dict[str, List[Any]] = {}
    for spec in specs:
        by_symbol.setdefault(spec.symbol, []).append(spec)
    return [spec for group in by_symbol.values() for spec in reversed(group)]


def _wildcard_of(spec: Any) -> Optional[wildcards.Wildcard]:
    symbol = getattr(spec, "symbol", "")
    return wildcards.parse(symbol) if "*" in symbol else None


def resolve_handler(path: Optional[str]) -> Optional[Callable]:
    """Import a ``pkg.mod:func`` handler (None = default timer)."""
    if not path:
        return None
    from otel_vllm_ascend.handlers import resolve_builtin

    canonical = resolve_builtin(path) or path
    module_name, sep, attr = canonical.partition(":")
    if not sep or not module_name or not attr:
        raise HookInstallError(f"handler {path!r} is not of the form 'package.module:function'")
    if not module_name.startswith("otel_vllm_ascend.") and module_name not in sys.modules:
        try:
            for source in module_files(module_name):
                file_safety.check(source, "handler file")
        except file_safety.UnsafeFileError as err:
            raise HookInstallError(str(err)) from None
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:
        raise HookInstallError(f"handler module {module_name!r} cannot be imported: {err}") from err
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HookInstallError(f"handler {path!r}: {module_name!r} has no {attr!r}")
    if not callable(target):
        raise HookInstallError(f"handler {path!r} is not callable")
    return target


def module_files(module_name: str) -> List[str]:
    """The source files importing ``module_name`` would run (each package's ``__init__`` and
    the module), found the way the import system finds them but without running any."""
    files: List[str] = []
    search: Any = None
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else \
            importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None:
            break  # not on the path: the import itself will say so
        if loaded is None and spec.origin and os.path.isfile(spec.origin):
            files.append(spec.origin)
        search = spec.submodule_search_locations
    return files


def install(spec: Any, module: Any) -> Optional[wrapping.Hook]:
    """Wrap the spec's target in ``module``; None when it already carries our wrapper."""
    parts = spec.qualname.split(".")
    owner: Any = module
    for part in parts[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            raise HookInstallError(f"{module.__name__} has no {'.'.join(parts[:-1])!r}")
    attr = parts[-1]
    if inspect.isclass(owner):
        raw = owner.__dict__.get(attr, _ABSENT)
        had_own = raw is not _ABSENT
        if not had_own:
            try:
                raw = inspect.getattr_static(owner, attr)
            except AttributeError:
                raise HookInstallError(f"{owner.__qualname__} has no attribute {attr!r}") from None
    else:
        raw = getattr(owner, attr, _ABSENT)
        had_own = True
        if raw is _ABSENT:
            raise HookInstallError(f"{module.__name__} has no attribute {attr!r}")

    existing = wrapping.hook_of(raw)
    if existing is not None:
        if not had_own or existing.symbol != spec.symbol:
            return None  # ours for another entry (a base class's, an alias's): one hook per call
        handler_path = getattr(spec, "handler", None)
        if any(getattr(hook.spec, "handler", None) == handler_path for hook in existing.chain()):
            return None  # this entry is installed already: never double-wrap
        # Another entry of the same symbol: chain over it (it becomes this hook's original).

    if isinstance(raw, staticmethod):
        binding, func = "staticmethod", raw.__func__
    elif isinstance(raw, classmethod):
        binding, func = "classmethod", raw.__func__
    elif inspect.isclass(owner):
        if not inspect.isfunction(raw) and existing is None:  # a hook of ours: chained
            raise HookInstallError(
                f"{spec.qualname} is a {type(raw).__name__}, not a function or method")
        binding, func = "method", raw
    else:
        if not callable(raw):
            raise HookInstallError(f"{spec.qualname} is not callable")
        binding, func = "function", raw
    try:
        handler = resolve_handler(getattr(spec, "handler", None))
        if inspect.isasyncgenfunction(handler):
            raise HookInstallError(
                f"handler {spec.handler!r} is an async generator; generator-style handlers "
                "are plain generator functions (their code runs before and after the call, "
                "also around an async one)")
    except HookInstallError as err:
        # The target is fine; only the handler is not: time the call rather than lose it.
        _logger.warning("otel-vllm-ascend: %s (%s): %s; using the default timer instead",
                        spec.source, spec.symbol, err)
        handler = None
    _check_signature(spec, func, binding, handler)
    hook = wrapping.Hook(spec, owner, attr, raw, had_own, func, binding, handler)
    wrapper = wrapping.build_wrapper(hook)
    if binding == "staticmethod":
        replacement: Any = staticmethod(wrapper)
    elif binding == "classmethod":
        replacement = classmethod(wrapper)
    else:
        replacement = wrapper
    setattr(owner, attr, replacement)
    return hook


def _check_signature(spec: Any, func: Callable, binding: str, handler: Any) -> None:
    """A built-in handler names the parameters it passes or reads (``expects``); when this
    vLLM's function lacks one, the hook steps aside: vLLM runs unchanged, one warning says why.
    """
    expected = getattr(handler, "expects", ())
    if not expected:
        return
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to compare
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = [name for name in expected if name not in params]
    if missing:
        raise HookInstallError(
            f"{spec.qualname}{signature} has no parameter {', '.join(map(repr, missing))}, "
            f"which handler {getattr(handler, '__name__', handler)!r} needs; the hook steps "
            "aside and vLLM runs unchanged")


_ABSENT = object()
