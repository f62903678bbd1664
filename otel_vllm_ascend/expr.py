"""The ``expr`` language of symbol-YAML attributes: safe, compiled once, bounded results.

An attribute entry ``{name: batch, expr: "args[0] | attr input_batch | attr _req_ids | len"}``
reads a value from a hooked call and puts it on the span. Expressions are parsed by our own
tokenizer and parser when the YAML loads (nothing is ever passed to ``eval``/``exec``) into a
chain of small Python closures.

Grammar (whitespace is free between tokens)::

    expr    := chain ( "|" pipe )*
    chain   := atom ( "[" index "]" | "." NAME )*
    atom    := NAME | "return" | CALL "(" expr ")" | "(" expr ")"
    index   := ["-"] INTEGER | 'text' | "text"
    pipe    := "len" | "str" | "int" | "float" | "bool" | "attr" NAME
    CALL    := "len" | "str" | "int" | "float" | "bool"

Names available (see ``expr_names.bind_names``): ``this`` and ``self`` (the instance), ``args`` (the
positional arguments; for methods ``args[0]`` is the instance, as in msserviceprofiler),
``kwargs``, every parameter of the hooked function by name (defaults applied) and ``return``
(the result). Examples: ``len(input_ids)``, ``return[0] | attr input_ids | len``,
``len(return) | str``, ``kwargs['batch_size']``, ``args[-1]``, ``training | bool``,
``this.device | str``.

Rejected at load time with :class:`ExprError` (the message gives the column and the reason):
names beginning or ending with ``__``, calls other than the five above, arithmetic, comparison
and any other operator, literals outside ``[...]``, unknown pipe operations, syntax errors.

At run time :meth:`CompiledExpr.evaluate` never raises: a missing name or attribute, a bad
index, a ``None`` anywhere in the chain or a failing conversion yields :data:`MISSING` and the
attribute is simply omitted. Results are made OpenTelemetry-compatible: ``str``/``bool``/``int``
/``float`` pass through (strings cut to 1024 characters, integers outside 64 bits become text),
lists and tuples of one such type become tuples (at most 1024 items), anything else becomes its
``str()``.
"""

from __future__ import annotations

from typing import Any, Mapping

# The language in parts: syntax (expr_parser), evaluation steps (expr_steps), bounded values
# (expr_values), the names of a call (expr_names). This module is the compiled form.
from otel_vllm_ascend.expr_parser import MAX_EXPR_LENGTH, ExprError, _Parser
from otel_vllm_ascend.expr_steps import Step
from otel_vllm_ascend.expr_values import MISSING, bound_value

# What callers of compile_expr / evaluate need to name, importable from here.
__all__ = ["MISSING", "CompiledExpr", "ExprError", "compile_expr"]


class CompiledExpr:
    """A compiled expression; :meth:`evaluate` is safe to call on vLLM's hot path."""

    __slots__ = ("text", "names", "_step")

    def __init__(self, text: str, names: frozenset, step: Step) -> None:
        self.text = text
        self.names = names  # root names the expression reads ("return", "this", parameters...)
        self._step = step

    @property
    def uses_return(self) -> bool:
        """True if the expression needs the call's result."""
        return "return" in self.names

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        """The bounded value, or :data:`MISSING` if anything on the way fails. Never raises."""
        try:
            return bound_value(self._step(names))
        except Exception:
            return MISSING

    def __repr__(self) -> str:
        return f"CompiledExpr({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompiledExpr) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def compile_expr(text: str) -> CompiledExpr:
    """Compile ``text``; raises :class:`ExprError` (and nothing else) if it is not valid."""
    if not isinstance(text, str):
        raise ExprError(repr(text), 1, f"expression must be a string, not {type(text).__name__}")
    if len(text) > MAX_EXPR_LENGTH:
        raise ExprError(text[:40] + "...", MAX_EXPR_LENGTH + 1,
                        f"expression longer than {MAX_EXPR_LENGTH} characters")
    if "\n" in text or "\r" in text:
        raise ExprError(text, min(i for i in (text.find("\n"), text.find("\r")) if i >= 0) + 1,
                        "expression must be on one line")
    parser = _Parser(text)
    step = parser.parse()
    return CompiledExpr(text, frozenset(parser.root_names), step)
