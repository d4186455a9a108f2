"""The ``reporunner`` CLI in a real subprocess against the test database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.auth import ApiKeyStore
from infrastructure.database import PgTarget, create_engine

ROOT = Path(__file__).resolve().parents[2]


def _url(target: PgTarget) -> str:
    return (
        target.sqlalchemy_url("psycopg")
        .render_as_string(hide_password=False)
        .replace("postgresql+psycopg", "postgresql")
    )


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
    ],
)
def test_bad_cli_input_exits_2_with_a_message(db_target: PgTarget, args: tuple[str, ...]) -> None:
    done = _cli(db_target, *args)
    assert done.returncode == 2
    assert done.stderr.strip()


def test_migrate_is_idempotent(db_target: PgTarget) -> None:
    done = _cli(db_target, "migrate")
    assert done.returncode == 0, done.stderr
    assert "0001" in done.stderr
