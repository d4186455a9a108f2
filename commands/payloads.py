"""Sealing execution payloads on their way into the log, and opening them for the write side.

The engine works on plaintext in memory; the events carry sealed values
(``infrastructure/sealing.py``, contexts in ``domain/payloads.py``). Each
execution's payloads are sealed under the same keys, chosen when it is
queued:

- the **day key** of its workflow and queued UTC day, scope
  ``day_scope(day, workflow_id)`` = ``"YYYY-MM-DD/<workflow id>"``: per
  workflow, so a workflow's own retention destroys its days without touching
  other workflows' payloads;
- plus, when the workflow names a data subject (``settings.data_subject``)
  and the input yields one, that **subject's key**
  (``Keyring.subject_scope``): destroying it erases every payload of every
  execution about that subject.

Later payloads of the same execution (node outputs, the final output,
errors) reuse the key ids its sealed input lists, so they are erased together.

A new execution whose subject was erased is refused (``DataSubjectErased``):
the owner asked for that person's data to be forgotten, and a destroyed
scope is never re-keyed. One whose day key is already gone (a retention of
zero days) records its payloads as erased. Without a keyring (no master key
configured) payloads are recorded in clear, as before sealing existed; events
recorded before it read the same way.

Keys are looked up by scope through a short cache (``CACHE_SECONDS``, as the
keyring's own): a queued execution costs no key query on a hot path. An
erasure in this process forgets its key at once; another process may seal
under it for up to that long (README: Erasure).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

from domain.errors import DataSubjectErased
from domain.execution import Execution
from domain.payloads import payload_context
from infrastructure.keyring import CACHE_ENTRIES, CACHE_SECONDS, DataKey, KeyPurpose, Keyring
from infrastructure.sealing import ERASED, is_sealed, open_value, seal_value, sealed_key_ids

__all__ = ["ExecutionPayloads", "Sealer", "day_scope"]


def day_scope(day: date, workflow_id: UUID | str) -> str:
    """The ``day`` key scope of one workflow's executions queued on one UTC day."""
    return f"{day.isoformat()}/{workflow_id}"


@dataclass(frozen=True)
class Sealer:
    """How one execution's payloads are recorded."""

    org_id: str
    execution_id: UUID
    # None: in clear (no keyring). Empty: a key was destroyed, record as erased.
    keys: tuple[DataKey, ...] | None

    def seal(self, field: str, value: Any) -> Any:
        if self.keys is None:
            return value
        if not self.keys:
            return dict(ERASED)
        return seal_value(value, self.keys, payload_context(self.org_id, self.execution_id, field))


class _Expiring:
    """A small thread-safe map whose entries live ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            held = self._items.get(key)
            if held is None or held[0] < time.monotonic():
                self._items.pop(key, None)
                return None
            return held[1]

    def put(self, key: Any, value: Any) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + self.seconds, value)
            self._items.move_to_end(key)
            while len(self._items) > CACHE_ENTRIES:
                self._items.popitem(last=False)

    def pop(self, key: Any) -> None:
        with self._lock:
            self._items.pop(key, None)


class ExecutionPayloads:
    """Chooses the keys of new executions, seals their payloads, opens recorded ones."""

    def __init__(
        self, keyring: Keyring | None, cache_seconds: float = CACHE_SECONDS, seal: bool = True
    ) -> None:
        self.keyring = keyring
        # False (REPORUNNER_SEAL_PAYLOADS=false): new payloads are recorded in clear;
        # those already sealed still open.
        self.seal = seal
        self._scoped = _Expiring(cache_seconds)
        # A subject's scope is a digest under the organisation's key: it never changes.
        self._scopes = _Expiring(3600.0)

    def subject_scope(self, org_id: str, subject: str) -> str:
        assert self.keyring is not None
        scope: str | None = self._scopes.get((org_id, subject))
        if scope is None:
            scope = self.keyring.subject_scope(org_id, subject)
            self._scopes.put((org_id, subject), scope)
        return scope

    def _key(self, org_id: str, purpose: KeyPurpose, scope: str) -> DataKey | None:
        assert self.keyring is not None
        key: DataKey | None = self._scoped.get((org_id, purpose, scope))
        if key is None:
            key = self.keyring.key_for(org_id, purpose, scope)
            if key is not None:
                self._scoped.put((org_id, purpose, scope), key)
        return key

    def forget(self, org_id: str, purpose: KeyPurpose, scope: str) -> None:
        """Drop a destroyed key from this process's caches (the keyring's included)."""
        self._scoped.pop((org_id, purpose, scope))

    def forget_subject(self, org_id: str, subject: str, scope: str) -> None:
        """Drop an erased subject's key, and their id, from this process's caches."""
        self.forget(org_id, KeyPurpose.SUBJECT, scope)
        self._scopes.pop((org_id, subject))

    def new_sealer(
        self,
        org_id: str,
        execution_id: UUID,
        workflow_id: UUID,
        day: date,
        subject: str | None,
    ) -> Sealer:
        """The sealer of an execution about to be queued on ``day`` (UTC)."""
        if self.keyring is None or not self.seal:
            return Sealer(org_id, execution_id, None)
        keys: list[DataKey] = []
        if subject is not None:
            subject_key = self._key(org_id, KeyPurpose.SUBJECT, self.subject_scope(org_id, subject))
            if subject_key is None:
                raise DataSubjectErased(workflow_id)
            keys.append(subject_key)
        day_key = self._key(org_id, KeyPurpose.DAY, day_scope(day, workflow_id))
        if day_key is None:
            return Sealer(org_id, execution_id, ())
        # The day key first: the order is part of the value key's derivation.
        return Sealer(org_id, execution_id, (day_key, *keys))

    def sealer_for(self, execution: Execution) -> Sealer:
        """The sealer of a recorded execution: the keys its sealed input lists."""
        if self.keyring is None or not is_sealed(execution.input):
            # In clear: no keyring, or recorded before sealing (or as erased).
            erased = self.keyring is not None and execution.input == ERASED
            return Sealer(execution.org_id, execution.id, () if erased else None)
        found = [self.keyring.find(key_id) for key_id in sealed_key_ids(execution.input)]
        keys = tuple(key for key in found if key is not None)
        return Sealer(execution.org_id, execution.id, keys if len(keys) == len(found) else ())

    def open(self, org_id: str, execution_id: UUID | str, field: str, value: Any) -> Any:
        """A recorded payload in clear; ``{"$erased": true}`` if a key of it is gone.

        A value that is not sealed (recorded in clear) is returned as it is,
        and so is a sealed one when this process has no keyring to open it.
        """
        if self.keyring is None or not is_sealed(value):
            return value
        keys = [self.keyring.find(key_id) for key_id in sealed_key_ids(value)]
        return open_value(value, keys, payload_context(org_id, execution_id, field))
