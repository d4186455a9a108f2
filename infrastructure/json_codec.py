"""JSON read back from storage, and JSON sent in answers: never a 500 on content.

The value contract (``domain.values``) keeps new values within what every
layer carries, but a reader also meets values it did not check:

- jsonb prints numbers in full: the float ``1e20`` reads back as the integer
  numeral ``100000000000000000000``. The standard library's ``json.loads``
  (asyncpg's default through SQLAlchemy) makes that a Python int that orjson
  then refuses to encode, so every read of such a document was a 500.
  ``jsonb_loads`` decodes with orjson, which turns integer numerals past 64
  bits into floats, and falls back to the standard library only for numerals
  past a double's range (which only hand-written rows or computed values hold).
- Events logged before the contract may hold integers past 64 bits or lone
  surrogates. ``dumps_answer`` encodes with orjson and, only if that fails,
  encodes a carryable copy: such integers as the nearest float (what a view
  of the same value reads back as), lone surrogates as U+FFFD.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

__all__ = ["dumps_answer", "jsonb_loads"]

# The integers orjson decodes and encodes as integers: i64 and u64.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# More digits than any integer in that range has (sign included).
_INT_DIGITS: Final = 21


def jsonb_loads(text: str | bytes) -> Any:
    """A jsonb value as Python, every number one that ``orjson.dumps`` can encode.

    Integer numerals within 64 bits become ints, others floats (as orjson
    decodes them); numerals past a double's range become infinite floats,
    which orjson encodes as ``null``.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, parse_int=_int_or_float, parse_float=float)


def _int_or_float(numeral: str) -> int | float:
    if len(numeral) <= _INT_DIGITS:
        number = int(numeral)
        if _INT_MIN <= number <= _INT_MAX:
            return number
    return float(numeral)  # no int() first: Python refuses numerals past 4300 digits


def dumps_answer(value: Any, default: Any = None) -> bytes:
    """``value`` as JSON for an answer; content that orjson refuses is carried, not fatal.

    ``default`` is orjson's hook for types it does not know (problems use ``str``).
    """
    try:
        return orjson.dumps(value, default=default)
    except orjson.JSONEncodeError:
        return orjson.dumps(_carryable(value), default=default)


def _carryable(value: Any) -> Any:
    """A copy of ``value`` that orjson encodes: see the module docstring."""
    if isinstance(value, str):
        return _carryable_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            return float("inf") if value > 0 else float("-inf")
    if isinstance(value, dict):
        return {_carryable_text(str(key)): _carryable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_carryable(item) for item in value]
    return value  # anything else is orjson's to encode or refuse, as without a fallback


def _carryable_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text
