"""MongoDB-style filters compiled to parameterised SQL over a JSONB column.

Semantics follow PostgreSQL's SQL/JSON path language in lax mode, which is
MongoDB's in the ways that matter here: a dotted path fans out through arrays
of sub-documents (``"nodes.type": "http_request"`` matches if any node has
that type), equality matches inside arrays (``{"tags": "a"}`` matches
``["a", "b"]``), and comparisons are type-bracketed (numbers with numbers,
strings with strings by code point; never a number as text). ISO-8601
timestamps with an offset compare as instants: the filter's value is
normalised to UTC in the format the views store (``isoformat()``).
``projections.reference`` evaluates the same language in Python; property
tests hold the two together.

Values never enter SQL text: each condition is one ``jsonb_path_exists``
call whose path and variables are bind parameters. Path keys are quoted as
JSON/SQL-path string literals inside the (bound) path expression.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections.errors import QueryError

MAX_REGEX_CHARS = 256
MAX_DEPTH = 16
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
_SEGMENT = re.compile(r"^[^.$\x00][^.\x00]*$")
_ISO_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPERATORS = {
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
    "$regex", "$options", "$not", "$elemMatch", "$size", "$all",
}  # fmt: skip
_REGEX_FLAGS = set("ims")
# Python's re flags -> PostgreSQL's embedded options, so both read a pattern
# alike: without "s" a dot stops at newlines; with "m", ^ and $ match at them.
_PG_REGEX_MODE = {"": "p", "m": "n", "s": "s", "ms": "w"}


@dataclass(frozen=True)
class SqlFragment:
    sql: str
    params: dict[str, Any]


def normalise_instant(value: Any) -> Any:
    """An ISO-8601 instant string as the views store it (UTC isoformat); else unchanged."""
    if isinstance(value, str) and _ISO_INSTANT.match(value):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return parsed.astimezone(UTC).isoformat()
    return value


def compile_filter(filter_: Any, *, column: str = "data", param_prefix: str = "f") -> SqlFragment:
    """Compile ``filter_`` to a SQL boolean expression over ``column`` (trusted)."""
    if not _COLUMN.match(column):
        raise ValueError(f"invalid column name {column!r}")
    compiler = _Compiler(column, param_prefix)
    return SqlFragment(compiler.document(filter_, "", 0), compiler.params)


class _Compiler:
    def __init__(self, column: str, prefix: str) -> None:
        self.column = column
        self.prefix = prefix
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    # -- documents and logical operators ------------------------------------

    def document(self, filter_: Any, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise QueryError(f"filter nested deeper than {MAX_DEPTH} levels")
        if not isinstance(filter_, dict):
            raise QueryError(f"a filter must be a JSON object{_at(where)}, not {_kind(filter_)}")
        clauses = []
        for key, value in filter_.items():
            if key in ("$and", "$or", "$nor"):
                clauses.append(self.logical(key, value, depth))
            elif key.startswith("$"):
                raise QueryError(f"unknown top-level operator '{key}'{_at(where)}")
            else:
                clauses.append(self.field(_split(key), value, depth))
        return " AND ".join(f"({c})" for c in clauses) if clauses else "TRUE"

    def logical(self, operator: str, operands: Any, depth: int) -> str:
        if not isinstance(operands, list) or not operands:
            raise QueryError(f"{operator} needs a non-empty array of filters")
        parts = [f"({self.document(o, operator, depth + 1)})" for o in operands]
        if operator == "$and":
            return " AND ".join(parts)
        if operator == "$or":
            return " OR ".join(parts)
        return "NOT (" + " OR ".join(parts) + ")"

    # -- one field ------------------------------------------------------------

    def field(self, path: tuple[str, ...], condition: Any, depth: int) -> str:
        dotted = ".".join(path)
        if not (isinstance(condition, dict) and any(k.startswith("$") for k in condition)):
            return self.equals(path, condition)
        unknown = [k for k in condition if k not in _FIELD_OPERATORS]
        if unknown:
            raise QueryError(f"unknown operator '{unknown[0]}' at '{dotted}'")
        if "$options" in condition and "$regex" not in condition:
            raise QueryError(f"$options without $regex at '{dotted}'")
        clauses = []
        for operator, operand in condition.items():
            if operator == "$options":
                continue
            clauses.append(self.operator(path, operator, operand, condition, depth))
        return " AND ".join(f"({c})" for c in clauses)

    def operator(
        self,
        path: tuple[str, ...],
        operator: str,
        operand: Any,
        condition: dict[str, Any],
        depth: int,
    ) -> str:
        dotted = ".".join(path)
        if operator == "$eq":
            return self.equals(path, operand)
        if operator == "$ne":
            return f"NOT ({self.equals(path, operand)})"
        if operator in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise QueryError(f"{operator} needs an array at '{dotted}'")
            any_of = " OR ".join(f"({self.equals(path, v)})" for v in operand) or "FALSE"
            return any_of if operator == "$in" else f"NOT ({any_of})"
        if operator in _COMPARISONS:
            return self.compare(path, _COMPARISONS[operator], operand, operator)
        if operator == "$exists":
            if not isinstance(operand, bool):
                raise QueryError(f"$exists needs true or false at '{dotted}'")
            exists = self.path_exists(_lax(path))
            return exists if operand else f"NOT {exists}"
        if operator == "$regex":
            return self.regex(path, operand, condition.get("$options", ""))
        if operator == "$not":
            if isinstance(operand, dict) and operand and all(k.startswith("$") for k in operand):
                return f"NOT ({self.field(path, operand, depth + 1)})"
            raise QueryError(f"$not needs an operator object at '{dotted}'")
        if operator == "$size":
            if not isinstance(operand, int) or isinstance(operand, bool) or operand < 0:
                raise QueryError(f"$size needs a non-negative integer at '{dotted}'")
            return (
                f"EXISTS (SELECT 1 FROM jsonb_path_query({self.column}, "
                f"CAST({self.bind(_strict(path))} AS jsonpath), '{{}}', true) AS v "
                f"WHERE jsonb_typeof(v) = 'array' AND jsonb_array_length(v) = {self.bind(operand)})"
            )
        if operator == "$all":
            if not isinstance(operand, list) or not operand:
                raise QueryError(f"$all needs a non-empty array at '{dotted}'")
            return " AND ".join(f"({self.equals(path, v)})" for v in operand)
        if operator == "$elemMatch":
            return self.elem_match(path, operand, depth)
        raise QueryError(f"unknown operator '{operator}' at '{dotted}'")  # pragma: no cover

    def equals(self, path: tuple[str, ...], value: Any) -> str:
        value = normalise_instant(value)
        if value is None:
            # MongoDB: null matches null and missing.
            return (
                f"({self.path_exists(_lax(path) + ' ? (@ == null)')} "
                f"OR NOT {self.path_exists(_lax(path))})"
            )
        if isinstance(value, dict | list):
            # Whole-value equality, at the path itself (no fan-out through arrays).
            return (
                f"EXISTS (SELECT 1 FROM jsonb_path_query({self.column}, "
                f"CAST({self.bind(_strict(path))} AS jsonpath), '{{}}', true) AS v "
                f"WHERE v = CAST({self.bind(json.dumps(value))} AS jsonb))"
            )
        _check_scalar(value, ".".join(path))
        return self.path_exists(_lax(path) + " ? (@ == $v)", {"v": value})

    def compare(self, path: tuple[str, ...], symbol: str, operand: Any, operator: str) -> str:
        operand = normalise_instant(operand)
        if isinstance(operand, bool) or not isinstance(operand, int | float | str):
            raise QueryError(f"{operator} needs a number or a string at '{'.'.join(path)}'")
        _check_scalar(operand, ".".join(path))
        return self.path_exists(f"{_lax(path)} ? (@ {symbol} $v)", {"v": operand})

    def regex(self, path: tuple[str, ...], pattern: Any, options: Any) -> str:
        dotted = ".".join(path)
        if not isinstance(pattern, str):
            raise QueryError(f"$regex needs a string at '{dotted}'")
        if len(pattern) > MAX_REGEX_CHARS:
            raise QueryError(f"regex longer than {MAX_REGEX_CHARS} characters at '{dotted}'")
        if not isinstance(options, str) or set(options) - _REGEX_FLAGS:
            raise QueryError(f"$options may hold only i, m and s at '{dotted}'")
        check_regex(pattern, dotted)
        mode = _PG_REGEX_MODE["".join(sorted(set(options) - {"i"}))]
        full = f"(?{mode}{'i' if 'i' in options else ''}){pattern}"
        strings = _lax(path) + ' ? (@.type() == "string")'
        return (
            f"EXISTS (SELECT 1 FROM jsonb_path_query({self.column}, "
            f"CAST({self.bind(strings)} AS jsonpath)) AS v "
            f"WHERE (v #>> '{{}}') ~ {self.bind(full)})"
        )

    def elem_match(self, path: tuple[str, ...], operand: Any, depth: int) -> str:
        dotted = ".".join(path)
        if not isinstance(operand, dict) or not operand:
            raise QueryError(f"$elemMatch needs a non-empty object at '{dotted}'")
        inner = _Compiler("e", f"{self.prefix}{len(self.params)}_")
        if all(k.startswith("$") for k in operand):
            # Elements are scalars: the operators apply to each element itself.
            condition = inner.field((), operand, depth + 1)
        else:
            condition = inner.document(operand, dotted, depth + 1)
        self.params.update(inner.params)
        return (
            f"EXISTS (SELECT 1 FROM jsonb_path_query({self.column}, "
            f"CAST({self.bind(_strict(path))} AS jsonpath), '{{}}', true) AS arr, "
            f"jsonb_array_elements(CASE WHEN jsonb_typeof(arr) = 'array' THEN arr "
            f"ELSE '[]'::jsonb END) AS e WHERE {condition})"
        )

    def path_exists(self, path: str, variables: dict[str, Any] | None = None) -> str:
        return (
            f"jsonb_path_exists({self.column}, CAST({self.bind(path)} AS jsonpath), "
            f"CAST({self.bind(json.dumps(variables or {}))} AS jsonb))"
        )


def _split(key: str) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    if not key or any(not _SEGMENT.match(p) for p in parts):
        raise QueryError(f"invalid field path '{key}'")
    return parts


def _quote(segment: str) -> str:
    return json.dumps(segment, ensure_ascii=False)


def _lax(path: tuple[str, ...]) -> str:
    return "lax $" + "".join(f".{_quote(p)}" for p in path)


def _strict(path: tuple[str, ...]) -> str:
    return "strict $" + "".join(f".{_quote(p)}" for p in path)


def _check_scalar(value: Any, where: str) -> None:
    if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
        raise QueryError(f"numbers must be finite at '{where}'")


def check_regex(pattern: str, where: str) -> None:
    """Refuse patterns Python cannot compile or that use syntax PostgreSQL reads differently."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise QueryError(f"invalid regex at '{where}': {exc}") from None
    for construct in ("(?P", "(?<", "\\A", "\\Z", "\\b", "\\B", "(?#", "\\x", "\\u", "\\N"):
        if construct in pattern:
            raise QueryError(f"regex construct {construct!r} is not supported at '{where}'")


def _at(where: str) -> str:
    return f" in {where}" if where else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }.get(type(value), type(value).__name__)
