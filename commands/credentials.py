"""Credentials: create, change, delete; and, for a running node only, open one.

The secret is sealed here, before the domain sees it: ``seal_value`` under
the organisation's data key (``Keyring.org_key``), with the context
``credential/<org>/<id>`` so a sealed secret copied to another credential or
organisation does not open. The fingerprint is a keyed digest under the
same key (a low-entropy password must not be guessable from it).

The ``credentials`` table is the metadata list (id, name, type, fingerprint,
key id, who and when), rewritten in the same transaction as every event,
as ``webhook_routes`` is (``commands/handlers.py``): the list answers at
once after a write, and holds no secret. Running nodes read the aggregate
from the log, the source of truth, never the table.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import orjson
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from pydantic import BaseModel, ConfigDict, model_validator

from commands.application import WorkflowApplication
from commands.models import CommandContext
from domain.credentials import (
    CREDENTIAL_TYPES,
    HEADER_NAME_PATTERN,
    MAX_NAME_CHARS,
    MAX_SECRET_CHARS,
    NAME_PATTERN,
    SECRET_FIELDS,
    SECRET_PATTERN,
    USERNAME_PATTERN,
    Credential,
    CredentialInvalid,
    check_name,
    check_secret,
)
from domain.engine import HttpRequest
from domain.errors import Problem
from domain.meta import EventMeta
from domain.webhooks import DEFAULT_SIGNATURE_HEADER, DEFAULT_TIMESTAMP_HEADER, sign
from infrastructure.crypto import keyed_digest
from infrastructure.eventstore import SideStatement
from infrastructure.http_port import encode_body
from infrastructure.keyring import DataKey, Keyring
from infrastructure.sealing import open_value, seal_value, sealed_key_ids

SAVE_ATTEMPTS = 5
# The headers an hmac_secret credential signs with: those our own hooks read by default.
SIGNATURE_HEADER = "X-Webhook-Signature"
SIGNED_AT_HEADER = "X-Webhook-Timestamp"
assert SIGNATURE_HEADER.lower() == DEFAULT_SIGNATURE_HEADER
assert SIGNED_AT_HEADER.lower() == DEFAULT_TIMESTAMP_HEADER


def _text(pattern: str, max_length: int = MAX_SECRET_CHARS) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": pattern}


_SECRET_TEXT = _text(SECRET_PATTERN)
_NAME_DOC = _text(NAME_PATTERN, MAX_NAME_CHARS)
# Each type's secret, exactly (write-only: no answer ever holds it).
SECRET_SCHEMAS: dict[str, dict[str, Any]] = {
    kind: {
        "type": "object",
        "required": list(fields),
        "additionalProperties": False,
        "writeOnly": True,
        "properties": {
            field: (
                {**_text(HEADER_NAME_PATTERN), "maxLength": 256}
                if (kind, field) == ("header", "name")
                else _text(USERNAME_PATTERN)
                if (kind, field) == ("basic", "username")
                else _SECRET_TEXT
            )
            for field in fields
        },
    }
    for kind, fields in SECRET_FIELDS.items()
}
# The OpenAPI bodies, written out: a secret's shape depends on the type, which
# pydantic's schema of a dict cannot say (the domain checks the same rules).
CREATE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "title": f"CreateCredential ({kind})",
            "required": ["name", "type", "secret"],
            "additionalProperties": False,
            "properties": {"name": _NAME_DOC, "type": {"const": kind}, "secret": schema},
        }
        for kind, schema in SECRET_SCHEMAS.items()
    ],
    "examples": [{"name": "CRM API", "type": "bearer", "secret": {"token": "sk-..."}}],
}
UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Rename, or replace the whole secret (in the shape of the credential's "
    "type: another type's shape is 409), or both.",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {"name": _NAME_DOC, "secret": {"oneOf": list(SECRET_SCHEMAS.values())}},
}


class CreateCredential(BaseModel):
    """Shape and types only; ``check_name`` and ``check_secret`` say what else is wrong."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    type: Literal["bearer", "header", "basic", "hmac_secret"]
    secret: dict[str, Any]


class UpdateCredential(BaseModel):
    """Rename, or replace the whole secret (of the credential's type), or both."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = None
    secret: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _present_and_not_null(self) -> UpdateCredential:
        if not self.model_fields_set:
            raise ValueError("give at least one of: name, secret")
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"may not be null: {', '.join(nulls)}")
        return self


class CredentialTypeMismatch(Exception):
    """A new secret in the shape of another type than the credential's own."""

    def __init__(self, credential_id: UUID, credential_type: str, given: str) -> None:
        super().__init__(
            f"credential {credential_id} is of type '{credential_type}': its secret has "
            f"{', '.join(SECRET_FIELDS[credential_type])}, not the fields of '{given}' "
            "(a credential's type never changes: create another)"
        )


class CredentialNotFound(Exception):
    """No such credential in the caller's organisation (another's is not found either)."""

    def __init__(self, credential_id: UUID | str) -> None:
        super().__init__(f"credential {credential_id} not found")
        self.credential_id = credential_id


class CredentialUnusable(Exception):
    """A node names a credential it cannot use: missing, deleted, or its key is gone.
    The message names the credential, never its secret."""


@dataclass(frozen=True)
class CredentialResult:
    credential_id: UUID
    position: int
    status_code: int
    info: dict[str, Any]
    """The credential's metadata as saved (``metadata``): what the answer shows."""


def metadata(credential: Credential) -> dict[str, Any]:
    """What anyone may see of a credential: everything but the secret."""
    return {
        "id": str(credential.id),
        "name": credential.name,
        "type": credential.credential_type,
        "fingerprint": credential.fingerprint,
        "key_id": credential.key_id,
        "created_by": credential.created_by,
        "created_at": credential.created_on.isoformat(),
        "updated_by": credential.updated_by,
        "updated_at": credential.modified_on.isoformat(),
    }


@dataclass(frozen=True)
class OpenCredential:
    """A credential's secret in clear, in memory, while one request is built."""

    credential_type: str
    secret: dict[str, str]

    def __repr__(self) -> str:  # never print the secret
        return f"OpenCredential(type={self.credential_type!r})"


def secret_context(org_id: str, credential_id: UUID | str) -> str:
    return f"credential/{org_id}/{credential_id}"


def credential_fingerprint(key: DataKey, credential_type: str, secret: dict[str, Any]) -> str:
    canonical = orjson.dumps([credential_type, secret], option=orjson.OPT_SORT_KEYS).decode()
    return keyed_digest(key.secret, "credential fingerprint", canonical)[:16]


class CredentialCommands:
    """The write side's use cases for credentials, and their opening at run time."""

    def __init__(self, app: WorkflowApplication, keyring: Keyring) -> None:
        self.app = app
        self.keyring = keyring

    def create(self, command: CreateCredential, ctx: CommandContext) -> CredentialResult:
        # Before sealing: a refused request must not make the organisation a key.
        _raise_if_invalid(check_name(command.name) + check_secret(command.type, command.secret))
        credential_id = uuid.uuid4()
        sealed, key_id, fingerprint = self._seal(ctx.org_id, credential_id, command)
        credential = Credential.create(
            credential_id=credential_id,
            name=command.name,
            credential_type=command.type,
            sealed=sealed,
            key_id=key_id,
            fingerprint=fingerprint,
            meta=_meta(ctx),
        )
        return self._save(credential, status_code=201)

    def update(
        self, credential_id: UUID, command: UpdateCredential, ctx: CommandContext
    ) -> CredentialResult:
        for _ in range(SAVE_ATTEMPTS):
            credential = self.get(credential_id, ctx.org_id)
            sealed = key_id = fingerprint = None
            if command.secret is not None:
                _refuse_another_types_secret(credential, command.secret)
                _raise_if_invalid(check_secret(credential.credential_type, command.secret))
                sealed, key_id, fingerprint = self._seal(
                    ctx.org_id, credential_id, command, credential.credential_type
                )
            changed = credential.update(
                name=command.name,
                sealed=sealed,
                key_id=key_id,
                fingerprint=fingerprint,
                meta=_meta(ctx),
            )
            if not changed:
                position = self.app.event_store.position_of(credential.id, credential.version)
                return CredentialResult(credential.id, position, 200, metadata(credential))
            try:
                return self._save(credential, status_code=200)
            except IntegrityError:
                continue  # changed meanwhile: apply this change on the newer state
        raise IntegrityError(f"credential {credential_id} kept changing; try again")

    def delete(self, credential_id: UUID, ctx: CommandContext) -> CredentialResult:
        for _ in range(SAVE_ATTEMPTS):
            credential = self.get(credential_id, ctx.org_id)
            if credential.deleted:
                raise CredentialNotFound(credential_id)
            credential.delete(_meta(ctx))
            try:
                return self._save(credential, status_code=200)
            except IntegrityError:
                continue
        raise IntegrityError(f"credential {credential_id} kept changing; try again")

    def get(self, credential_id: UUID, org_id: str) -> Credential:
        try:
            credential: object = self.app.repository.get(credential_id)
        except AggregateNotFoundError:
            raise CredentialNotFound(credential_id) from None
        if not isinstance(credential, Credential) or credential.org_id != org_id:
            raise CredentialNotFound(credential_id)
        return credential

    def open(self, org_id: str, credential_id: str) -> OpenCredential:
        """The secret of a live credential of ``org_id``, for one request;
        ``CredentialUnusable`` saying why not."""
        try:
            credential = self.get(UUID(credential_id), org_id)
        except (ValueError, CredentialNotFound):
            raise CredentialUnusable(
                f"credential {credential_id} does not exist in this organisation"
            ) from None
        if credential.deleted:
            raise CredentialUnusable(f"credential {credential_id} was deleted")
        keys = [self.keyring.find(key_id) for key_id in sealed_key_ids(credential.sealed)]
        secret = open_value(credential.sealed, keys, secret_context(org_id, credential.id))
        if not isinstance(secret, dict) or "$erased" in secret:
            raise CredentialUnusable(f"credential {credential_id}'s key is gone")
        return OpenCredential(credential.credential_type, secret)

    def _seal(
        self,
        org_id: str,
        credential_id: UUID,
        command: CreateCredential | UpdateCredential,
        credential_type: str | None = None,
    ) -> tuple[dict[str, Any], str, str]:
        assert command.secret is not None
        kind = credential_type or str(getattr(command, "type", ""))
        key = self.keyring.org_key(org_id)
        sealed = seal_value(command.secret, [key], secret_context(org_id, credential_id))
        return sealed, key.key_id, credential_fingerprint(key, kind, command.secret)

    def _save(self, credential: Credential, status_code: int) -> CredentialResult:
        recordings = self.app.save(credential, side_statements=_list_statements(credential))
        position = recordings[-1].notification.id
        return CredentialResult(credential.id, position, status_code, metadata(credential))


def _refuse_another_types_secret(credential: Credential, secret: dict[str, Any]) -> None:
    shapes = [kind for kind, fields in SECRET_FIELDS.items() if set(fields) == set(secret)]
    if shapes and credential.credential_type not in shapes:
        raise CredentialTypeMismatch(credential.id, credential.credential_type, shapes[0])


def _raise_if_invalid(problems: Sequence[Problem]) -> None:
    if problems:
        raise CredentialInvalid(list(problems))


def _meta(ctx: CommandContext) -> EventMeta:
    return EventMeta(
        org_id=ctx.org_id,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id,
        idempotency_key=ctx.idempotency_key,
        traceparent=ctx.traceparent,
    )


def _list_statements(credential: Credential) -> list[SideStatement]:
    """Keep the credential's row in ``credentials`` as saved (gone once deleted)."""
    if credential.deleted:
        return [SideStatement("DELETE FROM credentials WHERE id = %s", (credential.id,))]
    return [
        SideStatement(
            "INSERT INTO credentials (id, org_id, name, type, fingerprint, key_id, "
            "created_by, created_at, updated_by, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "name = excluded.name, fingerprint = excluded.fingerprint, "
            "key_id = excluded.key_id, updated_by = excluded.updated_by, "
            "updated_at = excluded.updated_at",
            (
                credential.id,
                credential.org_id,
                credential.name,
                credential.credential_type,
                credential.fingerprint,
                credential.key_id,
                credential.created_by,
                credential.created_on,
                credential.updated_by,
                credential.modified_on,
            ),
        )
    ]


__all__ = [
    "CREDENTIAL_TYPES",
    "SECRET_FIELDS",
    "CreateCredential",
    "CredentialCommands",
    "CredentialNotFound",
    "CredentialResult",
    "CredentialTypeMismatch",
    "CredentialUnusable",
    "OpenCredential",
    "UpdateCredential",
    "apply_credential",
]


def apply_credential(request: HttpRequest, opened: OpenCredential, now: float) -> HttpRequest:
    """``request`` with the credential's headers (they replace same-named ones).

    ``hmac_secret`` signs the body bytes as our own webhooks check a
    signature (``domain/webhooks.py``): ``X-Webhook-Timestamp`` (Unix
    seconds) and ``X-Webhook-Signature: sha256=<hex>``.
    """
    secret = opened.secret
    kind = opened.credential_type
    if kind == "bearer":
        added = {"Authorization": f"Bearer {secret['token']}"}
    elif kind == "basic":
        pair = f"{secret['username']}:{secret['password']}".encode()
        added = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    elif kind == "header":
        added = {secret["name"]: secret["value"]}
    elif kind == "hmac_secret":
        timestamp = int(now)
        body = encode_body(request.body) or b""
        added = {
            SIGNED_AT_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret["secret"].encode(), timestamp, body),
        }
    else:
        raise CredentialUnusable(f"credential type '{kind}' is not known to this version")
    replaced = {name.lower() for name in added}
    headers = {k: v for k, v in request.headers.items() if k.lower() not in replaced}
    return dataclasses.replace(request, headers={**headers, **added})
