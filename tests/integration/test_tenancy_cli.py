"""``reporunner keys``: the CLI makes platform_admin keys and keys with expiry, on the
same records as the API, and records the same events (actor ``cli``)."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from commands import WorkflowApplication
from commands.history import History
from commands.tenancy import ApiKeyCommands
from infrastructure.auth import ApiKeyStore, Principal, Role
from infrastructure.database import PgTarget, create_engine
from infrastructure.settings import Settings
from reporunner.wiring import create_workflow_application
from tests.helpers import scratch_database
from tests.integration.test_cli import _cli


def _authenticate(target: PgTarget, key: str) -> Principal | None:
    async def run() -> Principal | None:
        engine = create_engine(target, pool_size=1)
        try:
            return await ApiKeyStore(engine).authenticate(key)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_cli_makes_a_platform_admin_key_with_expiry_and_records_its_events(
    db_target: PgTarget, workflow_app: WorkflowApplication
) -> None:
    org = f"platform-{uuid.uuid4().hex[:8]}"
    expires = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    done = _cli(
        db_target,
        *("keys", "create", "--org", org, "--role", "platform_admin", "--name", "ops"),
        *("--expires-at", expires.isoformat()),
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    principal = _authenticate(db_target, key)
    assert principal is not None and principal.role == Role.PLATFORM_ADMIN
    assert principal.expires_at == expires

    assert _cli(db_target, "keys", "revoke", str(principal.key_id)).returncode == 0
    assert _authenticate(db_target, key) is None
    events = History(workflow_app).org_events(org, after_position=0, limit=10)
    assert [(e.type, e.actor) for e in events] == [
        ("ApiKey.Created", "cli"),
        ("ApiKey.Revoked", "cli"),
    ]
    assert key not in str([e.as_json() for e in events])  # never the secret


@pytest.mark.parametrize("expires_at", ["2027-01-01T00:00:00", "2001-01-01T00:00:00+00:00", "soon"])
def test_a_naive_past_or_unreadable_expiry_exits_2(db_target: PgTarget, expires_at: str) -> None:
    done = _cli(
        db_target,
        *("keys", "create", "--org", "acme", "--role", "viewer", "--expires-at", expires_at),
    )
    assert done.returncode == 2 and "--expires-at" in done.stderr


def test_the_first_start_key_is_recorded_once_even_when_first_starts_race(
    server_target: PgTarget, app_settings: Settings
) -> None:
    # A database of its own: the first key is made only while no key exists at all.
    with scratch_database(server_target, "reporunner_first_key") as target:
        apps = [create_workflow_application(target, app_settings) for _ in range(4)]
        try:
            with ThreadPoolExecutor(len(apps)) as pool:
                made = list(
                    pool.map(lambda app: ApiKeyCommands(app).create_first_owner_key(), apps)
                )
            (first,) = [m for m in made if m is not None]
            info, plaintext = first
            principal = _authenticate(target, plaintext)
            assert principal is not None
            assert (principal.org_id, principal.role) == ("default", Role.OWNER)
            events = History(apps[0]).org_events("default", after_position=0, limit=10)
            assert [(e.type, e.actor) for e in events] == [("ApiKey.Created", "first-start")]
            assert events[0].as_json()["aggregate_id"] == str(info.id)
            assert plaintext not in str([e.as_json() for e in events])
            assert ApiKeyCommands(apps[0]).create_first_owner_key() is None
        finally:
            for app in apps:
                app.close()
