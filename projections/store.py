"""Document views in PostgreSQL, as projectors see them.

A batch of events loads the documents it touches once, changes them in
memory, and writes them back in one statement, in the same transaction as
the projection's tracking position: that is what makes projection
exactly-once. Table names come from our code (never from requests).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import Cursor, sql
from psycopg.types.json import Jsonb

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


class DocumentCache:
    """Write-behind documents for a bulk load (rebuild or verify), where the
    loader is the only writer of its tables: a document is read at most once
    and written when evicted or at the end, not once per event."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._docs: dict[str, OrderedDict[str, Document | None]] = {}
        self._dirty: dict[str, set[str]] = {}

    def lookup(self, collection: str, doc_id: str) -> tuple[bool, Document | None]:
        docs = self._docs.setdefault(collection, OrderedDict())
        if doc_id not in docs:
            return False, None
        docs.move_to_end(doc_id)
        return True, docs[doc_id]

    def remember(self, collection: str, document: Document | None, doc_id: str) -> None:
        self._docs.setdefault(collection, OrderedDict())[doc_id] = document

    def put(self, collection: str, document: Document) -> list[Document]:
        """Keep ``document`` (dirty); returns dirty documents evicted to make room."""
        docs = self._docs.setdefault(collection, OrderedDict())
        docs[document.id] = document
        docs.move_to_end(document.id)
        dirty = self._dirty.setdefault(collection, set())
        dirty.add(document.id)
        evicted = []
        while len(docs) > self.capacity:
            doc_id, old = docs.popitem(last=False)
            if doc_id in dirty:
                dirty.discard(doc_id)
                if old is not None:
                    evicted.append(old)
        return evicted

    def drain(self) -> dict[str, list[Document]]:
        """Every dirty document, per collection; they count as written afterwards."""
        out = {
            collection: [d for i in ids if (d := self._docs[collection][i]) is not None]
            for collection, ids in self._dirty.items()
        }
        self._dirty = {}
        return out


@dataclass
class ViewBatch:
    """The documents one batch of events reads and writes, per collection.

    ``tables`` maps a collection to the table that holds it: the live one, or
    a shadow copy while rebuilding.
    """

    cursor: Cursor[Any]
    tables: Mapping[str, sql.Composable]
    cache: DocumentCache | None = None
    _loaded: dict[str, dict[str, Document | None]] = field(default_factory=dict)
    _dirty: dict[str, dict[str, Document]] = field(default_factory=dict)

    def prefetch(self, collection: str, ids: Iterable[str]) -> None:
        loaded = self._loaded.setdefault(collection, {})
        wanted = []
        for doc_id in set(ids):
            if doc_id in loaded:
                continue
            if self.cache is not None:
                hit, document = self.cache.lookup(collection, doc_id)
                if hit:
                    loaded[doc_id] = document
                    continue
            wanted.append(doc_id)
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
        for doc_id in wanted:
            loaded.setdefault(doc_id, None)
            if self.cache is not None:
                self.cache.remember(collection, loaded[doc_id], doc_id)

    def get(self, collection: str, doc_id: str) -> Document | None:
        loaded = self._loaded.setdefault(collection, {})
        if doc_id not in loaded:
            self.prefetch(collection, [doc_id])
        return loaded[doc_id]

    def put(self, collection: str, document: Document) -> None:
        self._loaded.setdefault(collection, {})[document.id] = document
        if self.cache is None:
            self._dirty.setdefault(collection, {})[document.id] = document
            return
        for evicted in self.cache.put(collection, document):
            self._dirty.setdefault(collection, {})[evicted.id] = evicted

    def write(self, collection: str, documents: list[Document]) -> None:
        """Queue documents for the next flush (a bulk load's final write-behind)."""
        for document in documents:
            self._dirty.setdefault(collection, {})[document.id] = document

    def flush(self) -> int:
        """Upsert every changed document; returns how many.

        Documents are COPYed into a temporary staging table, then upserted
        from it in one statement: several times faster than sending them as
        parameters, which mattered most for rebuilds.
        """
        written = 0
        for collection, documents in self._dirty.items():
            if not documents:
                continue
            self.cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _documents_stage (_id text, org_id text, "
                "data jsonb, _version bigint, _position bigint, created timestamptz, "
                "updated timestamptz) ON COMMIT DELETE ROWS"
            )
            self.cursor.execute("TRUNCATE _documents_stage")
            with self.cursor.copy("COPY _documents_stage FROM STDIN") as copy:
                for d in documents.values():
                    copy.write_row(
                        (d.id, d.org_id, Jsonb(d.data), d.version, d.position, d.created, d.updated)
                    )
            self.cursor.execute(
                sql.SQL(
                    "INSERT INTO {} (_id, org_id, data, _version, _position, created, updated) "
                    "SELECT _id, org_id, data, _version, _position, created, updated "
                    "FROM _documents_stage "
                    "ON CONFLICT (_id) DO UPDATE SET org_id = EXCLUDED.org_id, "
                    "data = EXCLUDED.data, _version = EXCLUDED._version, "
                    "_position = EXCLUDED._position, updated = EXCLUDED.updated"
                ).format(self.tables[collection])
            )
            written += len(documents)
        self._dirty.clear()
        return written
