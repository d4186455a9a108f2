"""The code node's CEL expressions: results as plain JSON, errors as ExpressionError."""

from __future__ import annotations

from typing import Any

import pytest

from domain.expressions import (
    MAX_CONCAT_LENGTH,
    MAX_EVALUATION_BYTES,
    MAX_EVALUATION_STEPS,
    MAX_RESULT_BYTES,
    MAX_SOURCE_CHARS,
    CompiledExpression,
    ExpressionError,
    ExpressionTimeout,
    compile_expression,
)

ITEM: dict[str, Any] = {
    "price": 2.5,
    "qty": 3,
    "name": "Hello World",
    "tags": ["a", "b"],
    "customer": {"tier": "gold", "since": 2019},
    "nothing": None,
    "active": True,
}


def evaluate(source: str, item: dict[str, Any] | None = None) -> Any:
    return compile_expression(source).evaluate(ITEM if item is None else item)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("item.price * 2.0", 5.0),
        ("item.qty * 2", 6),
        ("item.qty / 2", 1),  # integer division
        ("item.qty % 2", 1),
        ("double(item.qty) * item.price", 7.5),
        ("item.customer.tier", "gold"),
        ("item['name']", "Hello World"),
        ("item.nothing", None),
        ("item.active && item.qty > 2", True),
        ("item.qty > 5 ? 'many' : 'few'", "few"),
        ("has(item.missing)", False),
        ("has(item.customer.tier)", True),
        ("'b' in item.tags", True),
        ("item.tags + ['c']", ["a", "b", "c"]),
        ("item.tags.map(t, t + '!')", ["a!", "b!"]),
        ("item.tags.filter(t, t != 'a')", ["b"]),
        ("item.tags.all(t, size(t) == 1)", True),
        ("item.tags.exists_one(t, t == 'b')", True),
        ("{'total': item.qty * 10, 'tier': item.customer.tier}", {"total": 30, "tier": "gold"}),
        ("item", ITEM),
        ("string(item.qty) + ' items'", "3 items"),
        ("int('42') + 1", 43),
        ("timestamp('2024-01-31T12:00:00Z')", "2024-01-31T12:00:00Z"),
        ("duration('90s')", "90s"),
        ("null", None),
        ("1.5", 1.5),
    ],
)
def test_results_are_plain_json(source: str, expected: Any) -> None:
    result = evaluate(source)
    assert result == expected
    assert type(result) is type(expected)


def test_result_types_are_python_builtins_at_every_depth() -> None:
    result = evaluate("{'a': [1, 2.0, 'x', true, null, {'b': [item.qty]}]}")
    assert result == {"a": [1, 2.0, "x", True, None, {"b": [3]}]}
    inner = result["a"]
    assert [type(value) for value in inner] == [int, float, str, bool, type(None), dict]
    assert type(next(iter(result))) is str


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("size(item.name)", 11),
        ("item.name.size()", 11),
        ("size(item.tags)", 2),
        ("size(item.customer)", 2),
        ("item.name.contains('lo Wo')", True),
        ("item.name.contains('xyz')", False),
        ("item.name.startsWith('Hell')", True),
        ("item.name.endsWith('World')", True),
        ("item.name.endsWith('world')", False),
        ("item.name.matches('^H.*d$')", True),
        ("item.name.matches('[0-9]')", False),
        ("item.name.lowerAscii()", "hello world"),
        ("item.name.upperAscii()", "HELLO WORLD"),
        ("'ÄBC déF'.lowerAscii()", "Äbc déf"),  # only ASCII letters change
        ("'äbc DÉf'.upperAscii()", "äBC DÉF"),
    ],
)
def test_string_and_size_functions(source: str, expected: Any) -> None:
    assert evaluate(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("item.missing", "no such member in mapping: 'missing'"),
        ("item.customer.missing.deeper", "no such member in mapping: 'missing'"),
        ("item.qty / 0", "modulus or divide by zero (integer division or modulo by zero)"),
        ("item.qty + 'x'", "found no matching overload for '+' applied to '(int, string)'"),
        ("item.qty == 3.0", "found no matching overload for '==' applied to '(int, double)'"),
        ("nope", "undeclared reference to 'nope'"),
        ("item.name.nosuch()", "undeclared reference to 'nosuch'"),
        ("item.tags[5]", "invalid_argument (list index out of range)"),
        ("9223372036854775807 + 1", "return error for overflow"),
        ("{'a': 1 / 0}", "modulus or divide by zero (integer division or modulo by zero)"),
        ("{1: 'x'}", "non-string map key int"),
        ("b'abc'", "expression result is bytes, not JSON"),
        ("type(item)", "expression result of type type is not JSON"),
        ("1.0 / 0.0", "expression result inf is not a JSON number"),
        ("(5).lowerAscii()", "lowerAscii() applies to a string"),
    ],
)
def test_evaluation_errors_raise_expression_error(source: str, message: str) -> None:
    with pytest.raises(ExpressionError) as err:
        evaluate(source)
    assert message in str(err.value)
    assert "activation" not in str(err.value)  # no celpy internals in messages


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("item.tags.map(1, 2)", "unsupported expression at line 1, column 1"),
        ("item.tags.map(t)", "expression could not be evaluated"),
    ],
)
def test_malformed_macros_raise_expression_error(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(source)


def test_errors_are_ignored_only_where_cel_says_so() -> None:
    # CEL's commutative logic: an error on one side does not matter if the other decides.
    assert evaluate("item.missing || true") is True
    assert evaluate("false && item.missing") is False


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("item.price *", "syntax error at line 1, column 12"),
        ("item.", "syntax error at line 1"),
        ("(1 + 2", "syntax error"),
        ("   ", "expression is empty"),
        ("item.qty +\n  * 2", "syntax error at line 2, column 3"),
    ],
)
def test_syntax_errors_raise_expression_error(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match="^" + message):
        compile_expression(source)


def test_source_length_is_bounded() -> None:
    source = "1" + " " * MAX_SOURCE_CHARS
    with pytest.raises(ExpressionError, match="at most 10000 allowed"):
        compile_expression(source)


def test_compilation_is_cached_by_source() -> None:
    first = compile_expression("item.qty + 1")
    assert compile_expression("item.qty + 1") is first
    assert isinstance(first, CompiledExpression)
    assert first.evaluate({"qty": 1}) == 2 and first.evaluate({"qty": 41}) == 42


def test_evaluation_is_bounded_in_steps() -> None:
    expression = compile_expression("item.l.map(a, item.l.map(b, item.l.map(c, a + b + c)))")
    with pytest.raises(ExpressionError, match=f"exceeded {MAX_EVALUATION_STEPS} steps"):
        expression.evaluate({"l": list(range(100))})


def test_short_circuit_does_not_swallow_an_exhausted_budget() -> None:
    expression = compile_expression("item.l.map(a, item.l.map(b, a)) == [] || true")
    with pytest.raises(ExpressionError, match="steps"):
        expression.evaluate({"l": list(range(300))})


def test_concatenation_is_bounded() -> None:
    doubling = "['ab'].map(s, s + s)" + ".map(s, s + s)" * 20
    with pytest.raises(ExpressionError, match=f"at most {MAX_CONCAT_LENGTH} allowed"):
        evaluate(doubling)


def test_result_size_is_bounded() -> None:
    # Each element shares one big string, so building it is cheap; its JSON is not.
    big = "x" * 100_000
    expression = compile_expression("item.l.map(i, item.big)")
    with pytest.raises(ExpressionError, match=f"larger than {MAX_RESULT_BYTES} bytes"):
        expression.evaluate({"l": list(range(20)), "big": big})


def test_a_long_but_shallow_expression_works() -> None:
    terms = " + ".join(f"item.v{i}" for i in range(30))
    assert evaluate(terms, {f"v{i}": i for i in range(30)}) == sum(range(30))


def test_too_deep_nesting_is_an_expression_error() -> None:
    source = "(" * 400 + "1" + ")" * 400
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression(source).evaluate({})


def test_items_beyond_64_bit_integers_are_refused() -> None:
    with pytest.raises(ExpressionError, match="item cannot be passed"):
        evaluate("item.n", {"n": 2**70})


def test_evaluation_does_not_mutate_the_item() -> None:
    item = {"tags": ["a"], "o": {"k": 1}}
    evaluate("item.tags + ['b']", item)
    assert item == {"tags": ["a"], "o": {"k": 1}}


def test_out_of_time_is_polled_during_the_evaluation() -> None:
    polls = 0

    def out_of_time() -> bool:
        nonlocal polls
        polls += 1
        return polls > 100

    expression = compile_expression("item.l.map(x, x * 2)")
    with pytest.raises(ExpressionTimeout):
        expression.evaluate({"l": list(range(1000))}, out_of_time=out_of_time)
    assert polls == 101  # it stopped at the first poll that said so


def test_out_of_time_is_polled_while_binding_a_big_item() -> None:
    with pytest.raises(ExpressionTimeout, match="binding"):
        compile_expression("1").evaluate({"l": list(range(10_000))}, out_of_time=lambda: True)


def test_values_a_step_yields_are_charged_so_a_scan_per_element_stops() -> None:
    # Each `x in item.l` touches the whole list: far under the step budget,
    # but 40,000 x 40,000 comparisons; the bytes handled stop it at once.
    expression = compile_expression("item.l.map(x, x in item.l)")
    with pytest.raises(ExpressionError, match=f"more than {MAX_EVALUATION_BYTES} bytes"):
        expression.evaluate({"l": list(range(40_000))})


def test_a_value_passed_up_unchanged_is_charged_once() -> None:
    # A 1 MiB string passes through a dozen grammar rules on its way up.
    big = "x" * (1024 * 1024)
    assert compile_expression("size(item.s)").evaluate({"s": big}) == len(big)
