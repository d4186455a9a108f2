"""The audit chain over the log: the follower that keeps it, verification, exports.

Formats (canonical bytes, links, signatures, export lines) are defined in
``infrastructure/audit.py``; this module reads and writes the database.

Tables (migration 0006)
-----------------------
- ``audit_chain(position, link)``: every chained event's link.
- ``audit_chain_checkpoints(position, count, link, hmac)``: every
  ``audit_checkpoint_every`` events, signed.
- ``audit_chain_head``: where the follower is (position, count, link), signed
  in the same transaction as every batch, so the newest events are covered by
  a signature too, not only those up to the last checkpoint. Its position is
  mirrored into ``projection_tracking`` ('audit-chain') for lag monitoring.

What ``verify_log`` reports, and how exactly
--------------------------------------------
It recomputes the chain from the events, in one consistent snapshot, and
walks it beside the stored links, checkpoints and head. The FIRST problem is
reported, with the last checkpoint before it that matched:

- ``altered``: the event at ``position`` is not what was chained (any column).
- ``deleted``: ``position`` was chained but has no event any more.
- ``inserted``: an event at ``position`` (at or below the head) was never
  chained. Gaps in positions alone prove nothing (a rolled-back insert burns
  a sequence value); an event that appears in a chained gap does.
- ``rewritten``: the per-event links agree with the events, but a signed
  checkpoint or the signed head does not: someone rewrote events and links
  together. The change lies in ``(after, position]``: between the last good
  checkpoint and the first bad one.
- ``signature``: a checkpoint's or the head's HMAC is invalid or missing
  (forged without the key, or the wrong key).

``altered``/``deleted``/``inserted`` name the exact row when only the log was
touched. Whoever also rewrites the stored links can move the first
disagreement later, but never past the next signed checkpoint or the signed
head; so the bad row always lies in ``(after, position]``.

Limits: events after the head (``unchained``: the follower has not reached
them yet) are covered by nothing; and someone with database write access who
kept an old signed head can roll the chain back to it (or reset it to the
unsigned genesis: then every event shows as unchained). Keep the head that
``verify`` prints (or an export's manifest) outside the database to rule that
out. With no key nothing is signed: the chain then only catches edits by
someone who does not also recompute it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import psycopg
import structlog
from psycopg.types.string import ByteaBinaryLoader

from infrastructure.audit import (
    GENESIS_LINK,
    ExportWriter,
    canonical_event_bytes,
    checkpoint_message,
    decode_state,
    event_org,
    event_timestamp,
    export_fields,
    head_message,
    key_bytes,
    next_link,
    sign,
    signature_ok,
)
from infrastructure.auth import check_org_id
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE
from infrastructure.settings import Settings
from projections.follower import Follower, FollowerLoop

log = structlog.get_logger("reporunner.audit")

NAME = "audit-chain"
ProgressCallback = Callable[[int], None]
Problem = Literal["altered", "deleted", "inserted", "rewritten", "signature"]

_EVENT_COLUMNS = "notification_id, originator_id, originator_version, topic, state"


def _connect(
    target: PgTarget, purpose: str, *, autocommit: bool = False
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        target.conninfo(connect_timeout=5, application_name=f"reporunner-audit:{purpose}"),
        autocommit=autocommit,
        # Text (the topic) arrives in the client encoding: the canonical bytes are UTF-8.
        client_encoding="UTF8",
    )


def _raw_columns(cursor: psycopg.Cursor[Any]) -> None:
    """Read uuid and text columns as their raw bytes (binary cursors only).

    The canonical bytes want exactly those bytes, and building UUID and str
    objects per event would only be undone again.
    """
    cursor.adapters.register_loader("uuid", ByteaBinaryLoader)
    cursor.adapters.register_loader("text", ByteaBinaryLoader)


# -- the follower ---------------------------------------------------------------------


class AuditChainFollower(Follower):
    """Extends the chain over the log, batch by batch, exactly once.

    Each batch locks the head row, links the events after it, and commits the
    links, any checkpoints, the new signed head and the tracking position in
    one transaction: a crash keeps all of it or none, and a second follower
    waits on the lock and continues from wherever the first one got to.

    It hashes the stored bytes as they are (never decoding the state), so no
    content can make it fail; and it never skips an event (``skip`` stays the
    follower default): a chain with a hole would prove nothing.
    """

    name = NAME
    lock_key = f"projection:{NAME}"

    def __init__(
        self,
        target: PgTarget,
        *,
        key: str | None,
        checkpoint_every: int = 10_000,
        batch_size: int = 5_000,
        poll_interval: float = 1.0,
    ) -> None:
        self.target = target
        self.checkpoint_every = checkpoint_every
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._key = key_bytes(key)

    @classmethod
    def from_settings(cls, target: PgTarget, settings: Settings) -> AuditChainFollower:
        return cls(
            target,
            key=settings.audit_key,
            checkpoint_every=settings.audit_checkpoint_every,
            poll_interval=settings.projection_poll_s,
        )

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return _connect(self.target, "follower", autocommit=autocommit)

    def run_batch(self, conn: psycopg.Connection[Any], limit: int | None = None) -> int:
        """Chain the next batch of events in one transaction; return how many."""
        with conn.transaction(), conn.cursor(binary=True) as cur:
            _raw_columns(cur)
            cur.execute(
                "SELECT position, count, link FROM audit_chain_head WHERE name = %s FOR UPDATE",
                (NAME,),
            )
            head = cur.fetchone()
            if head is None:
                raise LookupError(f"no audit_chain_head row {NAME!r}: run the migrations")
            after, count, link = head
            cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM {EVENTS_TABLE} "
                "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
                (after, limit or self.batch_size),
            )
            events = cur.fetchall()
            if not events:
                return 0
            links = []
            checkpoints = []
            for position, originator_id, version, topic, state in events:
                link = next_link(
                    link, canonical_event_bytes(position, originator_id, version, topic, state)
                )
                count += 1
                links.append((position, link))
                if count % self.checkpoint_every == 0:
                    signature = self._sign(checkpoint_message(position, count, link))
                    checkpoints.append((position, count, link, signature))
            with cur.copy("COPY audit_chain (position, link) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "bytea"])
                for row in links:
                    copy.write_row(row)
            if checkpoints:
                cur.executemany(
                    "INSERT INTO audit_chain_checkpoints (position, count, link, hmac) "
                    "VALUES (%s, %s, %s, %s)",
                    checkpoints,
                )
            cur.execute(
                "UPDATE audit_chain_head SET position = %s, count = %s, link = %s, hmac = %s, "
                "updated_at = now() WHERE name = %s",
                (position, count, link, self._sign(head_message(position, count, link)), NAME),
            )
            cur.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                (position, NAME),
            )
        return len(events)

    def _sign(self, message: bytes) -> bytes | None:
        return None if self._key is None else sign(self._key, message)

    def catch_up(self, conn: psycopg.Connection[Any]) -> int:
        """Run batches until the log is exhausted; return how many events were chained."""
        return self._loop().catch_up(conn)

    def run_forever(self, stop: threading.Event) -> None:
        """Follow the log until ``stop`` is set, surviving lost connections."""
        log.info("audit chain follower starting", signed=self._key is not None)
        self._loop().run_forever(stop)

    def _loop(self) -> FollowerLoop:
        return FollowerLoop(self, batch_size=self.batch_size, poll_s=self.poll_interval)


def start_audit_follower(
    target: PgTarget, settings: Settings, stop: threading.Event
) -> threading.Thread:
    """Run the follower in a daemon thread until ``stop`` is set."""
    follower = AuditChainFollower.from_settings(target, settings)
    thread = threading.Thread(
        target=follower.run_forever, args=(stop,), name="audit-chain", daemon=True
    )
    thread.start()
    return thread


@dataclass(frozen=True)
class ChainStatus:
    position: int  # the chain's head
    count: int  # events chained
    log_head: int  # the log's last position

    @property
    def lag_positions(self) -> int:
        return self.log_head - self.position


def chain_status(target: PgTarget) -> ChainStatus:
    with _connect(target, "status") as conn:
        row = conn.execute(
            "SELECT h.position, h.count, "
            f"(SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}) "
            "FROM audit_chain_head h WHERE h.name = %s",
            (NAME,),
        ).fetchone()
    if row is None:
        raise LookupError(f"no audit_chain_head row {NAME!r}: run the migrations")
    return ChainStatus(position=int(row[0]), count=int(row[1]), log_head=int(row[2]))


# -- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify_log`` found; see the module doc for ``problem`` and its precision."""

    ok: bool
    events: int  # events checked: those up to the head (fewer if a problem stopped the walk)
    unchained: int  # events after the head: the follower has not reached them yet
    head_position: int
    head_link: str
    checkpoints: int  # checkpoints that matched
    signed: bool  # signatures were checked with the key
    elapsed_s: float
    problem: Problem | None = None
    position: int | None = None  # the first bad position (exact), or the upper bound
    after: int | None = None  # the last good checkpoint: the bad row lies in (after, position]
    reason: str | None = None
    warning: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s)}


@dataclass(frozen=True)
class _Signed:
    position: int
    count: int
    link: bytes
    hmac: bytes | None


class _Problem(Exception):
    def __init__(self, problem: Problem, position: int, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem
        self.position = position
        self.reason = reason


def verify_log(
    target: PgTarget,
    key: str | None,
    *,
    progress: ProgressCallback | None = None,
    fetch_size: int = 20_000,
) -> VerifyResult:
    """Recompute the chain over the whole log and compare it with what was stored."""
    started = time.perf_counter()
    secret = key_bytes(key)
    with _connect(target, "verify") as conn:
        # One snapshot for the head, checkpoints, links and events alike,
        # however far the follower moves meanwhile.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            row = conn.execute(
                "SELECT position, count, link, hmac FROM audit_chain_head WHERE name = %s",
                (NAME,),
            ).fetchone()
            if row is None:
                raise LookupError(f"no audit_chain_head row {NAME!r}: run the migrations")
            head = _Signed(*row)
            unchained = _count_after(conn, head.position)
            checkpoints = [
                _Signed(*r)
                for r in conn.execute(
                    "SELECT position, count, link, hmac FROM audit_chain_checkpoints "
                    "ORDER BY position"
                )
            ]
            with (
                conn.cursor(name="audit_verify_events", binary=True) as events,
                conn.cursor(name="audit_verify_links", binary=True) as links,
            ):
                _raw_columns(events)
                events.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM {EVENTS_TABLE} "
                    "WHERE notification_id <= %s ORDER BY notification_id",
                    (head.position,),
                )
                links.execute("SELECT position, link FROM audit_chain ORDER BY position")
                walk = _ChainWalk(head, checkpoints, secret)
                try:
                    walk.run(_fetch(events, fetch_size, progress), _fetch(links, fetch_size))
                except _Problem as found:
                    return walk.result(started, unchained, found)
    return walk.result(started, unchained)


def _count_after(conn: psycopg.Connection[Any], position: int) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM {EVENTS_TABLE} WHERE notification_id > %s", (position,)
    ).fetchone()
    return int(row[0]) if row else 0


def _fetch(
    cursor: psycopg.ServerCursor[Any], size: int, progress: ProgressCallback | None = None
) -> Iterator[Any]:
    while rows := cursor.fetchmany(size):
        if progress is not None:
            progress(len(rows))
        yield from rows


class _ChainWalk:
    """The events and the stored links side by side, in position order."""

    def __init__(self, head: _Signed, checkpoints: list[_Signed], key: bytes | None) -> None:
        self.head = head
        self.checkpoints = checkpoints
        self.key = key
        self.events = 0
        self.link = GENESIS_LINK
        self.good_checkpoints = 0
        self.last_good = 0  # position of the last checkpoint that matched (0: genesis)

    def run(self, events: Iterator[Any], links: Iterator[Any]) -> None:
        head = self.head.position
        stored = next(links, None)
        pending = iter(self.checkpoints)
        checkpoint = next(pending, None)
        for position, originator_id, version, topic, state in events:
            if stored is not None and stored[0] < position:
                raise _Problem(
                    "deleted", stored[0], f"position {stored[0]} was chained, its event is gone"
                )
            if checkpoint is not None and checkpoint.position < position:
                raise _Problem(
                    "deleted",
                    checkpoint.position,
                    f"the checkpoint at {checkpoint.position} names an event that is gone",
                )
            self.link = next_link(
                self.link, canonical_event_bytes(position, originator_id, version, topic, state)
            )
            self.events += 1
            if stored is None or stored[0] != position:
                raise _Problem("inserted", position, f"the event at {position} was never chained")
            if stored[1] != self.link:
                raise _Problem(
                    "altered",
                    position,
                    f"the event at {position} (or its chain link) differs from what was chained",
                )
            stored = next(links, None)
            if checkpoint is not None and checkpoint.position == position:
                self._check_signed(checkpoint, checkpoint_message, "checkpoint")
                self.good_checkpoints += 1
                self.last_good = position
                checkpoint = next(pending, None)
        if stored is not None:
            if stored[0] <= head:
                raise _Problem(
                    "deleted", stored[0], f"position {stored[0]} was chained, its event is gone"
                )
            raise _Problem(
                "rewritten", stored[0], f"a chain link at {stored[0]} lies beyond the head {head}"
            )
        if checkpoint is not None:
            raise _Problem(
                "rewritten",
                checkpoint.position,
                f"the checkpoint at {checkpoint.position} names an event that is gone, "
                f"or lies beyond the head {head} (the head was rolled back)",
            )
        self._check_signed(self.head, head_message, "head")

    def _check_signed(
        self, signed: _Signed, message: Callable[[int, int, bytes], bytes], what: str
    ) -> None:
        fields = (signed.position, signed.count, signed.link)
        if self.key is not None and (signed.count or signed.hmac is not None):
            if signed.hmac is None:
                raise _Problem(
                    "signature",
                    signed.position,
                    f"the {what} at {signed.position} is unsigned (written without the key)",
                )
            if not signature_ok(self.key, message(*fields), signed.hmac):
                raise _Problem(
                    "signature",
                    signed.position,
                    f"the {what} at {signed.position} has an invalid signature "
                    "(forged or altered, or the wrong key)",
                )
        if (signed.count, signed.link) != (self.events, self.link):
            raise _Problem(
                "rewritten",
                signed.position,
                f"the {what} at {signed.position} does not match the events up to it: "
                "events were altered, deleted or inserted, and their chain links rewritten",
            )

    def result(self, started: float, unchained: int, found: _Problem | None = None) -> VerifyResult:
        warning = None
        if self.key is None:
            warning = (
                "no REPORUNNER_AUDIT_KEY: signatures were not checked, so someone with write "
                "access to the database could have rewritten the log and its chain together"
            )
        return VerifyResult(
            ok=found is None,
            events=self.events,
            unchained=unchained,
            head_position=self.head.position,
            head_link=self.head.link.hex(),
            checkpoints=self.good_checkpoints,
            signed=self.key is not None,
            elapsed_s=time.perf_counter() - started,
            problem=found.problem if found else None,
            position=found.position if found else None,
            after=self.last_good if found else None,
            reason=found.reason if found else None,
            warning=warning,
        )


# -- export ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    count: int
    bytes_written: int
    elapsed_s: float
    chained_upto: int  # the chain head: later events are not exported
    unchained: int  # events in the log after it
    manifest: dict[str, Any]

    @property
    def megabytes_per_s(self) -> float:
        return self.bytes_written / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0


def export_org(
    target: PgTarget,
    org_id: str,
    since: datetime | None,
    until: datetime | None,
    out_path: str | Path,
    key: str | None,
    *,
    progress: ProgressCallback | None = None,
    chunk_positions: int = 20_000,
) -> ExportResult:
    """Write one organisation's chained events, then a signed manifest, to ``out_path``.

    ``since`` is inclusive, ``until`` exclusive (event timestamps). Streams in
    ranges of ``chunk_positions`` log positions, so memory stays constant; the
    file appears under its name only once complete. ``progress`` receives the
    number of log positions scanned.
    """
    check_org_id(org_id)
    started = time.perf_counter()
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    # Org ids are [a-z0-9_-] only, so their JSON string is the same bytes however
    # it is encoded: a cheap byte filter in SQL that never drops one of the org's
    # events (and no jsonb cast that one malformed state would abort); the decoded
    # meta.org_id decides.
    needle = orjson.dumps(org_id)
    try:
        with _connect(target, "export") as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction(), open(partial, "wb", buffering=1 << 20) as out:
                row = conn.execute(
                    "SELECT position FROM audit_chain_head WHERE name = %s", (NAME,)
                ).fetchone()
                if row is None:
                    raise LookupError(f"no audit_chain_head row {NAME!r}: run the migrations")
                head = int(row[0])
                writer = ExportWriter(out, key_bytes(key))
                after = 0
                while after < head:
                    upto = min(after + chunk_positions, head)
                    _export_range(conn, writer, org_id, since, until, needle, after, upto)
                    if progress is not None:
                        progress(upto - after)
                    after = upto
                unchained = _count_after(conn, head)
                manifest = writer.finish(
                    org_id=org_id,
                    since=since.isoformat() if since else None,
                    until=until.isoformat() if until else None,
                    chained_upto=head,
                    exported_at=datetime.now(UTC).isoformat(),
                )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out_path)
    return ExportResult(
        count=writer.count,
        bytes_written=writer.bytes_written,
        elapsed_s=time.perf_counter() - started,
        chained_upto=head,
        unchained=unchained,
        manifest=manifest,
    )


def _export_range(
    conn: psycopg.Connection[Any],
    writer: ExportWriter,
    org_id: str,
    since: datetime | None,
    until: datetime | None,
    needle: bytes,
    after: int,
    upto: int,
) -> None:
    rows = conn.execute(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state, "
        f"c.link FROM {EVENTS_TABLE} e LEFT JOIN audit_chain c ON c.position = e.notification_id "
        "WHERE e.notification_id > %s AND e.notification_id <= %s "
        "AND position(%s::bytea IN e.state) > 0 ORDER BY e.notification_id",
        (after, upto, needle),
    ).fetchall()
    for position, originator_id, version, topic, state, link in rows:
        decoded = decode_state(state)
        if event_org(decoded) != org_id or not _within(event_timestamp(decoded), since, until):
            continue
        if link is None:
            raise RuntimeError(
                f"the event at {position} was never chained: run `reporunner audit verify`"
            )
        writer.write_event(export_fields(position, originator_id, version, topic, decoded, link))


def _within(timestamp: str | None, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    if timestamp is None:
        return False
    instant = datetime.fromisoformat(timestamp)
    return (since is None or instant >= since) and (until is None or instant < until)
