"""A pure-Python evaluator of the filter language, the oracle for the SQL compiler.

It mirrors ``projections.filters`` rule by rule (PostgreSQL's SQL/JSON path
language in lax mode); property tests check that both agree on random data.
"""

from __future__ import annotations

import re
from typing import Any

from projections.errors import QueryError
from projections.filters import check_regex, normalise_instant

_MISSING = object()


def matches(filter_: Any, document: Any) -> bool:
    if not isinstance(filter_, dict):
        raise QueryError("a filter must be a JSON object")
    for key, value in filter_.items():
        if key == "$and":
            if not all(matches(f, document) for f in value):
                return False
        elif key == "$or":
            if not any(matches(f, document) for f in value):
                return False
        elif key == "$nor":
            if any(matches(f, document) for f in value):
                return False
        elif not _field(tuple(key.split(".")), value, document):
            return False
    return True


def _lax(document: Any, path: tuple[str, ...]) -> list[Any]:
    """Values a lax path yields: member access unwraps one level of array."""
    items = [document]
    for segment in path:
        found = []
        for item in items:
            for element in item if isinstance(item, list) else [item]:
                if isinstance(element, dict) and segment in element:
                    found.append(element[segment])
        items = found
    return items


def _strict(document: Any, path: tuple[str, ...]) -> list[Any]:
    current = document
    for segment in path:
        if not isinstance(current, dict) or segment not in current:
            return []
        current = current[segment]
    return [current]


def _unwrap(values: list[Any]) -> list[Any]:
    return [x for v in values for x in (v if isinstance(v, list) else [v])]


def _scalars(document: Any, path: tuple[str, ...]) -> list[Any]:
    """What a comparison at ``path`` sees: a filter's unwrap, then the operand's."""
    return _unwrap(_unwrap(_lax(document, path)))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


def _equals(document: Any, path: tuple[str, ...], value: Any) -> bool:
    value = normalise_instant(value)
    if value is None:
        return any(v is None for v in _scalars(document, path)) or not _lax(document, path)
    if isinstance(value, dict | list):
        return any(_json_equal(v, value) for v in _strict(document, path))
    return any(_same(v, value) for v in _scalars(document, path))


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return _same(a, b)


def _compare(document: Any, path: tuple[str, ...], operator: str, operand: Any) -> bool:
    operand = normalise_instant(operand)
    for value in _scalars(document, path):
        comparable = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and isinstance(operand, int | float)
        ) or (isinstance(value, str) and isinstance(operand, str))
        if (
            comparable
            and {
                "$gt": value > operand,
                "$gte": value >= operand,
                "$lt": value < operand,
                "$lte": value <= operand,
            }[operator]
        ):
            return True
    return False


def _regex(document: Any, path: tuple[str, ...], pattern: str, options: str) -> bool:
    check_regex(pattern, ".".join(path))
    flags = (re.I if "i" in options else 0) | (re.M if "m" in options else 0)
    flags |= re.S if "s" in options else 0
    compiled = re.compile(pattern, flags)
    return any(isinstance(v, str) and compiled.search(v) for v in _unwrap(_lax(document, path)))


def _field(path: tuple[str, ...], condition: Any, document: Any) -> bool:
    if not (isinstance(condition, dict) and any(k.startswith("$") for k in condition)):
        return _equals(document, path, condition)
    for operator, operand in condition.items():
        if operator == "$options":
            continue
        if not _operator(path, operator, operand, condition, document):
            return False
    return True


def _operator(
    path: tuple[str, ...], operator: str, operand: Any, condition: dict[str, Any], document: Any
) -> bool:
    if operator == "$eq":
        return _equals(document, path, operand)
    if operator == "$ne":
        return not _equals(document, path, operand)
    if operator == "$in":
        return any(_equals(document, path, v) for v in operand)
    if operator == "$nin":
        return not any(_equals(document, path, v) for v in operand)
    if operator in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(document, path, operator, operand)
    if operator == "$exists":
        return bool(_lax(document, path)) == operand
    if operator == "$regex":
        return _regex(document, path, operand, condition.get("$options", ""))
    if operator == "$not":
        return not _field(path, operand, document)
    if operator == "$size":
        return any(isinstance(v, list) and len(v) == operand for v in _strict(document, path))
    if operator == "$all":
        return all(_equals(document, path, v) for v in operand)
    if operator == "$elemMatch":
        for array in _strict(document, path):
            if not isinstance(array, list):
                continue
            for element in array:
                if all(k.startswith("$") for k in operand):
                    if _field((), operand, element):
                        return True
                elif matches(operand, element):
                    return True
        return False
    raise QueryError(f"unknown operator '{operator}'")
