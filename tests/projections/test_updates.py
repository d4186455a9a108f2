"""Update operators applied to documents: pure, no database."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.updates import UpdateError, apply_update


@pytest.mark.parametrize(
    ("document", "update", "expected"),
    [
        ({}, {"$set": {"a.b.c": 1}}, {"a": {"b": {"c": 1}}}),
        ({"a": {"x": 1}}, {"$set": {"a.y": 2}}, {"a": {"x": 1, "y": 2}}),
        ({"l": [1, 2]}, {"$set": {"l.1": 9}}, {"l": [1, 9]}),
        ({"l": [1]}, {"$set": {"l.3": 9}}, {"l": [1, None, None, 9]}),
        ({"a": 1, "b": 2}, {"$unset": {"a": ""}}, {"b": 2}),
        ({"a": {"b": 1}}, {"$unset": {"a.c": ""}}, {"a": {"b": 1}}),
        ({"l": [1, 2]}, {"$unset": {"l.0": ""}}, {"l": [None, 2]}),
        ({}, {"$inc": {"n": 2}}, {"n": 2}),
        ({"n": 1.5}, {"$inc": {"n": -1}}, {"n": 0.5}),
        ({}, {"$push": {"l": 1}}, {"l": [1]}),
        ({"l": [1]}, {"$push": {"l": {"$each": [2, 3]}}}, {"l": [1, 2, 3]}),
        ({"l": [1]}, {"$push": {"l": [2]}}, {"l": [1, [2]]}),
        ({"l": [1, 2]}, {"$addToSet": {"l": 2}}, {"l": [1, 2]}),
        ({"l": [1, 2]}, {"$addToSet": {"l": {"$each": [2, 3, 3]}}}, {"l": [1, 2, 3]}),
        ({"l": [True]}, {"$addToSet": {"l": 1}}, {"l": [True, 1]}),
        ({"l": [1, 2, 1, {"a": 1}]}, {"$pull": {"l": 1}}, {"l": [2, {"a": 1}]}),
        ({"l": [{"a": 1}, {"a": 2}]}, {"$pull": {"l": {"a": 1}}}, {"l": [{"a": 2}]}),
        ({}, {"$pull": {"l": 1}}, {}),
        ({"n": 5}, {"$min": {"n": 3}}, {"n": 3}),
        ({"n": 5}, {"$min": {"n": 7}}, {"n": 5}),
        ({"n": 5}, {"$max": {"n": 7}}, {"n": 7}),
        ({}, {"$max": {"n": 7}}, {"n": 7}),
        ({"s": "b"}, {"$max": {"s": "a"}}, {"s": "b"}),
        ({"a": 1}, {"$set": {"b": 2}, "$inc": {"c": 1}}, {"a": 1, "b": 2, "c": 1}),
    ],
)
def test_operators(
    document: dict[str, Any], update: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert apply_update(document, update) == expected


@pytest.mark.parametrize(
    ("document", "update", "words"),
    [
        ({}, {"$rename": {"a": "b"}}, "unknown update operator '$rename'"),
        ({}, {"a": 1}, "bare"),
        ({}, {}, "non-empty"),
        ({}, {"$set": {}}, "non-empty"),
        ({}, {"$set": {"a": 1}, "$inc": {"a": 1}}, "conflict"),
        ({}, {"$set": {"a": 1, "a.b": 1}}, "conflict"),
        ({"n": "x"}, {"$inc": {"n": 1}}, "not a number"),
        ({}, {"$inc": {"n": "1"}}, "needs a number"),
        ({}, {"$inc": {"n": True}}, "needs a number"),
        ({"l": 1}, {"$push": {"l": 1}}, "not an array"),
        ({"n": 1}, {"$min": {"n": "a"}}, "compares"),
        ({"a": 1}, {"$set": {"a.b": 1}}, "parent is a number"),
        ({}, {"$set": {"a..b": 1}}, "invalid path"),
        ({}, {"$set": {"$a": 1}}, "invalid path"),
        ({"l": []}, {"$pull": {"l": {"$gt": 1}}}, "conditions"),
        ({}, {"$push": {"l": {"$each": 1}}}, "$each"),
    ],
)
def test_bad_updates_raise_naming_the_problem(
    document: dict[str, Any], update: dict[str, Any], words: str
) -> None:
    with pytest.raises(UpdateError, match=None) as err:
        apply_update(document, update)
    assert words in str(err.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("ab", max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    document=st.dictionaries(st.text("abc", min_size=1, max_size=2), json_values, max_size=4),
    path=st.text("abc", min_size=1, max_size=2),
    value=json_values,
)
def test_set_then_read_back_and_input_untouched(
    document: dict[str, Any], path: str, value: Any
) -> None:
    before = repr(document)
    updated = apply_update(document, {"$set": {path: value}})
    assert updated[path] == value
    assert repr(document) == before
    assert {k: v for k, v in updated.items() if k != path} == {
        k: v for k, v in document.items() if k != path
    }


_paths = st.lists(st.sampled_from(["a", "b", "0", "1"]), min_size=1, max_size=3).map(".".join)
_operations = st.one_of(
    st.tuples(st.just("$set"), _paths, json_values),
    st.tuples(st.just("$unset"), _paths, st.just("")),
    st.tuples(st.just("$push"), _paths, json_values),
    st.tuples(st.just("$addToSet"), _paths, json_values),
    st.tuples(st.just("$pull"), _paths, st.integers(-3, 3)),
    st.tuples(st.just("$inc"), _paths, st.integers(-5, 5)),
)


@given(
    document=st.dictionaries(st.sampled_from(["a", "b"]), json_values, max_size=2),
    operation=_operations,
)
def test_no_operator_ever_changes_its_input(document: dict[str, Any], operation: Any) -> None:
    import copy

    operator, path, operand = operation
    before = copy.deepcopy(document)
    with contextlib.suppress(UpdateError):
        apply_update(document, {operator: {path: operand}})
    assert document == before


def test_views_hold_a_replacement_for_nul_which_jsonb_refuses() -> None:
    from projections.store import jsonb_text as _orjson_text

    assert orjson.loads(_orjson_text({"k\x00": "a\x00b"})) == {"k\ufffd": "a\ufffdb"}
    # An escaped backslash followed by the letters u0000 is text, not NUL.
    assert orjson.loads(_orjson_text(["\\u0000", "\\\x00"])) == ["\\u0000", "\\\ufffd"]
