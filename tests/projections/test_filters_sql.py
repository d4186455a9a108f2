"""The filter compiler against the real PostgreSQL, through SQLAlchemy async on asyncpg.

Every case also runs through the reference evaluator, which must agree.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from infrastructure.database import PgTarget
from projections.filters import compile_filter, iso_instant, translate_regex
from projections.reference import matches


class Scratch:
    """A scratch collection shaped like the document views (GIN index included).

    Each ``query`` loads documents, runs filters and rolls back, on one
    connection driven by a private event loop, so plain and hypothesis tests
    can use it. Document ``i`` gets ``_id`` ``str(i)``.
    """

    def __init__(self, target: PgTarget) -> None:
        self.table = f"filter_scratch_{uuid.uuid4().hex[:10]}"
        self.runner = asyncio.Runner()
        self.engine = create_async_engine(
            target.sqlalchemy_url("asyncpg"), pool_size=1, max_overflow=0
        )
        self.sql(
            f"CREATE TABLE {self.table} (_id text PRIMARY KEY, org_id text NOT NULL, "
            "data jsonb NOT NULL, _version bigint NOT NULL, _position bigint NOT NULL, "
            "created timestamptz NOT NULL, updated timestamptz NOT NULL)",
            f"CREATE INDEX {self.table}_gin ON {self.table} USING gin (data jsonb_path_ops)",
        )

    def sql(self, *statements: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run statements in one committed transaction; rows of the last."""

        async def go() -> list[Any]:
            async with self.engine.begin() as conn:
                rows: list[Any] = []
                for statement in statements:
                    result = await conn.execute(text(statement), params or {})
                    rows = list(result.all()) if result.returns_rows else []
                return rows

        return self.runner.run(go())

    def ids(self, documents: Sequence[Any], filters: Sequence[Any]) -> list[set[int]]:
        """Ids each filter selects among ``documents`` (compiled with the default options)."""
        return self.select(documents, ["SELECT _id FROM {table} WHERE {0}"], filters)

    def select(
        self, documents: Sequence[Any], queries: Sequence[str], filters: Sequence[Any]
    ) -> list[set[int]]:
        """Run each query with ``{table}`` and ``{0}``, ``{1}``... as the compiled filters."""

        async def go(conn: AsyncConnection) -> list[set[int]]:
            await conn.execute(
                text(
                    f"INSERT INTO {self.table} SELECT (n - 1)::text, 'org', d, 1, n, now(), now() "
                    "FROM jsonb_array_elements(CAST(:docs AS jsonb)) WITH ORDINALITY AS x(d, n)"
                ),
                {"docs": json.dumps(list(documents))},
            )
            found = []
            for query in queries:
                for filter_ in filters:
                    fragments = [filter_] if not isinstance(filter_, tuple) else list(filter_)
                    params: dict[str, Any] = {}
                    sqls = []
                    for i, f in enumerate(fragments):
                        fragment = compile_filter(f, param_prefix=f"f{i}_")
                        params |= fragment.params
                        sqls.append(fragment.sql)
                    sql = query.format(*sqls, table=self.table)
                    rows = await conn.execute(text(sql), params)
                    found.append({int(row[0]) for row in rows})
            return found

        return self.runner.run(self._rolled_back(go))

    async def _rolled_back(self, work: Any) -> Any:
        async with self.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                return await work(conn)
            finally:
                await transaction.rollback()

    def close(self) -> None:
        self.sql(f"DROP TABLE {self.table}")
        self.runner.run(self.engine.dispose())
        self.runner.close()


@pytest.fixture(scope="module")
def scratch(db_target: PgTarget) -> Iterator[Scratch]:
    table = Scratch(db_target)
    yield table
    table.close()


DOCS: list[dict[str, Any]] = [
    {
        "name": "alpha",
        "n": 10,
        "tags": ["a", "b"],
        "nodes": [{"type": "http_request", "n": 1}, {"type": "set"}],
        "at": "2026-01-02T10:00:00+02:00",
    },
    {
        "name": "beta",
        "n": 9,
        "tags": ["b"],
        "nodes": [{"type": "set"}],
        "meta": {"x": None},
        "at": "2026-01-02T09:00:00Z",
    },
    {
        "name": "Gamma",
        "n": 10.5,
        "tags": [],
        "at": "2026-01-02T08:30:00.5Z",
        "matrix": [[1, 2], [3]],
    },
    {"name": "delta", "n": "10", "tags": "a", "at": "not a time", "scores": [1, 5, 9]},
    {
        "name": "épsilon\nline",
        "n": -1e300,
        "flag": True,
        "nested": [[{"k": 1}]],
        "big": 10**30,
    },
    {"name": None, "n": True, "tags": [["a", "b"], "c"], "obj": {"k": [1, 2]}, "0": "zero"},
]
ALL = set(range(len(DOCS)))

CASES: list[tuple[dict[str, Any], set[int]]] = [
    ({}, ALL),
    # equality, inside arrays, through arrays of sub-documents
    ({"name": "alpha"}, {0}),
    ({"tags": "a"}, {0, 3}),
    ({"tags": ["a", "b"]}, {0, 5}),
    ({"tags": ["b", "a"]}, set()),
    ({"tags": []}, {2}),
    ({"nodes.type": "http_request"}, {0}),
    ({"nodes.0.type": "set"}, {1}),
    ({"nodes.1.type": "set"}, {0}),
    ({"matrix.1.0": 3}, {2}),
    ({"nested.k": 1}, set()),
    ({"0": "zero"}, {5}),
    ({"n": 10}, {0}),
    ({"n": 10.0}, {0}),
    ({"n": True}, {5}),
    ({"flag": 1}, set()),
    ({"big": {"$gt": 2**63 - 1}}, {4}),  # a big number stored before the value contract
    ({"meta.x": None}, ALL),
    ({"name": None}, {5}),
    ({"meta": {"x": None}}, {1}),
    ({"obj": {"k": [1, 2]}}, {5}),
    ({"obj.k": 2}, {5}),
    ({"at": "2026-01-02T08:00:00Z"}, {0}),  # the same instant as 10:00+02:00
    # negations match missing fields
    ({"n": {"$ne": 10}}, ALL - {0}),
    ({"name": {"$ne": None}}, ALL - {5}),
    ({"tags": {"$nin": ["a", "c"]}}, {1, 2, 4}),
    # order, type-bracketed
    ({"n": {"$gt": 9}}, {0, 2}),
    ({"n": {"$gte": 10, "$lt": 10.5}}, {0}),
    ({"n": {"$lt": 0}}, {4}),
    ({"name": {"$gt": "b"}}, {1, 3, 4}),
    ({"name": {"$lt": "a"}}, {2}),
    ({"flag": {"$gt": False}}, {4}),
    ({"scores": {"$gt": 8}}, {3}),
    ({"at": {"$gt": "2026-01-02T08:15:00Z"}}, {1, 2}),
    ({"at": {"$lt": "2026-01-02T09:00:00+00:30"}}, {0}),
    ({"at": {"$gt": "2026"}}, {0, 1, 2, 3}),  # not an instant: compares as a string
    ({"n": {"$gte": None}}, set()),
    ({"name": {"$lte": None}}, {5}),
    ({"n": {"$gt": None}}, set()),
    ({"n": {"$not": {"$gt": 9}}}, {1, 3, 4, 5}),
    # sets
    ({"n": {"$in": [9, "10"]}}, {1, 3}),
    ({"name": {"$in": [None, "beta"]}}, {1, 5}),
    ({"tags": {"$in": [["b"], "c"]}}, {1, 5}),
    ({"n": {"$in": []}}, set()),
    ({"n": {"$nin": []}}, ALL),
    ({"tags": {"$all": ["a", "b"]}}, {0}),
    ({"tags": {"$all": []}}, set()),
    # existence and sizes
    ({"meta.x": {"$exists": True}}, {1}),
    ({"tags": {"$exists": False}}, {4}),
    ({"nodes.1": {"$exists": True}}, {0}),
    ({"tags": {"$size": 2}}, {0, 5}),
    ({"tags": {"$size": 0}}, {2}),
    ({"matrix": {"$size": 2}}, {2}),
    # regexes
    ({"name": {"$regex": "^g", "$options": "i"}}, {2}),
    ({"name": {"$regex": "a$"}}, {0, 1, 2, 3}),
    ({"name": {"$regex": "^line", "$options": "m"}}, {4}),
    ({"name": {"$regex": "n.l"}}, set()),
    ({"name": {"$regex": "n.l", "$options": "s"}}, {4}),
    ({"name": {"$regex": "É", "$options": "i"}}, set()),  # case folding is ASCII only
    ({"name": {"$regex": "é"}}, {4}),
    ({"name": {"$regex": "al pha # the first", "$options": "x"}}, {0}),
    ({"tags": {"$regex": "^c$"}}, {5}),
    ({"name": {"$not": {"$regex": "a"}}}, {4, 5}),
    ({"name": {"$not": {"$regex": "^[a-c]"}}}, {2, 3, 4, 5}),
    # arrays' elements
    ({"nodes": {"$elemMatch": {"type": "set"}}}, {0, 1}),
    ({"nodes": {"$elemMatch": {"type": "http_request", "n": {"$gte": 1}}}}, {0}),
    ({"nodes": {"$elemMatch": {"type": "set", "n": 1}}}, set()),
    ({"scores": {"$elemMatch": {"$gt": 4, "$lt": 6}}}, {3}),
    ({"matrix": {"$elemMatch": {"$size": 1}}}, {2}),
    ({"matrix.1": {"$gt": 2}}, {2}),
    ({"tags": {"$elemMatch": {"$eq": ["a", "b"]}}}, {5}),
    # logic
    ({"$or": [{"name": "beta"}, {"n": {"$lt": 10}}]}, {1, 4}),
    ({"$nor": [{"name": "beta"}, {"tags": "a"}]}, {2, 4, 5}),
    ({"$and": [{"tags": "b"}, {"n": 10}]}, {0}),
]


def test_each_operator_in_sql_and_in_the_reference(scratch: Scratch) -> None:
    filters = [f for f, _ in CASES]
    got = scratch.ids(DOCS, filters)
    for (filter_, expected), sql_ids in zip(CASES, got, strict=True):
        reference_ids = {i for i, d in enumerate(DOCS) if matches(filter_, d)}
        assert (filter_, sql_ids, reference_ids) == (filter_, expected, expected)


def test_fragments_embed_under_not_and_beside_other_conditions(scratch: Scratch) -> None:
    either = {"$or": [{"name": "beta"}, {"n": {"$lt": 10}}]}
    both = {"tags": "a", "n": 10}
    assert scratch.ids(DOCS, [either, both]) == [{1, 4}, {0}]
    negated = scratch.select(DOCS, ["SELECT _id FROM {table} WHERE NOT {0}"], [either, both])
    assert negated == [ALL - {1, 4}, ALL - {0}]
    beside = scratch.select(DOCS, ["SELECT _id FROM {table} WHERE _position > 2 AND {0}"], [either])
    assert beside == [{4}]
    # two fragments, each with its own parameter prefix, in one statement
    pair = ({"tags": "b"}, {"n": {"$gt": 9}})
    assert scratch.select(DOCS, ["SELECT _id FROM {table} WHERE {0} AND NOT {1}"], [pair]) == [{1}]


def test_another_column_name(scratch: Scratch) -> None:
    async def go(conn: AsyncConnection) -> set[int]:
        await conn.execute(
            text(f"INSERT INTO {scratch.table} VALUES ('0', 'org', :doc, 1, 1, now(), now())"),
            {"doc": json.dumps({"a": [1]})},
        )
        fragment = compile_filter({"a": 1, "$or": [{"a": {"$size": 1}}]}, column="doc")
        rows = await conn.execute(
            text(
                f"SELECT _id FROM (SELECT _id, data AS doc FROM {scratch.table}) AS v "
                f"WHERE {fragment.sql}"
            ),
            fragment.params,
        )
        return {int(r[0]) for r in rows}

    assert scratch.runner.run(scratch._rolled_back(go)) == {0}


def test_equality_can_use_the_gin_index(scratch: Scratch) -> None:
    fragment = compile_filter({"nodes.type": "http_request", "tags": {"$all": ["a", "b"]}})

    async def go(conn: AsyncConnection) -> str:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await conn.execute(
            text(f"EXPLAIN SELECT _id FROM {scratch.table} WHERE {fragment.sql}"), fragment.params
        )
        return "\n".join(r[0] for r in rows)

    plan = scratch.runner.run(scratch._rolled_back(go))
    assert f"Bitmap Index Scan on {scratch.table}_gin" in plan


INSTANT_TEXTS = [
    "2026-01-02T10:00:00+02:00",
    "2026-01-02T08:00:00Z",
    "2026-01-02T08:00:00.000001Z",
    "2026-01-02T08:00:00.0000019Z",
    "2026-01-02T07:59:59.999999-00:00",
    "2024-02-29T00:00:00+23:59",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999-23:59",
    "2023-02-29T00:00:00Z",
    "2026-01-02T24:00:00Z",
    "2026-12-31T23:59:60Z",
    "2026-01-02 08:00:00Z",
    "2026-01-02T08:00:00",
    "0000-01-01T00:00:00Z",
    "now",
    "",
]


def test_the_sql_instant_function_is_iso_instant(scratch: Scratch) -> None:
    rows = scratch.sql(
        "SELECT t, (extract(epoch FROM reporunner_iso_timestamptz(t)) * 1000000)::bigint "
        "FROM unnest(CAST(:texts AS text[])) AS t",
        params={"texts": INSTANT_TEXTS},
    )
    epoch = iso_instant("1970-01-01T00:00:00Z")
    assert epoch is not None
    for value, micros in rows:
        python = iso_instant(value)
        assert (value, micros) == (value, None if python is None else python - epoch)


REGEX_CASES = [
    ("^a.b$", ["a\nb", "axb", "axb\n", "a\nb\n"]),
    ("[^x]", ["\n", "x", "xy"]),
    ("\\W\\D\\S", ["\n\n\n", "é1a", "!!!"]),
    ("^b", ["a\nb", "b"]),
    ("a$", ["a\nb", "a\n", "ba"]),
    ("[a-c]+", ["ABC", "é", "xbx"]),
    ("\\w+é", ["aé", "Éé", "__é"]),
    ("[\\d_]{2}", ["1_", "a1", "__"]),
    ("(ab|c)*d", ["d", "abcd", "ABD"]),
    ("x\\.y", ["x.y", "xzy"]),
    ("k", ["K", "\u212a"]),  # the Kelvin sign folds to k only in Unicode rules
    ("s", ["S", "\u017f"]),  # long s likewise
]


@pytest.mark.parametrize("options", ["", "i", "m", "s", "ms", "ims", "x"])
def test_regexes_mean_the_same_in_both_engines(scratch: Scratch, options: str) -> None:
    for pattern, subjects in REGEX_CASES:
        regex = translate_regex(pattern, options)
        rows = scratch.sql(
            'SELECT s, s COLLATE "C" ~ CAST(:p AS text) FROM unnest(CAST(:s AS text[])) AS s',
            params={"p": regex.postgres, "s": subjects},
        )
        for subject, postgres in rows:
            python = re.search(regex.python, subject) is not None
            assert (pattern, options, subject, postgres) == (pattern, options, subject, python)


# MongoDB's documented behaviour where it differs from a plain walk of JSON
# (issue 11, item 9); each filter's MongoDB answer, checked in SQL and in the reference.
PARITY_DOCS: list[Any] = [
    {"a": [{"c": 1}, {"b": 2}], "s": "line\n", "m": [[{"k": 1}], 3]},
    {"a": [{"b": 2}], "s": "a\nc", "m": [{"k": 1}]},
    {"a": {"b": None}, "s": "abc", "m": [["x", 1]]},
    {"a": [1, 2], "s": "x\ny\n"},
]
PARITY_CASES: list[tuple[dict[str, Any], set[int]]] = [
    # an object in the array without "b": a.b is missing there, so null matches
    ({"a.b": None}, {0, 2, 3}),
    ({"a.b": {"$ne": None}}, {1}),
    ({"a.b": {"$in": [None, 5]}}, {0, 2, 3}),
    ({"a.b": {"$gte": None}}, {0, 2, 3}),
    ({"a.0.b": None}, {0, 2, 3}),  # a.0 of 0 is {"c": 1}: no b
    ({"a.0": None}, {2}),  # a numeric segment (an index too) never counts as lacking
    # $elemMatch with a document: an element that is an array is a document too
    ({"m": {"$elemMatch": {"k": 1}}}, {0, 1}),
    ({"m": {"$elemMatch": {"$or": [{"k": 1}, {"z": None}]}}}, {0, 1, 2}),
    ({"m": {"$elemMatch": {"k": {"$exists": False}}}}, {2}),
    # PCRE: $ matches before a final newline, [^...] matches a newline, a dot does not
    ({"s": {"$regex": "line$"}}, {0}),
    ({"s": {"$regex": "^x$"}}, set()),
    ({"s": {"$regex": "^x$", "$options": "m"}}, {3}),
    ({"s": {"$regex": "y$"}}, {3}),
    ({"s": {"$regex": "a[^b]c"}}, {1}),
    ({"s": {"$regex": "a.c"}}, {2}),
    ({"s": {"$regex": "a.c", "$options": "s"}}, {1, 2}),
    ({"s": {"$regex": "a\\Wc"}}, {1}),
]


def test_mongodb_parity_in_sql_and_in_the_reference(scratch: Scratch) -> None:
    filters = [f for f, _ in PARITY_CASES]
    got = scratch.ids(PARITY_DOCS, filters)
    for (filter_, expected), sql_ids in zip(PARITY_CASES, got, strict=True):
        reference = {i for i, d in enumerate(PARITY_DOCS) if matches(filter_, d)}
        assert (filter_, sql_ids, reference) == (filter_, expected, expected)
