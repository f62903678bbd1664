"""The ``expr`` language's syntax: tokenizer and parser, from text to a chain of steps.

Everything that can be wrong with an expression is found here, when the symbol file loads,
and raised as :class:`ExprError` with the column and the reason (grammar: ``expr``'s docstring).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from otel_vllm_ascend.expr_steps import (
    Step,
    _attribute_step,
    _call_step,
    _index_step,
    _name_step,
)

MAX_EXPR_LENGTH = 1000
MAX_NESTING = 16

CONVERSIONS: Dict[str, Callable[[Any], Any]] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
}
PIPE_OPERATIONS = tuple(CONVERSIONS) + ("attr",)

_OPERATOR_CHARS = set("+*/%&^~<>=@!")


class ExprError(ValueError):
    """An expression that cannot be compiled; ``column`` is 1-based."""

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.text = text
        self.column = column
        self.reason = reason
        super().__init__(f"column {column}: {reason} (in expression {text!r})")


# ---------------------------------------------------------------------------------------------
# Tokenizer


_NAME, _INT, _STR, _OP, _END = "name", "integer", "string", "op", "end"


class _Token:
    __slots__ = ("kind", "value", "column")

    def __init__(self, kind: str, value: Any, column: int) -> None:
        self.kind = kind
        self.value = value
        self.column = column

    def describe(self) -> str:
        if self.kind == _END:
            return "end of expression"
        if self.kind == _STR:
            return f"string {self.value!r}"
        return f"{self.kind} {self.value!r}" if self.kind != _OP else repr(self.value)


def _tokenize(text: str) -> List[_Token]:
    tokens: List[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        col = i + 1
        if ch in " \t":
            i += 1
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            j = i + 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(_Token(_NAME, text[i:j], col))
            i = j
        elif ch.isascii() and ch.isdigit():
            j = i + 1
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            if j < n and (text[j] == "." or (text[j].isascii() and text[j].isalpha())):
                raise ExprError(text, col, "only whole numbers are allowed, as an index")
            if j - i > 18:
                raise ExprError(text, col, "index too long")
            tokens.append(_Token(_INT, int(text[i:j]), col))
            i = j
        elif ch in "'\"":
            end = text.find(ch, i + 1)
            if end < 0:
                raise ExprError(text, col, "string is not closed")
            body = text[i + 1:end]
            if "\\" in body:
                raise ExprError(text, col, "escape sequences are not supported in strings")
            tokens.append(_Token(_STR, body, col))
            i = end + 1
        elif ch in "()[].|,-":
            tokens.append(_Token(_OP, ch, col))
            i += 1
        elif ch in _OPERATOR_CHARS:
            raise ExprError(text, col, f"operator {ch!r} is not allowed (no arithmetic or "
                                       "comparison in expressions)")
        else:
            raise ExprError(text, col, f"unexpected character {ch!r}")
    tokens.append(_Token(_END, None, n + 1))
    return tokens


# ---------------------------------------------------------------------------------------------
# Parser: produces the closures of expr_steps.


def _check_name(text: str, token: _Token) -> str:
    name = token.value
    if name.startswith("__") or name.endswith("__"):
        raise ExprError(text, token.column, f"name {name!r} is not allowed (dunder names are "
                                            "blocked)")
    return name


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0
        self.root_names: set = set()

    # -- helpers
    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def fail(self, token: _Token, reason: str) -> ExprError:
        return ExprError(self.text, token.column, reason)

    def expect_op(self, op: str, context: str) -> _Token:
        token = self.take()
        if token.kind != _OP or token.value != op:
            raise self.fail(token, f"expected {op!r} {context}, found {token.describe()}")
        return token

    # -- grammar
    def parse(self) -> Step:
        if self.peek().kind == _END:
            raise self.fail(self.peek(), "empty expression")
        step = self.expr()
        token = self.peek()
        if token.kind != _END:
            if token.kind == _OP and token.value == ",":
                raise self.fail(token, "calls take exactly one argument")
            raise self.fail(token, f"unexpected {token.describe()}")
        return step

    def expr(self) -> Step:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(self.peek(), f"nested more than {MAX_NESTING} levels deep")
        step = self.chain()
        while self.peek().kind == _OP and self.peek().value == "|":
            self.take()
            step = self.pipe(step)
        self.depth -= 1
        return step

    def pipe(self, inner: Step) -> Step:
        token = self.take()
        if token.kind != _NAME:
            raise self.fail(token, f"expected a pipe operation ({', '.join(CONVERSIONS)} or "
                                   f"attr NAME) after '|', found {token.describe()}")
        op = token.value
        if op == "attr":
            name_token = self.take()
            if name_token.kind != _NAME:
                raise self.fail(name_token, "'attr' needs an attribute name, found "
                                            f"{name_token.describe()}")
            return _attribute_step(inner, _check_name(self.text, name_token))
        if op in CONVERSIONS:
            return _call_step(CONVERSIONS[op], inner)
        raise self.fail(token, f"unknown pipe operation {op!r} (allowed: "
                               f"{', '.join(CONVERSIONS)}, attr NAME)")

    def chain(self) -> Step:
        step = self.atom()
        while True:
            token = self.peek()
            if token.kind != _OP:
                return step
            if token.value == "[":
                self.take()
                key = self.index()
                self.expect_op("]", "to close the index")
                step = _index_step(step, key)
            elif token.value == ".":
                self.take()
                name_token = self.take()
                if name_token.kind != _NAME:
                    raise self.fail(name_token, "expected an attribute name after '.', found "
                                                f"{name_token.describe()}")
                step = _attribute_step(step, _check_name(self.text, name_token))
            elif token.value == "(":
                raise self.fail(token, "only len(), str(), int(), float() and bool() can be "
                                       "called")
            else:
                return step

    def index(self) -> Any:
        token = self.take()
        if token.kind == _OP and token.value == "-":
            number = self.take()
            if number.kind != _INT:
                raise self.fail(number, f"expected a number after '-', found "
                                        f"{number.describe()}")
            return -number.value
        if token.kind in (_INT, _STR):
            return token.value
        raise self.fail(token, "an index must be a whole number or a quoted string, found "
                               f"{token.describe()}")

    def atom(self) -> Step:
        token = self.take()
        if token.kind == _NAME:
            name = _check_name(self.text, token)
            following = self.peek()
            if following.kind == _OP and following.value == "(":
                if name not in CONVERSIONS:
                    raise self.fail(token, f"call of {name!r} is not allowed (only "
                                           f"{', '.join(CONVERSIONS)})")
                self.take()
                if self.peek().kind == _OP and self.peek().value == ")":
                    raise self.fail(self.peek(), f"{name}() needs one argument")
                argument = self.expr()
                closing = self.peek()
                if closing.kind == _OP and closing.value == ",":
                    raise self.fail(closing, f"{name}() takes exactly one argument")
                self.expect_op(")", f"to close {name}(")
                return _call_step(CONVERSIONS[name], argument)
            self.root_names.add(name)
            return _name_step(name)
        if token.kind == _OP and token.value == "(":
            step = self.expr()
            self.expect_op(")", "to close '('")
            return step
        if token.kind in (_INT, _STR):
            raise self.fail(token, "a literal can only be used as an index, e.g. args[0]")
        if token.kind == _OP and token.value == "-":
            raise self.fail(token, "operator '-' is not allowed (no arithmetic in expressions)")
        raise self.fail(token, f"expected a name, found {token.describe()}")
