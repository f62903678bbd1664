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

Names available (see :func:`bind_names`): ``this`` and ``self`` (the instance), ``args`` (the
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

import inspect
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

MAX_STRING = 1024
MAX_SEQUENCE = 1024
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

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_OPERATOR_CHARS = set("+*/%&^~<>=@!")


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


class ExprError(ValueError):
    """An expression that cannot be compiled; ``column`` is 1-based."""

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.text = text
        self.column = column
        self.reason = reason
        super().__init__(f"column {column}: {reason} (in expression {text!r})")


class _Stop(Exception):
    """Raised inside a chain to end it without a value (a ``None`` was reached)."""


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
# Parser: produces closures ``step(names) -> value``.

Step = Callable[[Mapping[str, Any]], Any]


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


# ---------------------------------------------------------------------------------------------
# Public API


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


# ---------------------------------------------------------------------------------------------
# Names of a call

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
