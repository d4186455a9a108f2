"""A pure-Python evaluator of aggregation pipelines, the oracle for ``projections.pipeline``.

It parses with the compiler's parser (so both refuse the same pipelines with
the same messages) and mirrors the SQL stage by stage: stable sorts in
PostgreSQL's jsonb order, groups in order of their first document, exact
decimal arithmetic for ``$sum``/``$avg`` (PostgreSQL ``numeric``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

from projections.pipeline import (
    Accumulator,
    Arr,
    Count,
    Expr,
    Group,
    Limit,
    Literal,
    Match,
    Project,
    Ref,
    Root,
    Skip,
    Sort,
    Stage,
    Unwind,
    parse_pipeline,
)
from projections.reference import matches

MISSING: Any = object()


def run_pipeline(pipeline: Any, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stages = parse_pipeline(pipeline)
    docs: list[Any] = [copy.deepcopy(d) for d in documents]
    for stage in stages:
        docs = _STAGES[type(stage)](stage, docs)
    return docs


# -- expressions ----------------------------------------------------------------


def get_path(document: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path``, walking objects only; ``MISSING`` when absent."""
    current = document
    for segment in path:
        if not isinstance(current, dict) or segment not in current:
            return MISSING
        current = current[segment]
    return current


def evaluate(expression: Expr, document: Any) -> Any:
    if isinstance(expression, Ref):
        return get_path(document, expression.path)
    if isinstance(expression, Root):
        return document
    if isinstance(expression, Literal):
        return copy.deepcopy(expression.value)
    if isinstance(expression, Arr):
        values = [evaluate(e, document) for e in expression.items]
        return [None if v is MISSING else v for v in values]
    out = {}
    for name, e in expression.fields:
        value = evaluate(e, document)
        if value is not MISSING:
            out[name] = value
    return out


# -- numbers, equality and order as PostgreSQL's jsonb has them -------------------


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def decimal(value: int | float) -> Decimal:
    # How PostgreSQL reads the JSON text Python writes for the number.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def from_decimal(value: Decimal) -> int | float:
    if value == value.to_integral_value() and value.as_tuple().exponent >= 0:  # type: ignore[operator]
        return int(value)
    return float(value)


def group_key(value: Any) -> Any:
    """A hashable stand-in equal exactly when the values are equal as jsonb."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if is_number(value):
        return ("number", decimal(value).normalize())
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(group_key(v) for v in value))
    return ("object", frozenset((k, group_key(v)) for k, v in value.items()))


_TYPE_ORDER = {type(None): 0, str: 1, int: 2, float: 2, bool: 3, list: 4, dict: 5}


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _storage_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode()
    return (len(encoded), encoded)


def compare_jsonb(a: Any, b: Any) -> int:
    """PostgreSQL's jsonb comparison (below the top level), strings by code point."""
    ta, tb = _TYPE_ORDER[type(a)], _TYPE_ORDER[type(b)]
    if ta != tb:
        return _cmp(ta, tb)
    if a is None:
        return 0
    if is_number(a):
        return _cmp(decimal(a), decimal(b))
    if isinstance(a, bool | str):
        return _cmp(a, b)
    if isinstance(a, list):
        if len(a) != len(b):
            return _cmp(len(a), len(b))
        for x, y in zip(a, b, strict=True):
            c = compare_jsonb(x, y)
            if c:
                return c
        return 0
    if len(a) != len(b):
        return _cmp(len(a), len(b))
    for ka, kb in zip(sorted(a, key=_storage_order), sorted(b, key=_storage_order), strict=True):
        c = _cmp(ka, kb) or compare_jsonb(a[ka], b[kb])
        if c:
            return c
    return 0


def compare_sort_values(a: Any, b: Any) -> int:
    """Top-level jsonb order: as below, except that ``[]`` sorts before null."""
    return _cmp(_top_rank(a), _top_rank(b)) or compare_jsonb(a, b)


def _top_rank(value: Any) -> int:
    if isinstance(value, list):
        return 0 if not value else 5
    return _TYPE_ORDER[type(value)] + 1


# -- stages -----------------------------------------------------------------------


def _match(stage: Match, docs: list[Any]) -> list[Any]:
    return [d for d in docs if matches(stage.filter, d)]


def _skip(stage: Skip, docs: list[Any]) -> list[Any]:
    return docs[stage.n :]


def _limit(stage: Limit, docs: list[Any]) -> list[Any]:
    return docs[: stage.n]


def _count(stage: Count, docs: list[Any]) -> list[Any]:
    return [{stage.name: len(docs)}] if docs else []


def _sort(stage: Sort, docs: list[Any]) -> list[Any]:
    def compare(x: Any, y: Any) -> int:
        for path, descending in stage.keys:
            a, b = get_path(x, path), get_path(y, path)
            c = compare_sort_values(None if a is MISSING else a, None if b is MISSING else b)
            if c:
                return -c if descending else c
        return 0

    return sorted(docs, key=functools.cmp_to_key(compare))  # stable: ties keep input order


def _project(stage: Project, docs: list[Any]) -> list[Any]:
    out = []
    for doc in docs:
        if not stage.inclusion:
            names = {name for name, _ in stage.fields}
            out.append({k: v for k, v in doc.items() if k not in names})
            continue
        projected = {}
        for name, expression in stage.fields:
            value = doc.get(name, MISSING) if expression is None else evaluate(expression, doc)
            if value is not MISSING:
                projected[name] = value
        out.append(projected)
    return out


def _set_path(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    target = out
    for segment in path[:-1]:
        target = target[segment]
    target[path[-1]] = value
    return out


def _delete_path(document: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(document)
    target = out
    for segment in path[:-1]:
        target = target[segment]
    del target[path[-1]]
    return out


def _unwind(stage: Unwind, docs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for doc in docs:
        value = get_path(doc, stage.path)
        if isinstance(value, list) and value:
            out.extend(_set_path(doc, stage.path, element) for element in value)
        elif value is not MISSING and value is not None and not isinstance(value, list):
            out.append(doc)
        elif stage.preserve:
            out.append(_delete_path(doc, stage.path) if value == [] else doc)
    return out


def _group(stage: Group, docs: list[Any]) -> list[Any]:
    groups: dict[Any, tuple[Any, list[Any]]] = {}
    for doc in docs:
        key = evaluate(stage.key, doc)
        key = None if key is MISSING else key
        groups.setdefault(group_key(key), (key, []))[1].append(doc)
    out = []
    for key, members in groups.values():
        result = {"_id": key}
        for accumulator in stage.accumulators:
            result[accumulator.name] = _accumulate(accumulator, members)
        out.append(result)
    return out


def _accumulate(accumulator: Accumulator, members: list[Any]) -> Any:
    if accumulator.operand is None:  # $count
        return len(members)
    operand = accumulator.operand
    values = [evaluate(operand, doc) for doc in members]
    numbers = [v for v in values if is_number(v)]
    strings = [v for v in values if isinstance(v, str)]
    operator = accumulator.operator
    if operator in ("$sum", "$avg"):
        with localcontext() as context:
            context.prec = 60
            total = sum((decimal(v) for v in numbers), Decimal(0))
            if operator == "$sum":
                return from_decimal(total)
            return float(total / len(numbers)) if numbers else None
    if operator == "$min":
        if numbers:
            return min(numbers, key=decimal)
        return min(strings) if strings else None
    if operator == "$max":
        if strings:
            return max(strings)
        return max(numbers, key=decimal) if numbers else None
    if operator == "$push":
        return [v for v in values if v is not MISSING]
    value = values[0] if operator == "$first" else values[-1]
    return None if value is MISSING else value


_STAGES: dict[type, Callable[[Any, list[Any]], list[Any]]] = {
    Match: _match,
    Group: _group,
    Sort: _sort,
    Skip: _skip,
    Limit: _limit,
    Count: _count,
    Project: _project,
    Unwind: _unwind,
}

__all__ = ["MISSING", "Stage", "compare_jsonb", "compare_sort_values", "run_pipeline"]
