"""MongoDB-style update operators for projectors, applied to JSON documents.

Projectors express how an event changes a view document as an update
document (``{"$set": {"name": "x"}, "$inc": {"runs": 1}}``); this module
applies it in Python, so the same code serves live projection and rebuilds.
Nothing is silently ignored: an unknown operator, a conflicting path or a
type mismatch raises ``UpdateError``.

Documents are treated as immutable values: ``apply_update`` copies only the
containers on the paths it changes (the rest is shared with the input), and
values it is given are stored as they are, not copied. A full deep copy per
event was most of the cost of a rebuild.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MISSING: Any = object()


class UpdateError(ValueError):
    """An update document that cannot be applied; the message says why."""


def apply_update(document: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return a new document: ``document`` changed by ``update``. The input is not modified."""
    if not isinstance(update, dict) or not update:
        raise UpdateError("an update must be a non-empty object of operators")
    fields = update.get("$set")
    if (
        len(update) == 1
        and isinstance(fields, dict)
        and fields
        and all(isinstance(k, str) and k and "." not in k and not k.startswith("$") for k in fields)
    ):
        # The projectors' common case, top-level $set only: a shallow merge.
        return {**document, **fields}
    plain = [key for key in update if not key.startswith("$")]
    if plain:
        raise UpdateError(f"update fields must be inside an operator, not bare: {plain}")
    result = _Owned(document)
    touched: list[tuple[str, ...]] = []
    for operator, fields in update.items():
        apply_one = _OPERATORS.get(operator)
        if apply_one is None:
            known = ", ".join(sorted(_OPERATORS))
            raise UpdateError(f"unknown update operator '{operator}' (known: {known})")
        if not isinstance(fields, dict) or not fields:
            raise UpdateError(f"{operator} needs a non-empty object of paths")
        for path, operand in fields.items():
            parts = _split(path)
            for other in touched:
                shorter = min(len(other), len(parts))
                if other[:shorter] == parts[:shorter]:
                    raise UpdateError(f"updating '{path}' would conflict with '{'.'.join(other)}'")
            touched.append(parts)
            apply_one(result, parts, operand, path)
    return result.root


class _Owned:
    """A document being updated: containers are copied once, on first write."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.root: dict[str, Any] = dict(document)
        self._copies = {id(self.root)}

    def own(self, parent: Any, key: Any, child: Any) -> Any:
        """``child`` (found at ``parent[key]``), copied into the result if not yet ours."""
        if id(child) in self._copies:
            return child
        copied = dict(child) if isinstance(child, dict) else list(child)
        parent[key] = copied
        self._copies.add(id(copied))
        return copied


def _split(path: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path:
        raise UpdateError(f"invalid path {path!r}")
    parts = tuple(path.split("."))
    if any(not part or part.startswith("$") for part in parts):
        raise UpdateError(f"invalid path '{path}'")
    return parts


def _get(document: Any, parts: tuple[str, ...]) -> Any:
    current = document.root if isinstance(document, _Owned) else document
    for part in parts:
        if isinstance(current, dict):
            current = current.get(part, MISSING)
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            current = current[index] if index < len(current) else MISSING
        else:
            return MISSING
        if current is MISSING:
            return MISSING
    return current


def _parent(document: _Owned, parts: tuple[str, ...], path: str) -> Any:
    """The container holding the last segment (ours to change), creating objects on the way."""
    current: Any = document.root
    for part in parts[:-1]:
        if isinstance(current, dict):
            key: Any = part
            nxt = current.get(part, MISSING)
        elif isinstance(current, list) and part.isdigit():
            key = int(part)
            _pad(current, key)
            nxt = current[key]
        else:
            raise UpdateError(f"cannot create '{path}': '{part}' is inside a {_kind(current)}")
        if nxt is MISSING or nxt is None:
            nxt = document.own(current, key, {})
        elif isinstance(nxt, dict | list):
            nxt = document.own(current, key, nxt)
        current = nxt
    if not isinstance(current, dict | list):
        raise UpdateError(f"cannot update '{path}': its parent is a {_kind(current)}")
    return current


def _pad(values: list[Any], index: int) -> None:
    # As MongoDB does: setting past the end fills the gap with nulls.
    if index > 10_000:
        raise UpdateError(f"array index {index} is too large")
    values.extend([None] * (index + 1 - len(values)))


def _put(document: _Owned, parts: tuple[str, ...], value: Any, path: str) -> None:
    parent = _parent(document, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif last.isdigit():
        _pad(parent, int(last))
        parent[int(last)] = value
    else:
        raise UpdateError(f"cannot set '{path}': '{last}' is not an index of an array")


def _set(document: _Owned, parts: tuple[str, ...], value: Any, path: str) -> None:
    _put(document, parts, value, path)


def _unset(document: _Owned, parts: tuple[str, ...], _: Any, path: str) -> None:
    if _get(document, parts) is MISSING:
        return
    parent = _parent(document, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = None  # MongoDB keeps array positions: the slot becomes null


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _inc(document: _Owned, parts: tuple[str, ...], amount: Any, path: str) -> None:
    if not _is_number(amount):
        raise UpdateError(f"$inc needs a number for '{path}', not {_kind(amount)}")
    current = _get(document, parts)
    if current is MISSING:
        _put(document, parts, amount, path)
    elif _is_number(current):
        _put(document, parts, current + amount, path)
    else:
        raise UpdateError(f"$inc on '{path}', which holds a {_kind(current)}, not a number")


def _each(operator: str, operand: Any, path: str) -> list[Any]:
    if isinstance(operand, dict) and "$each" in operand:
        if set(operand) != {"$each"} or not isinstance(operand["$each"], list):
            raise UpdateError(f"{operator} on '{path}': use {{'$each': [...]}} alone")
        return list(operand["$each"])
    return [operand]


def _array_at(document: _Owned, parts: tuple[str, ...], operator: str, path: str) -> list[Any]:
    """The array at ``path``, ours to change (created when missing)."""
    current = _get(document, parts)
    if current is not MISSING and not isinstance(current, list):
        raise UpdateError(f"{operator} on '{path}', which holds a {_kind(current)}, not an array")
    fresh: list[Any] = [] if current is MISSING else list(current)
    _put(document, parts, fresh, path)
    return fresh


def _push(document: _Owned, parts: tuple[str, ...], operand: Any, path: str) -> None:
    values = _array_at(document, parts, "$push", path)
    values.extend(_each("$push", operand, path))


def _add_to_set(document: _Owned, parts: tuple[str, ...], operand: Any, path: str) -> None:
    values = _array_at(document, parts, "$addToSet", path)
    for value in _each("$addToSet", operand, path):
        if not any(_same(value, existing) for existing in values):
            values.append(value)


def _pull(document: _Owned, parts: tuple[str, ...], operand: Any, path: str) -> None:
    if isinstance(operand, dict) and any(key.startswith("$") for key in operand):
        raise UpdateError(f"$pull on '{path}': conditions are not supported, give a value")
    current = _get(document, parts)
    if current is MISSING:
        return
    if not isinstance(current, list):
        raise UpdateError(f"$pull on '{path}', which holds a {_kind(current)}, not an array")
    _put(document, parts, [value for value in current if not _same(value, operand)], path)


def _bound(keep: Callable[[Any, Any], bool], operator: str) -> Callable[..., None]:
    def apply(document: _Owned, parts: tuple[str, ...], value: Any, path: str) -> None:
        current = _get(document, parts)
        if current is MISSING:
            _put(document, parts, value, path)
            return
        comparable = (_is_number(current) and _is_number(value)) or (
            isinstance(current, str) and isinstance(value, str)
        )
        if not comparable:
            raise UpdateError(
                f"{operator} on '{path}' compares a {_kind(current)} with a {_kind(value)}"
            )
        if keep(value, current):
            _put(document, parts, value, path)

    return apply


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and (_is_number(a) == _is_number(b))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_OPERATORS: dict[str, Callable[..., None]] = {
    "$set": _set,
    "$unset": _unset,
    "$inc": _inc,
    "$push": _push,
    "$addToSet": _add_to_set,
    "$pull": _pull,
    "$min": _bound(lambda new, old: new < old, "$min"),
    "$max": _bound(lambda new, old: new > old, "$max"),
}
