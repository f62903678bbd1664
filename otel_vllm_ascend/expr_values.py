"""Expression results as OpenTelemetry attribute values: bounded, or :data:`MISSING`."""

from __future__ import annotations

from typing import Any, Optional

MAX_STRING = 1024
MAX_SEQUENCE = 1024
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class _Missing:
    """The result of an expression that could not be evaluated."""

    _instance: Optional[_Missing] = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def bound_value(value: Any) -> Any:
    """Make ``value`` an OpenTelemetry attribute value (see the module docstring)."""
    if value is None or value is MISSING:
        return MISSING
    kind = type(value)
    if kind is bool or kind is float:
        return value
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else _cut(str(value))
    if kind is str:
        return _cut(value)
    if kind is list or kind is tuple:
        return _bound_sequence(value)
    if isinstance(value, str):
        return _cut(str.__str__(value))
    return _cut(str(value))


def _bound_sequence(items: Any) -> Any:
    items = items[:MAX_SEQUENCE]
    if not items:
        return ()
    first = type(items[0])
    if first not in (str, bool, int, float) or any(type(item) is not first for item in items):
        return _cut(str(items))
    if first is str:
        return tuple(_cut(item) for item in items)
    if first is int and any(not _INT64_MIN <= item <= _INT64_MAX for item in items):
        return tuple(str(item) for item in items)
    return tuple(items)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[:MAX_STRING]
