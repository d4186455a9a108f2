"""Queries over the document views: async SQLAlchemy on asyncpg.

Every query is confined to one organisation by the ``org_id`` column, and a
project-scoped key's to what its project sees (``read_api/scope.py``),
whatever the client's filter says. Values always travel as bind parameters.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.database import single_statement
from projections.filters import compile_filter
from projections.store import collection_table
from read_api.params import CursorKey, decode_cursor, encode_cursor
from read_api.scope import visible_in

MAX_LIMIT = 500
_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_SORT_KEY = r" *[-+]?[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)* *"
# What the OpenAPI document promises for ``sort``: up to 4 keys, each ``field`` or ``-field``.
SORT_PATTERN = f"^({_SORT_KEY}(,{_SORT_KEY}){{0,3}})?$"  # empty: the default order
# Timestamps the views keep in columns: sorting on them uses the column (typed, indexed).
_COLUMN_SORTS = {"created_at": "created", "updated_at": "updated"}


class BadQuery(ValueError):
    """A query the client got wrong; the message names the problem."""


@dataclass(frozen=True)
class SortKey:
    path: str
    descending: bool

    def expression(self) -> str:
        column = _COLUMN_SORTS.get(self.path)
        if column is not None:
            return column
        # A missing field sorts as JSON null, so the order is total. The path
        # was validated (letters, digits, underscores), so it can sit in SQL.
        segments = "{" + ",".join(self.path.split(".")) + "}"
        return f"coalesce(data #> '{segments}', 'null'::jsonb)"

    def placeholder(self, name: str) -> str:
        kind = "timestamptz" if self.path in _COLUMN_SORTS else "jsonb"
        return f"CAST(:{name} AS {kind})"

    @property
    def cursor_key(self) -> CursorKey:
        return CursorKey.INSTANT if self.path in _COLUMN_SORTS else CursorKey.JSON

    def cursor_value(self, value: Any) -> Any:
        """A key value as the cursor stores it (JSON)."""
        return value.isoformat() if isinstance(value, datetime) else value

    def bind(self, value: Any) -> Any:
        """A decoded cursor value as the query binds it."""
        return value if self.cursor_key is CursorKey.INSTANT else orjson.dumps(value).decode()


def parse_sort(sort: str | None, default: str) -> list[SortKey]:
    keys = []
    for raw in (sort or default).split(","):
        field = raw.strip(" ")
        descending = field.startswith("-")
        path = field[1:] if field[:1] in ("-", "+") else field
        if not _PATH.match(path):
            raise BadQuery(f"invalid sort field {raw!r}: use field or -field, dotted paths allowed")
        keys.append(SortKey(path, descending))
    if len(keys) > 4:
        raise BadQuery("sort on at most 4 fields")
    return keys


def _mentions(filter_: Any, field: str) -> bool:
    if isinstance(filter_, dict):
        return any(key == field or _mentions(value, field) for key, value in filter_.items())
    if isinstance(filter_, list):
        return any(_mentions(item, field) for item in filter_)
    return False


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


async def list_documents(
    engine: AsyncEngine,
    collection: str,
    org_id: str,
    *,
    filter_: Any,
    sort: list[SortKey],
    limit: int,
    cursor: str | None,
    hide_deleted: bool = False,
    project_id: UUID | None = None,
) -> Page:
    """One page, keyset-paginated on (sort keys, _id): stable while writes land.

    ``project_id``: only what that project sees (a project-scoped key's reads).
    """
    fragment = compile_filter(filter_, param_prefix="f")
    in_scope, scope_params = visible_in(collection, project_id, org_id)
    where = ["org_id = :org", in_scope, f"({fragment.sql})"]
    params: dict[str, Any] = {
        "org": org_id,
        **scope_params,
        **fragment.params,
        "limit": limit + 1,
    }
    if hide_deleted and not _mentions(filter_, "deleted"):
        where.append("NOT (data @> '{\"deleted\": true}')")
    expressions = [key.expression() for key in sort]
    if cursor is not None:
        values, last_id = decode_cursor(cursor, [key.cursor_key for key in sort])
        # (k1 > v1) OR (k1 = v1 AND k2 < v2) OR ... OR (all equal AND _id > last_id)
        alternatives = []
        for i, key in enumerate([*sort, SortKey("_id", False)]):
            terms = []
            for j in range(i):
                terms.append(f"{expressions[j]} = {sort[j].placeholder(f'c{j}')}")
            if i < len(sort):
                op = "<" if key.descending else ">"
                terms.append(f"{expressions[i]} {op} {key.placeholder(f'c{i}')}")
            else:
                terms.append("_id > :c_id")
            alternatives.append("(" + " AND ".join(terms) + ")")
        where.append("(" + " OR ".join(alternatives) + ")")
        for i, (key, value) in enumerate(zip(sort, values, strict=True)):
            params[f"c{i}"] = key.bind(value)
        params["c_id"] = last_id
    order = ", ".join(
        f"{expression} {'DESC' if key.descending else 'ASC'}"
        for key, expression in zip(sort, expressions, strict=True)
    )
    select_keys = "".join(f", {expression} AS k{i}" for i, expression in enumerate(expressions))
    query = (
        f"SELECT _id, data{select_keys} FROM {collection_table(collection)} "
        f"WHERE {' AND '.join(where)} ORDER BY {order}, _id ASC LIMIT :limit"
    )
    async with single_statement(engine) as conn:
        rows = (await conn.execute(text(query), params)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        keys = [key.cursor_value(last[2 + i]) for i, key in enumerate(sort)]
        next_cursor = encode_cursor([*keys, last[0]])
    return Page(items=[row[1] for row in rows], next_cursor=next_cursor)


async def get_document(
    engine: AsyncEngine,
    collection: str,
    org_id: str,
    doc_id: str,
    project_id: UUID | None = None,
) -> dict[str, Any] | None:
    """One document of the organisation (and seen by ``project_id``), or None."""
    in_scope, scope_params = visible_in(collection, project_id, org_id)
    async with single_statement(engine) as conn:
        row = (
            await conn.execute(
                text(
                    f"SELECT data FROM {collection_table(collection)} "
                    f"WHERE _id = :id AND org_id = :org AND {in_scope}"
                ),
                {"id": doc_id, "org": org_id, **scope_params},
            )
        ).first()
    return None if row is None else row[0]


async def projection_position(engine: AsyncEngine, names: list[str]) -> int:
    """How far every view has applied the log: the lowest position among them."""
    async with single_statement(engine) as conn:
        rows = (
            await conn.execute(
                text("SELECT name, position FROM projection_tracking WHERE name = ANY(:names)"),
                {"names": names},
            )
        ).all()
    positions = {name: int(position) for name, position in rows}
    return min(positions.get(name, 0) for name in names)


async def wait_for_position(
    engine: AsyncEngine, names: list[str], wanted: int, wait_s: float
) -> tuple[bool, int]:
    """Wait (bounded) until every view has applied ``wanted``; returns (reached, position)."""
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        position = await projection_position(engine, names)
        if position >= wanted:
            return True, position
        if time.monotonic() >= deadline:
            return False, position
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
