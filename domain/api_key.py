"""The ApiKey aggregate: the audited life of one API key (created, revoked).

The secret itself never enters the log: only its id, organisation, role,
name, prefix, expiry and project. The ``api_keys`` table (what requests are
authenticated against) is written in the same transaction as these events,
so the two never disagree.

Keys made before keys had events have no aggregate; revoking one first
records ``Created`` with ``recorded_late`` true, from its row.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.meta import EventMeta


class ApiKey(Aggregate):
    @classmethod
    def create(
        cls,
        *,
        key_id: UUID,
        role: str,
        name: str,
        prefix: str,
        expires_at: str | None,
        project_id: str | None,
        meta: EventMeta,
        recorded_late: bool = False,
    ) -> ApiKey:
        return cls(
            id=key_id,
            role=role,
            name=name,
            prefix=prefix,
            expires_at=expires_at,
            project_id=project_id,
            recorded_late=recorded_late,
            meta=meta.as_dict(),
        )

    @event("Created")
    def __init__(
        self,
        *,
        id: UUID,
        role: str,
        name: str,
        prefix: str,
        expires_at: str | None,
        project_id: str | None,
        recorded_late: bool,
        meta: dict[str, Any],
    ) -> None:
        self.org_id: str = meta["org_id"]
        self.role = role
        self.name = name
        self.prefix = prefix
        self.expires_at = expires_at
        self.project_id = project_id
        self.revoked = False

    def revoke(self, meta: EventMeta) -> bool:
        if self.revoked:
            return False
        self._revoked(meta=meta.as_dict())
        return True

    @event("Revoked")
    def _revoked(self, *, meta: dict[str, Any]) -> None:
        self.revoked = True
