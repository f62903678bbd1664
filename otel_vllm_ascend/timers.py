"""The default timer, one wrapper factory per kind of callable: one span per call.

Sync functions, coroutines, generators (call to exhaustion), async generators and functions
returning (async) context managers (call to ``__exit__``). The entry's ``attributes`` are
evaluated after the call; an exception is recorded, never changed. Part of the hook wrappers
(``otel_vllm_ascend.wrapping`` describes them all).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from otel_vllm_ascend import contract, native_thread, recorder
from otel_vllm_ascend.call_binding import ArgumentBinder
from otel_vllm_ascend.hook import Hook
from otel_vllm_ascend.hook import skip_call as _skip
from otel_vllm_ascend.selfmeter import meter as _meter

_logger = logging.getLogger("otel_vllm_ascend.wrapping")  # one logger name for all hook code
_time_ns = time.time_ns

# The self meter's clock: this thread's CPU time (see wrapping).
_meter_ns = time.thread_time_ns


def _timer_attributes(hook: Hook, args: tuple, kwargs: dict, result: Any) -> dict:
    attrs = {contract.DOMAIN: hook.domain}
    if hook.attributes:
        from otel_vllm_ascend.expr_values import MISSING

        binder = hook.binder
        if binder is None:
            binder = hook.binder = ArgumentBinder(hook.func, hook.attributes)
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


def sync_timer(hook: Hook, func: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        if not hook.active or (hook.caller_filter is not None and _skip(hook)):
            return func(*args, **kwargs)
        if _meter.on:
            return _metered_sync_timer(hook, func, args, kwargs)
        start = _time_ns()
        tid = native_thread.current.id
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
    tid = native_thread.current.id
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
        tid = native_thread.current.id
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
        tid = native_thread.current.id
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
        tid = native_thread.current.id
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
        tid = native_thread.current.id
        cm = func(*args, **kwargs)

        def on_exit(exc: Optional[BaseException]) -> None:
            _finish_timer(hook, start, tid, args, kwargs, None, exc)
        return DelegatingContext(cm, on_exit)
    return wrapper
