"""Wrappers that run a handler instead of the timer, with the failure policy of
``otel_vllm_ascend.wrapping``.

* :class:`GuardedOriginal`: the ``original`` a handler gets runs once whatever the handler does;
* ``sync_handler`` / ``async_handler``: handlers ``func(original, this, *args, **kwargs)``;
* :class:`CallContext` and the generator-style wrappers: handlers ``func(ctx)`` with one
  ``yield``;
* :class:`AroundHandler` and ``around_handler``: the built-ins' ``before`` / ``after`` halves,
  the original called by the wrapper itself; :class:`AsyncAroundHandler` and
  ``async_around_handler`` the same around an awaited original.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Optional

from otel_vllm_ascend import hotpath
from otel_vllm_ascend.hook import Hook
from otel_vllm_ascend.hook import skip_call as _skip
from otel_vllm_ascend.selfmeter import meter as _meter
from otel_vllm_ascend.timers import DelegatingContext

# The self meter's clock: this thread's CPU time (see wrapping).
_meter_ns = time.thread_time_ns


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


def _close_steps(hook: Hook, steps: Any, ctx: CallContext, result: Any,
                 error: Optional[BaseException], metering: bool, entered: int,
                 called: int) -> None:
    """After the original: the handler's part after its ``yield``, then the self meter's count
    of our time (before the call and after it, the original's time left out)."""
    returned = _meter_ns() if metering else 0
    if steps is not None:
        _exit_steps(hook, steps, ctx, result, error)
    if metering:
        _meter.add_hot(called - entered + _meter_ns() - returned, hook.symbol)


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
            _close_steps(hook, steps, ctx, None, error, metering, entered, called)
            raise
        _close_steps(hook, steps, ctx, result, None, metering, entered, called)
        return result
    return wrapper


def async_generator_style_handler(hook: Hook, func: Callable) -> Callable:
    """:func:`generator_style_handler` for coroutine functions (the original awaited)."""
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
            _close_steps(hook, steps, ctx, None, error, metering, entered, called)
            raise
        _close_steps(hook, steps, ctx, result, None, metering, entered, called)
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

    With ``wraps_result``, what ``after`` returns is what the caller gets: for a function that
    returns a context manager, a transparent one around it (``after`` must return the result
    itself, or an object that behaves exactly like it; if ``after`` fails, the caller gets the
    original's result).

    With ``only_first``, a set of strings: a call whose first argument (after ``this``) is a
    string not in it goes straight to the original, before the meter and ``before`` (a hook on
    a function called for many values, of which few are recorded).

    ``compiled_after``: ``after`` in C (``_hotpath.c``), which the compiled wrapper calls
    instead; ``after`` stays its reference and what the Python wrapper calls.
    """

    def __init__(self, before: Callable, after: Callable, name: str, doc: str = "",
                 after_errors: bool = False, wraps_result: bool = False,
                 only_first: Optional[frozenset] = None,
                 compiled_after: Optional[Callable] = None) -> None:
        self.before = before
        self.after = after
        self.compiled_after = compiled_after
        self.after_errors = after_errors
        self.wraps_result = wraps_result
        self.only_first = only_first
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
        returned = self.after(state, this, args, kwargs, result, None)
        return returned if self.wraps_result else result


class AsyncAroundHandler(AroundHandler):
    """An :class:`AroundHandler` of an ``async def`` target: the wrapper awaits the original
    between the halves (one coroutine of ours around it: a handler coroutine and a guarded
    original would be two more, each entered again at every resumption). Called with the
    custom-handler signature it is a coroutine function; ``wraps_result`` and ``only_first``
    are not used."""

    async def __call__(self, original: Callable, this: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.before(this, args, kwargs)
        if state is None:
            return await original(*args, **kwargs)
        try:
            result = await original(*args, **kwargs)
        except BaseException as error:
            if self.after_errors:
                self.after(state, this, args, kwargs, None, error)
            raise
        self.after(state, this, args, kwargs, result, None)
        return result


def always(this: Any, args: tuple, kwargs: dict) -> bool:
    """An :class:`AroundHandler` ``before`` for handlers that record after the call only (the
    installed wrappers skip the call: their state is True)."""
    return True


def around_handler(hook: Hook, func: Callable) -> Callable:
    """The wrapper of an :class:`AroundHandler`: ``before``, the original, ``after``, and the
    self meter's clock around our two parts when it is on.

    One function with no helper calls: it runs about once per engine step, after vLLM's own
    work has pushed its code and data out of the CPU caches, and there every further Python
    call costs about a microsecond (docs/benchmarks.md, issue 17, tenth part). Where it is
    built, the same steps run in C (``_hotpath.c``): the closure below is then used only for
    hooks with a ``caller_filter``, and as the reference the tests hold the C one to.
    """
    handler = hook.handler
    before, after = handler.before, handler.after
    if before is always:  # an after-only handler: no call for its state
        before = None
    after_errors, wraps, only_first = handler.after_errors, handler.wraps_result, \
        handler.only_first
    bound = hook.binding in ("method", "classmethod")
    first = 1 if bound else 0
    filtered = hook.caller_filter is not None
    compiled = hotpath.compiled()
    if compiled is not None and not filtered:  # a caller filter reads the wrapper's frame
        return compiled.AroundWrapper(hook, func, before, handler.compiled_after or after,
                                      _meter, bound, after_errors, wraps, only_first)

    def wrapper(*args, **kwargs):
        if only_first is not None:
            try:  # a member (the recorded case) costs one set lookup
                passes = args[first] not in only_first
            except Exception:  # no positional argument, or an unhashable one
                passes = False
            if passes and args[first].__class__ is str:
                return func(*args, **kwargs)  # a value the handler records nothing for
        if not hook.active or (filtered and _skip(hook)):
            return func(*args, **kwargs)
        metered = _meter.on
        if metered:
            entered = _meter_ns()
        if bound and args:
            this, rest = args[0], args[1:]
        else:
            this, rest = None, args
        try:
            state = True if before is None else before(this, rest, kwargs)
        except Exception as exc:
            hook.failed(exc)
            state = None
        if state is None:
            if metered:
                _meter.add_hot(_meter_ns() - entered, hook.symbol)
            return func(*args, **kwargs)
        if metered:
            called = _meter_ns()
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            if metered:
                returned_at = _meter_ns()
            if after_errors:
                try:
                    after(state, this, rest, kwargs, None, error)
                except Exception as exc:
                    hook.failed(exc)
                else:
                    hook.failures = 0
            if metered:
                _meter.add_hot(called - entered + _meter_ns() - returned_at, hook.symbol)
            raise
        if metered:
            returned_at = _meter_ns()
        try:
            returned = after(state, this, rest, kwargs, result, None)
        except Exception as exc:
            hook.failed(exc)
            returned = result
        else:
            if hook.failures:
                hook.failures = 0
        if metered:
            _meter.add_hot(called - entered + _meter_ns() - returned_at, hook.symbol)
        return returned if wraps else result
    return wrapper


def async_around_handler(hook: Hook, func: Callable) -> Callable:
    """:func:`around_handler` for an :class:`AsyncAroundHandler`: the same steps around an
    awaited original (other tasks that run while it is awaited are not metered)."""
    before, after, after_errors = hook.handler.before, hook.handler.after, \
        hook.handler.after_errors
    bound = hook.binding in ("method", "classmethod")
    filtered = hook.caller_filter is not None

    async def wrapper(*args, **kwargs):
        if not hook.active or (filtered and _skip(hook)):
            return await func(*args, **kwargs)
        metered = _meter.on
        if metered:
            entered = _meter_ns()
        if bound and args:
            this, rest = args[0], args[1:]
        else:
            this, rest = None, args
        try:
            state = before(this, rest, kwargs)
        except Exception as exc:
            hook.failed(exc)
            state = None
        if state is None:
            if metered:
                _meter.add_hot(_meter_ns() - entered, hook.symbol)
            return await func(*args, **kwargs)
        if metered:
            called = _meter_ns()
        try:
            result = await func(*args, **kwargs)
        except BaseException as error:
            if metered:
                returned_at = _meter_ns()
            if after_errors:
                try:
                    after(state, this, rest, kwargs, None, error)
                except Exception as exc:
                    hook.failed(exc)
                else:
                    hook.failures = 0
            if metered:
                _meter.add_hot(called - entered + _meter_ns() - returned_at, hook.symbol)
            raise
        if metered:
            returned_at = _meter_ns()
        try:
            after(state, this, rest, kwargs, result, None)
        except Exception as exc:
            hook.failed(exc)
        else:
            if hook.failures:
                hook.failures = 0
        if metered:
            _meter.add_hot(called - entered + _meter_ns() - returned_at, hook.symbol)
        return result
    return wrapper
