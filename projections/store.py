"""Document views in PostgreSQL, as projectors see them.

A batch of events loads the documents it touches once, changes them in
memory, and writes them back in one statement, in the same transaction as
the projection's tracking position: that is what makes projection
exactly-once. Table names come from our code (never from requests).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from psycopg import Copy, Cursor, sql

COLLECTION_TABLE_PREFIX = "doc_"
_COPY_CHUNK = 1000  # lines per write to COPY

# A JSON escape of U+0000: preceded by an even number of backslashes (each pair
# is an escaped backslash), so the text "\\u0000" (a literal backslash) is kept.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def jsonb_text(value: Any) -> str:
    """JSON for jsonb. jsonb refuses U+0000, and one such string in one event
    would stall the projection forever, so views hold U+FFFD instead (the log
    keeps the original)."""
    text = orjson.dumps(value).decode()
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text


def _copy_field(text: str) -> str:
    """``text`` as a field of COPY's text format (ids might hold a tab or newline)."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


_JSON_NUL = b"\\u0000"


def _copy_json(value: Any) -> bytes:
    """``jsonb_text`` as a COPY field, in bytes: orjson writes no raw tab,
    newline or carriage return, so only backslashes are doubled."""
    data = orjson.dumps(value)
    if _JSON_NUL in data:
        data = jsonb_text(value).encode()
    return data.replace(b"\\", b"\\\\")


def _copy_line(d: Document) -> bytes:
    created = d.created.isoformat()
    updated = created if d.updated is d.created else d.updated.isoformat()
    return b"%s\t%s\t%s\t%d\t%d\t%s\t%s\n" % (
        _copy_field(d.id).encode(),
        _copy_field(d.org_id).encode(),
        _copy_json(d.data),
        d.version,
        d.position,
        created.encode(),
        updated.encode(),
    )


def _copy_documents(copy: Copy, documents: Iterable[Document]) -> None:
    """COPY's text format written here, not row by row through psycopg's
    dumpers: those were a fifth of a rebuild's time."""
    lines = []
    for document in documents:
        lines.append(_copy_line(document))
        if len(lines) == _COPY_CHUNK:
            copy.write(b"".join(lines))
            lines.clear()
    if lines:
        copy.write(b"".join(lines))


def collection_table(collection: str) -> str:
    return COLLECTION_TABLE_PREFIX + collection


@dataclass(slots=True)
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
    loader is the only writer of its tables and they start empty.

    A document is read at most once and written when evicted or at the end,
    not once per event; and a document this cache never saw does not exist,
    so the load asks the table only for those it evicted.

    ``write_once``: collections whose documents are each put once and never
    read by the projection (one per revision): they are not kept here, each
    batch COPYs them straight in.
    """

    def __init__(self, capacity: int = 200_000, write_once: Iterable[str] = ()) -> None:
        self.capacity = capacity
        self.write_once = frozenset(write_once)
        self._docs: dict[str, OrderedDict[str, Document | None]] = {}
        self._dirty: dict[str, set[str]] = {}
        # Ids that have a row in the table (written when evicted, or read
        # back after that): the others are new, and the final write COPYs
        # them straight in instead of upserting.
        self._stored: dict[str, set[str]] = {}

    def lookup(self, collection: str, doc_id: str) -> tuple[bool, Document | None]:
        """(known, document): not known only for a document evicted to the table."""
        docs = self._docs.setdefault(collection, OrderedDict())
        if doc_id in docs:
            docs.move_to_end(doc_id)
            return True, docs[doc_id]
        return doc_id not in self._stored.get(collection, ()), None

    def remember(self, collection: str, document: Document | None, doc_id: str) -> None:
        self._docs.setdefault(collection, OrderedDict())[doc_id] = document
        if document is not None:
            self._stored.setdefault(collection, set()).add(doc_id)

    def put(self, collection: str, document: Document) -> list[tuple[Document, bool]]:
        """Keep ``document`` (dirty); returns the dirty documents evicted to make
        room, each with whether the table holds a row for it already."""
        docs = self._docs.setdefault(collection, OrderedDict())
        docs[document.id] = document
        docs.move_to_end(document.id)
        dirty = self._dirty.setdefault(collection, set())
        dirty.add(document.id)
        if len(docs) <= self.capacity:
            return []
        evicted = []
        stored = self._stored.setdefault(collection, set())
        while len(docs) > self.capacity:
            doc_id, old = docs.popitem(last=False)
            if doc_id in dirty:
                dirty.discard(doc_id)
                if old is not None:
                    evicted.append((old, doc_id in stored))
                    stored.add(doc_id)
        return evicted

    def delete(self, collection: str, doc_id: str) -> bool:
        """Forget ``doc_id`` (it reads as absent); True if the table holds a row
        for it, which the caller must delete."""
        self._docs.setdefault(collection, OrderedDict())[doc_id] = None
        self._dirty.setdefault(collection, set()).discard(doc_id)
        stored = self._stored.setdefault(collection, set())
        held = doc_id in stored
        stored.discard(doc_id)
        return held

    def drain(self) -> dict[str, tuple[list[Document], list[Document]]]:
        """Every dirty document, per collection, as (new, stored before); they
        count as written afterwards."""
        out = {}
        for collection, ids in self._dirty.items():
            stored = self._stored.get(collection, set())
            new: list[Document] = []
            old: list[Document] = []
            for doc_id in ids:
                document = self._docs[collection][doc_id]
                if document is not None:
                    (old if doc_id in stored else new).append(document)
            self._stored.setdefault(collection, set()).update(d.id for d in new)
            out[collection] = (new, old)
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
    _new: dict[str, list[Document]] = field(default_factory=dict)
    _deleted: dict[str, set[str]] = field(default_factory=dict)

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
        cache = self.cache
        if cache is not None and collection in cache.write_once:
            self._new.setdefault(collection, []).append(document)
            return
        self._loaded.setdefault(collection, {})[document.id] = document
        deleted = self._deleted.get(collection)
        if deleted:
            deleted.discard(document.id)
        if cache is None:
            self._dirty.setdefault(collection, {})[document.id] = document
            return
        for evicted, stored in cache.put(collection, document):
            if stored:
                self._dirty.setdefault(collection, {})[evicted.id] = evicted
            else:
                self._new.setdefault(collection, []).append(evicted)

    def delete(self, collection: str, doc_id: str) -> None:
        """Remove a document (retention prunes executions); later reads find none."""
        self._loaded.setdefault(collection, {})[doc_id] = None
        self._dirty.get(collection, {}).pop(doc_id, None)
        if self.cache is None or self.cache.delete(collection, doc_id):
            self._deleted.setdefault(collection, set()).add(doc_id)

    def write(self, collection: str, documents: list[Document], *, new: bool = False) -> None:
        """Queue documents for the next flush (a bulk load's final write-behind);
        ``new`` ones, which the table does not hold, are COPYed straight in."""
        if new:
            self._new.setdefault(collection, []).extend(documents)
            return
        for document in documents:
            self._dirty.setdefault(collection, {})[document.id] = document

    def flush(self) -> int:
        """Upsert every changed document; returns how many.

        Documents are COPYed into a temporary staging table, then upserted
        from it in one statement: several times faster than sending them as
        parameters, which mattered most for rebuilds.
        """
        written = 0
        for collection, new in self._new.items():
            with self.cursor.copy(
                sql.SQL(
                    "COPY {} (_id, org_id, data, _version, _position, created, updated) FROM STDIN"
                ).format(self.tables[collection])
            ) as copy:
                _copy_documents(copy, new)
            written += len(new)
        self._new.clear()
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
                _copy_documents(copy, documents.values())
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
        for collection, ids in self._deleted.items():
            if ids:
                self.cursor.execute(
                    sql.SQL("DELETE FROM {} WHERE _id = ANY(%s)").format(self.tables[collection]),
                    (sorted(ids),),
                )
                written += len(ids)
        self._deleted.clear()
        return written
