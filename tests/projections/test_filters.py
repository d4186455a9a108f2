"""The filter compiler: errors, SQL against the real PostgreSQL, and agreement
with the pure-Python reference evaluator on random documents and filters."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from infrastructure.database import PgTarget
from projections.errors import QueryError
from projections.filters import compile_filter
from projections.reference import matches


class Table:
    """A scratch table shaped like a collection, queried through asyncpg."""

    def __init__(self, target: PgTarget) -> None:
        self.name = f"filter_docs_{uuid.uuid4().hex[:8]}"
        self.url = target.sqlalchemy_url("asyncpg")
        self.loop = asyncio.new_event_loop()
        self.engine = create_async_engine(self.url, pool_size=1)
        self.run(f"CREATE TABLE {self.name} (_id text PRIMARY KEY, data jsonb NOT NULL)")

    def run(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        async def go() -> list[Any]:
            async with self.engine.begin() as conn:
                result = await conn.execute(text(sql), params or {})
                return list(result.all()) if result.returns_rows else []

        return self.loop.run_until_complete(go())

    def load(self, documents: list[Any]) -> None:
        self.run(f"TRUNCATE {self.name}")
        if documents:
            self.run(
                f"INSERT INTO {self.name} SELECT k, v "
                "FROM jsonb_each(CAST(:docs AS jsonb)) AS t(k, v)",
                {"docs": json.dumps({str(i): d for i, d in enumerate(documents)})},
            )

    def ids(self, filter_: Any) -> set[int]:
        fragment = compile_filter(filter_)
        rows = self.run(f"SELECT _id FROM {self.name} WHERE {fragment.sql}", fragment.params)
        return {int(row[0]) for row in rows}

    def close(self) -> None:
        self.run(f"DROP TABLE {self.name}")
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


@pytest.fixture(scope="module")
def table(db_target: PgTarget) -> Iterator[Table]:
    scratch = Table(db_target)
    yield scratch
    scratch.close()


DOCS: list[dict[str, Any]] = [
    {"name": "alpha", "n": 10, "tags": ["a", "b"], "nodes": [{"type": "http"}, {"type": "set"}]},
    {"name": "beta", "n": 9, "tags": ["b"], "nodes": [{"type": "set"}], "meta": {"x": None}},
    {"name": "Gamma", "n": 10.5, "tags": [], "at": "2026-01-01T10:00:00+00:00"},
    {"name": "delta", "n": "10", "tags": "a", "at": "2026-01-01T07:30:00+00:00"},
    {"name": "eps", "scores": [1, 5, 9], "m": {"k": [1, 2]}},
]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ({}, {0, 1, 2, 3, 4}),
        ({"name": "alpha"}, {0}),
        ({"tags": "a"}, {0, 3}),
        ({"tags": ["b"]}, {1}),
        ({"nodes.type": "http"}, {0}),
        ({"n": {"$gt": 9}}, {0, 2}),
        ({"n": {"$gte": 10, "$lt": 10.5}}, {0}),
        ({"n": {"$ne": 10}}, {1, 2, 3, 4}),
        ({"n": {"$in": [9, "10"]}}, {1, 3}),
        ({"n": {"$nin": [9, 10]}}, {2, 3, 4}),
        ({"n": {"$exists": False}}, {4}),
        ({"meta.x": None}, {1, 0, 2, 3, 4}),
        ({"meta.x": {"$exists": True}}, {1}),
        ({"name": {"$regex": "^g", "$options": "i"}}, {2}),
        ({"name": {"$regex": "a$"}}, {0, 1, 2, 3}),
        ({"name": {"$not": {"$regex": "a"}}}, {4}),
        ({"tags": {"$size": 2}}, {0}),
        ({"tags": {"$all": ["a", "b"]}}, {0}),
        ({"nodes": {"$elemMatch": {"type": "set"}}}, {0, 1}),
        ({"scores": {"$elemMatch": {"$gt": 4, "$lt": 6}}}, {4}),
        ({"$or": [{"name": "beta"}, {"n": {"$lt": 10}}]}, {1}),
        ({"$nor": [{"name": "beta"}, {"tags": "a"}]}, {2, 4}),
        ({"$and": [{"tags": "b"}, {"n": 10}]}, {0}),
        ({"at": {"$gt": "2026-01-01T09:00:00+02:00"}}, {2, 3}),  # 07:00Z
        ({"at": {"$gt": "2026-01-01T09:40:00+02:00"}}, {2}),
        ({"at": {"$lt": "2026-01-01T08:00:00Z"}}, {3}),
        ({"m": {"k": [1, 2]}}, {4}),
        ({"m.k": 2}, {4}),
    ],
)
def test_operators_in_sql_and_in_the_reference(
    table: Table, filter_: dict[str, Any], expected: set[int]
) -> None:
    table.load(DOCS)
    assert table.ids(filter_) == expected
    assert {i for i, d in enumerate(DOCS) if matches(filter_, d)} == expected


@pytest.mark.parametrize(
    ("filter_", "words"),
    [
        ({"name": {"$foo": 1}}, "unknown operator '$foo' at 'name'"),
        ({"$where": "1"}, "unknown top-level operator '$where'"),
        ({"$or": []}, "$or needs a non-empty array"),
        ({"tags": {"$in": "a"}}, "$in needs an array at 'tags'"),
        ({"n": {"$gt": [1]}}, "$gt needs a number or a string at 'n'"),
        ({"n": {"$exists": 1}}, "$exists needs true or false"),
        ({"name": {"$regex": "("}}, "invalid regex at 'name'"),
        ({"name": {"$regex": "a" * 257}}, "longer than 256"),
        ({"name": {"$regex": "a", "$options": "q"}}, "$options"),
        ({"tags": {"$size": -1}}, "$size needs a non-negative integer"),
        ({"a..b": 1}, "invalid field path 'a..b'"),
        ({"n": {"$not": 3}}, "$not needs an operator object"),
        ([1], "must be a JSON object"),
    ],
)
def test_bad_filters_raise_naming_the_problem(filter_: Any, words: str) -> None:
    with pytest.raises(QueryError) as error:
        compile_filter(filter_)
    assert words in str(error.value)


def test_values_never_enter_the_sql_text() -> None:
    sentinel = "x'); DROP TABLE users; --"
    fragment = compile_filter(
        {"name": sentinel, "tags": {"$in": [sentinel]}, "d": {"$regex": "drop"}, "n": {"$gt": 5}}
    )
    assert sentinel not in fragment.sql and "DROP" not in fragment.sql
    assert any(sentinel in str(value) for value in fragment.params.values())


# --- property: SQL and reference agree -------------------------------------------

keys = st.sampled_from(["a", "b", "c"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False).map(lambda f: round(f, 2)),
    st.sampled_from(["", "a", "B", "ab", "é", "10", "2026-01-01T10:00:00+00:00"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)
documents = st.lists(st.dictionaries(keys, values, max_size=3), min_size=1, max_size=8)
paths = st.lists(keys, min_size=1, max_size=2).map(".".join)
operands = st.one_of(
    st.tuples(st.sampled_from(["$eq", "$ne"]), scalars),
    st.tuples(
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.one_of(st.integers(-5, 5), st.sampled_from(["a", "B", "10"])),
    ),
    st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(scalars, max_size=3)),
    st.tuples(st.just("$exists"), st.booleans()),
    st.tuples(st.just("$regex"), st.sampled_from(["a", "^a", "b$", "a.", "[aB]", "^$"])),
    st.tuples(st.just("$size"), st.integers(0, 3)),
    st.tuples(st.just("$all"), st.lists(scalars, min_size=1, max_size=2)),
)


@st.composite
def field_filters(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(paths)
    kind = draw(st.sampled_from(["plain", "op", "not", "elem"]))
    if kind == "plain":
        return {path: draw(scalars)}
    operator, operand = draw(operands)
    condition = {operator: operand}
    if kind == "not":
        return {path: {"$not": condition}}
    if kind == "elem":
        inner = draw(st.sampled_from(["scalar", "doc"]))
        if inner == "scalar":
            return {path: {"$elemMatch": condition}}
        return {path: {"$elemMatch": {draw(keys): draw(scalars)}}}
    return {path: condition}


filters = st.recursive(
    field_filters(),
    lambda inner: st.builds(
        lambda op, parts: {op: parts},
        st.sampled_from(["$and", "$or", "$nor"]),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=4,
)


@settings(max_examples=300, deadline=None)
@given(docs=documents, filter_=filters)
def test_sql_agrees_with_the_reference(table: Table, docs: list[Any], filter_: Any) -> None:
    table.load(docs)
    expected = {i for i, d in enumerate(docs) if matches(filter_, d)}
    assert table.ids(filter_) == expected
