"""MongoDB-style filters compiled to parameterised SQL over a JSONB column.

``compile_filter({"status": "active", "n": {"$gt": 9}})`` gives a boolean SQL
expression and its bind parameters. Values never enter the SQL text: they are
bind parameters, either whole JSON documents (``data @> CAST(:f0 AS jsonb)``)
or the ``vars`` of a SQL/JSON path whose text is itself a bind parameter and
is built only from validated path keys (quoted as JSON strings) and our own
fixed predicates. ``projections.reference`` evaluates the same language in
Python; property tests hold the two together on random data.

The semantics are MongoDB's, restricted to JSON, with these decisions:

* **Paths.** ``a.b`` walks objects; where it meets an array it looks into the
  array's objects, one level deep (``"nodes.type": "x"`` matches if any node
  has that type; arrays nested in arrays are not entered). A segment of
  digits after the first (``nodes.0.type``) is both an array index and a key,
  as in MongoDB: on an array it takes the element at that index *and* the
  key ``"0"`` of the array's objects; on an object, the key ``"0"``. These are
  exactly SQL/JSON lax-mode member accessors; an index gets a guarded
  ``[n]`` accessor, so each such segment doubles the number of path branches
  (at most ``MAX_INDEX_SEGMENTS`` of them).
* **Values and candidates.** The values at a path are what the walk finds
  (nothing when the field is missing). Scalar operators test each value and
  each element of a value that is an array (one level); ``$size``,
  ``$elemMatch`` and whole-array equality test the values themselves.
* **Equality** is JSON equality: numbers by numeric value (``1 == 1.0``),
  strings exactly, objects regardless of key order, arrays element by element
  in order. A scalar may equal an array's element (``{"tags": "a"}`` matches
  ``["a", "b"]``), an array the whole array or an element that is an array.
  ``null`` matches null values, null elements and missing fields, and, as in
  MongoDB, a path on which an object lacks the next key (``{"a.b": null}``
  matches ``{"a": [{"c": 1}]}``; a numeric segment never counts as lacking).
  ``$ne`` and ``$nin`` are exact negations, so they match missing fields.
* **Lists.** ``$in``/``$nin``/``$all`` take at most ``MAX_LIST_VALUES``
  values; each kind of value (scalars, instants, whole arrays and objects) is
  one jsonb array bind parameter, never one clause per value.
* **$elemMatch** with a document applies it to elements that are objects or
  arrays (an array as a document: its objects' keys, as at any array; the
  first segment is never an index there).
* **Order** (``$gt`` ...) is type-bracketed: numbers with numbers (numeric,
  never as text), strings with strings by Unicode code point, booleans with
  booleans (false < true); anything else, arrays and objects included, is
  false. ``$gte``/``$lte`` null behave as equality with null; ``$gt``/``$lt``
  null match nothing.
* **Instants.** A filter string that is a strict ISO-8601 timestamp with an
  offset (``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)``, a valid
  date, hours 00-23, no leap second; fraction digits past microseconds
  ignored) compares as an instant, for ordering and for equality/``$in``,
  against document strings that are such timestamps too (other strings never
  match it): ``...T10:00:00+02:00`` < ``...T09:00:00Z``. Inside arrays or
  objects given as whole values, strings compare exactly.
  ``iso_instant`` and the SQL function ``reporunner_iso_timestamptz``
  (migration 0003) implement the same rule.
* **Regexes** (``$regex`` with ``$options`` from ``imsx``) are a conservative
  subset that PostgreSQL's ARE and Python's ``re`` read alike, checked and
  rewritten at compile time (see ``translate_regex``); they match strings and
  string elements, with ASCII-only classes and case folding (``COLLATE "C"``).
  Newlines as in MongoDB's PCRE: ``$`` also matches before a final newline,
  ``.`` not at a newline (without ``s``), ``[^a]`` always.

Scalar equality on paths of plain keys compiles to ``@>`` containment, which
the GIN ``jsonb_path_ops`` index serves; the rest compiles to
``jsonb_path_exists`` / ``jsonb_path_query`` in lax mode with type guards on
every comparison (lax mode would otherwise unwrap one array too many).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from domain.values import ValueProblem, check_value
from projections.errors import QueryError
from projections.regex import MAX_REGEX_CHARS, Regex, translate_regex

__all__ = [
    "MAX_LIST_VALUES",
    "MAX_PARAMETERS",
    "MAX_REGEX_CHARS",
    "Regex",
    "SqlFragment",
    "compile_filter",
    "iso_instant",
    "translate_regex",
    "value_problem_text",
]

MAX_DEPTH = 16
MAX_PATH_SEGMENTS = 32
MAX_INDEX_SEGMENTS = 4
MAX_VALUE_DEPTH = 32
INSTANT_FUNCTION = "reporunner_iso_timestamptz"

MAX_LIST_VALUES = 1000  # values of one $in, $nin or $all
MAX_PARAMETERS = 5000  # bind parameters of one filter (asyncpg takes at most 32767 per query)

_MAX_CONTAINMENTS = 16  # @> patterns per equality before a path query is cheaper
_MAX_CHAINED_VALUES = 8  # $all values tested one by one (each may use the GIN index)
_SCALAR_TYPES = '@.type() == "string" || @.type() == "number" || @.type() == "boolean"'
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_ISO_INSTANT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_LOGICAL = ("$and", "$or", "$nor")
_ORDER = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


@dataclass(frozen=True)
class SqlFragment:
    sql: str  # a boolean SQL expression with SQLAlchemy-style named binds (:f0, :f1, ...)
    params: dict[str, Any]


def compile_filter(filter: Any, *, column: str = "data", param_prefix: str = "f") -> SqlFragment:
    """Compile a MongoDB-style ``filter`` to SQL over the jsonb ``column``.

    ``column`` and ``param_prefix`` come from our code and must be plain
    identifiers; subquery aliases are ``<param_prefix>__<n>``. Raises
    ``QueryError`` naming the operator and path of the first problem.
    """
    if not _IDENTIFIER.fullmatch(column):
        raise ValueError(f"invalid column name {column!r}")
    if not _IDENTIFIER.fullmatch(param_prefix):
        raise ValueError(f"invalid parameter prefix {param_prefix!r}")
    compiler = _Compiler(param_prefix)
    sql = compiler.document(filter, column, "", 0)
    if len(compiler.params) > MAX_PARAMETERS:
        raise QueryError(
            f"filter too large: it needs {len(compiler.params)} bound values, "
            f"at most {MAX_PARAMETERS} are allowed"
        )
    return SqlFragment(f"({sql})" if _has_top_level(sql, " AND ", " OR ") else sql, compiler.params)


def iso_instant(text: str) -> int | None:
    """Microseconds since 0001-01-01T00:00:00Z of a strict ISO-8601 timestamp with offset.

    ``None`` for anything else. The SQL function ``reporunner_iso_timestamptz``
    accepts exactly the same strings and orders them the same way.
    """
    match = _ISO_INSTANT.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        days = date(year, month, day).toordinal()
    except ValueError:
        return None
    offset = 0
    if match[8]:
        if int(match[9]) > 23 or int(match[10]) > 59:
            return None
        offset = (int(match[9]) * 60 + int(match[10])) * (-1 if match[8] == "-" else 1)
    micros = int((match[7] or "")[:6].ljust(6, "0"))
    seconds = days * 86400 + hour * 3600 + (minute - offset) * 60 + second
    return seconds * 1_000_000 + micros


# -- the compiler -------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """Where a field's values are: lax path ``branches`` into the jsonb ``doc``.

    Without branches, ``doc`` itself is the one value and is not unwrapped
    (an array element under ``$elemMatch`` with operators).
    """

    doc: str
    where: str
    branches: tuple[str, ...] = ()
    keys: tuple[str, ...] | None = None  # the path as plain keys, for @> patterns
    segments: tuple[str, ...] = ()
    indices: frozenset[int] = frozenset()  # segments that are array subscripts too


class _Compiler:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.params: dict[str, Any] = {}
        self.aliases = 0
        # Documents that may be arrays ($elemMatch elements): no @> patterns on them.
        self.maybe_arrays: set[str] = set()

    def bind(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def jsonpath(self, path: str) -> str:
        return f"CAST({self.bind(path)} AS jsonpath)"

    def jsonb(self, value: Any) -> str:
        return f"CAST({self.bind(_dump(value))} AS jsonb)"

    def alias(self) -> str:
        self.aliases += 1
        return f"{self.prefix}__{self.aliases}"

    # -- documents and logical operators --------------------------------------------

    def document(self, filter_: Any, doc: str, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise QueryError(f"filter nested deeper than {MAX_DEPTH} levels")
        if not isinstance(filter_, dict):
            at = f" at '{where}'" if where else ""
            raise QueryError(f"a filter must be a JSON object{at}, not {_kind(filter_)}")
        clauses = []
        for key, condition in filter_.items():
            if not isinstance(key, str):
                raise QueryError(f"field names must be strings, not {_kind(key)}")
            if key in _LOGICAL:
                clauses.append(self.logical(key, condition, doc, where, depth))
            elif key.startswith("$"):
                if where:
                    raise QueryError(f"unknown operator '{key}' at '{where}'")
                raise QueryError(f"unknown top-level operator '{key}'")
            else:
                clauses.append(self.field(self.path(doc, key, where), condition, depth))
        return _and(clauses)

    def logical(self, operator: str, operands: Any, doc: str, where: str, depth: int) -> str:
        if not isinstance(operands, list) or not operands:
            at = f" at '{where}'" if where else ""
            raise QueryError(f"{operator} needs a non-empty array of filters{at}")
        parts = [self.document(o, doc, where, depth + 1) for o in operands]
        if operator == "$and":
            return _and(parts)
        if operator == "$or":
            return _or(parts)
        return _not(_or(parts))

    def path(self, doc: str, key: str, where: str) -> _Field:
        dotted = f"{where}.{key}" if where else key
        segments = key.split(".")
        if len(segments) > MAX_PATH_SEGMENTS:
            raise QueryError(f"field path longer than {MAX_PATH_SEGMENTS} segments at '{dotted}'")
        for segment in segments:
            if not segment:
                raise QueryError(f"invalid field path '{dotted}': empty segment")
            if segment.startswith("$"):
                raise QueryError(f"invalid field path '{dotted}': a segment starts with '$'")
            _check_text(segment, dotted)
        indices = [i for i, s in enumerate(segments) if i > 0 and _INDEX.fullmatch(s)]
        if len(indices) > MAX_INDEX_SEGMENTS:
            raise QueryError(
                f"field path with more than {MAX_INDEX_SEGMENTS} numeric segments at '{dotted}'"
            )
        branches = tuple(
            _render_path(segments, {i for i, chosen in zip(indices, choice, strict=True) if chosen})
            for choice in itertools.product((False, True), repeat=len(indices))
        )
        plain = not indices and doc not in self.maybe_arrays
        return _Field(
            doc,
            dotted,
            branches,
            tuple(segments) if plain else None,
            tuple(segments),
            frozenset(indices),
        )

    # -- one field ------------------------------------------------------------------

    def field(self, field: _Field, condition: Any, depth: int) -> str:
        if isinstance(condition, dict) and any(_is_operator(k) for k in condition):
            if not all(_is_operator(k) for k in condition):
                raise QueryError(f"cannot mix operators and fields at '{field.where}'")
            return self.operators(field, condition, depth)
        return self.equals(field, condition)

    def operators(self, field: _Field, condition: dict[str, Any], depth: int) -> str:
        if depth > MAX_DEPTH:
            raise QueryError(f"filter nested deeper than {MAX_DEPTH} levels")
        if "$options" in condition and "$regex" not in condition:
            raise QueryError(f"$options needs $regex at '{field.where}'")
        return _and(
            [
                self.operator(field, operator, operand, condition, depth)
                for operator, operand in condition.items()
                if operator != "$options"
            ]
        )

    def operator(
        self, field: _Field, operator: str, operand: Any, condition: dict[str, Any], depth: int
    ) -> str:
        where = field.where
        if operator == "$eq":
            return self.equals(field, operand)
        if operator == "$ne":
            return _not(self.equals(field, operand))
        if operator in _ORDER:
            return self.compare(field, operator, operand)
        if operator in ("$in", "$nin"):
            any_of = self.any_of(field, operator, operand)
            return any_of if operator == "$in" else _not(any_of)
        if operator == "$all":
            return self.all_of(field, operand)
        if operator == "$exists":
            if not isinstance(operand, bool):
                raise QueryError(f"$exists needs true or false at '{where}'")
            return self.exists(field) if operand else _not(self.exists(field))
        if operator == "$regex":
            options = condition.get("$options", "")
            if not isinstance(options, str):
                raise QueryError(f"$options needs a string at '{where}'")
            return self.regex(field, operand, options)
        if operator == "$not":
            # MongoDB takes a regex literal here too; JSON has none, and a bare
            # string is not one (MongoDB refuses {"$not": "x"}).
            if isinstance(operand, dict) and operand and all(_is_operator(k) for k in operand):
                return _not(self.operators(field, operand, depth + 1))
            raise QueryError(
                f"$not needs an operator object at '{where}', "
                'e.g. {"$not": {"$gt": 5}} or {"$not": {"$regex": "^a"}}'
            )
        if operator == "$size":
            return self.size(field, operand)
        if operator == "$elemMatch":
            return self.elem_match(field, operand, depth)
        raise QueryError(f"unknown operator '{operator}' at '{where}'")

    # -- equality -------------------------------------------------------------------

    def equals(self, field: _Field, value: Any) -> str:
        _check_value(value, field.where)
        if value is None:
            return _or(
                [
                    self.any(field, '@.type() == "null"'),
                    _not(self.exists(field)),
                    self.lacks_a_key(field),
                ]
            )
        if isinstance(value, dict | list):
            return self.equals_whole(field, value)
        if isinstance(value, str) and iso_instant(value) is not None:
            return self.instant(field, "=", value)
        return self.equals_scalars(field, [value])

    def equals_scalars(self, field: _Field, values: list[Any]) -> str:
        """Any value (or element) equals one of ``values`` (non-null scalars, no instants)."""
        if field.keys is not None and len(values) << len(field.keys) <= _MAX_CONTAINMENTS:
            return _or(
                [
                    f"{field.doc} @> {self.jsonb(pattern)}"
                    for value in values
                    for pattern in _containments(field.keys, value)
                ]
            )
        if len(values) == 1:
            (value,) = values
            return self.any(field, f'@.type() == "{_json_type(value)}" && @ == $v0', {"v0": value})
        # jsonb equality is JSON equality on scalars: numbers by value, strings exactly.
        listed = self.listed(values)
        return self.exists_row(field, _SCALAR_TYPES, lambda v: f"{v} IN {listed}")

    def equals_whole(self, field: _Field, value: dict[str, Any] | list[Any]) -> str:
        target = self.jsonb(value)
        return self.whole(field, lambda v: f"{v} = {target}")

    def whole_in(self, field: _Field, values: list[Any]) -> str:
        listed = self.listed(values)
        return self.whole(field, lambda v: f"{v} IN {listed}")

    def whole(self, field: _Field, condition: Callable[[str], str]) -> str:
        """A value, or an element that is an array or an object, satisfies ``condition``."""
        if not field.branches:
            return condition(field.doc)
        containers = '@.type() == "array" || @.type() == "object"'
        return _or(
            [
                self.exists_row(field, None, condition),  # the values
                self.exists_row(field, containers, condition),  # elements
            ]
        )

    def listed(self, values: list[Any]) -> str:
        """A SQL row source of ``values`` (jsonb), for ``x IN ...``: one bind parameter."""
        return f"(SELECT jsonb_array_elements({self.jsonb(values)}))"

    def any_of(self, field: _Field, operator: str, operand: Any) -> str:
        """Some value equals one of the list's: one clause per kind of value, not per value.

        A list past a few values is one jsonb array bind parameter, matched
        with ``IN (SELECT jsonb_array_elements(...))`` (a hashed semi join), so
        a long ``$in`` neither chains clauses nor grows the statement.
        """
        values = self.values_list(field, operator, operand)
        kinds = _by_kind(values)
        parts = []
        if kinds.nulls:
            parts.append(self.equals(field, None))
        if kinds.scalars:
            parts.append(self.equals_scalars(field, kinds.scalars))
        if len(kinds.instants) == 1:
            parts.append(self.instant(field, "=", kinds.instants[0]))
        elif kinds.instants:
            parts.append(self.instant_in(field, kinds.instants))
        if len(kinds.wholes) == 1:
            parts.append(self.equals_whole(field, kinds.wholes[0]))
        elif kinds.wholes:
            parts.append(self.whole_in(field, kinds.wholes))
        return _or(parts)

    def all_of(self, field: _Field, operand: Any) -> str:
        """Every value of the list is matched: one clause per value for short lists,
        one ``NOT EXISTS`` over the array of scalars for long ones."""
        values = self.values_list(field, "$all", operand)
        if not values:
            return "FALSE"
        kinds = _by_kind(values)
        if len(kinds.scalars) <= _MAX_CHAINED_VALUES:
            return _and([self.equals(field, v) for v in values])
        wanted = self.alias()
        unmatched = _not(
            self.exists_row(field, _SCALAR_TYPES, lambda v: f"{v} = {wanted}.{wanted}")
        )
        every_scalar = (
            f"NOT EXISTS (SELECT 1 FROM jsonb_array_elements({self.jsonb(kinds.scalars)}) "
            f"AS {wanted}({wanted}) WHERE {unmatched})"
        )
        others = kinds.nulls[:1] + kinds.instants + kinds.wholes
        return _and([every_scalar, *(self.equals(field, v) for v in others)])

    def values_list(self, field: _Field, operator: str, operand: Any) -> list[Any]:
        if not isinstance(operand, list):
            raise QueryError(f"{operator} needs an array at '{field.where}'")
        if len(operand) > MAX_LIST_VALUES:
            raise QueryError(
                f"{operator} may list at most {MAX_LIST_VALUES} values, not {len(operand)}, "
                f"at '{field.where}'"
            )
        for value in operand:
            if isinstance(value, dict) and any(_is_operator(k) for k in value):
                raise QueryError(f"{operator} cannot hold operators at '{field.where}'")
            _check_value(value, field.where)
        return operand

    # -- order, regexes, sizes, arrays ------------------------------------------------

    def compare(self, field: _Field, operator: str, operand: Any) -> str:
        if operand is None:
            return self.equals(field, None) if operator in ("$gte", "$lte") else "FALSE"
        if isinstance(operand, dict | list):
            raise QueryError(
                f"{operator} needs a number, a string, a boolean or null at '{field.where}'"
            )
        _check_value(operand, field.where)
        symbol = _ORDER[operator]
        if isinstance(operand, str) and iso_instant(operand) is not None:
            return self.instant(field, symbol, operand)
        return self.any(
            field, f'@.type() == "{_json_type(operand)}" && @ {symbol} $v', {"v": operand}
        )

    def instant_in(self, field: _Field, values: list[str]) -> str:
        listed = (
            f"(SELECT {INSTANT_FUNCTION}(t) FROM jsonb_array_elements_text({self.jsonb(values)}) "
            "AS t)"
        )
        return self.exists_row(
            field,
            '@.type() == "string"',
            lambda v: f"{INSTANT_FUNCTION}({v} #>> '{{}}') IN {listed}",
        )

    def instant(self, field: _Field, symbol: str, value: str) -> str:
        target = f"{INSTANT_FUNCTION}(CAST({self.bind(value)} AS text))"
        return self.exists_row(
            field,
            '@.type() == "string"',
            lambda v: f"{INSTANT_FUNCTION}({v} #>> '{{}}') {symbol} {target}",
        )

    def regex(self, field: _Field, pattern: Any, options: str) -> str:
        if not isinstance(pattern, str):
            raise QueryError(f"$regex needs a string at '{field.where}'")
        compiled = translate_regex(pattern, options, field.where)
        target = f"CAST({self.bind(compiled.postgres)} AS text)"
        return self.exists_row(
            field, '@.type() == "string"', lambda v: f"({v} #>> '{{}}') COLLATE \"C\" ~ {target}"
        )

    def size(self, field: _Field, operand: Any) -> str:
        if not isinstance(operand, int) or isinstance(operand, bool) or operand < 0:
            raise QueryError(f"$size needs a non-negative integer at '{field.where}'")
        if operand > 2**31 - 1:
            return "FALSE"  # longer than any jsonb array
        target = f"CAST({self.bind(operand)} AS integer)"
        return self.exists_row(
            field,
            None,
            lambda v: (
                f"CASE WHEN jsonb_typeof({v}) = 'array' THEN jsonb_array_length({v}) END = {target}"
            ),
        )

    def elem_match(self, field: _Field, operand: Any, depth: int) -> str:
        if not isinstance(operand, dict):
            raise QueryError(f"$elemMatch needs an object at '{field.where}'")
        operators = [k for k in operand if _is_operator(k) and k not in _LOGICAL]
        if operators and len(operators) < len(operand):
            raise QueryError(f"$elemMatch cannot mix operators and fields at '{field.where}'")
        arrays, elements = self.alias(), self.alias()
        element = f"{elements}.{elements}"
        if operators:  # each element itself is the value: {"$elemMatch": {"$gt": 3}}
            condition = self.operators(_Field(element, field.where), operand, depth + 1)
        else:  # each element is a sub-document; as in MongoDB, an array is one too
            self.maybe_arrays.add(element)
            condition = _and(
                [
                    f"jsonb_typeof({element}) IN ('object', 'array')",
                    self.document(operand, element, field.where, depth + 1),
                ]
            )
        array = f"{arrays}.{arrays}"
        return (
            f"EXISTS (SELECT 1 FROM {self.rows(field, None)} AS {arrays}({arrays}), "
            f"jsonb_array_elements(CASE WHEN jsonb_typeof({array}) = 'array' THEN {array} END) "
            f"AS {elements}({elements}) WHERE {condition})"
        )

    def lacks_a_key(self, field: _Field) -> str:
        """An object on the way to the field lacks the next key (MongoDB: null there).

        ``{"a.b": null}`` matches ``{"a": [{"c": 1}]}``: the element without
        ``b`` has a missing ``a.b``. Numeric segments (array subscripts too)
        and the first one (missing altogether) never count.
        """
        tests = []
        for k in range(1, len(field.segments)):
            if k in field.indices:
                continue
            key = json.dumps(field.segments[k], ensure_ascii=False)
            prefix = field.segments[:k]
            chosen = [i for i in sorted(field.indices) if i < k]
            for choice in itertools.product((False, True), repeat=len(chosen)):
                subscripts = {i for i, pick in zip(chosen, choice, strict=True) if pick}
                rendered = _render_path(list(prefix), subscripts)
                path = f'{rendered} ? (@.type() == "object" && !exists(@.{key}))'
                tests.append(f"jsonb_path_exists({field.doc}, {self.jsonpath(path)})")
        return _or(tests)

    # -- the three ways to look at a field's values -----------------------------------

    def exists(self, field: _Field) -> str:
        if not field.branches:
            return "TRUE"
        return _or([f"jsonb_path_exists({field.doc}, {self.jsonpath(b)})" for b in field.branches])

    def any(self, field: _Field, predicate: str, variables: dict[str, Any] | None = None) -> str:
        """Some value, or element of an array value, satisfies the path ``predicate``."""
        paths = [f"{b} ? ({predicate})" for b in field.branches] or [f"strict $ ? ({predicate})"]
        extra = f", {self.jsonb(variables)}" if variables else ""
        return _or([f"jsonb_path_exists({field.doc}, {self.jsonpath(p)}{extra})" for p in paths])

    def rows(self, field: _Field, predicate: str | None) -> str:
        """A row source of the values (``predicate`` None) or of candidates passing it."""
        suffix = f" ? ({predicate})" if predicate else ""
        paths = [b + suffix for b in field.branches] or ["strict $" + suffix]
        calls = [f"jsonb_path_query({field.doc}, {self.jsonpath(p)})" for p in paths]
        if len(calls) == 1:
            return calls[0]
        return "(" + " UNION ALL ".join(f"SELECT {c}" for c in calls) + ")"

    def exists_row(
        self, field: _Field, predicate: str | None, condition: Callable[[str], str]
    ) -> str:
        alias = self.alias()
        source = self.rows(field, predicate)
        where = condition(f"{alias}.{alias}")
        return f"EXISTS (SELECT 1 FROM {source} AS {alias}({alias}) WHERE {where})"


# -- paths and values -----------------------------------------------------------------


def _render_path(segments: list[str], indices: set[int]) -> str:
    """A lax SQL/JSON path; segments in ``indices`` are array subscripts.

    A lax ``[n]`` would also take a non-array as a one-element array, so each
    key followed by subscripts is guarded, on the object that holds it, by
    checks that every subscripted value is an array.
    """
    text = "$"
    i = 0
    while i < len(segments):
        key = json.dumps(segments[i], ensure_ascii=False)
        subscripts = []
        i += 1
        while i in indices:
            subscripts.append(f"[{segments[i]}]")
            i += 1
        if subscripts:
            guards = ['@.type() == "object"']
            value = f"@.{key}"
            for subscript in subscripts:
                guards.append(f'{value}.type() == "array"')
                value += subscript
            text += f" ? ({' && '.join(guards)})"
        text += f".{key}" + "".join(subscripts)
    return text


@dataclass(frozen=True)
class _Kinds:
    """A list's values, by how they compare (see the module docstring)."""

    nulls: list[None]
    scalars: list[Any]  # strings (not instants), numbers, booleans
    instants: list[str]
    wholes: list[Any]  # arrays and objects, compared whole


def _by_kind(values: list[Any]) -> _Kinds:
    kinds = _Kinds([], [], [], [])
    for value in values:
        if value is None:
            kinds.nulls.append(value)
        elif isinstance(value, dict | list):
            kinds.wholes.append(value)
        elif isinstance(value, str) and iso_instant(value) is not None:
            kinds.instants.append(value)
        else:
            kinds.scalars.append(value)
    return kinds


def _containments(keys: tuple[str, ...], value: Any) -> list[Any]:
    """Every ``@>`` pattern under which ``value`` sits at ``keys``, each level maybe in an array."""
    patterns = []
    for wraps in itertools.product((False, True), repeat=len(keys)):
        pattern = value
        for key, wrap in zip(reversed(keys), reversed(wraps), strict=True):
            pattern = {key: [pattern] if wrap else pattern}
        patterns.append(pattern)
    return patterns


def _is_operator(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("$")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


def _check_text(text: str, where: str) -> None:
    if _BAD_TEXT.search(text):
        raise QueryError(f"strings cannot hold NUL or unpaired surrogates at '{where}'")


def _check_value(value: Any, where: str) -> None:
    """A filter constant must keep the value contract (``domain.values``): what
    jsonb, orjson and asyncpg all carry, so no constant can fail the query."""
    problems = check_value(value, max_depth=MAX_VALUE_DEPTH)
    if problems:
        raise QueryError(value_problem_text(problems[0], f"invalid value at '{where}'"))


def value_problem_text(problem: ValueProblem, subject: str) -> str:
    """``problem`` of a constant (``subject``: "invalid value at 'n'"), as a query error says it."""
    inside = f" (at {problem.loc} inside it)" if problem.path else ""
    return f"{subject}{inside}: {problem.msg}"


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # e.g. an integer too long to print
        raise QueryError(f"value cannot be sent as JSON: {exc}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


# -- SQL composition ----------------------------------------------------------------


def _has_top_level(sql: str, *words: str) -> bool:
    depth = 0
    for i, char in enumerate(sql):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and any(sql.startswith(w, i) for w in words):
            return True
    return False


def _and(parts: list[str]) -> str:
    parts = [p for p in parts if p != "TRUE"]
    if "FALSE" in parts:
        return "FALSE"
    if len(parts) < 2:
        return parts[0] if parts else "TRUE"
    return " AND ".join(f"({p})" if _has_top_level(p, " OR ") else p for p in parts)


def _or(parts: list[str]) -> str:
    parts = [p for p in parts if p != "FALSE"]
    if "TRUE" in parts:
        return "TRUE"
    if len(parts) < 2:
        return parts[0] if parts else "FALSE"
    return " OR ".join(f"({p})" if _has_top_level(p, " AND ") else p for p in parts)


def _not(sql: str) -> str:
    if sql in ("TRUE", "FALSE"):
        return "FALSE" if sql == "TRUE" else "TRUE"
    return f"NOT ({sql})" if _has_top_level(sql, " AND ", " OR ") else f"NOT {sql}"
