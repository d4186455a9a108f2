"""MongoDB-style aggregation pipelines compiled to ONE parameterised SQL query.

Stages: ``$match``, ``$group``, ``$sort``, ``$skip``, ``$limit``, ``$count``,
``$project`` and ``$unwind``, with MongoDB's semantics restricted to JSON.
``projections.reference_pipeline`` evaluates the same language in Python;
property tests hold the two together.

The query is nested subqueries, one per stage; every level yields a jsonb
``data`` column and a ``pos`` column, a number ordering the documents in the
stream, so order is explicit (SQL does not promise that a subquery's order
survives):

* the source's rows are numbered in the order it yields them;
* ``$sort`` is stable: ties keep their input order;
* ``$group`` emits groups in order of their first document; ``$first``,
  ``$last`` and ``$push`` follow input order;
* ``$unwind`` emits elements in array order, document by document.

The outermost query is ``SELECT data FROM (...) ORDER BY pos``. For speed,
leading ``$match`` stages filter the source's rows directly, and when the
documents are replaced later on (``$group``, ``$count``, an inclusion
``$project``) the source keeps only the top-level fields the stages read.

Where MongoDB and PostgreSQL differ, we chose (and the reference mirrors):

* ``$sort`` orders as PostgreSQL orders jsonb, which is not BSON's order:
  ``[] < null < strings < numbers < booleans < non-empty arrays < objects``;
  arrays compare by length first, then element by element; objects by
  number of keys, then key/value pairs in jsonb's storage order (shorter keys
  first). A missing field sorts as null. Top-level strings compare by code
  point (``COLLATE "C"``); strings nested in arrays/objects use the
  database's collation (C.UTF-8 in our deployments: code point as well).
* Field references (``"$a.b"``) walk objects only: no fan-out through arrays,
  no array indexing by a numeric segment.
* ``$min``/``$max`` consider numbers and strings only (null, booleans, arrays
  and objects are ignored); as in BSON, every number sorts below every string.
  ``$sum``/``$avg`` add numbers only, in exact decimal arithmetic (PostgreSQL
  ``numeric``); ``$sum`` of no numbers is 0, ``$avg`` of none is null.
* ``$first``/``$last`` of a missing value give null; ``$push`` skips it.
* Group keys are equal when jsonb says so (``1`` and ``1.0`` are one group).
* ``$project`` keys are top-level field names (no dotted or nested
  projections); ``{"$literal": v}`` sets a constant.

Values never enter SQL text: they are bind parameters (``CAST(:p AS jsonb)``).
Field paths are validated before they appear as ``#>`` path literals.

Work is bounded: at most ``MAX_STAGES`` stages and ``MAX_UNWIND_STAGES``
``$unwind``s; ``PipelineLimits`` caps the documents each ``$unwind`` emits (the
query fails past it, so an answer is never silently cut) and the documents
returned. The reference evaluator has no such caps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from domain.values import check_value
from projections.errors import QueryError
from projections.filters import SqlFragment, compile_filter, value_problem_text

MAX_STAGES = 50
MAX_UNWIND_STAGES = 4
MAX_PARAMETERS = 10_000  # bind parameters of one pipeline (asyncpg takes at most 32767)
MAX_FIELDS = 40
MAX_SORT_KEYS = 8
MAX_SKIP_LIMIT = 2**53
MAX_EXPRESSION_DEPTH = 8
_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_DIGITS = re.compile(r"^[0-9]+$")
STAGES = ("$match", "$group", "$sort", "$skip", "$limit", "$count", "$project", "$unwind")
ACCUMULATORS = ("$sum", "$avg", "$min", "$max", "$count", "$push", "$first", "$last")
_NUMERIC_ACCUMULATORS = ("$sum", "$avg", "$min", "$max")
_UNWIND_SPAN = 2**28  # jsonb arrays hold at most 2^28 - 1 elements
# Keeps PostgreSQL from inlining a stage's computed document into the next
# stage, where it would be rebuilt once per reference to it.
_FENCE = "OFFSET 0"


# -- the parsed pipeline (shared by the compiler and the reference) -----------


@dataclass(frozen=True)
class Ref:
    """The value at a dotted path (objects only); missing when absent."""

    path: tuple[str, ...]


@dataclass(frozen=True)
class Root:
    """The whole document (``$$ROOT``)."""


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Obj:
    """An object of expressions; fields whose value is missing are left out."""

    fields: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True)
class Arr:
    """An array of expressions; a missing value becomes null."""

    items: tuple[Expr, ...]


Expr = Ref | Root | Literal | Obj | Arr


@dataclass(frozen=True)
class Match:
    filter: Any
    fragment: SqlFragment


@dataclass(frozen=True)
class Accumulator:
    name: str
    operator: str
    operand: Expr | None  # None for $count


@dataclass(frozen=True)
class Group:
    key: Expr
    accumulators: tuple[Accumulator, ...]


@dataclass(frozen=True)
class Sort:
    keys: tuple[tuple[tuple[str, ...], bool], ...]  # (path, descending)


@dataclass(frozen=True)
class Skip:
    n: int


@dataclass(frozen=True)
class Limit:
    n: int


@dataclass(frozen=True)
class Count:
    name: str


@dataclass(frozen=True)
class Project:
    """Inclusion (``fields``: name -> expression, None keeps the field) or exclusion."""

    inclusion: bool
    fields: tuple[tuple[str, Expr | None], ...]


@dataclass(frozen=True)
class Unwind:
    path: tuple[str, ...]
    preserve: bool


Stage = Match | Group | Sort | Skip | Limit | Count | Project | Unwind


def stage_prefix(index: int) -> str:
    return f"pl{index}_"


def parse_pipeline(pipeline: Any) -> list[Stage]:
    """Validate ``pipeline``; raises ``QueryError`` naming the first problem."""
    if not isinstance(pipeline, list):
        raise QueryError(f"a pipeline must be a JSON array of stages, not {_kind(pipeline)}")
    if len(pipeline) > MAX_STAGES:
        raise QueryError(f"a pipeline may have at most {MAX_STAGES} stages, not {len(pipeline)}")
    stages = [_parse_stage(i, stage) for i, stage in enumerate(pipeline, start=1)]
    unwinds = sum(isinstance(stage, Unwind) for stage in stages)
    if unwinds > MAX_UNWIND_STAGES:
        raise QueryError(
            f"a pipeline may have at most {MAX_UNWIND_STAGES} $unwind stages, not {unwinds}"
        )
    return stages


def _parse_stage(index: int, stage: Any) -> Stage:
    if not isinstance(stage, dict) or len(stage) != 1:
        raise QueryError(
            f"pipeline stage {index} must be an object with exactly one key (the stage name), "
            f"not {_describe(stage)}"
        )
    ((name, spec),) = stage.items()
    where = f"pipeline stage {index} ({name})"
    if name not in STAGES:
        raise QueryError(
            f"pipeline stage {index}: unknown stage '{name}' (supported: {', '.join(STAGES)})"
        )
    if name == "$match":
        try:
            fragment = compile_filter(spec, column="data", param_prefix=stage_prefix(index) + "m")
        except QueryError as exc:
            raise QueryError(f"{where}: {exc}") from None
        return Match(spec, fragment)
    if name == "$group":
        return _parse_group(spec, where)
    if name == "$sort":
        return _parse_sort(spec, where)
    if name in ("$skip", "$limit"):
        minimum = 0 if name == "$skip" else 1
        if not _is_int(spec) or not minimum <= spec <= MAX_SKIP_LIMIT:
            adjective = "non-negative" if name == "$skip" else "positive"
            raise QueryError(
                f"{where} needs a {adjective} integer (at most 2^53), not {_describe(spec)}"
            )
        return Skip(spec) if name == "$skip" else Limit(spec)
    if name == "$count":
        if not isinstance(spec, str) or not _NAME.match(spec):
            raise QueryError(
                f"{where} needs a field name (letters, digits, underscores), not {_describe(spec)}"
            )
        return Count(spec)
    if name == "$project":
        return _parse_project(spec, where)
    return _parse_unwind(spec, where)


def _parse_group(spec: Any, where: str) -> Group:
    if not isinstance(spec, dict):
        raise QueryError(f"{where} needs an object, not {_describe(spec)}")
    if "_id" not in spec:
        raise QueryError(f"{where} needs an _id (null, a field reference or an object of them)")
    if len(spec) - 1 > MAX_FIELDS:
        raise QueryError(f"{where} may compute at most {MAX_FIELDS} fields")
    key = parse_expression(spec["_id"], f"{where} _id", 0)
    accumulators = []
    for name, value in spec.items():
        if name == "_id":
            continue
        field = f"{where} field '{name}'"
        if not _NAME.match(name):
            raise QueryError(f"{where}: invalid output field name '{name}'")
        if not isinstance(value, dict) or len(value) != 1:
            raise QueryError(
                f'{field} needs an object with one accumulator, e.g. {{"$sum": 1}}, '
                f"not {_describe(value)}"
            )
        ((operator, operand),) = value.items()
        if operator not in ACCUMULATORS:
            raise QueryError(
                f"{field}: unknown accumulator '{operator}' (supported: {', '.join(ACCUMULATORS)})"
            )
        if operator == "$count":
            if operand != {}:
                raise QueryError(f"{field}: $count takes an empty object {{}}")
            accumulators.append(Accumulator(name, operator, None))
            continue
        allowed = _is_number(operand) or (
            isinstance(operand, str) and (operand.startswith("$") or operator in ("$min", "$max"))
        )
        if operator in _NUMERIC_ACCUMULATORS and not allowed:
            kinds = "a number" if operator in ("$sum", "$avg") else "a number, a string"
            raise QueryError(
                f"{field}: {operator} needs {kinds} or a field reference, not {_describe(operand)}"
            )
        expression = parse_expression(operand, f"{field} ({operator})", 0)
        accumulators.append(Accumulator(name, operator, expression))
    return Group(key, tuple(accumulators))


def _parse_sort(spec: Any, where: str) -> Sort:
    if not isinstance(spec, dict) or not spec:
        raise QueryError(f"{where} needs a non-empty object of field: 1 or -1")
    if len(spec) > MAX_SORT_KEYS:
        raise QueryError(f"{where} may sort on at most {MAX_SORT_KEYS} fields")
    keys = []
    for path, direction in spec.items():
        if not _is_int(direction) or direction not in (1, -1):
            raise QueryError(f"{where}: direction of '{path}' must be 1 or -1")
        keys.append((parse_path(path, where), direction == -1))
    return Sort(tuple(keys))


def _parse_project(spec: Any, where: str) -> Project:
    if not isinstance(spec, dict) or not spec:
        raise QueryError(f"{where} needs a non-empty object")
    if len(spec) > MAX_FIELDS:
        raise QueryError(f"{where} may name at most {MAX_FIELDS} fields")
    included: list[tuple[str, Expr | None]] = []
    excluded: list[str] = []
    id_spec: Any = None
    for name, value in spec.items():
        if not _NAME.match(name):
            raise QueryError(
                f"{where}: invalid field '{name}' (top-level names only: letters, digits, "
                "underscores)"
            )
        if name == "_id":
            id_spec = value
            continue
        if value is True or (_is_int(value) and value == 1):
            included.append((name, None))
        elif value is False or (_is_int(value) and value == 0):
            excluded.append(name)
        elif _is_number(value):
            raise QueryError(f"{where}: '{name}' must be 1, 0, true, false or an expression")
        elif isinstance(value, dict) and set(value) != {"$literal"}:
            raise QueryError(
                f"{where}: nested projection at '{name}' is not supported "
                '(use a field reference, or {"$literal": ...} for a constant object)'
            )
        else:
            included.append((name, parse_expression(value, f"{where} field '{name}'", 0)))
    if included and excluded:
        raise QueryError(
            f"{where} cannot mix inclusion and exclusion (only _id may be excluded "
            f"when including): '{excluded[0]}'"
        )
    id_excluded = id_spec is False or (_is_int(id_spec) and id_spec == 0)
    id_included = id_spec is True or (_is_int(id_spec) and id_spec == 1)
    if excluded or (not included and id_excluded):
        if id_spec is not None and not (id_excluded or id_included):
            raise QueryError(f"{where} cannot compute _id while excluding fields")
        return Project(False, tuple((n, None) for n in (["_id"] if id_excluded else []) + excluded))
    fields: list[tuple[str, Expr | None]] = []
    if id_spec is None or id_included:
        fields.append(("_id", None))
    elif not id_excluded:
        if _is_number(id_spec):
            raise QueryError(f"{where}: '_id' must be 1, 0, true, false or an expression")
        fields.append(("_id", parse_expression(id_spec, f"{where} field '_id'", 0)))
    return Project(True, tuple(fields + included))


def _parse_unwind(spec: Any, where: str) -> Unwind:
    preserve: Any = False
    if isinstance(spec, dict):
        unknown = set(spec) - {"path", "preserveNullAndEmptyArrays"}
        if unknown:
            raise QueryError(f"{where}: unknown option '{sorted(unknown)[0]}'")
        if "path" not in spec:
            raise QueryError(f"{where} needs a path")
        preserve = spec.get("preserveNullAndEmptyArrays", False)
        if not isinstance(preserve, bool):
            raise QueryError(f"{where}: preserveNullAndEmptyArrays must be true or false")
        spec = spec["path"]
    if not isinstance(spec, str) or not spec.startswith("$") or spec.startswith("$$"):
        raise QueryError(f'{where} needs a field reference like "$tags", not {_describe(spec)}')
    return Unwind(parse_path(spec[1:], where), preserve)


def parse_expression(value: Any, where: str, depth: int) -> Expr:
    if depth > MAX_EXPRESSION_DEPTH:
        raise QueryError(f"{where}: expression nested deeper than {MAX_EXPRESSION_DEPTH} levels")
    if isinstance(value, str):
        if value == "$$ROOT":
            return Root()
        if value.startswith("$$"):
            raise QueryError(f"{where}: unknown variable '{value}' (only $$ROOT)")
        if value.startswith("$"):
            return Ref(parse_path(value[1:], where))
        _check_json(value, where)
        return Literal(value)
    if value is None or isinstance(value, bool):
        return Literal(value)
    if isinstance(value, int | float):
        _check_json(value, where)
        return Literal(value)
    if isinstance(value, list):
        if len(value) > MAX_FIELDS:
            raise QueryError(f"{where}: arrays may hold at most {MAX_FIELDS} expressions")
        return Arr(tuple(parse_expression(v, where, depth + 1) for v in value))
    if isinstance(value, dict):
        if set(value) == {"$literal"}:
            _check_json(value["$literal"], where)
            return Literal(value["$literal"])
        operators = [k for k in value if k.startswith("$")]
        if operators:
            raise QueryError(f"{where}: unknown expression operator '{operators[0]}'")
        if len(value) > MAX_FIELDS:
            raise QueryError(f"{where}: objects may hold at most {MAX_FIELDS} fields")
        for name in value:
            if not _NAME.match(name):
                raise QueryError(f"{where}: invalid field name '{name}'")
        return Obj(tuple((k, parse_expression(v, where, depth + 1)) for k, v in value.items()))
    raise QueryError(f"{where}: {_describe(value)} is not an expression")


def parse_path(path: Any, where: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not _PATH.match(path):
        raise QueryError(
            f"{where}: invalid field path {_describe(path)} "
            "(dotted names of letters, digits and underscores)"
        )
    return tuple(path.split("."))


def _check_json(value: Any, where: str) -> None:
    """A constant must keep the value contract (``domain.values``): jsonb stores
    it and every reader of the answer can encode what it reads back."""
    problems = check_value(value)
    if problems:
        raise QueryError(f"{where}: {value_problem_text(problems[0], 'invalid constant')}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and not math.isfinite(value))
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the compiler ---------------------------------------------------------------


@dataclass(frozen=True)
class PipelineLimits:
    """Bounds on the work of one run; ``None`` is unbounded.

    ``max_unwind_rows`` caps the documents each ``$unwind`` stage may emit:
    past it the query fails with ``UNWIND_CAP_MARKER`` in its error (see
    ``unwind_cap_exceeded``). ``max_results`` caps the documents the query
    returns: it returns at most one more, so the caller can tell.
    """

    max_unwind_rows: int | None = None
    max_results: int | None = None


# PostgreSQL has no RAISE outside PL/pgSQL: a stage past its row cap casts this
# text to an integer, which fails at run time with the text in its message.
UNWIND_CAP_MARKER = "reporunner: $unwind row cap"


def unwind_cap_exceeded(message: str) -> bool:
    """Whether PostgreSQL's error ``message`` (not the statement, which holds the
    marker too) is a ``$unwind`` stage passing ``max_unwind_rows``."""
    return f'"{UNWIND_CAP_MARKER}"' in message


def compile_pipeline(
    pipeline: Any,
    *,
    source_sql: str,
    source_params: dict[str, Any],
    limits: PipelineLimits = PipelineLimits(),
) -> SqlFragment:
    """One SQL query running ``pipeline`` over ``source_sql`` (trusted; yields ``data jsonb``).

    The query yields one ``data`` jsonb column, in the pipeline's order.
    """
    stages = parse_pipeline(pipeline)
    # Leading $match stages filter the source's rows before they are numbered
    # (and narrowed, below): they see the stored documents.
    leading = 0
    while leading < len(stages) and isinstance(stages[leading], Match):
        leading += 1
    matches = [stage for stage in stages[:leading] if isinstance(stage, Match)]
    params: dict[str, Any] = {}
    for match in matches:
        params.update(match.fragment.params)
    where = " AND ".join(match.fragment.sql for match in matches)
    narrower = _StageCompiler(stage_prefix(0), "s0")
    keep = _fields_to_keep(stages[leading:])
    data = "data"
    if keep is not None:  # an inclusion $project of those fields: missing ones stay missing
        data = narrower.project(Project(True, tuple((name, None) for name in sorted(keep))), data)
    params.update(narrower.params)
    # The fence keeps PostgreSQL from pushing the filters into the source's
    # scan: it cannot tell how selective bound values are (generic plans of
    # prepared statements), and would probe the GIN index over every
    # organisation's documents even for {"deleted": false}.
    sql = (
        f"SELECT {data} AS data, row_number() OVER () AS pos "
        f"FROM (SELECT data FROM ({source_sql}) AS src {_FENCE}) AS s0"
        + (f" WHERE {where}" if where else "")
    )
    for index, stage in enumerate(stages[leading:], start=leading + 1):
        compiler = _StageCompiler(stage_prefix(index), f"s{index}")
        sql = compiler.stage(stage, sql)
        if isinstance(stage, Unwind) and limits.max_unwind_rows is not None:
            sql = compiler.row_cap(sql, limits.max_unwind_rows)
        params.update(compiler.params)
    if len(params) > MAX_PARAMETERS:
        raise QueryError(
            f"pipeline too large: it needs {len(params)} bound values, "
            f"at most {MAX_PARAMETERS} are allowed"
        )
    clash = set(params) & set(source_params)
    if clash:
        raise ValueError(f"source parameters clash with the pipeline's: {sorted(clash)}")
    final = f"s{len(stages) + 1}"
    limit = "" if limits.max_results is None else f" LIMIT {int(limits.max_results) + 1}"
    return SqlFragment(
        f"SELECT data FROM ({sql}) AS {final} ORDER BY pos{limit}", {**source_params, **params}
    )


def _fields_to_keep(stages: list[Stage]) -> frozenset[str] | None:
    """The top-level fields to keep of the source's documents; None keeps them whole.

    Narrowing costs a little per document. It pays when the first stage would
    carry whole documents on: $unwind copies one per element, $sort, $skip and
    $limit sort them, an exclusion $project rebuilds them. ($group, $count and
    an inclusion $project read their fields in place.)
    """
    if not stages or isinstance(stages[0], Group | Count):
        return None
    if isinstance(stages[0], Project) and stages[0].inclusion:
        return None
    return _needed_fields(stages)


def _needed_fields(stages: list[Stage]) -> frozenset[str] | None:
    """The top-level fields of their input that ``stages`` read; None when they need it all.

    Walks back from the end, where whole documents are the result: a stage that
    builds new documents ($group, $count, an inclusion $project) needs only
    what it reads; the others pass documents on and add what they read.
    """
    needed: frozenset[str] | None = None
    for stage in reversed(stages):
        if isinstance(stage, Group):
            operands = [a.operand for a in stage.accumulators if a.operand is not None]
            needed = _expression_fields([stage.key, *operands])
        elif isinstance(stage, Count):
            needed = frozenset()
        elif isinstance(stage, Project) and stage.inclusion:
            kept = [Ref((name,)) if e is None else e for name, e in stage.fields]
            needed = _expression_fields(kept)
        elif needed is None:
            continue
        elif isinstance(stage, Project):
            needed -= {name for name, _ in stage.fields}
        elif isinstance(stage, Match):
            read = _filter_fields(stage.filter)
            needed = None if read is None else needed | read
        elif isinstance(stage, Sort):
            needed |= {path[0] for path, _ in stage.keys}
        elif isinstance(stage, Unwind):
            needed |= {stage.path[0]}
    return needed


def _expression_fields(expressions: Iterable[Expr]) -> frozenset[str] | None:
    fields: set[str] = set()
    for expression in expressions:
        if isinstance(expression, Root):
            return None
        if isinstance(expression, Ref):
            fields.add(expression.path[0])
            continue
        if isinstance(expression, Arr):
            inner = _expression_fields(expression.items)
        elif isinstance(expression, Obj):
            inner = _expression_fields(e for _, e in expression.fields)
        else:
            continue
        if inner is None:
            return None
        fields |= inner
    return frozenset(fields)


def _filter_fields(filter_: dict[str, Any]) -> frozenset[str] | None:
    """The top-level fields a (validated) filter reads; None for an operator we don't know.

    Field operators ($elemMatch and $not included) read only their own field.
    """
    fields: set[str] = set()
    for key, condition in filter_.items():
        if key in ("$and", "$or", "$nor"):
            for operand in condition:
                read = _filter_fields(operand)
                if read is None:
                    return None
                fields |= read
        elif key.startswith("$"):
            return None
        else:
            fields.add(key.split(".")[0])
    return frozenset(fields)


class _StageCompiler:
    def __init__(self, prefix: str, alias: str) -> None:
        self.prefix = prefix
        self.alias = alias
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"{self.prefix}b{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def json(self, value: Any) -> str:
        return f"CAST({self.bind(json.dumps(value, allow_nan=False))} AS jsonb)"

    def text(self, value: str) -> str:
        return f"CAST({self.bind(value)} AS text)"

    def stage(self, stage: Stage, previous: str) -> str:
        a = self.alias
        source = f"({previous}) AS {a}"
        if isinstance(stage, Match):
            self.params.update(stage.fragment.params)
            return f"SELECT data, pos FROM {source} WHERE {stage.fragment.sql}"
        if isinstance(stage, Skip):
            return f"SELECT data, pos FROM {source} ORDER BY pos OFFSET {self.bind(stage.n)}"
        if isinstance(stage, Limit):
            return f"SELECT data, pos FROM {source} ORDER BY pos LIMIT {self.bind(stage.n)}"
        if isinstance(stage, Count):
            return (
                f"SELECT jsonb_build_object({self.text(stage.name)}, count(*)) AS data, "
                f"1 AS pos FROM {source} HAVING count(*) > 0"
            )
        if isinstance(stage, Sort):
            # Each key is read once, below a fence. Strings and numbers compare
            # as text and numeric (their jsonb order, and much cheaper than
            # comparing jsonb); only other values fall back to jsonb.
            keys, order = [], []
            for i, (path, descending) in enumerate(stage.keys):
                keys.append(f"coalesce({_ref_sql(f'{a}.data', path)}, 'null'::jsonb) AS k{i}")
                key, direction = f"k{i}", "DESC" if descending else "ASC"
                order += [
                    f"{_rank_sql(key)} {direction}",
                    f"(CASE WHEN jsonb_typeof({key}) = 'string' THEN {key} #>> '{{}}' END) "
                    f'COLLATE "C" {direction}',
                    f"(CASE WHEN jsonb_typeof({key}) = 'number' THEN CAST({key} AS numeric) END) "
                    f"{direction}",
                    f"(CASE WHEN jsonb_typeof({key}) IN ('boolean', 'array', 'object') "
                    f"THEN {key} END) {direction}",
                ]
            return (
                f"SELECT data, row_number() OVER (ORDER BY {', '.join(order)}, pos) AS pos "
                f"FROM (SELECT data, pos, {', '.join(keys)} FROM {source} {_FENCE}) AS k{a}"
            )
        if isinstance(stage, Project):
            return f"SELECT {self.project(stage, f'{a}.data')} AS data, pos FROM {source} {_FENCE}"
        if isinstance(stage, Unwind):
            return self.unwind(stage, source)
        return self.group(stage, previous)

    def project(self, stage: Project, data: str) -> str:
        if not stage.inclusion:
            return data + "".join(f" - {self.text(name)}" for name, _ in stage.fields)
        fields = []
        for name, expression in stage.fields:
            key = self.text(name)
            value = (
                f"({data} -> {key})" if expression is None else self.expression(expression, data)
            )
            fields.append((key, value))
        return _object_sql(fields)

    def expression(self, expression: Expr, data: str) -> str:
        """SQL jsonb for ``expression``; SQL NULL means missing."""
        if isinstance(expression, Ref):
            return _ref_sql(data, expression.path)
        if isinstance(expression, Root):
            return data
        if isinstance(expression, Literal):
            return self.json(expression.value)
        if isinstance(expression, Arr):
            if not expression.items:
                return "'[]'::jsonb"
            items = ", ".join(
                f"coalesce({self.expression(e, data)}, 'null'::jsonb)" for e in expression.items
            )
            return f"jsonb_build_array({items})"
        return _object_sql(
            [(self.text(name), self.expression(e, data)) for name, e in expression.fields]
        )

    def unwind(self, stage: Unwind, source: str) -> str:
        a = self.alias
        value = _ref_sql(f"{a}.data", stage.path)
        literal = _path_literal(stage.path)
        # A scalar unwinds as a one-element array (setting it in place changes
        # nothing); null and missing as an empty one.
        elements = (
            f"CASE WHEN jsonb_typeof({value}) = 'array' THEN {value} "
            f"WHEN jsonb_typeof({value}) <> 'null' THEN jsonb_build_array({value}) "
            "ELSE '[]'::jsonb END"
        )
        unwound = f"jsonb_set({a}.data, {literal}, e.value)"
        join = "CROSS JOIN LATERAL"
        if stage.preserve:  # no element: the document itself, without an empty array
            join = "LEFT JOIN LATERAL"
            unwound = (
                f"CASE WHEN e.i IS NOT NULL THEN {unwound} "
                f"WHEN {value} = '[]'::jsonb THEN {a}.data #- {literal} ELSE {a}.data END"
            )
        # Order by document, then element, without a sort: jsonb arrays hold
        # fewer than 2^28 elements, so pos * 2^28 + i keeps both in one number.
        return (
            f"SELECT {unwound} AS data, "
            f"CAST({a}.pos AS numeric) * {_UNWIND_SPAN} + coalesce(e.i, 0) AS pos "
            f"FROM {source} {join} jsonb_array_elements({elements}) "
            f"WITH ORDINALITY AS e(value, i){' ON TRUE' if stage.preserve else ''} {_FENCE}"
        )

    def row_cap(self, stage_sql: str, cap: int) -> str:
        """``stage_sql``'s rows, failing the query at the first row past ``cap``.

        The guard is a filter on a window column, so the planner can neither
        drop it nor push it below the numbering; the cast fails only when a
        row is past the cap (a text constant under ``CASE`` is not folded).
        """
        a = self.alias
        marker = self.text(UNWIND_CAP_MARKER)
        return (
            f"SELECT data, pos FROM (SELECT data, pos, row_number() OVER () AS n "
            f"FROM ({stage_sql}) AS c{a}) AS r{a} "
            f"WHERE CAST(CASE WHEN n > {int(cap)} THEN {marker} END AS integer) IS NULL"
        )

    def group(self, stage: Group, previous: str) -> str:
        a = self.alias
        data = f"{a}.data"
        # Read the key and each operand once per document, below a fence: the
        # accumulators use an operand several times.
        key = f"coalesce({self.expression(stage.key, data)}, 'null'::jsonb)"
        columns = {key: "k"}
        pairs = ["'_id', k"]
        for accumulator in stage.accumulators:
            value = None
            if accumulator.operand is not None:
                operand = self.expression(accumulator.operand, data)
                value = columns.setdefault(operand, f"v{len(columns)}")
            pairs.append(f"{self.text(accumulator.name)}, {self.accumulate(accumulator, value)}")
        selected = ", ".join(f"{sql} AS {name}" for sql, name in columns.items())
        return (
            f"SELECT jsonb_build_object({', '.join(pairs)}) AS data, min(pos) AS pos "
            f"FROM (SELECT pos, {selected} FROM ({previous}) AS {a} {_FENCE}) AS g{a} GROUP BY k"
        )

    def accumulate(self, accumulator: Accumulator, value: str | None) -> str:
        """The accumulator over the column ``value`` of its operand (None for $count)."""
        if value is None:
            return "to_jsonb(count(*))"
        number = f"(CASE WHEN jsonb_typeof({value}) = 'number' THEN CAST({value} AS numeric) END)"
        string = f"(CASE WHEN jsonb_typeof({value}) = 'string' THEN {value} #>> '{{}}' END)"
        operator = accumulator.operator
        if operator == "$sum":
            return f"to_jsonb(coalesce(sum({number}), 0))"
        if operator == "$avg":
            return f"to_jsonb(avg({number}))"
        if operator == "$min":
            return f'coalesce(to_jsonb(min({number})), to_jsonb(min({string} COLLATE "C")))'
        if operator == "$max":
            return f'coalesce(to_jsonb(max({string} COLLATE "C")), to_jsonb(max({number})))'
        if operator == "$push":
            return (
                f"coalesce(jsonb_agg({value} ORDER BY pos) FILTER (WHERE {value} IS NOT NULL), "
                "'[]'::jsonb)"
            )
        direction = "ASC" if operator == "$first" else "DESC"
        return f"(array_agg(coalesce({value}, 'null'::jsonb) ORDER BY pos {direction}))[1]"


def _object_sql(fields: list[tuple[str, str]]) -> str:
    """A jsonb object of ``(key, value)`` SQL pairs, without the keys whose value is SQL NULL.

    ``jsonb_set_lax(..., 'return_target')`` skips a NULL (missing) value, and
    names each value once (a ``CASE`` would repeat it, nesting by nesting).
    """
    sql = "'{}'::jsonb"
    for key, value in fields:
        sql = f"jsonb_set_lax({sql}, ARRAY[{key}], {value}, true, 'return_target')"
    return sql


def _path_literal(path: tuple[str, ...]) -> str:
    # Segments are letters, digits and underscores (validated): quoting them
    # keeps NULL and the like from being read as array-literal keywords.
    return "'{" + ",".join(f'"{segment}"' for segment in path) + "}'"


def _ref_sql(data: str, path: tuple[str, ...]) -> str:
    """The jsonb at ``path``, walking objects only; SQL NULL when missing.

    ``#>`` would index arrays with an all-digit segment: guard those steps.
    """
    value = f"({data} #> {_path_literal(path)})"
    guards = [
        f"jsonb_typeof({data} #> {_path_literal(path[:i])}) = 'object'"
        for i, segment in enumerate(path)
        if _DIGITS.match(segment)
    ]
    if not guards:
        return value
    return f"(CASE WHEN {' AND '.join(guards)} THEN {value} END)"


def _rank_sql(key: str) -> str:
    """PostgreSQL's top-level jsonb type order, as a number ([] sorts before null)."""
    return (
        f"(CASE jsonb_typeof({key}) WHEN 'null' THEN 1 WHEN 'string' THEN 2 "
        f"WHEN 'number' THEN 3 WHEN 'boolean' THEN 4 "
        f"WHEN 'array' THEN CASE WHEN jsonb_array_length({key}) = 0 THEN 0 ELSE 5 END "
        "ELSE 6 END)"
    )
