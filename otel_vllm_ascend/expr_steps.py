"""The evaluator of compiled expressions: one small closure per step, ``step(names) -> value``.

A step that reaches ``None`` raises :class:`_Stop`, which ends the chain without a value;
``CompiledExpr.evaluate`` turns that (and any other failure) into ``MISSING``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

Step = Callable[[Mapping[str, Any]], Any]


class _Stop(Exception):
    """Raised inside a chain to end it without a value (a ``None`` was reached)."""


def _name_step(name: str) -> Step:
    def step(names: Mapping[str, Any]) -> Any:
        value = names[name]
        if value is None:
            raise _Stop
        return value
    return step


def _index_step(inner: Step, key: Any) -> Step:
    def step(names: Mapping[str, Any]) -> Any:
        value = inner(names)[key]
        if value is None:
            raise _Stop
        return value
    return step


def _attribute_step(inner: Step, attribute: str) -> Step:
    def step(names: Mapping[str, Any]) -> Any:
        value = getattr(inner(names), attribute)
        if value is None:
            raise _Stop
        return value
    return step


def _call_step(function: Callable[[Any], Any], inner: Step) -> Step:
    def step(names: Mapping[str, Any]) -> Any:
        return function(inner(names))
    return step
