"""Erasing a data subject: destroy their key, record it, leave nothing readable behind.

Every payload of every execution about a subject is sealed under that
subject's key as well as its day's (``commands/payloads.py``). Erasing:

1. destroys the key (``Keyring.destroy``: ``wrapped`` becomes NULL, and a
   subject never seen before gets a destroyed row, so nothing is sealed for
   them later);
2. forgets it in this process's key caches (the write side's and, through
   ``forget_hooks``, the read API's): another process may still hold it for
   up to ``keyring.CACHE_SECONDS``;
3. records ``DataSubject.Erased`` (who, when, the subject's scope digest and
   the key id; never the subject's value) in the log;
4. runs ``VACUUM data_keys`` so the wrapped key's old row version does not
   linger in the table's pages (PostgreSQL's WAL and backups keep it until
   they age out: README, Erasure).

The key goes first: if recording fails, the erasure already holds and a
repeat records it. Idempotent: a repeat destroys nothing and records nothing,
and answers as the first did. The Redis read cache needs no purge: views,
and so cached answers over them, hold only sealed payloads, unreadable once
the key is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.application import WorkflowApplication
from commands.models import CommandContext
from commands.payloads import ExecutionPayloads
from domain.data_subjects import DataSubject, data_subject_id
from domain.meta import EventMeta
from infrastructure.database import PgTarget
from infrastructure.keyring import KeyPurpose

__all__ = ["DataSubjectErasure", "ErasureResult", "ErasureUnavailable"]

log = structlog.get_logger("reporunner.erasure")

VACUUM_TIMEOUT_MS = 60_000


class ErasureUnavailable(Exception):
    """No master key is configured: nothing is sealed under a subject's key to destroy."""

    def __init__(self) -> None:
        super().__init__(
            "erasure needs a master key (REPORUNNER_MASTER_KEY or REPORUNNER_MASTER_KEY_FILE): "
            "without one, execution payloads are stored in clear and cannot be erased"
        )


@dataclass(frozen=True)
class ErasureResult:
    subject_scope: str
    """The keyed digest naming the subject in the key table and the log."""
    erased_now: bool
    """False: it was erased before (this request destroyed and recorded nothing)."""
    erased_by: str
    erased_at: datetime
    position: int
    """The log position of the ``Erased`` event."""
    vacuumed: bool
    """Whether ``VACUUM data_keys`` ran (it is skipped for a repeat)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "subject_scope": self.subject_scope,
            "erased_now": self.erased_now,
            "erased_by": self.erased_by,
            "erased_at": self.erased_at.isoformat(),
            "position": self.position,
            "vacuumed": self.vacuumed,
        }


@dataclass
class DataSubjectErasure:
    app: WorkflowApplication
    payloads: ExecutionPayloads
    target: PgTarget | None
    """Where ``VACUUM`` runs (its own autocommit connection); None skips it."""
    forget_hooks: list[Callable[[str], None]] = field(default_factory=list)
    """Called with the destroyed key's id: other key caches of this process."""

    def erase(self, subject: str, ctx: CommandContext) -> ErasureResult:
        keyring = self.payloads.keyring
        if keyring is None:
            raise ErasureUnavailable
        org_id = ctx.org_id
        scope = self.payloads.subject_scope(org_id, subject)
        destroyed = keyring.destroy(org_id, KeyPurpose.SUBJECT, scope, ctx.actor)
        self.payloads.forget_subject(org_id, subject, scope)
        key_id = destroyed or self._key_id(org_id, scope)
        if key_id is not None:
            for forget in self.forget_hooks:
                forget(key_id)
        meta = EventMeta(
            org_id=org_id,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id,
            traceparent=ctx.traceparent,
        )
        recorded, erased_now = self._record(org_id, scope, key_id, meta)
        vacuumed = self._vacuum() if erased_now else False
        position = self.app.event_store.position_of(recorded.id, recorded.version)
        log.info(
            "data subject erased" if erased_now else "data subject was erased before",
            subject_scope=scope,
            key_id=key_id,
            position=position,
        )
        assert recorded.erased_by is not None
        return ErasureResult(
            subject_scope=scope,
            erased_now=erased_now,
            erased_by=recorded.erased_by,
            erased_at=recorded.modified_on,
            position=position,
            vacuumed=vacuumed,
        )

    def _record(
        self, org_id: str, scope: str, key_id: str | None, meta: EventMeta
    ) -> tuple[DataSubject, bool]:
        """The subject's aggregate with its erasure recorded; whether this call recorded it."""
        for _ in range(3):
            subject = self._load(org_id, scope)
            if subject is None:
                subject = DataSubject.erase_new(
                    org_id=org_id, scope=scope, key_id=key_id, meta=meta
                )
            elif not subject.erase(key_id=key_id, meta=meta):
                return subject, False
            try:
                self.app.save(subject)
            except IntegrityError:
                continue  # a concurrent erasure recorded it first: look again
            return subject, True
        raise RuntimeError(f"could not record the erasure of subject scope {scope}")

    def _load(self, org_id: str, scope: str) -> DataSubject | None:
        try:
            found: object = self.app.repository.get(data_subject_id(org_id, scope))
        except AggregateNotFoundError:
            return None
        assert isinstance(found, DataSubject)
        return found

    def _key_id(self, org_id: str, scope: str) -> str | None:
        """The id of the subject's (destroyed) key, when an earlier call destroyed it."""
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT key_id FROM data_keys WHERE org_id = %s AND purpose = %s AND scope = %s",
                (org_id, KeyPurpose.SUBJECT.value, scope),
            )
            row = cur.fetchone()
        return None if row is None else str(row["key_id"])

    def _vacuum(self) -> bool:
        """``VACUUM data_keys``: best effort (autovacuum follows anyway); False if it failed."""
        if self.target is None:
            return False
        try:
            with psycopg.connect(self.target.conninfo(), autocommit=True) as conn:
                conn.execute(f"SET statement_timeout = {VACUUM_TIMEOUT_MS}")
                conn.execute("VACUUM data_keys")
        except psycopg.Error as error:
            log.warning("VACUUM data_keys failed after an erasure", error=str(error))
            return False
        return True
