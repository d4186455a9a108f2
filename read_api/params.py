"""What a client sends beside a body (query parameters, headers), parsed once per kind.

Each parser answers a bad value with a 400 problem naming the parameter, so
nothing a client types reaches SQL in a form the database or the driver
would refuse (a 500). Python's own parsers are too lenient for this:
``int()`` and ``str.isdigit()`` take non-ASCII digits (``²``, ``١٢``),
``urlsafe_b64decode`` skips junk, ``fromisoformat`` takes instants whose
UTC form is outside the datetime range, and a NUL passes through every one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from domain.values import check_value
from infrastructure.problems import Problem, problem_type

# Log positions, versions and revisions are PostgreSQL bigints.
MAX_POSITION = 2**63 - 1
_MAX_CURSOR_CHARS = 4096
_MAX_TEXT_CHARS = 1024


def parse_position(name: str, raw: str) -> int:
    """A log position (or version): ASCII digits, 0 to 2**63 - 1."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_POSITION):
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise Problem(
            400,
            f"{name} must be a log position (an integer from 0 to {MAX_POSITION}), not {shown!r}",
            type_=problem_type("bad-position"),
        )
    return int(raw)


def parse_text(name: str, raw: str) -> str:
    """Free text compared in SQL (an actor, an event type): no NUL, bounded length."""
    if "\x00" in raw or len(raw) > _MAX_TEXT_CHARS:
        raise Problem(
            400,
            f"{name} must be at most {_MAX_TEXT_CHARS} characters without NUL (U+0000)",
            type_=problem_type("bad-parameter"),
        )
    return raw


def parse_instant(name: str, raw: str) -> datetime:
    """An ISO 8601 instant with an offset, whose UTC form exists; else a 400 naming ``name``."""
    try:
        # ASCII only: fromisoformat stops at a NUL and takes what came before it.
        if not raw.isascii() or "\x00" in raw:
            raise ValueError(raw)
        value = datetime.fromisoformat(raw)
    except ValueError:
        hint = " (send '+' in a query string as %2B)" if " " in raw else ""
        raise Problem(
            400,
            f"{name} must be an ISO 8601 time with an offset, e.g. 2026-01-31T00:00:00Z, "
            f"not {raw!r}{hint}",
            type_=problem_type("bad-time"),
        ) from None
    if value.tzinfo is None:
        raise Problem(
            400, f"{name} needs an offset (Z or +HH:MM): {raw!r}", type_=problem_type("bad-time")
        )
    try:
        # The driver sends UTC: 0001-01-01T00:00+01:00 has none.
        value.astimezone(UTC)
    except OverflowError:
        raise Problem(
            400,
            f"{name} is outside the years 1 to 9999 once in UTC: {raw!r}",
            type_=problem_type("bad-time"),
        ) from None
    return value


# -- list cursors -----------------------------------------------------------------------


class CursorKey(StrEnum):
    """What one sort key of a keyset cursor holds."""

    INSTANT = "instant"  # a timestamptz column, as ISO 8601
    JSON = "json"  # a value from the document (compared as jsonb)


def encode_cursor(values: Sequence[Any]) -> str:
    """The sort keys' values, then the last ``_id``: what the next page starts after."""
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


def decode_cursor(raw: str, keys: Sequence[CursorKey]) -> tuple[list[Any], str]:
    """``(key values, last _id)`` of a cursor ``encode_cursor`` made; else a 400.

    A cursor is the client's to send back unchanged, so anything else (not
    base64, not JSON, the wrong shape or types, NUL, a time outside the range)
    is a tampered or stale cursor, never a value to hand to SQL.
    """
    invalid = Problem(
        400,
        "cursor is not a next_cursor this API returned: pass it back unchanged",
        type_=problem_type("bad-cursor"),
    )
    if len(raw) > _MAX_CURSOR_CHARS or not raw.isascii():
        raise invalid
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True)
        values = orjson.loads(data)
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise invalid from None
    if not isinstance(values, list) or len(values) != len(keys) + 1:
        raise invalid
    *key_values, last_id = values
    if not isinstance(last_id, str) or check_value(last_id):
        raise invalid
    decoded: list[Any] = []
    for key, value in zip(keys, key_values, strict=True):
        if key is CursorKey.INSTANT:
            if not isinstance(value, str):
                raise invalid
            try:
                decoded.append(parse_instant("cursor", value))
            except Problem:
                raise invalid from None
        else:
            if check_value(value):
                raise invalid
            decoded.append(value)
    return decoded, last_id
