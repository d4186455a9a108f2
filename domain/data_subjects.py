"""Data subjects: whose personal data an execution carries, and their erasure.

A workflow names its data subject with ``settings.data_subject``, a JSON path
(``$.customer.id``, ``$[0].email``) evaluated on each execution's input. The
value found there (a string, or a number or boolean as its JSON text) is the
subject: the execution's payloads are sealed under that subject's key as well
as under the day's key, so destroying the subject's key erases them.

``DataSubject`` is the log's record of an erasure: one aggregate per
(organisation, subject scope), its id ``uuid5`` of both. ``scope`` is the
keyring's keyed digest of the subject (``Keyring.subject_scope``), never the
subject's own value: the log must not name the person it forgot. Erasing
twice records nothing the second time.

Pure: no keys, no I/O; the command layer destroys the key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

from eventsourcing.domain import Aggregate, event

from domain.meta import EventMeta
from domain.webhooks import json_path

__all__ = [
    "MAX_SUBJECT_CHARS",
    "DataSubject",
    "check_data_subject_path",
    "data_subject_id",
    "data_subject_of",
]

# A subject's id in a URL or a CLI argument; longer is not an id.
MAX_SUBJECT_CHARS: Final = 255
_NAMESPACE: Final = uuid.UUID("5d7c2f4e-1b8a-4c3e-9f60-2a4d8e6b7c19")


def check_data_subject_path(path: object) -> str | None:
    """What is wrong with a ``settings.data_subject`` value, or None."""
    if not isinstance(path, str):
        return "must be a JSON path string such as '$.customer.id'"
    try:
        json_path({}, path)
    except ValueError:
        return f"{path!r} is not a supported JSON path: write it like $.customer.id or $[0].email"
    return None


def data_subject_of(settings: Mapping[str, Any], input: Any) -> str | None:
    """The data subject an execution's input names under ``settings.data_subject``.

    None when the workflow names no subject, or the path finds nothing usable
    (no value, an object or array, an empty or over-long string): the
    execution's payloads are then sealed under the day's key only.
    """
    path = settings.get("data_subject")
    if not isinstance(path, str):
        return None
    found = json_path(input, path)
    if isinstance(found, bool):
        found = "true" if found else "false"
    elif isinstance(found, int | float):
        found = repr(found)
    if not isinstance(found, str) or not found or len(found) > MAX_SUBJECT_CHARS:
        return None
    return found


def data_subject_id(org_id: str, scope: str) -> uuid.UUID:
    """The ``DataSubject`` aggregate of one subject scope in one organisation."""
    return uuid.uuid5(uuid.uuid5(_NAMESPACE, org_id), scope)


class DataSubject(Aggregate):
    """The erasures of one data subject (known by its scope digest only)."""

    @classmethod
    def erase_new(
        cls, *, org_id: str, scope: str, key_id: str | None, meta: EventMeta
    ) -> DataSubject:
        """The first erasure of a subject the log has not recorded yet."""
        subject = cls(id=data_subject_id(org_id, scope), scope=scope, meta=meta.as_dict())
        subject.erase(key_id=key_id, meta=meta)
        return subject

    @event("Registered")
    def __init__(self, *, id: uuid.UUID, scope: str, meta: dict[str, Any]) -> None:
        self.org_id: str = meta["org_id"]
        self.scope = scope
        self.erased_by: str | None = None
        self.erased_key_id: str | None = None

    @property
    def is_erased(self) -> bool:
        return self.erased_by is not None

    def erase(self, *, key_id: str | None, meta: EventMeta) -> bool:
        """Record the erasure (``key_id``: the key destroyed, None if none had been
        made); False, recording nothing, when it was erased before."""
        if self.is_erased:
            return False
        # The scope again: the Erased event alone says whose key went, for readers of the log.
        self._erased(scope=self.scope, key_id=key_id, meta=meta.as_dict())
        return True

    @event("Erased")
    def _erased(self, scope: str, key_id: str | None, meta: dict[str, Any]) -> None:
        self.erased_by = meta["actor"]
        self.erased_key_id = key_id


DataSubjectErasedEvent: Any = DataSubject.Erased  # type: ignore[attr-defined]
