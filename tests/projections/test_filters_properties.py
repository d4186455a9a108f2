"""Properties: compiled SQL on the real PostgreSQL agrees with the reference evaluator.

Random documents (a small alphabet of keys, nested objects and arrays, numbers
of every size, strings with unicode and newlines, instants and near-instants)
and random filters over the same keys, every operator included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.values import check_value
from infrastructure.database import PgTarget
from projections.filters import iso_instant, translate_regex
from projections.reference import matches
from tests.projections.test_filters_sql import Scratch


@pytest.fixture(scope="module")
def scratch(db_target: PgTarget) -> Iterator[Scratch]:
    table = Scratch(db_target)
    yield table
    table.close()


KEYS = ["a", "b", "c", "0", "1", 'q"\\']
INSTANTS = [
    "2026-01-02T10:00:00+02:00",
    "2026-01-02T08:00:00Z",
    "2026-01-02T08:00:00.000001Z",
    "2026-01-02T07:59:59.9999999-00:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-23:59",
]
NEAR_INSTANTS = ["2026-01-02T08:00:00", "2026-02-30T00:00:00Z", "2026-01-02 08:00:00Z"]
STRINGS = ["", "a", "B", "ab", "aB\nb", "é", "É", "😀", "\uffff", "10", "9", "a b", "_x.y"]

keys = st.sampled_from(KEYS)
numbers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([10**23, 10**30, -(2**63), 2**64]),
    st.sampled_from([0.5, -0.0, 1.0, 2.5, 0.1, 1e-7, 1e16, 1e23, -1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
)
strings = st.sampled_from(STRINGS + INSTANTS + NEAR_INSTANTS)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
documents = st.lists(st.dictionaries(keys, values, max_size=4), max_size=8)
# Documents may hold numbers the value contract refuses (written before it, or
# planted); a filter's constants must keep it (else the filter is a 400).
constants = values.filter(lambda value: not check_value(value))
constant_scalars = scalars.filter(lambda value: not check_value(value))
paths = st.lists(keys, min_size=1, max_size=3).map(".".join)

REGEX_ATOMS = [
    "a", "b", "B", "é", "1", " ", ".", "\\d", "\\w", "\\s", "\\W", "\\S", "\\n", "\\.",
    "[ab]", "[^a]", "[a-c]", "[\\d_]", "[^\\s]", "(a|b)", "(?:ab|é)", "(\\n|B)",
]  # fmt: skip
QUANTIFIERS = ["", "", "", "*", "+", "?", "{1,2}", "{2}", "*?", "{0,}"]
REGEX_OPTIONS = ["", "", "i", "m", "s", "ms", "im", "is", "ims", "x", "ix"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    def branch() -> str:
        pieces = draw(
            st.lists(
                st.tuples(st.sampled_from(REGEX_ATOMS), st.sampled_from(QUANTIFIERS)),
                min_size=1,
                max_size=4,
            )
        )
        # a quantified space would repeat nothing under the "x" option, and a
        # branch of bare spaces would be empty (refused: "empty alternative")
        body = "".join(
            ("\\ " if atom == " " and quantifier else atom) + quantifier
            for atom, quantifier in pieces
        )
        if not body.strip(" "):
            body = "\\" + body
        return draw(st.sampled_from(["", "^"])) + body + draw(st.sampled_from(["", "$"]))

    return "|".join(branch() for _ in range(draw(st.integers(1, 2))))


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """An operator document: one or two operators, nested at most twice."""
    kinds = ["eq", "order", "set", "exists", "size", "regex"]
    if depth < 2:
        kinds += ["not", "elem_value", "elem_doc"]
    condition: dict[str, Any] = {}
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=2)):
        if kind == "eq":
            condition[draw(st.sampled_from(["$eq", "$ne"]))] = draw(constants)
        elif kind == "order":
            condition[draw(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]))] = draw(
                constant_scalars
            )
        elif kind == "set":
            operator = draw(st.sampled_from(["$in", "$nin", "$all"]))
            # Short lists, and long ones of scalars ($all tests those as one array).
            condition[operator] = draw(
                st.lists(constants, max_size=3)
                | st.lists(constant_scalars, min_size=9, max_size=12)
            )
        elif kind == "exists":
            condition["$exists"] = draw(st.booleans())
        elif kind == "size":
            condition["$size"] = draw(st.integers(0, 3))
        elif kind == "regex":
            condition["$regex"] = draw(patterns())
            options = draw(st.sampled_from(REGEX_OPTIONS))
            if options:
                condition["$options"] = options
        elif kind == "not":
            condition["$not"] = draw(conditions(depth + 1))
        elif kind == "elem_value":
            condition["$elemMatch"] = draw(conditions(depth + 1))
        else:
            condition["$elemMatch"] = draw(filters(depth + 1))
    return condition


@st.composite
def filters(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    filter_: dict[str, Any] = {}
    for _ in range(draw(st.integers(0 if depth else 1, 2))):
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            operator = draw(st.sampled_from(["$and", "$or", "$nor"]))
            filter_[operator] = draw(st.lists(filters(depth + 1), min_size=1, max_size=2))
        elif draw(st.booleans()):
            filter_[draw(paths)] = draw(constants)  # implicit equality
        else:
            filter_[draw(paths)] = draw(conditions(depth))
    return filter_


@settings(max_examples=300, deadline=None)
@given(docs=documents, some_filters=st.lists(filters(), min_size=1, max_size=3))
def test_sql_agrees_with_the_reference(
    scratch: Scratch, docs: list[dict[str, Any]], some_filters: list[dict[str, Any]]
) -> None:
    got = scratch.ids(docs, some_filters)
    for filter_, sql_ids in zip(some_filters, got, strict=True):
        expected = {i for i, d in enumerate(docs) if matches(filter_, d)}
        assert (filter_, sql_ids) == (filter_, expected)


subjects = st.text(alphabet="abAB \n.é1_É\u212a", max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    pattern=patterns(),
    options=st.sampled_from(REGEX_OPTIONS),
    texts=st.lists(subjects, min_size=1, max_size=12),
)
def test_regex_engines_agree(
    scratch: Scratch, pattern: str, options: str, texts: list[str]
) -> None:
    regex = translate_regex(pattern, options)
    rows = scratch.sql(
        'SELECT s COLLATE "C" ~ CAST(:p AS text) '
        "FROM unnest(CAST(:s AS text[])) WITH ORDINALITY AS t(s, n) ORDER BY n",
        params={"p": regex.postgres, "s": texts},
    )
    python = [re.search(regex.python, t) is not None for t in texts]
    assert [r[0] for r in rows] == python


@st.composite
def instant_like(draw: st.DrawFn) -> str:
    """Mostly valid timestamps with offsets, and every way to miss one."""
    pick = lambda *choices: draw(st.sampled_from(choices))  # noqa: E731
    return (
        pick("0001", "1900", "1970", "2000", "2023", "2024", "9999", "0000", "10000")
        + "-" + pick("01", "02", "04", "12", "00", "13")
        + "-" + pick("01", "28", "29", "30", "31", "32")
        + pick("T", "T", "T", " ", "t")
        + pick("00", "09", "23", "24") + ":" + pick("00", "30", "59", "60")
        + ":" + pick("00", "59", "60")
        + pick("", "", ".5", ".000001", ".9999999", ".", ".123456789012")
        + pick("Z", "+00:00", "-00:00", "+14:00", "-23:59", "+05:30", "+24:00", "+01:60")
        + pick("", "", "", "z", "+0100")
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(instant_like(), min_size=1, max_size=25))
def test_instants_agree(scratch: Scratch, texts: list[str]) -> None:
    rows = scratch.sql(
        "SELECT (extract(epoch FROM reporunner_iso_timestamptz(t)) * 1000000)::bigint "
        "FROM unnest(CAST(:t AS text[])) WITH ORDINALITY AS x(t, n) ORDER BY n",
        params={"t": texts},
    )
    epoch = iso_instant("1970-01-01T00:00:00Z")
    assert epoch is not None
    expected = [None if (i := iso_instant(t)) is None else i - epoch for t in texts]
    assert [r[0] for r in rows] == expected
