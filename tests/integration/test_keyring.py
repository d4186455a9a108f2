"""Data keys in PostgreSQL (``infrastructure/keyring.py``), on the real database."""

from __future__ import annotations

import pytest

from commands.application import WorkflowApplication
from infrastructure.crypto import MasterKey, MasterKeyError
from infrastructure.keyring import KeyPurpose, Keyring


@pytest.fixture
def keyring(workflow_app: WorkflowApplication) -> Keyring:
    return Keyring(MasterKey.generate(), workflow_app.event_store.datastore.get_connection, 0)


def _clear(workflow_app: WorkflowApplication) -> None:
    with workflow_app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM data_keys")
        conn.commit()


def test_a_scope_has_one_key_made_on_first_use(
    keyring: Keyring, workflow_app: WorkflowApplication, org: str
) -> None:
    _clear(workflow_app)
    first = keyring.key_for(org, KeyPurpose.DAY, "2026-12-02")
    again = keyring.key_for(org, KeyPurpose.DAY, "2026-12-02")
    assert first is not None and again is not None
    assert (first.key_id, first.secret) == (again.key_id, again.secret)
    assert keyring.find(first.key_id) == first
    other_day = keyring.key_for(org, KeyPurpose.DAY, "2026-12-03")
    assert other_day is not None and other_day.secret != first.secret


def test_a_destroyed_key_is_gone_for_good(
    keyring: Keyring, workflow_app: WorkflowApplication, org: str
) -> None:
    _clear(workflow_app)
    scope = keyring.subject_scope(org, "customer-42")
    assert "customer-42" not in scope
    key = keyring.key_for(org, KeyPurpose.SUBJECT, scope)
    assert key is not None
    assert keyring.destroy(org, KeyPurpose.SUBJECT, scope, actor="owner") == key.key_id
    assert keyring.find(key.key_id) is None
    assert keyring.key_for(org, KeyPurpose.SUBJECT, scope) is None  # never re-keyed
    assert keyring.destroy(org, KeyPurpose.SUBJECT, scope, actor="owner") is None
    with workflow_app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT wrapped, destroyed_by FROM data_keys WHERE key_id = %s", (key.key_id,))
        row = cur.fetchone()
    assert row["wrapped"] is None and row["destroyed_by"] == "owner"
    # Destroying a scope never used keeps it from being keyed later.
    assert keyring.destroy(org, KeyPurpose.SUBJECT, "unused", actor="owner") is not None
    assert keyring.key_for(org, KeyPurpose.SUBJECT, "unused") is None


def test_the_master_key_check_and_rotation(
    keyring: Keyring, workflow_app: WorkflowApplication, org: str
) -> None:
    _clear(workflow_app)
    org_key = keyring.org_key(org)
    assert keyring.check_master() == 1
    stranger = Keyring(MasterKey.generate(), workflow_app.event_store.datastore.get_connection, 0)
    with pytest.raises(MasterKeyError, match="not by the configured key"):
        stranger.check_master()
    new_master = MasterKey.generate()
    assert keyring.rewrap_all(new_master) == 1
    rotated = Keyring(new_master, workflow_app.event_store.datastore.get_connection, 0)
    assert rotated.check_master() == 1
    assert rotated.find(org_key.key_id) == org_key
