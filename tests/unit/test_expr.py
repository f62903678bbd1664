"""The expr language: compile-time rejection, run-time safety, bounded results, bound names."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_vllm_ascend.expr import MISSING, ExprError, compile_expr
from otel_vllm_ascend.expr_names import bind_names
from otel_vllm_ascend.expr_values import MAX_SEQUENCE, MAX_STRING, bound_value

# --- shapes of the objects vLLM 0.32 passes (unit-test fakes, attribute names as in vLLM) -----


class InputBatch:
    def __init__(self, req_ids):
        self._req_ids = list(req_ids)


class ModelRunner:
    """Shaped like GPUModelRunner: execute_model(scheduler_output, intermediate_tensors=None)."""

    def __init__(self):
        self.device = "cpu"
        self.input_batch = InputBatch(["a", "b", "c"])
        self.training = 0

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        return ("out", scheduler_output)


class SchedulerOutput:
    def __init__(self):
        self.total_num_scheduled_tokens = 42
        self.num_scheduled_tokens = {"r1": 40, "r2": 2}


class Tensor:
    shape = (2, 3)


def names_for_runner(result=("out", None)):
    runner = ModelRunner()
    so = SchedulerOutput()
    return runner, so, bind_names(runner.execute_model, runner, (so,), {}, result)


# --- the seed's expressions ------------------------------------------------------------------


def test_seed_expressions_evaluate():
    runner, so, names = names_for_runner(result=[SimpleReturn([1, 2, 3, 4])])
    cases = {
        "args[0] | attr input_batch | attr _req_ids | len": 3,
        "args[0] | attr device | str": "cpu",
        "len(return) | str": "1",
        "return[0] | attr input_ids | len": 4,
        "scheduler_output | attr total_num_scheduled_tokens": 42,
        "this.device": "cpu",
        "self.input_batch._req_ids": ("a", "b", "c"),
        "args[1] | attr num_scheduled_tokens | len": 2,
        "scheduler_output.num_scheduled_tokens['r1']": 40,
        "args[-1] | attr total_num_scheduled_tokens | str": "42",
        "args[0] | attr training | bool": False,
        "intermediate_tensors | str": MISSING,  # default None stops the chain
        "kwargs['batch_size']": MISSING,
        "float(scheduler_output.total_num_scheduled_tokens)": 42.0,
        "int(this.input_batch._req_ids | len | str)": 3,
    }
    for text, expected in cases.items():
        assert compile_expr(text).evaluate(names) == expected, text


class SimpleReturn:
    def __init__(self, ids):
        self.input_ids = ids


def test_parameter_names_and_kwargs():
    def add_request(request, request_wave=0, **kwargs):
        return None

    names = bind_names(add_request, None, ("req",), {"batch_size": 8, "trace": True})
    assert compile_expr("request").evaluate(names) == "req"
    assert compile_expr("request_wave").evaluate(names) == 0
    assert compile_expr("kwargs['batch_size']").evaluate(names) == 8
    assert compile_expr("data | attr items | len | str").evaluate(
        {"data": type("D", (), {"items": [1, 2]})()}) == "2"
    assert compile_expr("input_tensor | attr shape | str").evaluate(
        {"input_tensor": Tensor()}) == "(2, 3)"
    assert compile_expr("training | bool").evaluate({"training": 1}) is True
    assert compile_expr('kwargs["trace"]').evaluate(names) is True


def test_args_start_with_the_instance_for_methods():
    runner, so, names = names_for_runner()
    assert names["args"][0] is runner and names["args"][1] is so
    assert names["this"] is runner and names["self"] is runner
    assert names["scheduler_output"] is so
    assert names["intermediate_tensors"] is None
    assert names["return"] == ("out", None)


def test_unbound_function_with_instance_binds_self():
    runner = ModelRunner()
    so = SchedulerOutput()
    names = bind_names(ModelRunner.execute_model, runner, (so,), {"intermediate_tensors": 5})
    assert names["scheduler_output"] is so
    assert names["intermediate_tensors"] == 5
    assert names["args"] == (runner, so)


def test_parameters_named_args_kwargs_shadow_the_builtin_names():
    def odd(args, kwargs):
        return None

    names = bind_names(odd, None, (1, 2), {})
    assert names["args"] == 1 and names["kwargs"] == 2


def test_bind_names_never_raises_on_mismatched_call():
    def f(a):
        return a

    names = bind_names(f, None, (1, 2, 3), {"zzz": 1})
    assert names["args"] == (1, 2, 3)
    assert "a" not in names
    names = bind_names(len, None, ([1],), {})  # a builtin without a Python signature is fine
    assert names["args"] == ([1],)


def test_varargs_parameters_are_bound():
    def f(first, *rest, **options):
        return None

    names = bind_names(f, None, (1, 2, 3), {"x": 4})
    assert compile_expr("rest | len").evaluate(names) == 2
    assert compile_expr("options['x']").evaluate(names) == 4


# --- run time never raises ------------------------------------------------------------------


class Exploding:
    @property
    def boom(self):
        raise RuntimeError("property failed")

    def __len__(self):
        raise ValueError("no length")

    def __str__(self):
        raise TypeError("no str")

    def __getitem__(self, key):
        raise KeyError(key)


@pytest.mark.parametrize("text", [
    "x.boom", "x | len", "x | str", "str(x)", "x[0]", "x['k']", "missing_name", "x.nope",
    "y[10]", "y[-10]", "y | int", "z | float", "return", "y['a']",
])
def test_run_time_failures_give_missing(text):
    names = {"x": Exploding(), "y": [1, 2], "z": "abc", "return": None}
    assert compile_expr(text).evaluate(names) is MISSING


def test_base_exceptions_are_not_swallowed():
    class Interrupting:
        @property
        def stop(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compile_expr("x.stop").evaluate({"x": Interrupting()})


# --- bounded results ------------------------------------------------------------------------


def test_results_are_bounded_and_otel_typed():
    assert len(compile_expr("s").evaluate({"s": "x" * 5000})) == MAX_STRING
    assert compile_expr("n").evaluate({"n": 2**70}) == str(2**70)
    assert compile_expr("n").evaluate({"n": -(2**63)}) == -(2**63)
    assert compile_expr("l").evaluate({"l": [1, 2, 3]}) == (1, 2, 3)
    assert compile_expr("l").evaluate({"l": ["a", "b"]}) == ("a", "b")
    assert compile_expr("l").evaluate({"l": [1, "a"]}) == "[1, 'a']"
    assert compile_expr("l").evaluate({"l": [True, 1]}) == "[True, 1]"
    assert compile_expr("l").evaluate({"l": []}) == ()
    assert len(compile_expr("l").evaluate({"l": list(range(5000))})) == MAX_SEQUENCE
    assert compile_expr("d").evaluate({"d": {"a": 1}}) == "{'a': 1}"
    assert compile_expr("o").evaluate({"o": Tensor()}).startswith("<")
    assert bound_value(None) is MISSING
    assert compile_expr("l").evaluate({"l": [2**70, 1]}) == (str(2**70), "1")


# --- at least 20 rejected expressions, each with its message --------------------------------

REJECTED = [
    ("__import__('os')", 1, "name '__import__' is not allowed"),
    ("x.__class__", 3, "name '__class__' is not allowed"),
    ("x | attr __dict__", 10, "name '__dict__' is not allowed"),
    ("eval(x)", 1, "call of 'eval' is not allowed"),
    ("open(x)", 1, "call of 'open' is not allowed"),
    ("attr(x, 'y')", 1, "call of 'attr' is not allowed"),
    ("x.method()", 9, "only len(), str(), int(), float() and bool() can be called"),
    ("a + b", 3, "operator '+' is not allowed"),
    ("a * 2", 3, "operator '*' is not allowed"),
    ("a - b", 3, "unexpected '-'"),
    ("-a", 1, "operator '-' is not allowed"),
    ("a == b", 3, "operator '=' is not allowed"),
    ("a < b", 3, "operator '<' is not allowed"),
    ("x | upper", 5, "unknown pipe operation 'upper'"),
    ("x | bool | round", 12, "unknown pipe operation 'round'"),
    ("x | attr", 9, "'attr' needs an attribute name"),
    ("x |", 4, "expected a pipe operation"),
    ("x[", 3, "an index must be a whole number or a quoted string"),
    ("x[1", 4, "expected ']' to close the index"),
    ("x[a]", 3, "an index must be a whole number or a quoted string, found name 'a'"),
    ("x[1.5]", 3, "only whole numbers are allowed"),
    ("len(x", 6, "expected ')' to close len("),
    ("len()", 5, "len() needs one argument"),
    ("len(a, b)", 6, "len() takes exactly one argument"),
    ("'text'", 1, "a literal can only be used as an index"),
    ("42", 1, "a literal can only be used as an index"),
    ("", 1, "empty expression"),
    ("   ", 4, "empty expression"),
    ("a b", 3, "unexpected name 'b'"),
    ("x['unclosed]", 3, "string is not closed"),
    ("x['a\\n']", 3, "escape sequences are not supported"),
    ("lambda: 1", 7, "unexpected character ':'"),
    ("x;y", 2, "unexpected character ';'"),
    ("x.", 3, "expected an attribute name after '.'"),
    ("a\nb", 2, "expression must be on one line"),
    ("(" * 40 + "x" + ")" * 40, 17, "nested more than 16 levels deep"),
    ("x" * 1001, 1001, "expression longer than 1000 characters"),
    ("x[-'a']", 4, "expected a number after '-'"),
]


@pytest.mark.parametrize("text, column, reason", REJECTED)
def test_rejected_with_column_and_reason(text, column, reason):
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert reason in str(info.value)
    assert info.value.column == column
    assert str(info.value).startswith(f"column {column}: ")


def test_non_string_expression_is_rejected():
    with pytest.raises(ExprError, match="expression must be a string, not int"):
        compile_expr(5)


def test_compiled_expression_reports_what_it_reads():
    compiled = compile_expr("len(return) | str")
    assert compiled.uses_return and compiled.names == frozenset({"return"})
    assert not compile_expr("args[0].device").uses_return


# --- property-based ---------------------------------------------------------------------------

ALPHABET = string.ascii_letters + string.digits + " _.|[]()'\"-+*/%<>=!,:;\\@~^&#\n\t"


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=60) | st.text(max_size=40))
def test_compiler_only_ever_raises_expr_error(text):
    try:
        compiled = compile_expr(text)
    except ExprError as exc:
        assert exc.column >= 1
        return
    # Whatever compiled must also evaluate without raising on hostile inputs.
    compiled.evaluate({"x": Exploding(), "args": (Exploding(),), "return": Exploding()})


class Trap:
    """Records every attribute, item and conversion an expression touches."""

    touched: list = []

    def __getattr__(self, name):
        Trap.touched.append(("attr", name))
        return Trap()

    def __getitem__(self, key):
        Trap.touched.append(("item", key))
        return Trap()

    def __len__(self):
        Trap.touched.append(("len",))
        return 1

    def __call__(self, *args, **kwargs):
        Trap.touched.append(("call",))
        raise AssertionError("an expression called an object")


FORBIDDEN = st.sampled_from([
    "x.__class__", "x | attr __globals__", "__builtins__", "getattr(x, 'a')", "x.a()",
    "x + 1", "x[0] * 2", "x | system", "exec('1')", "x.__init__.__globals__", "x[1:2]",
    "[x]", "{x}", "x if x else x", "not x", "x and x", "x[len]",
])


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from(["", "len(", "str("]), forbidden=FORBIDDEN,
       suffix=st.sampled_from(["", " | len", " | attr a"]))
def test_rejected_constructs_are_never_evaluated(prefix, forbidden, suffix):
    text = prefix + forbidden + (")" if prefix else "") + suffix
    Trap.touched = []
    with pytest.raises(ExprError):
        compile_expr(text).evaluate({"x": Trap()})
    assert Trap.touched == []


NAME = st.sampled_from(["x", "args", "kwargs", "this", "return", "input_ids"])
TRAILER = st.one_of(
    st.integers(-3, 3).map(lambda i: f"[{i}]"),
    st.sampled_from(["['k']", ".a", ".b"]),
)
PIPE = st.sampled_from([" | len", " | str", " | int", " | float", " | bool", " | attr a"])


@settings(max_examples=300, deadline=None)
@given(NAME, st.lists(TRAILER, max_size=4), st.lists(PIPE, max_size=3))
def test_valid_grammar_compiles_and_never_calls_objects(name, trailers, pipes):
    text = name + "".join(trailers) + "".join(pipes)
    compiled = compile_expr(text)
    Trap.touched = []
    value = compiled.evaluate({name: Trap()})
    assert ("call",) not in Trap.touched
    assert all(not str(entry[-1]).startswith("__") for entry in Trap.touched if len(entry) > 1)
    assert value is MISSING or isinstance(value, (str, bool, int, float, tuple))


# --- the fast binding path agrees with inspect's binding --------------------------------------


def f_plain(a, b=2, c=None):
    return None


def f_kwonly(a, *, flag=False, size):
    return None


def f_varargs(a, *rest, key=1, **extra):
    return None


class Holder:
    def method(self, x, y=5):
        return None


def reference_names(func, this, args, kwargs):
    import inspect

    full = (this,) + args if this is not None else args
    try:
        bound = inspect.signature(func).bind_partial(*full, **kwargs)
    except TypeError:
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


VALUES = st.one_of(st.integers(-3, 3), st.none(), st.text(max_size=3))


@settings(max_examples=300, deadline=None)
@given(func=st.sampled_from([f_plain, f_kwonly, f_varargs, Holder.method]),
       args=st.lists(VALUES, max_size=4).map(tuple),
       kwargs=st.dictionaries(st.sampled_from(["a", "b", "c", "flag", "size", "key", "x", "y",
                                               "zz"]), VALUES, max_size=3))
def test_bind_names_matches_signature_binding(func, args, kwargs):
    this = Holder() if func is Holder.method else None
    names = bind_names(func, this, args, kwargs, "result")
    expected = reference_names(func, this, args, kwargs)
    for name, value in expected.items():
        assert names[name] == value or (name == "self" and names[name] is this), name
    parameter_names = {"a", "b", "c", "flag", "size", "rest", "key", "extra", "x", "y"}
    if not expected:  # an invalid call binds no parameters at all
        assert not (set(names) & parameter_names)
    assert names["return"] == "result"
    assert names["args"] == ((this,) + args if this is not None else args)
