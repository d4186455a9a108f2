"""The Credential aggregate: a secret an organisation's nodes use, never shown again.

A credential has a name, a type and a secret. The domain never sees the
secret in clear: the command handler seals it under the organisation's data
key (``infrastructure/sealing.py``) and hands over the sealed value, the id
of the key and a keyed fingerprint; the events carry only those. So the log,
every follower of it and every export hold ciphertext.

Types and the fields of their secret (``check_secret``):

- ``bearer``: ``token``; sent as ``Authorization: Bearer <token>``.
- ``header``: ``name`` and ``value``; sent as the header ``name: value``.
- ``basic``: ``username`` and ``password``; ``Authorization: Basic ...``.
- ``hmac_secret``: ``secret``; the request is signed as our own webhooks
  check it (``domain/webhooks.py``): ``X-Webhook-Timestamp: <unix s>`` and
  ``X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>." + body)>``.

Public methods validate and decide; ``@event`` methods only apply.
"""

from __future__ import annotations

import re
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError, Problem
from domain.meta import EventMeta

SECRET_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "bearer": ("token",),
    "header": ("name", "value"),
    "basic": ("username", "password"),
    "hmac_secret": ("secret",),
}
CREDENTIAL_TYPES: Final = tuple(SECRET_FIELDS)
MAX_NAME_CHARS: Final = 200
MAX_SECRET_CHARS: Final = 4096
# Request headers that carry a secret: a definition naming one inline is refused
# at the doors (create, update, revert) and pointed to credentials. Stored
# workflows that have one still load and run: replay never re-checks.
SECRET_LOOKING_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
        "x-csrf-token",
        "x-amz-security-token",
    }
)
# The same character classes as the OpenAPI patterns (``NAME_PATTERN`` ...), so what
# the document calls valid is valid here: a visible character, no NUL.
NAME_PATTERN: Final = r"^[^\x00]*[^\x00-\x20\x7f][^\x00]*$"
SECRET_PATTERN: Final = r"^[^\x00-\x1f\x7f]+$"
USERNAME_PATTERN: Final = r"^[^\x00-\x1f\x7f:]+$"
HEADER_NAME_PATTERN: Final = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"
_NAME = re.compile(NAME_PATTERN[1:-1])
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN[1:-1])
# CR, LF or NUL in a value would let it inject headers; other controls have no place either.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CredentialInvalid(DomainError):
    """A credential's name, type or secret broke a rule; ``problems`` say where."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class CredentialDeleted(DomainError):
    def __init__(self, credential_id: UUID | str) -> None:
        self.credential_id = credential_id
        super().__init__(f"credential {credential_id} is deleted")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.credential_id,))


def check_name(name: object) -> list[Problem]:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return [Problem("name", "must be a string with a visible character and no NUL")]
    if len(name) > MAX_NAME_CHARS:
        return [Problem("name", f"must be at most {MAX_NAME_CHARS} characters")]
    return []


def check_secret(credential_type: str, secret: object) -> list[Problem]:
    """Problems with ``secret`` for a credential of ``credential_type`` (none: it fits).

    Messages never quote the secret's values."""
    fields = SECRET_FIELDS.get(credential_type)
    if fields is None:
        return [Problem("type", f"must be one of: {', '.join(CREDENTIAL_TYPES)}")]
    if not isinstance(secret, dict):
        return [Problem("secret", f"must be an object with {', '.join(fields)}")]
    problems = [
        Problem(f"secret.{key}", f"unknown field for type '{credential_type}'")
        for key in secret
        if key not in fields
    ]
    for field in fields:
        value = secret.get(field)
        loc = f"secret.{field}"
        if not isinstance(value, str) or not value:
            problems.append(Problem(loc, "required: a non-empty string"))
        elif len(value) > MAX_SECRET_CHARS:
            problems.append(Problem(loc, f"must be at most {MAX_SECRET_CHARS} characters"))
        elif _CONTROL.search(value):
            problems.append(Problem(loc, "must not contain control characters (CR, LF, NUL...)"))
    name = secret.get("name")
    header = credential_type == "header" and isinstance(name, str) and name
    if header and not _HEADER_NAME.fullmatch(str(name)):
        problems.append(Problem("secret.name", "is not a valid HTTP header name"))
    username = secret.get("username")
    if credential_type == "basic" and isinstance(username, str) and ":" in username:
        problems.append(Problem("secret.username", "must not contain ':' (HTTP Basic)"))
    return problems


class Credential(Aggregate):
    """One organisation's named secret, held only as ciphertext."""

    @classmethod
    def create(
        cls,
        *,
        credential_id: UUID,
        name: str,
        credential_type: str,
        sealed: dict[str, Any],
        key_id: str,
        fingerprint: str,
        meta: EventMeta,
    ) -> Credential:
        problems = check_name(name)
        if credential_type not in SECRET_FIELDS:
            problems.append(Problem("type", f"must be one of: {', '.join(CREDENTIAL_TYPES)}"))
        if problems:
            raise CredentialInvalid(problems)
        return cls(
            id=credential_id,
            name=name,
            credential_type=credential_type,
            sealed=sealed,
            key_id=key_id,
            fingerprint=fingerprint,
            meta=meta.as_dict(),
        )

    @event("Created")
    def __init__(
        self,
        *,
        id: UUID,
        name: str,
        credential_type: str,
        sealed: dict[str, Any],
        key_id: str,
        fingerprint: str,
        meta: dict[str, Any],
    ) -> None:
        self.org_id: str = meta["org_id"]
        self.name = name
        self.credential_type = credential_type
        self.sealed = sealed
        self.key_id = key_id
        self.fingerprint = fingerprint
        self.created_by: str = meta["actor"]
        self.updated_by: str = meta["actor"]
        self.deleted = False

    def update(
        self,
        *,
        name: str | None,
        sealed: dict[str, Any] | None,
        key_id: str | None,
        fingerprint: str | None,
        meta: EventMeta,
    ) -> bool:
        """Rename and/or replace the secret; False if nothing would change."""
        self.ensure_not_deleted()
        if name is not None:
            problems = check_name(name)
            if problems:
                raise CredentialInvalid(problems)
        changes: dict[str, Any] = {}
        if name is not None and name != self.name:
            changes["name"] = name
        if sealed is not None and fingerprint != self.fingerprint:
            changes.update(sealed=sealed, key_id=key_id, fingerprint=fingerprint)
        if not changes:
            return False
        self._updated(changes=changes, meta=meta.as_dict())
        return True

    @event("Updated")
    def _updated(self, changes: dict[str, Any], meta: dict[str, Any]) -> None:
        for field in ("name", "sealed", "key_id", "fingerprint"):
            if field in changes:
                setattr(self, field, changes[field])
        self.updated_by = meta["actor"]

    def delete(self, meta: EventMeta) -> None:
        self.ensure_not_deleted()
        self._deleted(meta=meta.as_dict())

    @event("Deleted")
    def _deleted(self, meta: dict[str, Any]) -> None:
        self.deleted = True
        self.updated_by = meta["actor"]

    def ensure_not_deleted(self) -> None:
        if self.deleted:
            raise CredentialDeleted(self.id)
