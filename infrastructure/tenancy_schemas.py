"""Bodies and answers of the organisation and key endpoints (write and read API alike)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from domain.values import StorableText
from infrastructure.auth import ORG_ID_PATTERN, ApiKeyInfo, Role

ORG_ID = ORG_ID_PATTERN.pattern


class OrganisationLimits(BaseModel):
    """An organisation's own limits; a missing or null one means the global setting."""

    model_config = ConfigDict(extra="forbid")

    write_per_s: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Commands per second (REPORUNNER_RATE_LIMIT_WRITE_PER_S).",
    )
    write_burst: int | None = Field(None, ge=1, le=1_000_000)
    read_per_s: float | None = Field(None, gt=0, le=1_000_000)
    read_burst: int | None = Field(None, ge=1, le=1_000_000)
    sync_runs: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Concurrent sync runs per process (REPORUNNER_SYNC_RUNS_PER_ORG).",
    )
    max_workflows: int | None = Field(None, ge=1, le=10_000_000)
    executions_per_day: int | None = Field(None, ge=1, le=1_000_000_000)

    def as_limits(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CreateOrganisation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ORG_ID, description="The organisation id its keys carry.")
    name: StorableText = Field(
        "", max_length=200, description="A display name (the id by default)."
    )
    limits: OrganisationLimits = Field(
        default_factory=lambda: OrganisationLimits.model_validate({})
    )


class RenameOrganisation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StorableText = Field(min_length=1, max_length=200)


class SuspendOrganisation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: StorableText = Field(
        "", max_length=500, description="Shown to the organisation's callers."
    )


class OrganisationAnswer(BaseModel):
    id: str
    name: str
    status: Literal["active", "suspended"]
    suspended_reason: str | None = None
    limits: dict[str, Any] = Field(description="The organisation's own limits only.")
    version: int = Field(ge=0, description="0: no record yet (an organisation known by its keys).")
    position: int | None = Field(None, description="The log position of the change (commands).")
    registered: bool = Field(True, description="False: known only by its API keys.")


class OrganisationPage(BaseModel):
    items: list[OrganisationAnswer]
    next_after: str | None = Field(None, description="Pass as `after` for the next page.")


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="owner, editor, viewer or auditor (not platform_admin).")
    name: StorableText = Field("", max_length=200)
    expires_at: AwareDatetime | None = Field(None, description="After it the key is refused (401).")
    project_id: UUID | None = Field(None, description="Scope the key to one project.")


class KeyInfo(BaseModel):
    id: UUID
    org_id: str
    role: Role
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    status: Literal["active", "revoked", "expired"]
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None
    project_id: UUID | None = None


class KeyCreated(KeyInfo):
    key: str = Field(description="The secret: shown in this answer only, never again.")
    position: int = Field(ge=0, description="The log position of the key's Created event.")


class KeyRevoked(BaseModel):
    id: UUID
    status: Literal["revoked"]
    position: int = Field(ge=0)


class KeyPage(BaseModel):
    items: list[KeyInfo]
    next_after: UUID | None = None


def key_status(info: ApiKeyInfo, now: datetime) -> str:
    if info.revoked_at is not None:
        return "revoked"
    if info.expires_at is not None and info.expires_at <= now:
        return "expired"
    return "active"


def key_json(info: ApiKeyInfo, now: datetime) -> dict[str, Any]:
    return {
        "id": str(info.id),
        "org_id": info.org_id,
        "role": info.role.value,
        "name": info.name,
        "prefix": info.prefix,
        "status": key_status(info, now),
        "created_at": info.created_at.isoformat(),
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "project_id": str(info.project_id) if info.project_id else None,
    }
