"""Rebuild a projection from the log, or verify that its views equal a rebuild.

Rebuild without downtime: the projection is built into shadow tables while
readers keep reading the live ones; then, in one transaction that holds the
live tracking row (so the live projector pauses between batches), the shadow
catches up to the head and is renamed into place. Readers see the old view
or the new one, never a half-built one.

Dead letters: a rebuild meets every event again. One that now applies
resolves its dead letter; one that still fails is a dead letter again and
its documents are marked stale exactly as the live projector marks them, so
a verify (a rebuild into a scratch schema) finds no difference either way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import multiprocessing
import os
import queue
import threading
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import sql

from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE
from projections.dead_letters import adopt_rebuild, describe, forget
from projections.follower import is_transient
from projections.runner import EventBatch, Projector
from projections.store import DocumentCache, ViewBatch, collection_table

Progress = Callable[[int], None]
log = structlog.get_logger("reporunner.projections")


BULK_BATCH_SIZE = 1000
# Documents a bulk load keeps in memory between batches (DocumentCache).
CACHE_CAPACITY = 200_000


def _position(conn: psycopg.Connection[Any], name: str, *, lock: bool = False) -> int:
    query = "SELECT position FROM projection_tracking WHERE name = %s"
    row = conn.execute(query + (" FOR UPDATE" if lock else ""), (name,)).fetchone()
    return int(row[0]) if row else 0


def _copy_tables(
    conn: psycopg.Connection[Any], projector: Projector, schema: str | None, suffix: str
) -> dict[str, sql.Composable]:
    """Empty tables shaped like the live collections, with only their primary key:
    secondary indexes are built once after a bulk load, not maintained through it."""
    tables: dict[str, sql.Composable] = {}
    for collection in projector.projection.collections:
        live = collection_table(collection)
        name = sql.Identifier(schema, live) if schema else sql.Identifier(live + suffix)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                name, sql.Identifier(live)
            )
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (_id)").format(name))
        # LIKE copies no storage parameters: e.g. the counters' toast_tuple_target
        # (migration 0022), without which a rebuilt table stores them compressed.
        for option in _storage_parameters(conn, live):
            conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(name, sql.SQL(option)))
        tables[collection] = name
    return tables


def _storage_parameters(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """A live table's storage parameters, as ``name=value`` (the catalogue's own text)."""
    row = conn.execute(
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = %s",
        (table,),
    ).fetchone()
    return [str(option) for option in (row[0] if row and row[0] else [])]


def _secondary_indexes(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(name, definition) of a live table's indexes other than its primary key."""
    rows = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "JOIN pg_class c ON c.relname = i.indexname JOIN pg_index x ON x.indexrelid = c.oid "
        "WHERE i.schemaname = 'public' AND i.tablename = %s AND NOT x.indisprimary",
        (table,),
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


def _index_shadow(conn: psycopg.Connection[Any], live: str, shadow: str) -> list[str]:
    """Build the live table's secondary indexes on the shadow; returns their names."""
    names = []
    for name, definition in _secondary_indexes(conn, live):
        shadow_definition = definition.replace(
            f"INDEX {name} ON public.{live} ", f"INDEX {name}__shadow ON public.{shadow} ", 1
        )
        if shadow_definition == definition:
            raise RuntimeError(f"cannot copy index definition {definition!r}")
        conn.execute(shadow_definition)  # type: ignore[arg-type]  # our own catalogue's DDL
        names.append(name)
    return names


def _start_tracking(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute("DELETE FROM projection_tracking WHERE name = %s", (name,))
    conn.execute("INSERT INTO projection_tracking (name) VALUES (%s)", (name,))
    with conn.cursor() as cur:
        forget(cur, name)


def _load(
    projector: Projector,
    conn: psycopg.Connection[Any],
    fresh_tables: Callable[[], dict[str, sql.Composable]],
    tracking: str,
    upto: int | None,
    progress: Progress | None,
    processes: int | None,
    cache_capacity: int,
) -> dict[str, sql.Composable]:
    """Project everything up to ``upto`` into new copy tables; returns them.

    The bulk load first, in parallel processes where the projection has a
    partition key and the log is long (else, or should that fail, in this
    one). Its write-behind cache cannot take back one event's
    changes, so should any event fail, the tables are started again and
    loaded batch by batch under the follower policy: the events nobody can
    apply become dead letters (of ``tracking``) and the rest is applied, as
    the live projector does.
    """
    with conn.transaction():
        tables = fresh_tables()
        _start_tracking(conn, tracking)
        head = _head(conn) if upto is None else upto
    parts = _parts(projector, head, processes)
    if parts > 1:
        try:
            _parallel_load(projector, conn, tables, tracking, head, parts, progress, cache_capacity)
            return tables
        except Exception as exc:
            # A partition key that did not hold, an event that does not
            # apply, no connection to be had: this process does it all.
            log.warning(
                "parallel load failed; loading again in one process",
                projection=projector.projection.name,
                error=describe(exc),
            )
        with conn.transaction():
            tables = fresh_tables()
            _start_tracking(conn, tracking)
    try:
        _bulk_load(projector, conn, tables, tracking, upto, progress, cache_capacity)
        return tables
    except Exception as exc:
        if is_transient(projector, exc):
            raise
        log.warning(
            "bulk load failed on an event; loading again batch by batch",
            projection=projector.projection.name,
            error=describe(exc),
        )
    with conn.transaction():
        tables = fresh_tables()
        _start_tracking(conn, tracking)
    projector.catch_up(conn, tables=tables, tracking=tracking, upto=upto)
    return tables


def _bulk_load(
    projector: Projector,
    conn: psycopg.Connection[Any],
    tables: dict[str, sql.Composable],
    tracking: str,
    upto: int | None,
    progress: Progress | None,
    cache_capacity: int,
    part: tuple[int, int] | None = None,
) -> None:
    """Project everything up to ``upto`` into copy tables, reading ahead.

    A reader thread (its own connection) reads and decodes the next batch
    while this one is written, so database time and Python time overlap.
    Only a bulk load may read ahead and keep documents in memory between
    batches (written when evicted, or at the end): nothing else writes its
    tables or moves its tracking row.

    ``part`` = (k, n): only the events of the projection's partition k of n
    are applied (the others are read, and passed over).
    """
    batches: queue.Queue[EventBatch | BaseException | None] = queue.Queue(maxsize=2)
    # Big batches whatever the live projector uses: a bulk load is throughput.
    bulk_batch = max(projector.batch_size, BULK_BATCH_SIZE)
    keep = None if part is None else _of_part(projector.projection, *part)
    done = threading.Event()

    def read() -> None:
        try:
            with projector.connect(autocommit=True) as reader, reader.cursor() as cur:
                position = _position(reader, tracking)
                while not done.is_set():
                    batch = projector.read_events(cur, position, bulk_batch, upto, keep)
                    if not batch.count:
                        break
                    batches.put(batch)
                    position = batch.last
        except BaseException as exc:  # handed to the writer, which raises it
            batches.put(exc)
            return
        batches.put(None)

    reader_thread = threading.Thread(target=read, name="rebuild-reader", daemon=True)
    reader_thread.start()
    cache = DocumentCache(cache_capacity, write_once=projector.projection.write_once)
    # Hundreds of thousands of cached documents make every full garbage
    # collection slow; nothing here forms cycles, so refcounting suffices.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while (item := batches.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            projector.apply_batch(conn, item, tables=tables, tracking=tracking, cache=cache)
            if progress:
                progress(item.count)
        with conn.transaction(), conn.cursor() as cur:
            view = ViewBatch(cur, tables)
            for collection, (new, stored) in cache.drain().items():
                # Written grouped by organisation, so one organisation's
                # documents share pages: its queries read far fewer of them.
                view.write(collection, sorted(new, key=lambda d: (d.org_id, d.id)), new=True)
                view.write(collection, stored)
            view.flush()
    finally:
        if gc_was_enabled:
            gc.enable()
        done.set()
        while reader_thread.is_alive():
            with contextlib.suppress(queue.Empty):
                batches.get_nowait()
            reader_thread.join(timeout=0.05)


# -- loading in parallel ----------------------------------------------------------
#
# A projection that names a partition key (every document it keeps is changed
# only by events of one key: ``partition``) can be loaded by several
# processes, one per core: each reads the whole log and applies the events
# of its share of the keys, into the same tables (their documents never
# overlap) under a tracking row of its own. Any failure in any of them
# (an event that does not apply, or a key that did not hold) and the load
# starts again in this process, batch by batch, as before.

# Below this many events, starting processes costs more than it saves.
PARALLEL_MIN_EVENTS = 100_000
MAX_PROCESSES = 4


def _head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}").fetchone()
    return int(row[0]) if row else 0


def _parts(projector: Projector, head: int, processes: int | None) -> int:
    if not callable(getattr(projector.projection, "partition", None)):
        return 1
    if processes is None:
        processes = (os.cpu_count() or 1) if head >= PARALLEL_MIN_EVENTS else 1
    return max(1, min(processes, MAX_PROCESSES))


def _of_part(projection: Any, part: int, parts: int) -> Callable[[Any, bytes], bool]:
    """Whether a stored event is of partition ``part`` of ``parts`` (told before decoding:
    each process decodes only its share)."""

    def keep(originator_id: Any, state: bytes) -> bool:
        key: str = projection.partition(originator_id, state)
        return zlib.crc32(key.encode()) % parts == part

    return keep


@dataclass(frozen=True)
class _Part:
    """What a loading process needs to know (sent to it pickled)."""

    env: dict[str, str]
    target: PgTarget
    projection: Any
    batch_size: int
    tables: dict[str, sql.Composable]
    tracking: str
    upto: int
    part: int
    parts: int
    cache_capacity: int


def _parallel_load(
    projector: Projector,
    conn: psycopg.Connection[Any],
    tables: dict[str, sql.Composable],
    tracking: str,
    upto: int,
    parts: int,
    progress: Progress | None,
    cache_capacity: int,
) -> None:
    """Load up to ``upto`` in ``parts`` processes; then ``tracking`` is at ``upto``."""
    names = [f"{tracking}#{k}" for k in range(parts)]
    with conn.transaction():
        for name in names:
            _start_tracking(conn, name)
    context = multiprocessing.get_context("spawn")  # no fork of our threads and sockets
    counts: Any = context.Queue()
    jobs = [
        _Part(
            env=dict(projector.app.env),
            target=projector.target,
            projection=projector.projection,
            batch_size=projector.batch_size,
            tables=tables,
            tracking=name,
            upto=upto,
            part=k,
            parts=parts,
            cache_capacity=cache_capacity,
        )
        for k, name in enumerate(names)
    ]
    log.info("loading in parallel", projection=projector.projection.name, processes=parts)
    try:
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=parts, mp_context=context, initializer=_init_part, initargs=(counts,)
        ) as pool:
            futures = [pool.submit(_load_part, job) for job in jobs]
            while not all(f.done() for f in futures):
                with contextlib.suppress(queue.Empty):
                    count = counts.get(timeout=0.2)
                    if progress:
                        progress(count)
            errors = [f.result() for f in futures]
        failed = [error for error in errors if error is not None]
        if failed:
            raise RuntimeError(failed[0])
        with conn.transaction():
            conn.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                (upto, tracking),
            )
    finally:
        with conn.transaction():
            conn.execute("DELETE FROM projection_tracking WHERE name = ANY(%s)", (names,))
            with conn.cursor() as cur:
                for name in names:
                    forget(cur, name)


_counts: Any = None  # a loading process's queue of progress counts


def _init_part(counts: Any) -> None:
    global _counts
    _counts = counts


def _load_part(job: _Part) -> str | None:
    """One process's share of a parallel load; an error's description, or None."""
    from commands.application import WorkflowApplication

    app = WorkflowApplication(env=job.env)
    try:
        projector = Projector(app, job.target, job.projection, batch_size=job.batch_size)
        # Each process reads every event: only the first one counts them.
        report = _counts.put if job.part == 0 else None
        with projector.connect() as conn:
            _bulk_load(
                projector,
                conn,
                job.tables,
                job.tracking,
                job.upto,
                report,
                job.cache_capacity,
                (job.part, job.parts),
            )
        return None
    except Exception as exc:
        return describe(exc)
    finally:
        app.close()


def rebuild(
    projector: Projector,
    progress: Progress | None = None,
    processes: int | None = None,
    cache_capacity: int = CACHE_CAPACITY,
) -> int:
    """Rebuild the projection's collections from the log; returns the new position.

    ``processes``: how many load the log in parallel (None: one per core, for
    a log long enough to be worth it; see ``_parts``). ``cache_capacity``: how
    many documents each keeps in memory (tests make it small, to evict).
    """
    name = projector.projection.name
    tracking = f"{name}__rebuild"
    with projector.connect() as conn:
        projector.ensure_tracking(conn)
        tables = _load(
            projector,
            conn,
            lambda: _copy_tables(conn, projector, None, "__shadow"),
            tracking,
            None,
            progress,
            processes,
            cache_capacity,
        )
        with conn.transaction():
            indexes = {
                collection: _index_shadow(
                    conn, collection_table(collection), collection_table(collection) + "__shadow"
                )
                for collection in projector.projection.collections
            }
        with conn.transaction():
            _position(conn, name, lock=True)  # the live projector waits here
            count = projector.catch_up(conn, tables=tables, tracking=tracking)
            if progress:
                progress(count)
            position = _position(conn, tracking)
            for collection in projector.projection.collections:
                live = collection_table(collection)
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        sql.Identifier(live), sql.Identifier(live + "__old")
                    )
                )
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        sql.Identifier(live + "__shadow"), sql.Identifier(live)
                    )
                )
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(live + "__old")))
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                        sql.Identifier(live),
                        sql.Identifier(live + "__shadow_pkey"),
                        sql.Identifier(live + "_pkey"),
                    )
                )
                for index in indexes[collection]:
                    conn.execute(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(index + "__shadow"), sql.Identifier(index)
                        )
                    )
            conn.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                (position, name),
            )
            conn.execute("DELETE FROM projection_tracking WHERE name = %s", (tracking,))
            with conn.cursor() as cur:
                # Dead letters the rebuild did not meet again are resolved.
                adopt_rebuild(cur, name, tracking, position)
    return position


@dataclass
class Verification:
    projection: str
    position: int
    differences: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.differences.values())


def verify(
    projector: Projector,
    progress: Progress | None = None,
    sample: int = 20,
    processes: int | None = None,
    cache_capacity: int = CACHE_CAPACITY,
) -> Verification:
    """Rebuild into a scratch schema and diff it with the live views."""
    name = projector.projection.name
    schema = f"verify_{uuid.uuid4().hex[:12]}"
    tracking = f"{name}__{schema}"
    with projector.connect() as conn:
        projector.ensure_tracking(conn)
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            # Build up to where the live view is now (it can only move forward).
            with conn.transaction():  # not left open: each batch below commits
                upto = _position(conn, name)
            tables = _load(
                projector,
                conn,
                lambda: _copy_tables(conn, projector, schema, ""),
                tracking,
                upto,
                progress,
                processes,
                cache_capacity,
            )
            with conn.transaction():
                live_position = _position(conn, name, lock=True)
                projector.catch_up(conn, tables=tables, tracking=tracking, upto=live_position)
                result = Verification(projection=name, position=live_position)
                for collection, scratch in tables.items():
                    rows = conn.execute(
                        sql.SQL(
                            "SELECT coalesce(l._id, s._id) FROM {} l FULL JOIN {} s USING (_id) "
                            "WHERE l._id IS NULL OR s._id IS NULL OR l.data <> s.data "
                            "OR l.org_id <> s.org_id OR l._version <> s._version "
                            "ORDER BY 1 LIMIT %s"
                        ).format(sql.Identifier(collection_table(collection)), scratch),
                        (sample,),
                    ).fetchall()
                    result.differences[collection] = [row[0] for row in rows]
            return result
        finally:
            with conn.transaction():
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
                conn.execute("DELETE FROM projection_tracking WHERE name = %s", (tracking,))
                with conn.cursor() as cur:
                    forget(cur, tracking)
