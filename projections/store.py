"""Document views in PostgreSQL, as projectors see them.

A batch of events loads the documents it touches once, changes them in
memory, and writes them back in one statement, in the same transaction as
the projection's tracking position: that is what makes projection
exactly-once. Table names come from our code (never from requests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from psycopg import Cursor, sql

COLLECTION_TABLE_PREFIX = "doc_"


def collection_table(collection: str) -> str:
    return COLLECTION_TABLE_PREFIX + collection


@dataclass
class Document:
    id: str
    org_id: str
    data: dict[str, Any]
    version: int
    position: int
    created: datetime
    updated: datetime


@dataclass
class ViewBatch:
    """The documents one batch of events reads and writes, per collection.

    ``tables`` maps a collection to the table that holds it: the live one, or
    a shadow copy while rebuilding.
    """

    cursor: Cursor[Any]
    tables: Mapping[str, sql.Composable]
    _loaded: dict[str, dict[str, Document | None]] = field(default_factory=dict)
    _dirty: dict[str, dict[str, Document]] = field(default_factory=dict)

    def prefetch(self, collection: str, ids: Iterable[str]) -> None:
        loaded = self._loaded.setdefault(collection, {})
        wanted = [i for i in set(ids) if i not in loaded]
        if not wanted:
            return
        self.cursor.execute(
            sql.SQL(
                "SELECT _id, org_id, data, _version, _position, created, updated "
                "FROM {} WHERE _id = ANY(%s)"
            ).format(self.tables[collection]),
            (wanted,),
        )
        for row in self.cursor.fetchall():
            loaded[row[0]] = Document(*row)
        for missing in wanted:
            loaded.setdefault(missing, None)

    def get(self, collection: str, doc_id: str) -> Document | None:
        loaded = self._loaded.setdefault(collection, {})
        if doc_id not in loaded:
            self.prefetch(collection, [doc_id])
        return loaded[doc_id]

    def put(self, collection: str, document: Document) -> None:
        self._loaded.setdefault(collection, {})[document.id] = document
        self._dirty.setdefault(collection, {})[document.id] = document

    def flush(self) -> int:
        """Upsert every changed document; returns how many.

        The batch travels as one JSON array parameter: psycopg's text-array
        quoting of thousands of JSON strings cost more than the database work.
        """
        written = 0
        for collection, documents in self._dirty.items():
            if not documents:
                continue
            rows = [
                {
                    "_id": d.id,
                    "org_id": d.org_id,
                    "data": d.data,
                    "_version": d.version,
                    "_position": d.position,
                    "created": d.created,
                    "updated": d.updated,
                }
                for d in documents.values()
            ]
            self.cursor.execute(
                sql.SQL(
                    "INSERT INTO {} (_id, org_id, data, _version, _position, created, updated) "
                    "SELECT _id, org_id, data, _version, _position, created, updated "
                    "FROM jsonb_to_recordset(%s::jsonb) AS t(_id text, org_id text, data jsonb, "
                    "_version bigint, _position bigint, created timestamptz, updated timestamptz) "
                    "ON CONFLICT (_id) DO UPDATE SET org_id = EXCLUDED.org_id, "
                    "data = EXCLUDED.data, _version = EXCLUDED._version, "
                    "_position = EXCLUDED._position, updated = EXCLUDED.updated"
                ).format(self.tables[collection]),
                (orjson.dumps(rows).decode(),),
            )
            written += len(rows)
        self._dirty.clear()
        return written
