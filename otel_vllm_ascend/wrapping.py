"""Wrapper factories: one per kind of callable, all with the same failure policy.

A hook replaces ``owner.<attr>`` (a module function, a method, a ``classmethod`` /
``staticmethod``) with a plain Python closure built here (for an :class:`AroundHandler`, its
compiled twin where it is built: ``hotpath.py``). Plain closures, not
``wrapt.FunctionWrapper`` objects, because a disabled hook must stay within a few hundred
nanoseconds of a bare call (see ``docs/benchmarks.md``); ``wrapt`` still provides the
post-import hooks that install them.

Kinds: sync functions, ``async def`` coroutines, generators, async generators, and functions
returning (async) context managers (``@contextmanager`` / ``@asynccontextmanager``, e.g.
vllm-ascend's ``ProfileExecuteDuration.capture_async``). The default *timer* records one span
per call (for generators: from the call to exhaustion; for context managers: from the call to
``__exit__``), evaluates the entry's ``attributes`` after the call, and records an exception
without changing it. A *handler* ``func(original, this, *args, **kwargs)`` (sync or async)
replaces the timer; so does a *generator-style* handler ``func(ctx)`` (:class:`CallContext`):
code before its one ``yield`` runs before the call, code after it afterwards, and the wrapper
calls the original itself.

Failure policy (the original always runs exactly once, its result or exception passes through):

* ``original`` given to a handler is guarded: a second call returns the first result; if the
  handler never calls it, the wrapper does; the handler's own return value is ignored.
* The built-in handlers of sync targets are :class:`AroundHandler` halves (of ``async def``
  ones, :class:`AsyncAroundHandler`): the wrapper calls the original itself, between
  ``before`` and ``after``, so there is nothing to guard (half the cost of a handler call).
* An exception from our code (timer bookkeeping, attribute evaluation, a handler) is logged as
  a warning once per hook (every occurrence at DEBUG with the traceback).
* After :data:`MAX_CONSECUTIVE_FAILURES` failures in a row the hook removes itself (the original
  attribute is restored) and a warning says so.

Modules (this one keeps every public name importable, and builds the wrapper of a hook):

* ``otel_vllm_ascend.hook``: :class:`Hook` (state, failure policy, removal), ``callable_kind``,
  ``hook_of``, ``skip_call`` (inactive hook, ``caller_filter``);
* ``otel_vllm_ascend.timers``: the default timer per kind of callable, ``DelegatingContext``;
* ``otel_vllm_ascend.handler_calls``: handler wrappers, ``GuardedOriginal``, ``CallContext``,
  ``AroundHandler``;
* ``otel_vllm_ascend.call_binding``: names for attribute expressions from one call.
"""

from __future__ import annotations

import inspect
from typing import Callable

from otel_vllm_ascend.call_binding import ArgumentBinder
from otel_vllm_ascend.handler_calls import (
    AroundHandler,
    AsyncAroundHandler,
    CallContext,
    GuardedAsyncOriginal,
    GuardedOriginal,
    always,
    around_handler,
    async_around_handler,
    async_generator_style_handler,
    async_handler,
    generator_style_handler,
    sync_handler,
)
from otel_vllm_ascend.hook import (
    HOOK_MARKER,
    MAX_CONSECUTIVE_FAILURES,
    Hook,
    callable_kind,
    hook_of,
    skip_call,
)
from otel_vllm_ascend.timers import (
    DelegatingContext,
    async_timer,
    asyncgen_timer,
    contextmanager_timer,
    generator_timer,
    sync_timer,
)

__all__ = [
    "HOOK_MARKER", "MAX_CONSECUTIVE_FAILURES", "ArgumentBinder", "AroundHandler",
    "AsyncAroundHandler", "CallContext", "DelegatingContext", "GuardedAsyncOriginal",
    "GuardedOriginal", "Hook", "always", "around_handler", "async_around_handler",
    "async_generator_style_handler", "async_handler", "async_timer", "asyncgen_timer",
    "build_wrapper", "callable_kind", "contextmanager_timer", "generator_timer",
    "generator_style_handler", "hook_of", "skip_call", "sync_handler", "sync_timer",
]


def build_wrapper(hook: Hook) -> Callable:
    """The replacement function for ``hook.func`` (timer or handler, by kind)."""
    func = hook.func
    if hook.handler is not None:
        if inspect.isgeneratorfunction(hook.handler):
            # Generators and context managers: the result is the object the original returns.
            factory = (async_generator_style_handler if hook.kind == "async"
                       else generator_style_handler)
            wrapper = factory(hook, func)
        elif type(hook.handler) is AroundHandler and hook.kind == "sync":
            wrapper = around_handler(hook, func)
        elif type(hook.handler) is AsyncAroundHandler and hook.kind == "async":
            wrapper = async_around_handler(hook, func)
        elif hook.kind == "async":
            wrapper = async_handler(hook, func)
        else:
            # Generators and context managers: the handler gets the original that returns the
            # generator / context manager object. What the wrapper returns is that object, or,
            # for context managers, a DelegatingContext the handler put around it.
            wrapper = sync_handler(hook, func)
    else:
        factory = {
            "sync": sync_timer,
            "async": async_timer,
            "generator": generator_timer,
            "asyncgen": asyncgen_timer,
            "contextmanager": contextmanager_timer,
            "asynccontextmanager": contextmanager_timer,
        }[hook.kind]
        wrapper = factory(hook, func)
    _copy_identity(wrapper, func)
    setattr(wrapper, HOOK_MARKER, hook)
    return wrapper


def _copy_identity(wrapper: Callable, func: Callable) -> None:
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(wrapper, name, getattr(func, name))
        except (AttributeError, TypeError):
            pass
    try:
        wrapper.__dict__.update(getattr(func, "__dict__", {}))
    except (AttributeError, TypeError):
        pass
    wrapper.__wrapped__ = func  # inspect.signature() and bind_names see the original
