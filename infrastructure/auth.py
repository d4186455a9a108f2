"""API keys, roles and the principal behind a request.

Keys are random 256-bit secrets shown once; we store only their SHA-256. A
slow password hash buys nothing for secrets this long and would cost every
request.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

KEY_PREFIX = "rr_"
ORG_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Role(StrEnum):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"
    AUDITOR = "auditor"
    # Manages organisations (/v1/admin); made by the CLI only; sees no workflow.
    PLATFORM_ADMIN = "platform_admin"


class Permission(StrEnum):
    READ_WORKFLOWS = "workflows:read"
    WRITE_WORKFLOWS = "workflows:write"
    EXECUTE_WORKFLOWS = "workflows:execute"
    READ_AUDIT = "audit:read"
    PUBLISH_TEMPLATES = "templates:publish"  # owners only: what every organisation may see
    # Owners only: destroys a data subject's key (commands/erasure.py).
    ERASE_DATA = "data:erase"
    MANAGE_PROJECTS = "projects:manage"
    MANAGE_KEYS = "keys:manage"
    MANAGE_ORGANISATIONS = "organisations:manage"
    MANAGE_CREDENTIALS = "credentials:write"


# What only an organisation-wide key may do, whatever its role: these act on the
# whole organisation (its keys, its credentials, its catalogue, a data subject's
# executions in every project), so a key confined to a project never may.
ORGANISATION_WIDE: frozenset[Permission] = frozenset(
    {
        Permission.MANAGE_KEYS,
        Permission.MANAGE_ORGANISATIONS,
        Permission.MANAGE_CREDENTIALS,
        Permission.PUBLISH_TEMPLATES,
        Permission.ERASE_DATA,
    }
)


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # Everything within its organisation; nothing across organisations.
    Role.OWNER: frozenset(Permission) - {Permission.MANAGE_ORGANISATIONS},
    Role.EDITOR: frozenset(
        {
            Permission.READ_WORKFLOWS,
            Permission.WRITE_WORKFLOWS,
            Permission.EXECUTE_WORKFLOWS,
            Permission.MANAGE_CREDENTIALS,
        }
    ),
    Role.VIEWER: frozenset({Permission.READ_WORKFLOWS}),
    Role.AUDITOR: frozenset({Permission.READ_WORKFLOWS, Permission.READ_AUDIT}),
    # Least privilege: organisations' standing and limits, never their workflows.
    Role.PLATFORM_ADMIN: frozenset({Permission.MANAGE_ORGANISATIONS}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: one API key of one organisation."""

    key_id: uuid.UUID
    org_id: str
    role: Role
    name: str
    # The one project this key is confined to; None: the whole organisation.
    project_id: uuid.UUID | None = None
    expires_at: datetime | None = None

    @property
    def actor(self) -> str:
        """The name events record as their actor."""
        return f"apikey:{self.key_id}"

    def may(self, permission: Permission) -> bool:
        if self.project_id is not None and permission in ORGANISATION_WIDE:
            return False
        return permission in ROLE_PERMISSIONS[self.role]

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    org_id: str
    role: Role
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    project_id: uuid.UUID | None = None


class InvalidOrgId(ValueError):
    pass


def check_org_id(org_id: str) -> str:
    if not ORG_ID_PATTERN.match(org_id):
        raise InvalidOrgId(
            f"invalid organisation id {org_id!r}: use 1-63 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return org_id


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


class ApiKeyStore:
    """API keys in PostgreSQL (table ``api_keys``).

    Successful lookups are cached in the process for ``cache_seconds``: the
    lookup costs more than the rest of a small command, and a revoked key
    then stops working within that many seconds. Failures are never cached.
    Requests that miss the cache together share one lookup: when a busy
    key's entry expires, its in-flight requests would otherwise each open a
    connection and query at once.
    """

    _CACHE_LIMIT = 10_000

    def __init__(self, engine: AsyncEngine, cache_seconds: float = 0) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._lookups: dict[bytes, asyncio.Task[Principal | None]] = {}

    async def create(
        self,
        org_id: str,
        role: Role,
        name: str = "",
        *,
        expires_at: datetime | None = None,
        project_id: uuid.UUID | None = None,
    ) -> tuple[ApiKeyInfo, str]:
        """Create a key; return its record and the plaintext, which is never stored.

        No event: the API and the CLI create keys through ``commands.api_keys``,
        which records one; this is the bare table write (tests).
        """
        check_org_id(org_id)
        plaintext = new_plaintext()
        params = _key_params(org_id, role, name, plaintext)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    _INSERT_KEY, {**params, "expires": expires_at, "project": project_id}
                )
            ).one()
        return key_info(row), plaintext

    async def list(self, org_id: str | None = None) -> list[ApiKeyInfo]:
        query = f"SELECT {KEY_COLUMNS} FROM api_keys"
        params: dict[str, str] = {}
        if org_id is not None:
            query += " WHERE org_id = :org"
            params["org"] = org_id
        async with self._engine.connect() as conn:
            rows = (await conn.execute(text(query + " ORDER BY created_at, id"), params)).all()
        return [key_info(row) for row in rows]

    async def revoke(self, key_id: uuid.UUID) -> bool:
        """Revoke a key; False when no active key has that id.

        Other processes that cached the key stop accepting it within their
        cache time.
        """
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text(
                    "UPDATE api_keys SET revoked_at = now() "
                    "WHERE id = :id AND revoked_at IS NULL RETURNING id"
                ),
                {"id": key_id},
            )
            return result.first() is not None

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop a key from this process's cache (it was just revoked here)."""
        for key_hash, (principal, _) in list(self._cache.items()):
            if principal.key_id == key_id:
                self._cache.pop(key_hash, None)

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM api_keys"))).scalar_one())

    async def authenticate(self, plaintext: str) -> Principal | None:
        if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
            return None
        key_hash = hash_key(plaintext)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        lookup = self._lookups.get(key_hash)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(key_hash))
            self._lookups[key_hash] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key_hash, None))
        # Shielded: one caller giving up must not cancel the others' lookup.
        principal = await asyncio.shield(lookup)
        if principal is not None and self._cache_seconds > 0:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[key_hash] = (principal, now + self._cache_seconds)
        return principal

    async def _lookup(self, key_hash: bytes) -> Principal | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, org_id, role, name, project_id, expires_at FROM api_keys "
                        "WHERE key_hash = :hash AND revoked_at IS NULL"
                    ),
                    {"hash": key_hash},
                )
            ).first()
        if row is None:
            return None
        return Principal(
            key_id=row.id,
            org_id=row.org_id,
            role=Role(row.role),
            name=row.name,
            project_id=row.project_id,
            expires_at=row.expires_at,
        )


KEY_COLUMNS = "id, org_id, role, name, key_prefix, created_at, revoked_at, expires_at, project_id"

_INSERT_KEY = text(
    "INSERT INTO api_keys (id, org_id, role, name, key_hash, key_prefix, expires_at, project_id) "
    "VALUES (:id, :org, :role, :name, :hash, :prefix, :expires, :project) "
    f"RETURNING {KEY_COLUMNS}"
)


def new_plaintext() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _key_params(org_id: str, role: Role, name: str, plaintext: str) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "org": org_id,
        "role": role.value,
        "name": name,
        "hash": hash_key(plaintext),
        "prefix": plaintext[:10],
    }


def key_info(row: object) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,  # type: ignore[attr-defined]
        org_id=row.org_id,  # type: ignore[attr-defined]
        role=Role(row.role),  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        prefix=row.key_prefix,  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
        revoked_at=row.revoked_at,  # type: ignore[attr-defined]
        expires_at=row.expires_at,  # type: ignore[attr-defined]
        project_id=row.project_id,  # type: ignore[attr-defined]
    )
