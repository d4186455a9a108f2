"""A pure-Python evaluator of the filter language: the oracle for the SQL compiler.

It states the semantics documented in ``projections.filters`` directly, on
Python values, without SQL/JSON paths; property tests check that the compiled
SQL agrees with it on random documents and filters. It assumes a filter that
``compile_filter`` accepts. Numbers compare as the decimals their JSON spells
(a float by its shortest repr), which is what PostgreSQL stores.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from projections.errors import QueryError
from projections.filters import iso_instant, translate_regex

_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def matches(filter: Any, document: Any) -> bool:
    """Whether ``document`` (a JSON object, or an array under ``$elemMatch``) satisfies
    ``filter``."""
    if not isinstance(filter, dict):
        raise QueryError("a filter must be a JSON object")
    return all(_clause(key, condition, document) for key, condition in filter.items())


def _clause(key: str, condition: Any, document: Any) -> bool:
    if key == "$and":
        return all(matches(f, document) for f in condition)
    if key == "$or":
        return any(matches(f, document) for f in condition)
    if key == "$nor":
        return not any(matches(f, document) for f in condition)
    values, lacking = _values(document, key.split("."))
    return _field(condition, values, unwrap=True, lacking=lacking)


def _values(document: Any, segments: list[str]) -> tuple[list[Any], bool]:
    """What a path finds: keys of objects, of an array's objects, and array indexes
    (after the first segment); and whether an object on the way lacked the next
    key (not a numeric one), which MongoDB counts as a null there."""
    found = [document]
    lacking = False
    for depth, segment in enumerate(segments):
        index = depth > 0 and _INDEX.fullmatch(segment) is not None
        step = []
        for value in found:
            objects = [value] if isinstance(value, dict) else []
            if isinstance(value, list):
                objects = [e for e in value if isinstance(e, dict)]
                if index and int(segment) < len(value):
                    step.append(value[int(segment)])
            step += [o[segment] for o in objects if segment in o]
            lacking = lacking or (
                depth > 0 and not index and any(segment not in o for o in objects)
            )
        found = step
    return found, lacking


def _field(condition: Any, values: list[Any], *, unwrap: bool, lacking: bool = False) -> bool:
    """``values`` are a field's values; with ``unwrap``, arrays' elements are candidates too."""
    candidates = (
        values + [e for v in values if isinstance(v, list) for e in v] if unwrap else values
    )
    if isinstance(condition, dict) and any(k.startswith("$") for k in condition):
        return all(
            _operator(op, operand, condition, values, candidates, unwrap, lacking)
            for op, operand in condition.items()
        )
    return _equals(condition, values, candidates, lacking)


def _operator(
    op: str,
    operand: Any,
    condition: dict[str, Any],
    values: list[Any],
    candidates: list[Any],
    unwrap: bool,
    lacking: bool,
) -> bool:
    if op == "$eq":
        return _equals(operand, values, candidates, lacking)
    if op == "$ne":
        return not _equals(operand, values, candidates, lacking)
    if op in _ORDER:
        return _compare(op, operand, values, candidates, lacking)
    if op == "$in":
        return any(_equals(v, values, candidates, lacking) for v in operand)
    if op == "$nin":
        return not any(_equals(v, values, candidates, lacking) for v in operand)
    if op == "$all":
        return bool(operand) and all(_equals(v, values, candidates, lacking) for v in operand)
    if op == "$exists":
        return bool(values) == operand
    if op == "$regex":
        return _regex(operand, condition.get("$options", ""), candidates)
    if op == "$options":
        return True
    if op == "$not":
        return not _field(operand, values, unwrap=unwrap, lacking=lacking)
    if op == "$size":
        return any(isinstance(v, list) and len(v) == operand for v in values)
    if op == "$elemMatch":
        return any(_element_matches(operand, e) for v in values if isinstance(v, list) for e in v)
    raise QueryError(f"unknown operator '{op}'")


def _element_matches(condition: dict[str, Any], element: Any) -> bool:
    if any(k.startswith("$") and k not in ("$and", "$or", "$nor") for k in condition):
        return _field(condition, [element], unwrap=False)
    # As in MongoDB, an element that is an array is a document too.
    return isinstance(element, dict | list) and matches(condition, element)


def _equals(target: Any, values: list[Any], candidates: list[Any], lacking: bool) -> bool:
    if target is None:
        return not values or lacking or any(c is None for c in candidates)
    if isinstance(target, str) and (instant := iso_instant(target)) is not None:
        return any(isinstance(c, str) and iso_instant(c) == instant for c in candidates)
    return any(_same(c, target) for c in candidates)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, never a boolean for a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return _decimal(a) == _decimal(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


def _compare(
    op: str, operand: Any, values: list[Any], candidates: list[Any], lacking: bool
) -> bool:
    if operand is None:
        return op in ("$gte", "$lte") and _equals(None, values, candidates, lacking)
    as_instants = isinstance(operand, str) and iso_instant(operand) is not None
    target = _sort_key(operand, as_instants)
    return any(
        (key := _sort_key(c, as_instants)) is not None
        and target is not None
        and key[0] == target[0]
        and _ORDER[op](key[1], target[1])
        for c in candidates
    )


def _sort_key(value: Any, as_instants: bool) -> tuple[str, Any] | None:
    """The type bracket of ``value`` and its comparable form (``None``: never ordered)."""
    if isinstance(value, bool):
        return ("boolean", value)
    if _is_number(value):
        return ("number", _decimal(value))
    if isinstance(value, str):
        if not as_instants:
            return ("string", value)  # Python orders str by code point, like SQL/JSON paths
        instant = iso_instant(value)
        return None if instant is None else ("instant", instant)
    return None


def _regex(pattern: str, options: str, candidates: list[Any]) -> bool:
    search = _compiled(pattern, options)
    return any(isinstance(c, str) and search(c) is not None for c in candidates)


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str, options: str) -> Callable[[str], re.Match[str] | None]:
    return re.compile(translate_regex(pattern, options).python).search


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _decimal(value: int | float) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
