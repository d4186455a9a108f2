"""The value contract (domain/values.py): what it refuses, where, and that what it admits
survives every encoder of our stack."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from commands.projects import CreateProject, UpdateProject
from domain.values import (
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    ValueContractError,
    check_value,
    ensure_value,
    format_path,
)
from infrastructure.tenancy_schemas import (
    CreateKey,
    CreateOrganisation,
    RenameOrganisation,
    SuspendOrganisation,
)

# Anything JSON text can carry, edge values included.
edge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**400])
edge_floats = st.sampled_from([1e20, 1e308, -1e308, 1e-320, -0.0, 9.2e18, 9.3e18, 0.1])
strings = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | edge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | edge_floats
    | strings
)
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(strings, children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize(
    ("value", "loc", "fragment"),
    [
        ({"a": 2**64}, "a", "signed 64-bit"),
        ([1, -(2**63) - 1], "[1]", "signed 64-bit"),
        ({"p": [0, 1e20]}, "p[1]", "2**63"),
        ({"x": 1e308}, "x", "2**63"),
        ({"n": math.nan}, "n", "finite"),
        ({"n": -math.inf}, "n", "finite"),
        ({"s": "a\x00b"}, "s", "NUL"),
        ({"s": "\ud800"}, "s", "surrogate"),
        ({"bad\x00key": 1}, '["bad\\u0000key"]', "key contains a NUL"),
        (
            {"nodes": [{"parameters": {"odd key": 10**400}}]},
            'nodes[0].parameters["odd key"]',
            "401 digits",
        ),
        ({"t": (1, 2)}, "t", "not a JSON value"),
    ],
)
def test_refuses_what_a_follower_cannot_carry(value: Any, loc: str, fragment: str) -> None:
    problems = check_value(value)
    assert [problem.loc for problem in problems] == [loc]
    assert fragment in problems[0].msg


@pytest.mark.parametrize(
    "value",
    [
        INT64_MAX,
        INT64_MIN,
        9.2e18,
        -0.0,
        1e-320,
        0.1,
        "ünïcödé ✓ 𝄞",
        {"nested": [{"a": [None, True, False, 1.5]}]},
        {},
        [],
    ],
)
def test_admits_what_every_follower_carries(value: Any) -> None:
    assert check_value(value) == []
    assert ensure_value(value) is value


def test_depth_is_bounded_without_recursion() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    problems = check_value(value)
    assert len(problems) == 1
    assert f"deeper than {MAX_DEPTH}" in problems[0].msg
    assert problems[0].path == (0,) * MAX_DEPTH
    assert check_value(_nest(MAX_DEPTH)) == []
    assert len(check_value(_nest(MAX_DEPTH + 1))) == 1


def test_element_count_is_bounded() -> None:
    problems = check_value(list(range(50)), max_elements=10)
    assert [problem.msg for problem in problems] == ["holds more than 10 elements"]


def test_problems_are_capped_and_in_document_order() -> None:
    problems = check_value([2**64] * 100, max_problems=5)
    assert [problem.path for problem in problems] == [(0,), (1,), (2,), (3,), (4,)]


def test_paths_carry_a_prefix() -> None:
    problems = check_value({"a": "\x00"}, ("input", 3))
    assert problems[0].loc == "input[3].a"


def test_error_lists_every_problem() -> None:
    with pytest.raises(ValueContractError) as raised:
        ensure_value({"a": 2**64, "b": "\x00"})
    assert [problem.loc for problem in raised.value.problems] == ["a", "b"]
    assert "a: integer" in str(raised.value)


def test_format_path() -> None:
    assert format_path(()) == "value"
    assert format_path(("nodes", 0, "id")) == "nodes[0].id"
    assert format_path((0, "a b")) == '[0]["a b"]'


@given(json_like)
def test_admitted_values_survive_orjson_and_json(value: Any) -> None:
    if check_value(value):
        return
    assert _same(orjson.loads(orjson.dumps(value)), value)
    assert _same(json.loads(json.dumps(value, allow_nan=False)), value)


@given(json_like)
def test_refused_values_name_a_real_problem(value: Any) -> None:
    """Whatever is refused really is something one of our encoders cannot carry."""
    if not check_value(value, max_depth=1000):
        return
    text = json.dumps(value, allow_nan=True)
    breaks = (
        "\\u0000" in text
        or "NaN" in text
        or "Infinity" in text
        or not _utf8(value)
        or not _orjson_round_trips(value)
        or not _signed_64(value)
    )
    assert breaks, value


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _utf8(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _signed_64(value: Any) -> bool:
    """Stricter than orjson (which takes unsigned 64 bits too): jsonb readers cast to bigint."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, list):
        return all(_signed_64(item) for item in value)
    if isinstance(value, dict):
        return all(_signed_64(item) for item in value.values())
    return True


def _orjson_round_trips(value: Any) -> bool:
    """orjson carries it, and a whole float reads back from jsonb's integer numeral in 64 bits."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return False
    return _same(orjson.loads(text), value) and _whole_floats_fit(value)


def _whole_floats_fit(value: Any) -> bool:
    if isinstance(value, float):
        return not value.is_integer() or abs(value) < 2**63
    if isinstance(value, list):
        return all(_whole_floats_fit(item) for item in value)
    if isinstance(value, dict):
        return all(_whole_floats_fit(item) for item in value.values())
    return True


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return type(left) is type(right) and left == right


@pytest.mark.parametrize(
    ("model", "field", "other"),
    [
        (CreateKey, "name", {"role": "viewer"}),
        (CreateProject, "name", {}),
        (CreateProject, "description", {"name": "ok"}),
        (UpdateProject, "name", {}),
        (UpdateProject, "description", {}),
        (CreateOrganisation, "name", {"id": "acme"}),
        (RenameOrganisation, "name", {}),
        (SuspendOrganisation, "reason", {}),
    ],
)
@pytest.mark.parametrize(("text", "reason"), [("a\x00b", "NUL character"), ("a\ud800b", "nicode")])
def test_free_text_of_request_bodies_is_refused_where_it_cannot_be_stored(
    model: type[BaseModel], field: str, other: dict[str, Any], text: str, reason: str
) -> None:
    """Found by hand: these reached PostgreSQL's text columns and answered 500."""
    with pytest.raises(ValidationError) as refused:
        model.model_validate({**other, field: text})
    (error,) = refused.value.errors()
    assert error["loc"] == (field,) and reason in error["msg"]
    assert not error["msg"].startswith("Value error")
    model.model_validate({**other, field: "fine"})
