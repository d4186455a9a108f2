"""Data keys in PostgreSQL (``infrastructure/keyring.py``), on a database of their own.

Its own database: these tests wrap keys under masters of their own and count
every live key, which the run's shared database (one master key) must not see.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from infrastructure.crypto import MasterKey, MasterKeyError
from infrastructure.database import PgTarget
from infrastructure.keyring import ConnectionSource, KeyPurpose, Keyring
from tests.helpers import scratch_database


@pytest.fixture
def connect(server_target: PgTarget) -> Iterator[ConnectionSource]:
    with scratch_database(server_target, "reporunner_keyring") as target:
        yield lambda: psycopg.connect(target.conninfo(), row_factory=dict_row)


@pytest.fixture
def keyring(connect: ConnectionSource) -> Keyring:
    return Keyring(MasterKey.generate(), connect, 0)


def test_a_scope_has_one_key_made_on_first_use(keyring: Keyring, org: str) -> None:
    first = keyring.key_for(org, KeyPurpose.DAY, "2026-12-02")
    again = keyring.key_for(org, KeyPurpose.DAY, "2026-12-02")
    assert first is not None and again is not None
    assert (first.key_id, first.secret) == (again.key_id, again.secret)
    assert keyring.find(first.key_id) == first
    other_day = keyring.key_for(org, KeyPurpose.DAY, "2026-12-03")
    assert other_day is not None and other_day.secret != first.secret


def test_a_destroyed_key_is_gone_for_good(
    keyring: Keyring, connect: ConnectionSource, org: str
) -> None:
    scope = keyring.subject_scope(org, "customer-42")
    assert "customer-42" not in scope
    key = keyring.key_for(org, KeyPurpose.SUBJECT, scope)
    assert key is not None
    assert keyring.destroy(org, KeyPurpose.SUBJECT, scope, actor="owner") == key.key_id
    assert keyring.find(key.key_id) is None
    assert keyring.key_for(org, KeyPurpose.SUBJECT, scope) is None  # never re-keyed
    assert keyring.destroy(org, KeyPurpose.SUBJECT, scope, actor="owner") is None
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT wrapped, destroyed_by FROM data_keys WHERE key_id = %s", (key.key_id,))
        row = cur.fetchone()
    assert row["wrapped"] is None and row["destroyed_by"] == "owner"
    # Destroying a scope never used keeps it from being keyed later.
    assert keyring.destroy(org, KeyPurpose.SUBJECT, "unused", actor="owner") is not None
    assert keyring.key_for(org, KeyPurpose.SUBJECT, "unused") is None


def test_the_master_key_check_and_rotation(
    keyring: Keyring, connect: ConnectionSource, org: str
) -> None:
    org_key = keyring.org_key(org)
    assert keyring.check_master() == 1
    stranger = Keyring(MasterKey.generate(), connect, 0)
    with pytest.raises(MasterKeyError, match="not by the configured key"):
        stranger.check_master()
    new_master = MasterKey.generate()
    assert keyring.rewrap_all(new_master) == 1
    rotated = Keyring(new_master, connect, 0)
    assert rotated.check_master() == 1
    assert rotated.find(org_key.key_id) == org_key
