"""The audit chain against the real PostgreSQL: follow the log, verify it, tamper, export.

Verification walks the whole log, other tests' events included, so a test that
tampers puts every byte back (in ``finally``) before it ends, and works only on
events it wrote itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from commands import (
    CommandContext,
    CreateWorkflow,
    UpdateWorkflow,
    WorkflowApplication,
    WorkflowCommands,
)
from infrastructure.audit import canonical_event_bytes, next_link, verify_export
from infrastructure.auth import ApiKeyStore
from infrastructure.database import PgTarget, create_engine
from infrastructure.settings import Settings
from infrastructure.web import install_error_handlers
from projections.audit_chain import AuditChainFollower, export_org, verify_log
from read_api.audit import router as audit_router
from reporunner.wiring import create_workflow_application
from tests.conftest import key_maker
from tests.helpers import scratch_database, workflow_body

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-test-audit-key"
EVERY = 5  # a checkpoint every 5 events, so a few workflows span several
TAMPERED_TABLES = ("reporunner_events", "audit_chain", "audit_chain_checkpoints")


# The chain covers the whole log, so this module has a database of its own:
# in the shared one, another module's service (with its own audit follower and
# key) may chain events first.
@pytest.fixture(scope="module")
def db_target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_audit") as target:
        yield target


@pytest.fixture(scope="module")
def workflow_app(db_target: PgTarget, app_settings: Settings) -> Iterator[WorkflowApplication]:
    app = create_workflow_application(db_target, app_settings)
    yield app
    app.close()


@pytest.fixture(scope="module")
def commands(workflow_app: WorkflowApplication) -> WorkflowCommands:
    return WorkflowCommands(workflow_app)


@pytest.fixture(scope="module")
def make_key(db_target: PgTarget) -> Callable[[str, str], str]:
    return key_maker(db_target)


@pytest.fixture(scope="module")
def follower(db_target: PgTarget) -> AuditChainFollower:
    # Batches of 7 against checkpoints every 5: checkpoints fall inside batches too.
    return AuditChainFollower(db_target, key=KEY, checkpoint_every=EVERY, batch_size=7)


def _chain(follower: AuditChainFollower) -> int:
    with follower.connect() as conn:
        return follower.catch_up(conn)


def _ctx(org: str) -> CommandContext:
    return CommandContext(org_id=org, actor="apikey:audit-test", correlation_id="corr-audit")


def _workflow(
    commands: WorkflowCommands, org: str, updates: int = 0, name: str = "wf"
) -> list[int]:
    """Create a workflow and update it; the log positions of its events."""
    created = commands.create(CreateWorkflow(**workflow_body(name=name)), _ctx(org))
    positions = [created.position]
    for version in range(1, updates + 1):
        updated = commands.update(
            created.workflow_id, UpdateWorkflow(description=f"edit {version}"), version, _ctx(org)
        )
        positions.append(updated.position)
    return positions


@contextmanager
def _tampering(target: PgTarget) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A superuser connection with the append-only triggers off, on again afterwards."""
    with psycopg.connect(target.conninfo(), autocommit=True, row_factory=dict_row) as conn:
        for table in TAMPERED_TABLES:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        try:
            yield conn
        finally:
            for table in TAMPERED_TABLES:
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def _event(conn: psycopg.Connection[dict[str, Any]], position: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        "FROM reporunner_events WHERE notification_id = %s",
        (position,),
    ).fetchone()
    assert row is not None
    return row


def _put_back(conn: psycopg.Connection[dict[str, Any]], event: dict[str, Any]) -> None:
    """Make the row at the event's position exactly the saved one again."""
    conn.execute(
        "DELETE FROM reporunner_events WHERE notification_id = %s", (event["notification_id"],)
    )
    _insert(conn, event)


def _insert(conn: psycopg.Connection[dict[str, Any]], event: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO reporunner_events "
        "(notification_id, originator_id, originator_version, topic, state) "
        "VALUES (%(notification_id)s, %(originator_id)s, %(originator_version)s, "
        "%(topic)s, %(state)s)",
        event,
    )


# -- following and verifying ------------------------------------------------------------


def test_the_follower_chains_the_whole_log_once_and_verify_agrees(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    for _ in range(3):
        _workflow(commands, org, updates=3)
    _chain(follower)
    assert _chain(follower) == 0  # nothing twice
    with psycopg.connect(db_target.conninfo()) as conn:
        events, head = conn.execute(
            "SELECT count(*), max(notification_id) FROM reporunner_events"
        ).fetchone() or (0, 0)
        links = conn.execute("SELECT count(*) FROM audit_chain").fetchone()
        checkpoints = conn.execute("SELECT count(*) FROM audit_chain_checkpoints").fetchone()
        tracking = conn.execute(
            "SELECT position FROM projection_tracking WHERE name = 'audit-chain'"
        ).fetchone()
    assert links == (events,) and checkpoints == (events // EVERY,) and tracking == (head,)

    result = verify_log(db_target, KEY)
    assert result.ok, result.reason
    assert (result.events, result.unchained, result.head_position) == (events, 0, head)
    assert result.checkpoints == events // EVERY and result.signed and result.warning is None


def test_events_the_follower_has_not_reached_are_reported_not_failed(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    _chain(follower)
    _workflow(commands, org, updates=1)
    result = verify_log(db_target, KEY)
    assert result.ok and result.unchained == 2
    _chain(follower)
    assert verify_log(db_target, KEY).unchained == 0


def test_without_the_key_verify_says_nothing_was_signature_checked(
    follower: AuditChainFollower, db_target: PgTarget
) -> None:
    _chain(follower)
    result = verify_log(db_target, None)
    assert result.ok and not result.signed
    assert "signatures were not checked" in (result.warning or "")


def test_the_wrong_key_fails_on_the_first_signature(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    _workflow(commands, org, updates=EVERY)
    _chain(follower)
    result = verify_log(db_target, "not-the-key")
    assert not result.ok and result.problem == "signature"


# -- tampering ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, change",
    [
        ("state", lambda event: event["state"] + b" "),
        ("topic", lambda event: "domain.workflow:Workflow.Deleted"),
        ("originator_version", lambda event: event["originator_version"] + 1000),
        ("originator_id", lambda event: uuid.uuid4()),
    ],
)
def test_an_altered_column_is_found_at_its_position(
    follower: AuditChainFollower,
    commands: WorkflowCommands,
    db_target: PgTarget,
    org: str,
    column: str,
    change: Callable[[dict[str, Any]], Any],
) -> None:
    positions = _workflow(commands, org, updates=2)
    _chain(follower)
    altered = positions[1]
    with _tampering(db_target) as conn:
        original = _event(conn, altered)
        try:
            conn.execute(
                f"UPDATE reporunner_events SET {column} = %s WHERE notification_id = %s",
                (change(original), altered),
            )
            result = verify_log(db_target, KEY)
        finally:
            _put_back(conn, original)
    assert not result.ok
    assert (result.problem, result.position) == ("altered", altered), result.reason
    assert verify_log(db_target, KEY).ok


def test_a_deleted_event_is_found_at_its_position(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    positions = _workflow(commands, org, updates=2)
    _chain(follower)
    deleted = positions[1]
    with _tampering(db_target) as conn:
        original = _event(conn, deleted)
        try:
            conn.execute("DELETE FROM reporunner_events WHERE notification_id = %s", (deleted,))
            result = verify_log(db_target, KEY)
        finally:
            _put_back(conn, original)
    assert (result.ok, result.problem, result.position) == (False, "deleted", deleted)
    assert verify_log(db_target, KEY).ok


def test_a_gap_is_no_evidence_but_a_row_forged_into_it_is(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    with psycopg.connect(db_target.conninfo(), autocommit=True) as conn:
        # What a rolled-back insert leaves: a position no event will ever have.
        row = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('reporunner_events', 'notification_id'))"
        ).fetchone()
    assert row is not None
    gap = int(row[0])
    _workflow(commands, org, updates=1)
    _chain(follower)
    assert verify_log(db_target, KEY).ok

    forged = {
        "notification_id": gap,
        "originator_id": uuid.uuid4(),
        "originator_version": 1,
        "topic": "domain.workflow:Workflow.Created",
        "state": b'{"meta":{"org_id":"' + org.encode() + b'"}}',
    }
    with _tampering(db_target) as conn:
        try:
            _insert(conn, forged)
            result = verify_log(db_target, KEY)
        finally:
            conn.execute("DELETE FROM reporunner_events WHERE notification_id = %s", (gap,))
    assert (result.ok, result.problem, result.position) == (False, "inserted", gap)
    assert verify_log(db_target, KEY).ok


def test_events_rewritten_with_their_links_are_caught_by_the_next_checkpoint(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    """Someone without the key recomputes every link after their edit: the signed
    checkpoint after it no longer matches, and bounds where the edit is."""
    positions = _workflow(commands, org, updates=2 * EVERY)
    _chain(follower)
    altered = positions[2]
    with _tampering(db_target) as conn:
        original = _event(conn, altered)
        saved_links = conn.execute(
            "SELECT position, link FROM audit_chain WHERE position >= %s", (altered,)
        ).fetchall()
        saved_head = conn.execute("SELECT link FROM audit_chain_head").fetchone()
        checkpoint = conn.execute(
            "SELECT min(position) AS after_edit FROM audit_chain_checkpoints WHERE position >= %s",
            (altered,),
        ).fetchone()
        good = conn.execute(
            "SELECT coalesce(max(position), 0) AS before_edit FROM audit_chain_checkpoints "
            "WHERE position < %s",
            (altered,),
        ).fetchone()
        try:
            conn.execute(
                "UPDATE reporunner_events SET state = %s WHERE notification_id = %s",
                (original["state"] + b" ", altered),
            )
            _recompute_links_from(conn, altered)
            result = verify_log(db_target, KEY)
        finally:
            _put_back(conn, original)
            for saved in saved_links:
                conn.execute(
                    "UPDATE audit_chain SET link = %(link)s WHERE position = %(position)s", saved
                )
            conn.execute("UPDATE audit_chain_head SET link = %(link)s", saved_head)
    assert checkpoint is not None and good is not None
    assert not result.ok and result.problem == "rewritten", result.reason
    assert (result.after, result.position) == (good["before_edit"], checkpoint["after_edit"])
    assert result.after is not None and result.position is not None
    assert result.after < altered <= result.position
    assert verify_log(db_target, KEY).ok


def _recompute_links_from(conn: psycopg.Connection[dict[str, Any]], position: int) -> None:
    previous = conn.execute(
        "SELECT link FROM audit_chain WHERE position < %s ORDER BY position DESC LIMIT 1",
        (position,),
    ).fetchone()
    link = previous["link"] if previous else bytes(32)
    for event in conn.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        "FROM reporunner_events WHERE notification_id >= %s ORDER BY notification_id",
        (position,),
    ).fetchall():
        link = next_link(
            link,
            canonical_event_bytes(
                event["notification_id"],
                event["originator_id"].bytes,
                event["originator_version"],
                event["topic"].encode(),
                event["state"],
            ),
        )
        conn.execute(
            "UPDATE audit_chain SET link = %s WHERE position = %s",
            (link, event["notification_id"]),
        )
    conn.execute("UPDATE audit_chain_head SET link = %s", (link,))


def test_a_checkpoint_forged_without_the_key_is_found(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    _workflow(commands, org, updates=EVERY)
    _chain(follower)
    with _tampering(db_target) as conn:
        checkpoint = conn.execute(
            "SELECT position, hmac FROM audit_chain_checkpoints ORDER BY position DESC LIMIT 1"
        ).fetchone()
        assert checkpoint is not None
        try:
            conn.execute(
                "UPDATE audit_chain_checkpoints SET hmac = %s WHERE position = %s",
                (bytes(32), checkpoint["position"]),
            )
            signed = verify_log(db_target, KEY)
            unsigned = verify_log(db_target, None)
        finally:
            conn.execute(
                "UPDATE audit_chain_checkpoints SET hmac = %(hmac)s WHERE position = %(position)s",
                checkpoint,
            )
    assert (signed.ok, signed.problem, signed.position) == (
        False,
        "signature",
        checkpoint["position"],
    )
    # Without the key a forged signature cannot be told from a real one, and verify says so.
    assert unsigned.ok and unsigned.warning
    assert verify_log(db_target, KEY).ok


# -- the CLI --------------------------------------------------------------------------


def _url(target: PgTarget) -> str:
    return target.url()


def _audit_cli(target: PgTarget, *args: str) -> subprocess.CompletedProcess[str]:
    from reporunner.cli import app

    registered = any(group.name == "audit" for group in app.registered_groups)
    # `reporunner audit ...` once reporunner/cli.py registers audit_app; the same app until then.
    command = ["-m", "reporunner", "audit"] if registered else ["-m", "reporunner.audit_cli"]
    env = {
        **os.environ,
        "DATABASE_URL": _url(target),
        "REPORUNNER_AUDIT_KEY": KEY,
        "REPORUNNER_AUDIT_CHECKPOINT_EVERY": str(EVERY),
        "REPORUNNER_LOG_FORMAT": "json",
    }
    return subprocess.run(
        [sys.executable, *command, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_verify_exits_1_on_a_tampered_log(
    follower: AuditChainFollower, commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    altered = _workflow(commands, org, updates=1)[1]
    done = _audit_cli(db_target, "catch-up")
    assert done.returncode == 0, done.stderr
    done = _audit_cli(db_target, "verify", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    with _tampering(db_target) as conn:
        original = _event(conn, altered)
        try:
            conn.execute(
                "UPDATE reporunner_events SET state = %s WHERE notification_id = %s",
                (original["state"].replace(b"edit 1", b"edit 9"), altered),
            )
            done = _audit_cli(db_target, "verify")
        finally:
            _put_back(conn, original)
    assert done.returncode == 1
    assert f"altered at position {altered}" in " ".join(done.stderr.split())


def test_cli_export_and_verify_export(
    follower: AuditChainFollower,
    commands: WorkflowCommands,
    db_target: PgTarget,
    org: str,
    tmp_path: Path,
) -> None:
    positions = _workflow(commands, org, updates=2)
    _chain(follower)
    out = tmp_path / "export.jsonl"
    done = _audit_cli(db_target, "export", "--org", org, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "MB/s" in done.stderr
    assert [json.loads(line)["position"] for line in out.read_text().splitlines()[:-1]] == positions
    assert _audit_cli(db_target, "verify-export", str(out)).returncode == 0
    content = out.read_bytes()
    out.write_bytes(content.replace(b"edit 2", b"edit 3", 1))
    done = _audit_cli(db_target, "verify-export", str(out))
    assert done.returncode == 1 and "line 3" in done.stderr
    bad = _audit_cli(db_target, "export", "--org", org, "--out", str(out), "--since", "yesterday")
    assert bad.returncode == 2


# -- export ---------------------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_an_export_round_trips_with_since_and_until(
    follower: AuditChainFollower,
    commands: WorkflowCommands,
    db_target: PgTarget,
    org: str,
    tmp_path: Path,
) -> None:
    mine = _workflow(commands, org, updates=4)
    _workflow(commands, f"{org}-other", updates=1)
    _chain(follower)

    everything = tmp_path / "all.jsonl"
    result = export_org(db_target, org, None, None, everything, KEY)
    *events, closing = _lines(everything)
    assert result.count == 5 and [event["position"] for event in events] == mine
    assert [event["type"] for event in events] == ["Workflow.Created"] + ["Workflow.Updated"] * 4
    assert {(e["org_id"], e["actor"], e["correlation_id"]) for e in events} == {
        (org, "apikey:audit-test", "corr-audit")
    }
    assert events[2]["data"]["changes"] == {"description": "edit 2"}
    with psycopg.connect(db_target.conninfo()) as conn:
        links: dict[int, bytes] = dict(
            conn.execute(
                "SELECT position, link FROM audit_chain WHERE position = ANY(%s)", (mine,)
            ).fetchall()
        )
    assert [event["link"] for event in events] == [bytes(links[p]).hex() for p in mine]
    manifest = closing["manifest"]
    assert (manifest["count"], manifest["first_position"], manifest["last_position"]) == (
        5,
        mine[0],
        mine[-1],
    )
    assert manifest["chain_head"] == events[-1]["link"] and manifest["org_id"] == org
    assert verify_export(everything, KEY).ok

    # since is inclusive, until exclusive: the 2nd and 3rd events.
    since = datetime.fromisoformat(events[1]["timestamp"])
    until = datetime.fromisoformat(events[3]["timestamp"])
    window = tmp_path / "window.jsonl"
    export_org(db_target, org, since, until, window, KEY)
    *window_events, window_closing = _lines(window)
    assert [event["position"] for event in window_events] == mine[1:3]
    assert window_closing["manifest"]["since"] == since.isoformat()
    assert window_closing["manifest"]["until"] == until.isoformat()
    assert verify_export(window, KEY).ok

    content = window.read_bytes()
    first_line_end = content.index(b"\n")
    window.write_bytes(content.replace(b"edit 2", b"edit 7", 1))
    assert content.index(b"edit 2") > first_line_end  # the edit is on line 2
    check = verify_export(window, KEY)
    assert (check.ok, check.line) == (False, 2)
    window.write_bytes(content)
    assert not verify_export(window, "not-the-key").ok


def test_an_export_holds_no_other_organisations_events(
    follower: AuditChainFollower,
    commands: WorkflowCommands,
    db_target: PgTarget,
    org: str,
    tmp_path: Path,
) -> None:
    mine = _workflow(commands, org, updates=1)
    # An org whose id starts with ours, and an event of another org naming ours.
    _workflow(commands, f"{org}-eu", updates=1)
    _workflow(commands, f"x{org}", name=org)
    _chain(follower)
    out = tmp_path / "mine.jsonl"
    export_org(db_target, org, None, None, out, KEY)
    *events, _ = _lines(out)
    assert [event["position"] for event in events] == mine
    assert {event["org_id"] for event in events} == {org}


# -- the HTTP endpoint ----------------------------------------------------------------


def test_the_verify_endpoint_is_for_owners_and_auditors(
    follower: AuditChainFollower,
    db_target: PgTarget,
    org: str,
    make_key: Callable[[str, str], str],
) -> None:
    _chain(follower)
    auditor, viewer = make_key(org, "auditor"), make_key(org, "viewer")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(db_target, pool_size=1)
        app.state.engine = engine
        app.state.pg_target = db_target
        app.state.settings = Settings(database_url=None, audit_key=KEY)
        app.state.api_keys = ApiKeyStore(engine)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app, {})
    app.include_router(audit_router)
    with TestClient(app) as client:
        answer = client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {auditor}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["ok"] is True and body["signed"] is True and body["events"] > 0
        refused = client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {viewer}"})
        assert refused.status_code == 403
