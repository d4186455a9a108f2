"""The ``reporunner`` CLI in a real subprocess against the test database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infrastructure.auth import ApiKeyStore
from infrastructure.database import PgTarget, create_engine
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _url(target: PgTarget) -> str:
    return target.url()


def _cli(target: PgTarget, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": _url(target), "REPORUNNER_LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "reporunner", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_create_prints_the_key_alone_on_the_last_line(db_target: PgTarget, org: str) -> None:
    done = _cli(db_target, "keys", "create", "--org", org, "--role", "viewer", "--name", "ci")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("rr_") and " " not in key

    async def authenticate() -> object:
        engine = create_engine(db_target, pool_size=1)
        try:
            return await ApiKeyStore(engine).authenticate(key)
        finally:
            await engine.dispose()

    principal = asyncio.run(authenticate())
    assert principal is not None
    assert principal.org_id == org and principal.role == "viewer"  # type: ignore[attr-defined]

    listed = _cli(db_target, "keys", "list", "--org", org)
    assert listed.returncode == 0 and org in listed.stdout and "viewer" in listed.stdout
    assert key not in listed.stdout  # secrets are never shown again

    key_id = str(principal.key_id)  # type: ignore[attr-defined]
    assert _cli(db_target, "keys", "revoke", key_id).returncode == 0
    assert asyncio.run(authenticate()) is None
    assert _cli(db_target, "keys", "revoke", key_id).returncode == 1


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "--org", "Bad Org!", "--role", "owner"),
        ("keys", "create", "--org", "ok", "--role", "emperor"),
        ("keys", "revoke", "not-a-uuid"),
        ("serve", "--port", "0"),
        ("serve", "--workers", "0"),
    ],
)
def test_bad_cli_input_exits_2_with_a_message(db_target: PgTarget, args: tuple[str, ...]) -> None:
    done = _cli(db_target, *args)
    assert done.returncode == 2
    assert done.stderr.strip()


def test_bad_settings_exit_2_naming_each_variable(db_target: PgTarget) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": _url(db_target),
        "REPORUNNER_ROLES": "write-api,bogus",
        "REPORUNNER_COMMAND_THREADS": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "reporunner", "serve", "--workers", "2"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "REPORUNNER_ROLES" in done.stderr and "bogus" in done.stderr
    assert "REPORUNNER_COMMAND_THREADS" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_no_migrate_refuses_an_unmigrated_database(server_target: PgTarget) -> None:
    import uuid

    name = f"reporunner_unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_target.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        done = _cli(server_target.with_dbname(name), "serve", "--no-migrate", "--port", "1")
    finally:
        with psycopg.connect(server_target.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert done.returncode == 2
    assert "run `reporunner migrate`" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_migrate_is_idempotent(db_target: PgTarget) -> None:
    done = _cli(db_target, "migrate")
    assert done.returncode == 0, done.stderr
    import migrations

    assert migrations.head_revision() in done.stderr
    assert migrations.current_revision(db_target) == migrations.head_revision()


def test_projections_status_rebuild_verify(db_target: PgTarget) -> None:
    rebuilt = _cli(db_target, "projections", "rebuild", "workflows")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt workflows up to position" in rebuilt.stderr
    status = _cli(db_target, "projections", "status")
    assert status.returncode == 0, status.stderr
    assert "workflows" in status.stdout and "lag" in status.stdout
    verified = _cli(db_target, "projections", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "ok workflows" in verified.stderr
    unknown = _cli(db_target, "projections", "rebuild", "nope")
    assert unknown.returncode == 2 and "no projection 'nope'" in unknown.stderr


def test_verify_exits_1_when_a_view_differs(db_target: PgTarget, org: str) -> None:
    import psycopg

    assert _cli(db_target, "projections", "rebuild").returncode == 0
    with psycopg.connect(db_target.conninfo()) as conn:
        conn.execute(
            "INSERT INTO doc_workflows (_id, org_id, data, _version, _position, created, updated) "
            "VALUES (%s, %s, '{}', 1, 1, now(), now())",
            (f"forged-{org}", org),
        )
    verified = _cli(db_target, "projections", "verify")
    assert verified.returncode == 1
    assert f"forged-{org}" in verified.stderr and "DIFFERS" in verified.stderr
    assert _cli(db_target, "projections", "rebuild").returncode == 0
    assert _cli(db_target, "projections", "verify").returncode == 0


def test_serve_runs_write_read_and_projections_in_one_process(
    db_target: PgTarget, org: str, make_key: Any
) -> None:
    import time

    import httpx

    port = free_port()
    # With REDIS_URL the relay runs too: on streams of this test's own, removed after.
    bus_prefix = f"reporunner-test-cli-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DATABASE_URL": _url(db_target),
        "REPORUNNER_LOG_FORMAT": "json",
        "REPORUNNER_BUS_PREFIX": bus_prefix,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "reporunner", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {make_key(org, 'owner')}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.1)
        created = httpx.post(
            base + "/v1/workflows",
            json={
                "name": "e2e",
                "nodes": [{"id": "s", "type": "manual_trigger", "parameters": {}}],
            },
            headers=headers,
        ).json()
        read = httpx.get(
            f"{base}/v1/workflows/{created['id']}",
            headers={**headers, "X-Min-Position": str(created["position"])},
            timeout=10,
        )
        assert read.status_code == 200, read.text
        assert read.json()["name"] == "e2e"
        # The in-process worker runs an async execution, and every follower
        # of the log (views, workflow runs, audit chain) passes its position.
        queued = httpx.post(
            f"{base}/v1/workflows/{created['id']}/executions",
            json={"mode": "async"},
            headers=headers,
        ).json()
        execution = httpx.get(
            f"{base}/v1/executions/{queued['execution_id']}",
            headers={**headers, "X-Min-Position": str(queued["position"])},
            timeout=10,
        ).json()
        while execution["status"] != "succeeded":
            assert time.monotonic() < deadline + 30, execution
            time.sleep(0.1)
            execution = httpx.get(
                f"{base}/v1/executions/{queued['execution_id']}", headers=headers
            ).json()
        with psycopg.connect(db_target.conninfo()) as conn:
            while True:
                rows = dict(
                    conn.execute(
                        "SELECT name, position FROM projection_tracking "
                        "WHERE name IN ('workflow-runs', 'audit-chain')"
                    ).fetchall()
                )
                if len(rows) == 2 and min(rows.values()) > queued["position"]:
                    break
                assert time.monotonic() < deadline + 60, rows
                time.sleep(0.1)
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
        if os.environ.get("REDIS_URL"):
            import redis

            with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
                keys = list(client.scan_iter(match=f"{bus_prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)
    assert "projector active" in output or "service roles" in output
