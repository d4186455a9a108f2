"""The aggregation pipeline compiler: errors, SQL against the real PostgreSQL,
and agreement with the pure-Python reference on random documents and pipelines."""

from __future__ import annotations

import asyncio
import json
import math
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
from projections.pipeline import MAX_STAGES, compile_pipeline
from projections.reference_pipeline import compare_sort_values, run_pipeline


class Table:
    """A scratch table shaped like a collection (``_id text, data jsonb``), via asyncpg."""

    def __init__(self, target: PgTarget) -> None:
        self.name = f"pipeline_docs_{uuid.uuid4().hex[:8]}"
        self.loop = asyncio.new_event_loop()
        self.engine = create_async_engine(target.sqlalchemy_url("asyncpg"), pool_size=1)
        self.run(
            f"CREATE TABLE {self.name} (_id text PRIMARY KEY, ord int NOT NULL, "
            "org_id text NOT NULL, data jsonb NOT NULL)"
        )

    def run(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        async def go() -> list[Any]:
            async with self.engine.begin() as conn:
                result = await conn.execute(text(sql), params or {})
                return list(result.all()) if result.returns_rows else []

        return self.loop.run_until_complete(go())

    def load(self, documents: list[Any], org: str = "org") -> None:
        self.run(f"TRUNCATE {self.name}")
        if documents:
            self.run(
                f"INSERT INTO {self.name} SELECT i::text, i, :org, v "
                "FROM jsonb_array_elements(CAST(:docs AS jsonb)) WITH ORDINALITY AS t(v, i)",
                {"docs": json.dumps(documents), "org": org},
            )

    def aggregate(self, pipeline: Any, org: str = "org") -> list[Any]:
        fragment = compile_pipeline(
            pipeline,
            source_sql=f"SELECT data FROM {self.name} WHERE org_id = :org ORDER BY ord",
            source_params={"org": org},
        )
        return [row[0] for row in self.run(fragment.sql, fragment.params)]

    def close(self) -> None:
        self.run(f"DROP TABLE {self.name}")
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


@pytest.fixture(scope="module")
def table(db_target: PgTarget) -> Iterator[Table]:
    scratch = Table(db_target)
    yield scratch
    scratch.close()


def normal(value: Any) -> Any:
    """JSON with numbers made comparable: 2 == 2.0, decimal noise rounded away."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return round(float(value), 9) + 0.0
    if isinstance(value, list):
        return [normal(v) for v in value]
    return {k: normal(v) for k, v in value.items()}


def both(table: Table, pipeline: Any, docs: list[Any]) -> list[Any]:
    """Run ``pipeline`` in SQL and in the reference; they must agree (in order)."""
    table.load(docs)
    got = normal(table.aggregate(pipeline))
    expected = normal(run_pipeline(pipeline, docs))
    assert got == expected, (pipeline, docs)
    return got


DOCS: list[dict[str, Any]] = [
    {"_id": "1", "team": "a", "n": 3, "tags": ["x", "y"], "m": {"k": 1}, "s": "pear"},
    {"_id": "2", "team": "b", "n": 1.5, "tags": [], "m": {"k": 2}, "s": "Apple"},
    {"_id": "3", "team": "a", "n": "7", "tags": "z", "m": {"k": 1}},
    {"_id": "4", "team": None, "n": 10, "tags": None, "s": "apple"},
    {"_id": "5", "n": -2, "m": {"k": [1]}, "s": 4},
]


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        ([], DOCS),
        ([{"$match": {"team": "a"}}, {"$project": {"_id": 1}}], [{"_id": "1"}, {"_id": "3"}]),
        ([{"$match": {"n": {"$gt": 2}}}, {"$count": "c"}], [{"c": 2}]),
        ([{"$match": {"n": {"$gt": 100}}}, {"$count": "c"}], []),
        ([{"$skip": 3}, {"$project": {"_id": 1}}], [{"_id": "4"}, {"_id": "5"}]),
        ([{"$limit": 2}, {"$project": {"_id": 1}}], [{"_id": "1"}, {"_id": "2"}]),
        (
            [{"$skip": 1}, {"$limit": 1}, {"$project": {"_id": 0, "team": 1}}],
            [{"team": "b"}],
        ),
        # $sort: jsonb order; missing is null; [] < null < strings < numbers.
        (
            [{"$sort": {"n": 1}}, {"$project": {"_id": 1}}],
            [{"_id": "3"}, {"_id": "5"}, {"_id": "2"}, {"_id": "1"}, {"_id": "4"}],
        ),
        (
            [{"$sort": {"tags": -1}}, {"$project": {"_id": 1}}],
            [{"_id": "1"}, {"_id": "3"}, {"_id": "4"}, {"_id": "5"}, {"_id": "2"}],
        ),
        # Stable: ties keep input order; code-point strings ("Apple" < "apple" < "pear").
        (
            [{"$sort": {"team": 1, "s": 1}}, {"$project": {"_id": 1}}],
            [{"_id": "4"}, {"_id": "5"}, {"_id": "3"}, {"_id": "1"}, {"_id": "2"}],
        ),
        (
            [{"$sort": {"s": -1}}, {"$project": {"_id": 1, "s": 1}}],
            [
                {"_id": "5", "s": 4},
                {"_id": "1", "s": "pear"},
                {"_id": "4", "s": "apple"},
                {"_id": "2", "s": "Apple"},
                {"_id": "3"},
            ],
        ),
        # $group and every accumulator.
        (
            [
                {
                    "$group": {
                        "_id": "$team",
                        "count": {"$count": {}},
                        "ones": {"$sum": 1},
                        "total": {"$sum": "$n"},
                        "avg": {"$avg": "$n"},
                        "min": {"$min": "$n"},
                        "max": {"$max": "$n"},
                        "ids": {"$push": "$_id"},
                        "ss": {"$push": "$s"},
                        "first": {"$first": "$s"},
                        "last": {"$last": "$s"},
                    }
                }
            ],
            [
                {
                    "_id": "a",
                    "count": 2,
                    "ones": 2,
                    "total": 3,
                    "avg": 3,
                    "min": 3,
                    "max": "7",
                    "ids": ["1", "3"],
                    "ss": ["pear"],
                    "first": "pear",
                    "last": None,
                },
                {
                    "_id": "b",
                    "count": 1,
                    "ones": 1,
                    "total": 1.5,
                    "avg": 1.5,
                    "min": 1.5,
                    "max": 1.5,
                    "ids": ["2"],
                    "ss": ["Apple"],
                    "first": "Apple",
                    "last": "Apple",
                },
                {
                    "_id": None,
                    "count": 2,
                    "ones": 2,
                    "total": 8,
                    "avg": 4,
                    "min": -2,
                    "max": 10,
                    "ids": ["4", "5"],
                    "ss": ["apple", 4],
                    "first": "apple",
                    "last": 4,
                },
            ],
        ),
        (
            [{"$group": {"_id": None, "total": {"$sum": "$s"}, "avg": {"$avg": "$s"}}}],
            [{"_id": None, "total": 4, "avg": 4}],
        ),
        (
            [{"$group": {"_id": None, "total": {"$sum": "$zz"}, "avg": {"$avg": "$zz"}}}],
            [{"_id": None, "total": 0, "avg": None}],
        ),
        (
            [{"$group": {"_id": None, "min": {"$min": "$s"}, "max": {"$max": "$zz"}}}],
            [{"_id": None, "min": 4, "max": None}],
        ),
        ([{"$match": {"n": 99}}, {"$group": {"_id": None, "c": {"$count": {}}}}], []),
        (
            [{"$group": {"_id": "$m.k", "ids": {"$push": "$_id"}}}],
            [
                {"_id": 1, "ids": ["1", "3"]},
                {"_id": 2, "ids": ["2"]},
                {"_id": None, "ids": ["4"]},
                {"_id": [1], "ids": ["5"]},
            ],
        ),
        (
            [
                {"$sort": {"_id": -1}},
                {"$group": {"_id": {"t": "$team", "k": "$m.k"}, "c": {"$sum": 2.5}}},
            ],
            [
                {"_id": {"k": [1]}, "c": 2.5},
                {"_id": {"t": None}, "c": 2.5},
                {"_id": {"t": "a", "k": 1}, "c": 5},
                {"_id": {"t": "b", "k": 2}, "c": 2.5},
            ],
        ),
        (
            [{"$group": {"_id": None, "docs": {"$push": {"i": "$_id", "z": "$zz"}}}}],
            [{"_id": None, "docs": [{"i": str(i)} for i in range(1, 6)]}],
        ),
        # $project: inclusion, exclusion, computed fields, $literal, $$ROOT.
        (
            [{"$limit": 2}, {"$project": {"team": 1, "k": "$m.k", "c": {"$literal": {"a": 1}}}}],
            [
                {"_id": "1", "team": "a", "k": 1, "c": {"a": 1}},
                {"_id": "2", "team": "b", "k": 2, "c": {"a": 1}},
            ],
        ),
        (
            [{"$skip": 3}, {"$project": {"_id": 0, "zz": 1, "t": "$nope", "x": "lit"}}],
            [{"x": "lit"}, {"x": "lit"}],
        ),
        (
            [{"$skip": 3}, {"$project": {"n": 0, "tags": 0, "m": 0, "s": 0}}],
            [{"_id": "4", "team": None}, {"_id": "5"}],
        ),
        (
            [{"$limit": 1}, {"$project": {"_id": 0}}],
            [{k: v for k, v in DOCS[0].items() if k != "_id"}],
        ),
        (
            [{"$limit": 1}, {"$project": {"_id": "$team", "all": ["$n", "$zz", 1]}}],
            [{"_id": "a", "all": [3, None, 1]}],
        ),
        ([{"$limit": 1}, {"$project": {"r": "$$ROOT", "_id": 0}}], [{"r": DOCS[0]}]),
        # $unwind: arrays fan out in order; scalars stay; null/missing/[] drop.
        (
            [{"$unwind": "$tags"}, {"$project": {"tags": 1}}],
            [
                {"_id": "1", "tags": "x"},
                {"_id": "1", "tags": "y"},
                {"_id": "3", "tags": "z"},
            ],
        ),
        (
            [
                {"$unwind": {"path": "$tags", "preserveNullAndEmptyArrays": True}},
                {"$project": {"tags": 1}},
            ],
            [
                {"_id": "1", "tags": "x"},
                {"_id": "1", "tags": "y"},
                {"_id": "2"},
                {"_id": "3", "tags": "z"},
                {"_id": "4", "tags": None},
                {"_id": "5"},
            ],
        ),
        (
            [{"$unwind": "$m.k"}, {"$project": {"m": 1}}],
            [
                {"_id": "1", "m": {"k": 1}},
                {"_id": "2", "m": {"k": 2}},
                {"_id": "3", "m": {"k": 1}},
                {"_id": "5", "m": {"k": 1}},
            ],
        ),
        (
            [
                {"$unwind": "$tags"},
                {"$group": {"_id": "$tags", "n": {"$count": {}}}},
                {"$sort": {"_id": -1}},
            ],
            [{"_id": "z", "n": 1}, {"_id": "y", "n": 1}, {"_id": "x", "n": 1}],
        ),
        # Numeric segments walk objects only, never index arrays.
        (
            [{"$limit": 1}, {"$project": {"_id": 0, "t": "$tags.0"}}],
            [{}],
        ),
    ],
)
def test_stages_in_sql_and_in_the_reference(
    table: Table, pipeline: list[Any], expected: list[Any]
) -> None:
    assert both(table, pipeline, DOCS) == normal(expected)


def test_group_keys_compare_as_jsonb(table: Table) -> None:
    docs = [{"k": 1}, {"k": 1.0}, {"k": True}, {"k": "1"}, {"k": {"a": 1, "b": [2]}}]
    docs.append({"k": {"b": [2.0], "a": 1}})
    got = both(table, [{"$group": {"_id": "$k", "n": {"$count": {}}}}], docs)
    assert [g["n"] for g in got] == [2, 1, 1, 2]


def test_numeric_segments_in_paths_read_object_keys(table: Table) -> None:
    docs = [{"a": {"0": "key"}}, {"a": ["elem"]}]
    got = both(table, [{"$project": {"_id": 0, "v": "$a.0"}}], docs)
    assert got == [{"v": "key"}, {}]
    got = both(table, [{"$unwind": "$a.0"}, {"$sort": {"a.0": 1}}], [{"a": {"0": [2, 1]}}])
    assert got == [{"a": {"0": 1}}, {"a": {"0": 2}}]


def test_sort_mirrors_postgresql_jsonb_order(table: Table) -> None:
    ordered: list[Any] = [
        [], None, "", "B", "a", "é", "ab", -1, 0, 0.5, 2, 10, False, True,
        [None], ["z"], [1], [[]], [{}], [1, 2], [0, 0, 0],
        {}, {"b": 1}, {"a": 2}, {"aa": 1, "b": 1}, {"b": 1, "c": 1}, {"a": [1]}, {"a": "x"},
    ]  # fmt: skip
    docs = [{"i": i, "v": v} for i, v in enumerate(reversed(ordered))]
    for direction in (1, -1):
        table.load(docs)
        got = table.aggregate([{"$sort": {"v": direction}}])
        assert got == run_pipeline([{"$sort": {"v": direction}}], docs)
    assert compare_sort_values([], None) < 0 < compare_sort_values([1], True)


def test_the_query_is_confined_to_the_source(table: Table) -> None:
    table.load([{"x": 1}], org="other")
    assert table.aggregate([{"$count": "c"}], org="org") == []
    assert table.aggregate([{"$count": "c"}], org="other") == [{"c": 1}]


def test_values_never_enter_the_sql_text() -> None:
    sentinel = "x'); DROP TABLE users; --"
    fragment = compile_pipeline(
        [
            {"$match": {"name": sentinel}},
            {"$group": {"_id": {"k": "$a"}, "c": {"$push": sentinel}}},
            {"$project": {"c": 1, "lit": sentinel}},
            {"$count": "total"},
        ],
        source_sql="SELECT data FROM doc_workflows WHERE org_id = :org",
        source_params={"org": "o"},
    )
    assert sentinel not in fragment.sql and "DROP" not in fragment.sql
    assert "total" not in fragment.sql and "lit" not in fragment.sql
    assert any(sentinel in str(value) for value in fragment.params.values())
    assert fragment.params["org"] == "o"


def test_stage_parameters_never_collide() -> None:
    pipeline = [{"$match": {"a": i}} for i in range(12)]
    fragment = compile_pipeline(pipeline, source_sql="SELECT data FROM t", source_params={})
    # Every stage's values survive under their own names: none overwrote another's.
    assert sorted(
        v for v in fragment.params.values() if v.startswith('{"a":') and "[" not in v
    ) == sorted(f'{{"a":{i}}}' for i in range(12))
    assert len(fragment.params) == 24
    with pytest.raises(ValueError, match="clash"):
        compile_pipeline(
            [{"$limit": 1}], source_sql="SELECT data FROM t", source_params={"pl1_b0": 1}
        )


@pytest.mark.parametrize(
    ("pipeline", "words"),
    [
        ({"$match": {}}, "must be a JSON array"),
        ([{"$limit": 1}] * (MAX_STAGES + 1), f"at most {MAX_STAGES} stages"),
        ([{"$out": "x"}], "unknown stage '$out'"),
        ([{"$match": {}, "$limit": 1}], "pipeline stage 1 must be an object with exactly one key"),
        (["$match"], "exactly one key"),
        ([{"$match": {"a": {"$foo": 1}}}], "pipeline stage 1 ($match): unknown operator '$foo'"),
        ([{"$match": []}], "($match): a filter must be a JSON object"),
        ([{"$group": []}], "($group) needs an object"),
        ([{"$group": {"n": {"$sum": 1}}}], "($group) needs an _id"),
        ([{"$group": {"_id": None, "n": {"$median": "$a"}}}], "unknown accumulator '$median'"),
        ([{"$group": {"_id": None, "n": 1}}], "field 'n' needs an object with one accumulator"),
        ([{"$group": {"_id": None, "n": {"$sum": 1, "$avg": 1}}}], "one accumulator"),
        ([{"$group": {"_id": None, "n": {"$sum": "a"}}}], "$sum needs a number or a field"),
        ([{"$group": {"_id": None, "n": {"$avg": True}}}], "$avg needs a number"),
        ([{"$group": {"_id": None, "n": {"$min": [1]}}}], "$min needs a number, a string"),
        ([{"$group": {"_id": None, "n": {"$count": 1}}}], "$count takes an empty object"),
        ([{"$group": {"_id": None, "a.b": {"$count": {}}}}], "invalid output field name 'a.b'"),
        ([{"$group": {"_id": "$a..b"}}], "invalid field path"),
        ([{"$group": {"_id": {"$add": [1, 2]}}}], "unknown expression operator '$add'"),
        ([{"$group": {"_id": "$$NOW"}}], "unknown variable '$$NOW'"),
        ([{"$group": {"_id": {"x": float("nan")}}}], "invalid constant: is not a finite number"),
        ([{"$project": {"a": {"$literal": "\x00"}}}], "invalid constant: contains a NUL"),
        ([{"$project": {"a": {"$literal": 1e308}}}], "invalid constant: number 1e+308 is a whole"),
        ([{"$project": {"a": {"$literal": [10**400]}}}], "(at [0] inside it): an integer of 401"),
        ([{"$project": {"a": "\ud800"}}], "invalid constant: contains invalid Unicode"),
        ([{"$group": {"_id": "\x00"}}], "($group) _id: invalid constant: contains a NUL"),
        ([{"$sort": {}}], "($sort) needs a non-empty object"),
        ([{"$sort": {"a": 2}}], "direction of 'a' must be 1 or -1"),
        ([{"$sort": {"a": True}}], "must be 1 or -1"),
        ([{"$sort": {"a-b": 1}}], "invalid field path"),
        ([{"$sort": {"$a": 1}}], "invalid field path"),
        ([{"$skip": -1}], "($skip) needs a non-negative integer"),
        ([{"$skip": 1.5}], "($skip) needs a non-negative integer"),
        ([{"$limit": 0}], "($limit) needs a positive integer"),
        ([{"$limit": True}], "($limit) needs a positive integer"),
        ([{"$limit": 2**63}], "at most 2^53"),
        ([{"$count": ""}], "($count) needs a field name"),
        ([{"$count": "$x"}], "($count) needs a field name"),
        ([{"$count": 3}], "($count) needs a field name"),
        ([{"$project": {}}], "($project) needs a non-empty object"),
        ([{"$project": {"a": 1, "b": 0}}], "cannot mix inclusion and exclusion"),
        ([{"$project": {"a": "$x", "b": 0}}], "cannot mix inclusion and exclusion"),
        ([{"$project": {"a": 2}}], "'a' must be 1, 0, true, false or an expression"),
        ([{"$project": {"a.b": 1}}], "invalid field 'a.b'"),
        ([{"$project": {"a": {"b": 1}}}], "nested projection at 'a'"),
        ([{"$project": {"a": 0, "_id": "$x"}}], "cannot compute _id while excluding"),
        ([{"$unwind": "tags"}], '($unwind) needs a field reference like "$tags"'),
        ([{"$unwind": {"path": "$a", "includeArrayIndex": "i"}}], "unknown option"),
        ([{"$unwind": {"preserveNullAndEmptyArrays": True}}], "($unwind) needs a path"),
        ([{"$unwind": {"path": "$a", "preserveNullAndEmptyArrays": 1}}], "true or false"),
        ([{"$limit": 1}, {"$bucket": {}}], "pipeline stage 2: unknown stage '$bucket'"),
    ],
)
def test_bad_pipelines_raise_naming_the_problem(pipeline: Any, words: str) -> None:
    for run in (
        lambda: compile_pipeline(pipeline, source_sql="SELECT data FROM t", source_params={}),
        lambda: run_pipeline(pipeline, []),
    ):
        with pytest.raises(QueryError) as error:
            run()
        assert words in str(error.value)


# --- property: SQL and reference agree -------------------------------------------

keys = st.sampled_from(["a", "b", "c"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False).map(lambda f: round(f, 2)),
    st.sampled_from(["", "a", "B", "ab", "é", "10"]),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)
documents = st.lists(st.dictionaries(keys, values, max_size=3), min_size=0, max_size=8)
path_strings = st.lists(keys, min_size=1, max_size=2).map(".".join)
refs = path_strings.map(lambda p: "$" + p)
expressions = st.one_of(
    refs,
    scalars.filter(lambda v: not (isinstance(v, str) and v.startswith("$"))),
    st.dictionaries(keys, refs, min_size=1, max_size=2),
    st.lists(refs, max_size=2),
    st.just("$$ROOT"),
)
projected = st.one_of(
    st.just(1),
    st.just(True),
    refs,
    st.lists(refs, max_size=2),
    st.sampled_from(["lit", None, "$$ROOT"]),
    values.map(lambda v: {"$literal": v}),
)
group_ids = st.one_of(
    st.none(), refs, st.dictionaries(st.sampled_from(["k", "j"]), refs, min_size=1, max_size=2)
)
accumulators: st.SearchStrategy[tuple[str, Any]] = st.one_of(
    st.tuples(st.sampled_from(["$sum", "$avg"]), st.one_of(refs, st.integers(-2, 2))),
    st.tuples(st.sampled_from(["$min", "$max"]), st.one_of(refs, st.just(1), st.just("s"))),
    st.tuples(st.just("$count"), st.just({})),
    st.tuples(st.sampled_from(["$push", "$first", "$last"]), expressions),
)


@st.composite
def stages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["$match", "$group", "$sort", "$skip", "$limit", "$count", "$project", "$unwind"]
        )
    )
    if kind == "$match":
        path = draw(path_strings)
        condition = draw(
            st.one_of(
                scalars,
                st.fixed_dictionaries({"$gt": st.one_of(st.integers(-5, 5), st.just("a"))}),
                st.fixed_dictionaries({"$exists": st.booleans()}),
                st.fixed_dictionaries({"$in": st.lists(scalars, max_size=3)}),
            )
        )
        return {"$match": {path: condition}}
    if kind == "$group":
        spec: dict[str, Any] = {"_id": draw(group_ids)}
        for i, (operator, operand) in enumerate(draw(st.lists(accumulators, max_size=4))):
            spec[f"f{i}"] = {operator: operand}
        return {"$group": spec}
    if kind == "$sort":
        paths = draw(st.lists(path_strings, min_size=1, max_size=2, unique=True))
        return {"$sort": {p: draw(st.sampled_from([1, -1])) for p in paths}}
    if kind == "$skip":
        return {"$skip": draw(st.integers(0, 4))}
    if kind == "$limit":
        return {"$limit": draw(st.integers(1, 4))}
    if kind == "$count":
        return {"$count": draw(st.sampled_from(["a", "n"]))}
    if kind == "$project":
        mode = draw(st.sampled_from(["include", "exclude"]))
        names = draw(st.lists(st.sampled_from(["a", "b", "c", "_id"]), min_size=1, max_size=3))
        if mode == "exclude":
            return {"$project": dict.fromkeys(names, 0)}
        spec = {n: draw(projected) for n in names}
        if "_id" in spec and draw(st.booleans()):
            spec["_id"] = 0
        return {"$project": spec}
    path = draw(refs)
    if draw(st.booleans()):
        return {"$unwind": {"path": path, "preserveNullAndEmptyArrays": draw(st.booleans())}}
    return {"$unwind": path}


pipelines = st.lists(stages(), min_size=1, max_size=4)


@settings(max_examples=600, deadline=None)
@given(docs=documents, pipeline=pipelines)
def test_sql_agrees_with_the_reference(table: Table, docs: list[Any], pipeline: Any) -> None:
    # Every stage defines its output order (stable sorts, groups by first
    # appearance, the source's order otherwise), so results compare as lists.
    both(table, pipeline, docs)


def test_normal_treats_integers_and_floats_alike() -> None:
    assert normal({"a": [2, 2.0000000001]}) == normal({"a": [2.0, 2]})
    assert normal(True) is True and normal(1) == 1.0 and not math.isnan(normal(0.1))
