"""Installed hooks: the state of one hook (:class:`Hook`), its failure policy, and how a call
decides to go straight through (:func:`skip_call`).

Part of the hook wrappers (``otel_vllm_ascend.wrapping`` describes them all).
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any, Callable, Optional

_logger = logging.getLogger("otel_vllm_ascend.wrapping")  # one logger name for all hook code

MAX_CONSECUTIVE_FAILURES = 5

HOOK_MARKER = "__otel_vllm_hook__"

# Modules whose frames are wrapper frames: caller_filter looks past them (a chain of hooks).
WRAPPER_MODULES = frozenset({"otel_vllm_ascend.wrapping", "otel_vllm_ascend.timers",
                             "otel_vllm_ascend.handler_calls", __name__})


class Hook:
    """One installed hook: where it lives, its live flag and its failure count."""

    __slots__ = ("spec", "owner", "attr", "original_raw", "had_own_attr", "func", "kind",
                 "binding", "handler", "active", "removed", "failures", "warned", "name",
                 "domain", "level", "attributes", "caller_filter", "symbol", "binder")

    def __init__(self, spec: Any, owner: Any, attr: str, original_raw: Any,
                 had_own_attr: bool, func: Callable, binding: str,
                 handler: Optional[Callable]) -> None:
        self.spec = spec
        self.owner = owner
        self.attr = attr
        self.original_raw = original_raw  # what was in owner.__dict__ (or inherited)
        self.had_own_attr = had_own_attr
        self.func = func  # the plain function that really runs
        self.binding = binding  # "function" | "method" | "classmethod" | "staticmethod"
        self.handler = handler
        self.kind = callable_kind(func)
        self.active = False  # THE hot-path flag: recording and this hook's domain/level allowed
        self.removed = False
        self.failures = 0
        self.warned = False
        self.symbol = getattr(spec, "symbol", f"{attr}")
        self.name = getattr(spec, "name", None) or attr
        self.domain = getattr(spec, "domain", None) or "Default"
        self.level = int(getattr(spec, "level", 20) or 20)
        self.attributes = tuple(getattr(spec, "attributes", ()) or ())
        self.caller_filter = getattr(spec, "caller_filter", None) or None
        self.binder: Any = None  # built at the first call that evaluates attributes

    # -- failure policy -------------------------------------------------------------------
    def failed(self, exc: BaseException) -> None:
        """Count one failure of our code in this hook; remove the hook after too many."""
        try:
            self.failures += 1
            _logger.debug("otel-vllm-ascend hook %s failed", self.symbol, exc_info=exc)
            if not self.warned:
                self.warned = True
                _logger.warning("otel-vllm-ascend: hook %s (%s) failed: %s: %s; vLLM continues "
                                "unchanged (details at DEBUG)", self.symbol, self.source(),
                                type(exc).__name__, exc)
            if self.failures >= MAX_CONSECUTIVE_FAILURES and not self.removed:
                self.remove()
                _logger.warning("otel-vllm-ascend: hook %s removed after %d consecutive "
                                "failures", self.symbol, self.failures)
        except Exception:  # the policy itself must never raise into vLLM
            pass

    def succeeded(self) -> None:
        self.failures = 0

    def source(self) -> str:
        return str(getattr(self.spec, "source", "") or "symbol file")

    def remove(self) -> None:
        """Stop recording and restore the original attribute; wrappers bound elsewhere then call
        straight through.

        In a chain (entries of one symbol with different handlers, each wrapping the next) only
        the outermost hook can restore: an inner one stays in place, calling straight through,
        until the hooks over it are removed (``remove`` again then restores it).
        """
        self.active = False
        self.removed = True
        try:
            if hook_of(vars(self.owner).get(self.attr)) is not self:
                return  # another hook wraps this one (or the attribute was replaced since)
            if self.had_own_attr:
                setattr(self.owner, self.attr, self.original_raw)
            else:
                delattr(self.owner, self.attr)
        except Exception:
            _logger.debug("could not restore %s", self.symbol, exc_info=True)

    def chain(self) -> list:
        """This hook and those it wraps, outermost first (entries of one symbol)."""
        hooks = [self]
        inner = hook_of(self.original_raw) if self.had_own_attr else None
        while inner is not None and inner not in hooks:
            hooks.append(inner)
            inner = hook_of(inner.original_raw) if inner.had_own_attr else None
        return hooks

    def set_state(self, live: Any) -> None:
        self.active = (not self.removed) and live.allows(self.domain, self.level)

    def split_this(self, args: tuple) -> tuple:
        """(this, args without this) for the way this callable is bound."""
        if self.binding in ("method", "classmethod") and args:
            return args[0], args[1:]
        return None, args


def callable_kind(func: Callable) -> str:
    """``sync``, ``async``, ``generator``, ``asyncgen``, ``contextmanager`` or
    ``asynccontextmanager``."""
    inner_hook = getattr(func, HOOK_MARKER, None)
    if inner_hook is not None:
        return inner_hook.kind  # a chained hook wraps another's wrapper: the target's kind
    if inspect.isasyncgenfunction(func):
        return "asyncgen"
    if inspect.iscoroutinefunction(func):
        return "async"
    if inspect.isgeneratorfunction(func):
        return "generator"
    inner = getattr(func, "__wrapped__", None)
    if inner is not None:
        if inspect.isasyncgenfunction(inner):
            return "asynccontextmanager"
        if inspect.isgeneratorfunction(inner):
            return "contextmanager"
    return "sync"


def hook_of(obj: Any) -> Optional[Hook]:
    """The Hook behind an installed wrapper (also through classmethod/staticmethod)."""
    target = getattr(obj, "__func__", obj)
    return getattr(target, HOOK_MARKER, None)


def skip_call(hook: Hook) -> bool:
    """True when this call must go straight through (inactive, or caller_filter mismatch)."""
    if not hook.active:
        return True
    if hook.caller_filter is not None:
        try:
            frame = sys._getframe(2)
            while frame is not None and frame.f_globals.get("__name__") in WRAPPER_MODULES:
                frame = frame.f_back  # a hook of an earlier entry of the symbol (a chain)
            return frame is None or frame.f_code.co_name != hook.caller_filter
        except Exception:
            return True
    return False
