"""Names for the attribute expressions of a symbol-file entry, bound from one call's arguments.

Part of the hook wrappers (``otel_vllm_ascend.wrapping``): the timer evaluates an entry's
``attributes`` after the call with these names (``this``, ``args``, ``kwargs``, ``return`` and
the target's parameters).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

_BASIC_NAMES = frozenset(("this", "self", "args", "kwargs", "return"))


class ArgumentBinder:
    """Names for attribute expressions, cheaper than ``inspect.Signature.bind`` per call.

    Plain signatures (no ``*args``/``**kwargs``, no positional-only) are bound by position here;
    anything else goes through ``expr_names.bind_names``. Parameters are bound only when an
    expression reads one.
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
            from otel_vllm_ascend.expr_names import bind_names

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
