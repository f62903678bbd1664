"""Wrapper factories: one per kind of callable, all with the same failure policy.

A hook replaces ``owner.<attr>`` (a module function, a method, a ``classmethod`` /
``staticmethod``) with a plain Python closure built here. Plain closures, not
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
* The built-in handlers of sync targets are :class:`AroundHandler` halves: the wrapper calls
  the original itself, between ``before`` and ``after``, so there is nothing to guard (half
  the cost of a handler call).
* An exception from our code (timer bookkeeping, attribute evaluation, a handler) is logged as
  a warning once per hook (every occurrence at DEBUG with the traceback).
* After :data:`MAX_CONSECUTIVE_FAILURES` failures in a row the hook removes itself (the original
  attribute is restored) and a warning says so.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import time
from typing import Any, Callable, Optional

from otel_vllm_ascend import contract, recorder
from otel_vllm_ascend.selfmeter import meter as _meter

_logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5
HOOK_MARKER = "__otel_vllm_hook__"

_time_ns = time.time_ns
_native_id = threading.get_native_id
# The self meter's clock: this thread's CPU time, so waits for the GIL, for the OS (two
# shared cores) and for other coroutines do not count as ours.
_meter_ns = time.thread_time_ns


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


# --------------------------------------------------------------------------------------------
# The timer's record: attributes evaluated after the call.

_BASIC_NAMES = frozenset(("this", "self", "args", "kwargs", "return"))


class _Binder:
    """Names for attribute expressions, cheaper than ``inspect.Signature.bind`` per call.

    Plain signatures (no ``*args``/``**kwargs``, no positional-only) are bound by position here;
    anything else goes through ``expr.bind_names``. Parameters are bound only when an expression
    reads one.
    """

    __slots__ = ("func", "params", "simple", "needs_params")

    def __init__(self, func: Callable, attributes: tuple) -> None:
        self.func = func
        used = set()
        for attribute in attributes:
            used.update(getattr(attribute.compiled, "names", ()) or ())
        self.needs_params = not used <= _BASIC_NAMES
        self.params: tuple = ()
        self.simple = False
        try:
            parameters = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            return
        allowed = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if all(p.kind in allowed for p in parameters):
            self.simple = True
            self.params = tuple((p.name, p.default, p.kind is inspect.Parameter.KEYWORD_ONLY)
                                for p in parameters)

    def names(self, this: Any, args: tuple, kwargs: dict, result: Any) -> dict:
        if self.needs_params and not self.simple:
            from otel_vllm_ascend.expr import bind_names

            return bind_names(self.func, this, args, kwargs, result)
        full_args = (this,) + args if this is not None else args
        names = {"this": this, "self": this, "args": full_args, "kwargs": kwargs,
                 "return": result}
        if self.needs_params:
            empty = inspect.Parameter.empty
            count = len(full_args)
            for index, (name, default, keyword_only) in enumerate(self.params):
                if index < count and not keyword_only:
                    names[name] = full_args[index]
                elif name in kwargs:
                    names[name] = kwargs[name]
                elif default is not empty:
                    names[name] = default
        return names


def _timer_attributes(hook: Hook, args: tuple, kwargs: dict, result: Any) -> dict:
    attrs = {contract.DOMAIN: hook.domain}
    if hook.attributes:
        from otel_vllm_ascend.expr import MISSING

        binder = hook.binder
        if binder is None:
            binder = hook.binder = _Binder(hook.func, hook.attributes)
        this, rest = hook.split_this(args)
        names = binder.names(this, rest, kwargs, result)
        for attribute in hook.attributes:
            value = attribute.compiled.evaluate(names)  # bounded, never raises
            if value is not MISSING:
                attrs[attribute.name] = value
    return attrs


def _finish_timer(hook: Hook, start: int, tid: int, args: tuple, kwargs: dict, result: Any,
                  exc: Optional[BaseException]) -> None:
    try:
        end = _time_ns()
        attrs = _timer_attributes(hook, args, kwargs, result)
        recorder.record_span(hook.name, start, end, attrs, exception=exc, thread_id=tid)
    except Exception as failure:
        hook.failed(failure)
    else:
        hook.succeeded()


def _skip(hook: Hook) -> bool:
    """True when this call must go straight through (inactive, or caller_filter mismatch)."""
    if not hook.active:
        return True
    if hook.caller_filter is not None:
        try:
            frame = sys._getframe(2)
            while frame is not None and frame.f_globals.get("__name__") == __name__:
                frame = frame.f_back  # a hook of an earlier entry of the symbol (a chain)
            return frame is None or frame.f_code.co_name != hook.caller_filter
        except Exception:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Timer wrappers, one per kind.

def sync_timer(hook: Hook, func: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return func(*args, **kwargs)
        if _meter.on:
            return _metered_sync_timer(hook, func, args, kwargs)
        start = _time_ns()
        tid = _native_id()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _finish_timer(hook, start, tid, args, kwargs, None, exc)
            raise
        _finish_timer(hook, start, tid, args, kwargs, result, None)
        return result
    return wrapper


def _metered_sync_timer(hook: Hook, func: Callable, args: tuple, kwargs: dict) -> Any:
    """:func:`sync_timer`'s body with the self meter's clock around our part."""
    entered = _meter_ns()
    start = _time_ns()
    tid = _native_id()
    called = _meter_ns()
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:
        returned = _meter_ns()
        _finish_timer(hook, start, tid, args, kwargs, None, exc)
        _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
        raise
    returned = _meter_ns()
    _finish_timer(hook, start, tid, args, kwargs, result, None)
    _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
    return result


def async_timer(hook: Hook, func: Callable) -> Callable:
    async def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return await func(*args, **kwargs)
        metering = _meter.on
        entered = _meter_ns() if metering else 0
        start = _time_ns()
        tid = _native_id()
        called = _meter_ns() if metering else 0
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            returned = _meter_ns() if metering else 0
            _finish_timer(hook, start, tid, args, kwargs, None, exc)
            if metering:
                _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
            raise
        returned = _meter_ns() if metering else 0
        _finish_timer(hook, start, tid, args, kwargs, result, None)
        if metering:
            _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
        return result
    return wrapper


def generator_timer(hook: Hook, func: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return (yield from func(*args, **kwargs))
        start = _time_ns()
        tid = _native_id()
        try:
            result = yield from func(*args, **kwargs)
        except BaseException as exc:
            _finish_timer(hook, start, tid, args, kwargs, None, exc)
            raise
        _finish_timer(hook, start, tid, args, kwargs, result, None)
        return result
    return wrapper


async def _forward_asyncgen(agen: Any):  # noqa: ANN202 - an async generator
    """Re-yield ``agen`` forwarding asend/athrow/aclose (``async for`` alone drops them)."""
    try:
        value = await agen.__anext__()
    except StopAsyncIteration:
        return
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            await agen.aclose()
            raise
        except BaseException as thrown:  # forwarded into the original, as a plain one would
            try:
                value = await agen.athrow(thrown)
            except StopAsyncIteration:
                return
        else:
            try:
                value = await (agen.__anext__() if sent is None else agen.asend(sent))
            except StopAsyncIteration:
                return


def asyncgen_timer(hook: Hook, func: Callable) -> Callable:
    async def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            async for item in _forward_asyncgen(func(*args, **kwargs)):
                yield item
            return
        start = _time_ns()
        tid = _native_id()
        forward = _forward_asyncgen(func(*args, **kwargs))
        try:
            value = await forward.__anext__()
            while True:
                sent = yield value
                value = await forward.asend(sent)
        except StopAsyncIteration:
            _finish_timer(hook, start, tid, args, kwargs, None, None)
        except GeneratorExit:
            await forward.aclose()
            _finish_timer(hook, start, tid, args, kwargs, None, None)
            raise
        except BaseException as exc:
            _finish_timer(hook, start, tid, args, kwargs, None, exc)
            raise
    return wrapper


class DelegatingContext:
    """Delegates to an (async) context manager and calls ``on_exit(exc)`` after its exit.

    Timers and handlers of context-manager targets return this around the original's object;
    every other attribute reads through to it.
    """

    __slots__ = ("target", "_on_exit")

    def __init__(self, target: Any, on_exit: Callable[[Optional[BaseException]], None]) -> None:
        self.target = target
        self._on_exit = on_exit

    def __enter__(self):  # noqa: ANN204
        return self.target.__enter__()

    def __exit__(self, exc_type, exc, tb):  # noqa: ANN001, ANN204
        try:
            return self.target.__exit__(exc_type, exc, tb)
        finally:
            self._exited(exc)

    async def __aenter__(self):  # noqa: ANN204
        return await self.target.__aenter__()

    async def __aexit__(self, exc_type, exc, tb):  # noqa: ANN001, ANN204
        try:
            return await self.target.__aexit__(exc_type, exc, tb)
        finally:
            self._exited(exc)

    def _exited(self, exc: Optional[BaseException]) -> None:
        try:
            self._on_exit(exc)
        except Exception:  # our bookkeeping must not replace the block's outcome
            _logger.debug("otel-vllm-ascend: context exit record failed", exc_info=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def contextmanager_timer(hook: Hook, func: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return func(*args, **kwargs)
        start = _time_ns()
        tid = _native_id()
        cm = func(*args, **kwargs)

        def on_exit(exc: Optional[BaseException]) -> None:
            _finish_timer(hook, start, tid, args, kwargs, None, exc)
        return DelegatingContext(cm, on_exit)
    return wrapper


# --------------------------------------------------------------------------------------------
# Handler wrappers: func(original, this, *args, **kwargs).

class GuardedOriginal:
    """The original as handed to a handler: runs at most once, remembers its outcome.

    A method's original takes ``original(*args)`` (our handlers) or ``original(this, *args)``
    (handlers written for msserviceprofiler, whose original is unbound).
    """

    __slots__ = ("_func", "_this", "_bound", "called", "result", "error", "elapsed_ns")

    def __init__(self, func: Callable, this: Any, bound: bool) -> None:
        self._func, self._this, self._bound = func, this, bound
        self.called = False
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.elapsed_ns = 0  # CPU inside the original, kept only while the self meter is on

    def _replay(self) -> Any:
        """A second call returns (or raises) what the first one did."""
        if self.error is not None:
            raise self.error
        return self.result

    def _positional(self, args: tuple) -> tuple:
        """The original's positional arguments, whichever convention the handler used."""
        if not self._bound:
            return args
        if args and args[0] is self._this:
            args = args[1:]  # msserviceprofiler handlers pass ``this`` on themselves
        return (self._this, *args)

    def __call__(self, *args, **kwargs):  # noqa: ANN204
        if self.called:
            return self._replay()
        self.called = True
        began = _meter_ns() if _meter.on else 0
        try:
            self.result = self._func(*self._positional(args), **kwargs)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            if began:
                self.elapsed_ns = _meter_ns() - began
        return self.result


class GuardedAsyncOriginal(GuardedOriginal):
    __slots__ = ()

    async def __call__(self, *args, **kwargs):  # noqa: ANN204
        if self.called:
            return self._replay()
        self.called = True
        began = _meter_ns() if _meter.on else 0
        try:
            self.result = await self._func(*self._positional(args), **kwargs)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            if began:
                self.elapsed_ns = _meter_ns() - began
        return self.result


def _outcome(hook: Hook, original: GuardedOriginal, raised: Optional[BaseException]) -> None:
    """Failure bookkeeping after a handler returned or raised (not for the original's error)."""
    if raised is not None:
        hook.failed(raised)
    elif not original.called:
        hook.failed(RuntimeError(f"handler of {hook.symbol} did not call the original"))
    else:
        hook.succeeded()


def sync_handler(hook: Hook, func: Callable) -> Callable:
    handler = hook.handler
    bound = hook.binding in ("method", "classmethod")
    context_target = hook.kind in ("contextmanager", "asynccontextmanager")

    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return func(*args, **kwargs)
        if bound and args:
            this, rest = args[0], args[1:]
        else:
            this, rest = None, args
        entered = _meter_ns() if _meter.on else 0
        original = GuardedOriginal(func, this, bound and bool(args))
        raised = None
        returned = None
        try:
            returned = handler(original, this, *rest, **kwargs)
        except Exception as exc:
            if exc is not original.error:
                raised = exc
        _outcome(hook, original, raised)
        if entered:
            _meter.add_hot(_meter_ns() - entered - original.elapsed_ns, hook.symbol)
        if not original.called:
            return original(*rest, **kwargs)
        if original.error is not None:
            raise original.error
        if (context_target and type(returned) is DelegatingContext
                and returned.target is original.result):
            return returned  # a transparent delegate around the original's context manager
        return original.result
    return wrapper


def async_handler(hook: Hook, func: Callable) -> Callable:
    handler = hook.handler
    bound = hook.binding in ("method", "classmethod")
    handler_is_async = inspect.iscoroutinefunction(handler)

    async def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return await func(*args, **kwargs)
        if bound and args:
            this, rest = args[0], args[1:]
        else:
            this, rest = None, args
        entered = _meter_ns() if _meter.on else 0
        original = GuardedAsyncOriginal(func, this, bound and bool(args))
        raised = None
        try:
            returned = handler(original, this, *rest, **kwargs)
            if handler_is_async or inspect.isawaitable(returned):
                await returned
        except Exception as exc:
            if exc is not original.error:
                raised = exc
        _outcome(hook, original, raised)
        if entered:
            # Other tasks that ran while the original was awaited ran inside its interval.
            _meter.add_hot(_meter_ns() - entered - original.elapsed_ns, hook.symbol)
        if not original.called:
            return await original(*rest, **kwargs)
        if original.error is not None:
            raise original.error
        return original.result
    return wrapper


# --------------------------------------------------------------------------------------------
# Generator-style handlers: handler(ctx) with one ``yield``; the wrapper calls the original.

class CallContext:
    """What a generator-style handler ``handler(ctx)`` is given.

    Code before the handler's ``yield`` runs before the call, code after it once the call
    returned; the value of the ``yield`` expression is the call's result (also
    ``return_value``). When the original raises, its exception is raised at the ``yield`` (use
    ``try``/``finally`` for code that must run either way); it reaches vLLM unchanged whatever
    the handler does.

    ``this`` (None for functions and static methods), ``args`` (without ``this``), ``kwargs``;
    ``local_values``: the arguments by parameter name, defaults applied (msserviceprofiler's
    name for the callee's locals, which at entry are its arguments).
    """

    __slots__ = ("this", "args", "kwargs", "return_value", "error", "_func", "_bound",
                 "_local_values")

    def __init__(self, func: Callable, this: Any, args: tuple, kwargs: dict,
                 bound: bool) -> None:
        self._func = func
        self._bound = bound
        self.this = this
        self.args = args
        self.kwargs = kwargs
        self.return_value: Any = None
        self.error: Optional[BaseException] = None
        self._local_values: Optional[dict] = None

    @property
    def local_values(self) -> dict:
        if self._local_values is None:
            full = (self.this, *self.args) if self._bound else self.args
            try:
                bound = inspect.signature(self._func).bind_partial(*full, **self.kwargs)
                bound.apply_defaults()
                self._local_values = dict(bound.arguments)
            except (TypeError, ValueError):
                self._local_values = {}
        return self._local_values


def _enter_steps(hook: Hook, ctx: CallContext) -> Any:
    """Run the handler up to its ``yield``; the generator, or None when it failed."""
    try:
        steps = hook.handler(ctx)
        next(steps)
    except StopIteration:
        hook.failed(RuntimeError(f"generator handler of {hook.symbol} did not yield"))
        return None
    except Exception as exc:
        hook.failed(exc)
        return None
    return steps


def _exit_steps(hook: Hook, steps: Any, ctx: CallContext, result: Any,
                error: Optional[BaseException]) -> None:
    """Run the handler after its ``yield``: the result sent in, or the original's error
    thrown in (its traceback kept as it was)."""
    try:
        if error is None:
            ctx.return_value = result
            steps.send(result)
        else:
            ctx.error = error
            traceback = error.__traceback__
            try:
                steps.throw(error)
            finally:
                error.__traceback__ = traceback
    except StopIteration:
        hook.succeeded()
        return
    except Exception as exc:
        if exc is error:
            hook.succeeded()  # the handler let the original's error pass: nothing wrong
        else:
            hook.failed(exc)
        return
    steps.close()
    hook.failed(RuntimeError(f"generator handler of {hook.symbol} yielded more than once"))


def generator_style_handler(hook: Hook, func: Callable) -> Callable:
    bound = hook.binding in ("method", "classmethod")
    signature_func = hook.func

    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return func(*args, **kwargs)
        metering = _meter.on
        entered = _meter_ns() if metering else 0
        this, rest = (args[0], args[1:]) if bound and args else (None, args)
        ctx = CallContext(signature_func, this, rest, kwargs, bound and bool(args))
        steps = _enter_steps(hook, ctx)
        called = _meter_ns() if metering else 0
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            returned = _meter_ns() if metering else 0
            if steps is not None:
                _exit_steps(hook, steps, ctx, None, error)
            if metering:
                _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
            raise
        returned = _meter_ns() if metering else 0
        if steps is not None:
            _exit_steps(hook, steps, ctx, result, None)
        if metering:
            _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
        return result
    return wrapper


def async_generator_style_handler(hook: Hook, func: Callable) -> Callable:
    bound = hook.binding in ("method", "classmethod")
    signature_func = hook.func

    async def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return await func(*args, **kwargs)
        metering = _meter.on
        entered = _meter_ns() if metering else 0
        this, rest = (args[0], args[1:]) if bound and args else (None, args)
        ctx = CallContext(signature_func, this, rest, kwargs, bound and bool(args))
        steps = _enter_steps(hook, ctx)
        called = _meter_ns() if metering else 0
        try:
            result = await func(*args, **kwargs)
        except BaseException as error:
            returned = _meter_ns() if metering else 0
            if steps is not None:
                _exit_steps(hook, steps, ctx, None, error)
            if metering:
                _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
            raise
        returned = _meter_ns() if metering else 0
        if steps is not None:
            _exit_steps(hook, steps, ctx, result, None)
        if metering:
            _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
        return result
    return wrapper


class AroundHandler:
    """A handler in two halves around the original, for the built-in handlers of hot paths.

    ``before(this, args, kwargs)`` runs first and returns a state, or None when this call has
    nothing to record; ``after(state, this, args, kwargs, result, error)`` runs once the
    original returned (``error`` None), and, with ``after_errors``, also when it raised
    (``result`` None; the exception is re-raised after it). ``args`` exclude ``this``. Called
    with the custom-handler signature ``(original, this, *args, **kwargs)`` it behaves as a
    handler written that way.
    """

    def __init__(self, before: Callable, after: Callable, name: str, doc: str = "",
                 after_errors: bool = False) -> None:
        self.before = before
        self.after = after
        self.after_errors = after_errors
        self.__name__ = self.__qualname__ = name
        self.__module__ = after.__module__
        self.__doc__ = doc

    def __call__(self, original: Callable, this: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.before(this, args, kwargs)
        if state is None:
            return original(*args, **kwargs)
        try:
            result = original(*args, **kwargs)
        except BaseException as error:
            if self.after_errors:
                self.after(state, this, args, kwargs, None, error)
            raise
        self.after(state, this, args, kwargs, result, None)
        return result


def always(this: Any, args: tuple, kwargs: dict) -> bool:
    """An :class:`AroundHandler` ``before`` for handlers that record after the call only."""
    return True


def around_handler(hook: Hook, func: Callable) -> Callable:
    before, after = hook.handler.before, hook.handler.after
    after_errors = hook.handler.after_errors
    bound = hook.binding in ("method", "classmethod")

    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return func(*args, **kwargs)
        if _meter.on:
            return _metered_around(hook, func, bound, args, kwargs)
        if bound and args:
            this, rest = args[0], args[1:]
        else:
            this, rest = None, args
        try:
            state = before(this, rest, kwargs)
        except Exception as exc:
            hook.failed(exc)
            return func(*args, **kwargs)
        if state is None:
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            if after_errors:
                _after(hook, after, state, this, rest, kwargs, None, error)
            raise
        _after(hook, after, state, this, rest, kwargs, result, None)
        return result
    return wrapper


def _after(hook: Hook, after: Callable, state: Any, this: Any, args: tuple, kwargs: dict,
           result: Any, error: Optional[BaseException]) -> None:
    try:
        after(state, this, args, kwargs, result, error)
    except Exception as exc:
        hook.failed(exc)
    else:
        hook.failures = 0


def _metered_around(hook: Hook, func: Callable, bound: bool, args: tuple, kwargs: dict) -> Any:
    """:func:`around_handler`'s body with the self meter's clock around our parts."""
    entered = _meter_ns()
    this, rest = (args[0], args[1:]) if bound and args else (None, args)
    try:
        state = hook.handler.before(this, rest, kwargs)
    except Exception as exc:
        hook.failed(exc)
        state = None
    called = _meter_ns()
    try:
        result = func(*args, **kwargs)
    except BaseException as error:
        returned = _meter_ns()
        if state is not None and hook.handler.after_errors:
            _after(hook, hook.handler.after, state, this, rest, kwargs, None, error)
        _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
        raise
    returned = _meter_ns()
    if state is not None:
        _after(hook, hook.handler.after, state, this, rest, kwargs, result, None)
    _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)
    return result


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


def hook_of(obj: Any) -> Optional[Hook]:
    """The Hook behind an installed wrapper (also through classmethod/staticmethod)."""
    target = getattr(obj, "__func__", obj)
    return getattr(target, HOOK_MARKER, None)
