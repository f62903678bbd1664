"""Wildcard symbols: ``package.prefix.*:ClassPattern.method``.

One entry hooks ``method`` on every class, in every module under ``package.prefix`` (at any
depth, not the package itself), whose name matches ``ClassPattern`` (``*``, ``?``, ``[..]`` as
in shell patterns; ``*`` = every class) and which defines ``method`` itself: a subclass that
inherits it is covered by its base's hook, and classes a module merely imports are hooked in the
module that defines them. vllm-ascend's files use it for
``vllm.model_executor.models.*:*.embed_multimodal``.

A serving process must not import the hundreds of modules under such a prefix, so matches are
found as vLLM imports them: :class:`ImportWatcher` sits on ``sys.meta_path`` and calls back
after each matching module has run (modules imported before it started are taken from
``sys.modules``). Only ``check-symbols`` imports them all, to count the matches.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.abc
import inspect
import logging
import re
import sys
import threading
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

_logger = logging.getLogger(__name__)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
WILDCARD_RE = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*)\.\*:([A-Za-z0-9_*?\[\]!]+)\.({_IDENT})$")
FORM = "'package.prefix.*:*.method'"


class Wildcard(NamedTuple):
    prefix: str  # "vllm.model_executor.models"
    class_pattern: str  # "*"
    method: str  # "embed_multimodal"

    def matches_module(self, name: str) -> bool:
        return name.startswith(self.prefix + ".")


def parse(symbol: str) -> Optional[Wildcard]:
    """The parts of a wildcard symbol, or None when it is not of the form :data:`FORM`."""
    match = WILDCARD_RE.match(symbol)
    if match is None:
        return None
    return Wildcard(*match.groups())


def classes_defining(module: Any, wildcard: Wildcard) -> List[str]:
    """Names of the classes defined in ``module`` that match and define the method themselves,
    in definition order."""
    found = []
    for name, value in list(vars(module).items()):
        if (inspect.isclass(value) and getattr(value, "__module__", None) == module.__name__
                and getattr(value, "__name__", None) == name
                and wildcard.method in vars(value)
                and fnmatch.fnmatchcase(name, wildcard.class_pattern)):
            found.append(name)
    return found


def expand(spec: Any, module_name: str, class_name: str) -> Any:
    """The concrete spec of one match (same handler, name, domain, attributes and source)."""
    qualname = f"{class_name}.{spec.qualname.rsplit('.', 1)[-1]}"
    return dataclasses.replace(spec, symbol=f"{module_name}:{qualname}", module=module_name,
                               qualname=qualname)


class _NotifyingLoader(importlib.abc.Loader):
    """The real loader, plus a call once the module has run."""

    def __init__(self, loader: Any, notify: Callable[[Any], None]) -> None:
        self._loader = loader
        self._notify = notify

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        # The module keeps its real loader: pkgutil, importlib.resources and linecache read it.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._notify(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class ImportWatcher(importlib.abc.MetaPathFinder):
    """Calls ``on_import(module)`` after each module under one of ``prefixes`` is imported.

    It finds nothing itself: it asks the finders after it and wraps the loader they return.
    Any other import costs one ``str.startswith``.
    """

    def __init__(self, prefixes: Sequence[str], on_import: Callable[[Any], None]) -> None:
        self._prefixes = tuple(sorted({prefix + "." for prefix in prefixes}))
        self._on_import = on_import
        self._resolving = threading.local()

    def start(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        for name, module in list(sys.modules.items()):
            if module is not None and name.startswith(self._prefixes):
                self._notify(module)

    def stop(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith(self._prefixes):
            return None
        busy = self._resolving.__dict__.setdefault("names", set())
        if fullname in busy:
            return None  # asked again by a finder we asked
        busy.add(fullname)
        try:
            spec = None
            for finder in list(sys.meta_path):
                find_spec = getattr(finder, "find_spec", None)
                if finder is self or find_spec is None:
                    continue
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            busy.discard(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None  # leave it to the normal machinery, unwatched
        spec.loader = _NotifyingLoader(loader, self._notify)
        return spec

    def _notify(self, module: Any) -> None:
        try:
            self._on_import(module)
        except Exception:  # never let an import fail because of us
            _logger.warning("otel-vllm-ascend: hooking wildcard matches in %s failed",
                            getattr(module, "__name__", module), exc_info=True)
