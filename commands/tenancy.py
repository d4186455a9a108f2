"""Organisations and API keys: the commands that change them, each an event in the log.

Both aggregates keep a table beside the log, written in the same transaction
as their events: ``organisations`` (every request's policy look-up reads it)
and ``api_keys`` (every request is authenticated against it). So the log
tells who changed what, and the tables can never disagree with it.

An organisation that exists only as the string on its keys (from before
organisations had events) is active with the global limits; the first
change to it creates its aggregate. An id with neither keys nor aggregate
is unknown (404), so a typo never makes an organisation.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.application import WorkflowApplication
from commands.projects import load_project
from domain.api_key import ApiKey
from domain.meta import EventMeta
from domain.organisation import Organisation, organisation_id
from infrastructure.auth import ApiKeyInfo, Role, check_org_id, hash_key, new_plaintext
from infrastructure.eventstore import SideStatement

# Saves lost to a concurrent change before a command gives up (then 409).
SAVE_ATTEMPTS = 5
# Serialises concurrent first starts' "no key yet, make the owner's".
FIRST_KEY_LOCK = 727002


@dataclass(frozen=True)
class Actor:
    """Who asks, for the events' metadata: ``apikey:<id>`` or ``cli``."""

    actor: str
    correlation_id: str

    def meta(self, org_id: str) -> EventMeta:
        # The organisation concerned, so its own audit log shows the change.
        return EventMeta(org_id=org_id, actor=self.actor, correlation_id=self.correlation_id)


def cli_actor() -> Actor:
    return Actor(actor="cli", correlation_id=f"cli-{uuid.uuid4().hex}")


class OrganisationExists(Exception):
    def __init__(self, org_id: str) -> None:
        super().__init__(f"organisation {org_id!r} exists already")
        self.org_id = org_id


class OrganisationNotFound(Exception):
    def __init__(self, org_id: str) -> None:
        super().__init__(f"no organisation {org_id!r} (no record and no API keys)")
        self.org_id = org_id


class OrganisationBusy(Exception):
    def __init__(self, org_id: str) -> None:
        super().__init__(f"organisation {org_id!r} kept changing under this command; retry")
        self.org_id = org_id


@dataclass(frozen=True)
class OrganisationState:
    org_id: str
    name: str
    status: str
    suspended_reason: str | None
    limits: dict[str, Any]
    version: int
    position: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.org_id,
            "name": self.name,
            "status": self.status,
            "suspended_reason": self.suspended_reason,
            "limits": self.limits,
            "version": self.version,
            "position": self.position,
        }


def _state(organisation: Organisation, position: int | None) -> OrganisationState:
    return OrganisationState(
        org_id=organisation.org_id,
        name=organisation.name,
        status=organisation.status,
        suspended_reason=organisation.suspended_reason,
        limits=dict(organisation.limits),
        version=organisation.version,
        position=position,
    )


def _organisation_row(organisation: Organisation) -> SideStatement:
    return SideStatement(
        "INSERT INTO organisations "
        "(org_id, aggregate_id, name, status, suspended_reason, limits, version) "
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (org_id) DO UPDATE SET "
        "name = excluded.name, status = excluded.status, "
        "suspended_reason = excluded.suspended_reason, limits = excluded.limits, "
        "version = excluded.version, updated_at = now()",
        (
            organisation.org_id,
            organisation.id,
            organisation.name,
            organisation.status,
            organisation.suspended_reason,
            json.dumps(organisation.limits),
            organisation.version,
        ),
    )


class OrganisationCommands:
    def __init__(self, app: WorkflowApplication) -> None:
        self.app = app

    def create(
        self, org_id: str, name: str, limits: dict[str, Any], actor: Actor
    ) -> OrganisationState:
        check_org_id(org_id)
        organisation = Organisation.create(
            org_id=org_id, name=name, limits=limits, meta=actor.meta(org_id)
        )
        try:
            recordings = self.app.save(
                organisation, side_statements=[_organisation_row(organisation)]
            )
        except IntegrityError:
            raise OrganisationExists(org_id) from None
        return _state(organisation, recordings[-1].notification.id)

    def rename(self, org_id: str, name: str, actor: Actor) -> OrganisationState:
        return self._change(org_id, actor, lambda org, meta: org.rename(name, meta))

    def suspend(self, org_id: str, reason: str, actor: Actor) -> OrganisationState:
        return self._change(org_id, actor, lambda org, meta: org.suspend(reason, meta))

    def reinstate(self, org_id: str, actor: Actor) -> OrganisationState:
        return self._change(org_id, actor, lambda org, meta: org.reinstate(meta))

    def set_limits(self, org_id: str, limits: dict[str, Any], actor: Actor) -> OrganisationState:
        return self._change(org_id, actor, lambda org, meta: org.change_limits(limits, meta))

    def get(self, org_id: str) -> Organisation | None:
        try:
            found: object = self.app.repository.get(organisation_id(org_id))
        except AggregateNotFoundError:
            return None
        assert isinstance(found, Organisation)
        return found

    def _change(
        self,
        org_id: str,
        actor: Actor,
        decide: Callable[[Organisation, EventMeta], bool],
    ) -> OrganisationState:
        """Decide on the organisation as the log has it now (created first if it has
        only keys), and save; a concurrent change makes it decide again."""
        check_org_id(org_id)
        meta = actor.meta(org_id)
        for _ in range(SAVE_ATTEMPTS):
            organisation = self.get(org_id)
            if organisation is None:
                if not self._has_keys(org_id):
                    raise OrganisationNotFound(org_id)
                organisation = Organisation.create(org_id=org_id, name="", limits={}, meta=meta)
            changed = decide(organisation, meta)
            if not changed and not organisation.pending_events:
                return _state(organisation, None)
            try:
                recordings = self.app.save(
                    organisation, side_statements=[_organisation_row(organisation)]
                )
            except IntegrityError:
                continue
            return _state(organisation, recordings[-1].notification.id)
        raise OrganisationBusy(org_id)

    def _has_keys(self, org_id: str) -> bool:
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute("SELECT 1 FROM api_keys WHERE org_id = %s LIMIT 1", (org_id,))
            return curs.fetchone() is not None


class ApiKeyCommands:
    """Create and revoke keys: the ``api_keys`` row and the ``ApiKey`` event together."""

    def __init__(self, app: WorkflowApplication) -> None:
        self.app = app

    def create(
        self,
        org_id: str,
        role: Role,
        name: str,
        actor: Actor,
        *,
        expires_at: datetime | None = None,
        project_id: UUID | None = None,
        only_if_first: bool = False,
    ) -> tuple[ApiKeyInfo, str, int]:
        """The key's record, its plaintext (never stored) and the event's log position.

        ``only_if_first``: only while no key exists at all (``IntegrityError``
        otherwise); an advisory lock makes concurrent first starts make one.
        """
        check_org_id(org_id)
        if project_id is not None:
            load_project(self.app, project_id, org_id)  # ProjectNotFound: another org's or none
        plaintext = new_plaintext()
        key_id = uuid.uuid4()
        created_at = datetime.now(UTC)
        key = ApiKey.create(
            key_id=key_id,
            role=role.value,
            name=name,
            prefix=plaintext[:10],
            expires_at=expires_at.isoformat() if expires_at else None,
            project_id=str(project_id) if project_id else None,
            meta=actor.meta(org_id),
        )
        columns = (
            "INSERT INTO api_keys (id, org_id, role, name, key_hash, key_prefix, created_at, "
            "expires_at, project_id) "
        )
        values = (
            key_id,
            org_id,
            role.value,
            name,
            hash_key(plaintext),
            plaintext[:10],
            created_at,
            expires_at,
            project_id,
        )
        if only_if_first:
            statements = [
                SideStatement("SELECT pg_advisory_xact_lock(%s)", (FIRST_KEY_LOCK,)),
                SideStatement(
                    columns + "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s::uuid "
                    "WHERE NOT EXISTS (SELECT 1 FROM api_keys)",
                    values,
                    expect_row=True,
                ),
            ]
        else:
            statements = [
                SideStatement(columns + "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", values)
            ]
        recordings = self.app.save(key, side_statements=statements)
        info = ApiKeyInfo(
            id=key_id,
            org_id=org_id,
            role=role,
            name=name,
            prefix=plaintext[:10],
            created_at=created_at,
            revoked_at=None,
            expires_at=expires_at,
            project_id=project_id,
        )
        return info, plaintext, recordings[-1].notification.id

    def create_first_owner_key(self) -> tuple[ApiKeyInfo, str] | None:
        """An owner key for organisation ``default`` when no key exists at all (a
        first start), recorded like every other key; None when one exists."""
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute("SELECT 1 FROM api_keys LIMIT 1")
            if curs.fetchone() is not None:
                return None
        actor = Actor(actor="first-start", correlation_id=f"first-start-{uuid.uuid4().hex}")
        try:
            info, plaintext, _ = self.create(
                "default", Role.OWNER, "bootstrap", actor, only_if_first=True
            )
        except IntegrityError:
            return None  # another process's first start made it
        return info, plaintext

    def revoke(self, key_id: UUID, actor: Actor, org_id: str | None = None) -> int | None:
        """Revoke an active key (of ``org_id`` when given): the log position, or None
        when there is no such active key."""
        for _ in range(SAVE_ATTEMPTS):
            row = self._active_row(key_id, org_id)
            if row is None:
                return None
            meta = actor.meta(row["org_id"])
            try:
                loaded: object = self.app.repository.get(key_id)
                assert isinstance(loaded, ApiKey)
                key = loaded
            except AggregateNotFoundError:
                # A key from before keys had events: its creation is recorded now.
                key = ApiKey.create(
                    key_id=key_id,
                    role=row["role"],
                    name=row["name"],
                    prefix=row["key_prefix"],
                    expires_at=row["expires_at"].isoformat() if row["expires_at"] else None,
                    project_id=str(row["project_id"]) if row["project_id"] else None,
                    meta=EventMeta(
                        org_id=row["org_id"], actor=actor.actor, correlation_id=actor.correlation_id
                    ),
                    recorded_late=True,
                )
            if not key.revoke(meta):
                return None
            update = SideStatement(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                (key_id,),
                expect_row=True,
            )
            try:
                recordings = self.app.save(key, side_statements=[update])
            except IntegrityError:
                continue  # revoked meanwhile (or its first event raced): look again
            return int(recordings[-1].notification.id)
        return None

    def _active_row(self, key_id: UUID, org_id: str | None) -> dict[str, Any] | None:
        query = (
            "SELECT id, org_id, role, name, key_prefix, expires_at, project_id FROM api_keys "
            "WHERE id = %s AND revoked_at IS NULL"
        )
        params: tuple[object, ...] = (key_id,)
        if org_id is not None:
            # Through the API: a tenant's keys only (a platform_admin key is the CLI's).
            query += " AND org_id = %s AND role <> 'platform_admin'"
            params = (key_id, org_id)
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(query, params)
            row = curs.fetchone()
        return dict(row) if row is not None else None
