"""Data keys in PostgreSQL, wrapped by the master key (``infrastructure/crypto.py``).

Table ``data_keys`` (migration 0014) holds one row per data key: its
organisation, its purpose and scope, and the key wrapped by the master key
(``wrapped``), with the id of the master key that wrapped it. Purposes:

- ``org``: the organisation's key (scope ``""``): credentials' secrets.
- ``day``: one per organisation and UTC day (scope ``YYYY-MM-DD``): execution
  payloads, destroyed by retention.
- ``pin``: one per pinned execution (scope: the execution id): the payload a
  pin keeps past retention, destroyed when it is unpinned.
- ``subject``: one per data subject (scope: a keyed digest of the subject's id
  under the organisation key, so the table never names a person): destroyed by
  erasure.

Destroying a key sets ``wrapped`` to NULL and records who and when; nothing
sealed under it opens again. The log and the views keep only ciphertext and
key ids, never a data key.

``Keyring`` talks psycopg (the write side, workers, CLI) and ``AsyncKeyring``
SQLAlchemy on asyncpg (the read API); both cache unwrapped keys in memory for
``cache_seconds`` so a hot path is not a query per value. A destroyed key stays
usable in *another* process's cache for at most that long (README: Erasure).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.crypto import (
    MasterKey,
    MasterKeyError,
    keyed_digest,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)

CACHE_SECONDS = 10.0
CACHE_ENTRIES = 10_000


class KeyPurpose(StrEnum):
    ORG = "org"
    DAY = "day"
    SUBJECT = "subject"
    PIN = "pin"


@dataclass(frozen=True, repr=False)
class DataKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r})"


# Psycopg connections with dict rows (eventsourcing's datastore hands these out).
ConnectionSource = Callable[[], AbstractContextManager[Any]]

_FIND = "SELECT key_id, wrapped FROM data_keys WHERE key_id = %s"
_FIND_SCOPED = (
    "SELECT key_id, wrapped FROM data_keys WHERE org_id = %s AND purpose = %s AND scope = %s"
)
_INSERT = (
    "INSERT INTO data_keys (key_id, org_id, purpose, scope, wrapped, master_key_id) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (org_id, purpose, scope) DO NOTHING"
)


class _KeyCache:
    """Unwrapped keys by id, for a few seconds, bounded; thread-safe."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._keys: OrderedDict[str, tuple[float, DataKey]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: str) -> DataKey | None:
        with self._lock:
            held = self._keys.get(key_id)
            if held is None:
                return None
            if held[0] < time.monotonic():
                del self._keys[key_id]
                return None
            return held[1]

    def put(self, key: DataKey) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            self._keys[key.key_id] = (time.monotonic() + self.seconds, key)
            self._keys.move_to_end(key.key_id)
            while len(self._keys) > CACHE_ENTRIES:
                self._keys.popitem(last=False)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._keys.pop(key_id, None)


def _unwrapped(master: MasterKey, key_id: str, wrapped: bytes | None) -> DataKey | None:
    if wrapped is None:
        return None  # destroyed
    return DataKey(key_id, unwrap_data_key(master, key_id, bytes(wrapped)))


class Keyring:
    """Data keys over psycopg: find, create, destroy, re-wrap."""

    def __init__(
        self, master: MasterKey, connect: ConnectionSource, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.master = master
        self._connect = connect
        self._cache = _KeyCache(cache_seconds)

    def find(self, key_id: str) -> DataKey | None:
        """The key with this id; None if it was destroyed or never existed."""
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(_FIND, (key_id,))
            row = cur.fetchone()
        key = None if row is None else _unwrapped(self.master, key_id, row["wrapped"])
        if key is not None:
            self._cache.put(key)
        return key

    def key_for(self, org_id: str, purpose: KeyPurpose, scope: str = "") -> DataKey | None:
        """The organisation's key for this purpose and scope, made on first use;
        None if it was destroyed (a destroyed scope is never re-keyed)."""
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(_FIND_SCOPED, (org_id, purpose.value, scope))
            row = cur.fetchone()
            if row is None:
                key_id = str(uuid.uuid4())
                wrapped = wrap_data_key(self.master, key_id, new_data_key())
                cur.execute(
                    _INSERT, (key_id, org_id, purpose.value, scope, wrapped, self.master.key_id)
                )
                # Another process may have made it first: read whichever won.
                cur.execute(_FIND_SCOPED, (org_id, purpose.value, scope))
                row = cur.fetchone()
            conn.commit()
        key = _unwrapped(self.master, str(row["key_id"]), row["wrapped"])
        if key is not None:
            self._cache.put(key)
        return key

    def org_key(self, org_id: str) -> DataKey:
        key = self.key_for(org_id, KeyPurpose.ORG)
        assert key is not None, "organisation keys are never destroyed"
        return key

    def subject_scope(self, org_id: str, subject: str) -> str:
        """The ``scope`` naming a data subject: a digest under the organisation key."""
        return keyed_digest(self.org_key(org_id).secret, "data subject", subject)

    def destroy(self, org_id: str, purpose: KeyPurpose, scope: str, actor: str) -> str | None:
        """Destroy the key of this scope (made destroyed if it never existed, so
        nothing is sealed under it later); its id, or None if it was already gone."""
        if purpose is KeyPurpose.ORG:
            raise ValueError("an organisation's own key is not destroyed this way")
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO data_keys (key_id, org_id, purpose, scope, wrapped, master_key_id, "
                "destroyed_at, destroyed_by) VALUES (%s, %s, %s, %s, NULL, %s, now(), %s) "
                "ON CONFLICT (org_id, purpose, scope) DO UPDATE SET wrapped = NULL, "
                "destroyed_at = now(), destroyed_by = excluded.destroyed_by "
                "WHERE data_keys.wrapped IS NOT NULL RETURNING key_id",
                (str(uuid.uuid4()), org_id, purpose.value, scope, self.master.key_id, actor),
            )
            row = cur.fetchone()
            conn.commit()
        if row is None:
            return None
        key_id = str(row["key_id"])
        self._cache.forget(key_id)
        return key_id

    def check_master(self) -> int:
        """Raise ``MasterKeyError`` unless this master key wrapped every live data key;
        the number of live keys. Run at start: a wrong key must stop the service."""
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT master_key_id, count(*) AS n, min(key_id::text) AS sample "
                "FROM data_keys WHERE wrapped IS NOT NULL GROUP BY master_key_id"
            )
            groups = cur.fetchall()
            foreign = [
                g["master_key_id"] for g in groups if g["master_key_id"] != self.master.key_id
            ]
            if foreign:
                raise MasterKeyError(
                    f"the data keys were wrapped by master key {', '.join(sorted(foreign))}, "
                    f"not by the configured key {self.master.key_id}"
                )
            if groups:
                cur.execute(_FIND, (groups[0]["sample"],))
                row = cur.fetchone()
                _unwrapped(self.master, str(row["key_id"]), row["wrapped"])
        return sum(int(g["n"]) for g in groups)

    def rewrap_all(
        self, new_master: MasterKey, progress: Callable[[int], None] | None = None
    ) -> int:
        """Re-wrap every live data key under ``new_master`` in one transaction (all or
        nothing); the number re-wrapped. Sealed values are untouched."""
        count = 0
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT key_id, wrapped FROM data_keys WHERE wrapped IS NOT NULL FOR UPDATE"
            )
            rows = cur.fetchall()
            for row in rows:
                key_id = str(row["key_id"])
                secret = unwrap_data_key(self.master, key_id, bytes(row["wrapped"]))
                cur.execute(
                    "UPDATE data_keys SET wrapped = %s, master_key_id = %s WHERE key_id = %s",
                    (wrap_data_key(new_master, key_id, secret), new_master.key_id, key_id),
                )
                count += 1
                if progress is not None:
                    progress(1)
            conn.commit()
        self.master = new_master
        return count


class AsyncKeyring:
    """Finding data keys over SQLAlchemy/asyncpg, for the read API's decryption."""

    def __init__(
        self, master: MasterKey, engine: AsyncEngine, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.master = master
        self._engine = engine
        self._cache = _KeyCache(cache_seconds)

    async def find(self, key_id: str) -> DataKey | None:
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        try:
            uuid.UUID(key_id)
        except ValueError:
            return None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT wrapped FROM data_keys WHERE key_id = CAST(:key_id AS uuid)"),
                    {"key_id": key_id},
                )
            ).first()
        key = None if row is None else _unwrapped(self.master, key_id, row.wrapped)
        if key is not None:
            self._cache.put(key)
        return key

    def forget(self, key_id: str) -> None:
        self._cache.forget(key_id)


MASTER_KEY_FILE = "master-key"


def load_master_key(settings: Any) -> MasterKey | None:
    """The configured master key: ``REPORUNNER_MASTER_KEY``, else the file
    ``REPORUNNER_MASTER_KEY_FILE`` names, else (embedded database only) the key
    kept under the data directory, generated on first start. None with an
    external database and no key. ``MasterKeyError`` for a malformed key or an
    unreadable file: the caller stops the service (exit 2)."""
    if settings.master_key is not None:
        return MasterKey.parse(settings.master_key.get_secret_value())
    if settings.master_key_file is not None:
        try:
            return MasterKey.parse(settings.master_key_file.read_text())
        except OSError as error:
            raise MasterKeyError(
                f"cannot read REPORUNNER_MASTER_KEY_FILE {settings.master_key_file}: "
                f"{error.strerror}"
            ) from None
    if settings.database_url is not None:
        return None
    return _embedded_master_key(settings.data_dir / MASTER_KEY_FILE)


def _embedded_master_key(path: Any) -> MasterKey:
    """The embedded database's key file, made (owner-only) on first start."""
    import structlog

    if path.exists():
        return MasterKey.parse(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = MasterKey.generate()
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return MasterKey.parse(path.read_text())
    with os.fdopen(fd, "w") as out:
        out.write(key.encoded() + "\n")
    structlog.get_logger("reporunner.keys").warning(
        "generated a master key for the embedded database; back it up with the data: "
        "without it no credential or execution payload can be read",
        path=str(path),
        master_key_id=key.key_id,
    )
    return key
