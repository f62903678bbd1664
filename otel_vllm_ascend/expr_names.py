"""The names an expression can read for one call: ``this``, ``args``, ``kwargs``, ``return``
and the called function's parameters, with the signature analysis cached per function.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Dict, Optional, Tuple

_EMPTY = inspect.Parameter.empty
_SIMPLE_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class _Plan:
    """How to bind one function's arguments to names, worked out once per function."""

    __slots__ = ("signature", "simple", "parameters", "positional")

    def __init__(self, signature: Optional[inspect.Signature]) -> None:
        self.signature = signature
        parameters = tuple(signature.parameters.values()) if signature is not None else ()
        # Plain positional-or-keyword / keyword-only parameters: bind by a loop instead of
        # Signature.bind_partial (about 10x cheaper on the hot path).
        self.simple = signature is not None and all(p.kind in _SIMPLE_KINDS for p in parameters)
        self.parameters = tuple((p.name, p.default, p.kind) for p in parameters)
        self.positional = sum(1 for p in parameters if p.kind is _SIMPLE_KINDS[0])


_plan_cache: Dict[Any, _Plan] = {}
_plan_lock = threading.Lock()
_PLAN_CACHE_LIMIT = 512


def _plan(function: Any) -> _Plan:
    try:
        return _plan_cache[function]
    except KeyError:
        pass
    except TypeError:  # unhashable callable
        return _Plan(_compute_signature(function))
    plan = _Plan(_compute_signature(function))
    with _plan_lock:
        if len(_plan_cache) >= _PLAN_CACHE_LIMIT:
            _plan_cache.clear()
        _plan_cache[function] = plan
    return plan


def _compute_signature(function: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


def bind_names(func: Any, this: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
               result: Any = None) -> Dict[str, Any]:
    """The names an expression can read for one call of ``func``.

    ``this`` is the instance (None for plain functions), ``args``/``kwargs`` the call's own
    arguments *without* the instance, ``result`` its return value. The exposed ``args`` starts
    with the instance for methods, like msserviceprofiler's, so ``args[1]`` is the first real
    argument. Parameters are bound by name (defaults applied); a parameter called ``args``,
    ``kwargs`` or ``self`` takes precedence over the built-in name of the same spelling.
    The signature analysis is cached per function. Never raises.
    """
    is_method = inspect.ismethod(func)
    function = func.__func__ if is_method else func
    if this is None and is_method:
        this = func.__self__
    full_args = (this,) + tuple(args) if this is not None else tuple(args)
    names: Dict[str, Any] = {
        "this": this,
        "self": this,
        "args": full_args,
        "kwargs": dict(kwargs),
        "return": result,
    }
    plan = _plan(function)
    if plan.signature is None or not plan.parameters:
        return names
    positional = full_args if this is not None else tuple(args)
    if plan.simple:
        if len(positional) > plan.positional:
            return names  # too many positional arguments: not a valid call
        bound: Dict[str, Any] = {}
        count = len(positional)
        for index, (name, default, _) in enumerate(plan.parameters):
            if index < count:
                if name in kwargs:
                    return names  # the same argument twice: not a valid call
                bound[name] = positional[index]
            elif name in kwargs:
                bound[name] = kwargs[name]
            elif default is not _EMPTY:
                bound[name] = default
        if any(key not in bound for key in kwargs):
            return names
        names.update(bound)
    else:
        try:
            arguments = plan.signature.bind_partial(*positional, **kwargs)
            arguments.apply_defaults()
        except TypeError:
            return names
        names.update(arguments.arguments)
    if this is not None:
        names[plan.parameters[0][0]] = this
    return names
