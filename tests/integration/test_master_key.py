"""The master key at start and in rotation, through the real command line.

Each test has a scratch database of its own: rotation re-wraps every data
key of a database, and the session's other tests use the session's key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from commands import WorkflowApplication
from commands.credentials import CreateCredential, CredentialCommands
from commands.models import CommandContext
from infrastructure.crypto import MasterKey, MasterKeyError
from infrastructure.database import PgTarget
from infrastructure.keyring import Keyring, load_master_key
from infrastructure.settings import Settings
from reporunner.keys import connection_source
from reporunner.wiring import create_workflow_application
from tests.helpers import scratch_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_keys") as target:
        yield target


def _cli(target: PgTarget, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REPORUNNER_MASTER_KEY")},
        "DATABASE_URL": target.url(),
        "REPORUNNER_LOG_FORMAT": "json",
    }
    environment.pop("REDIS_URL", None)
    environment |= {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "reporunner", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _serve(target: PgTarget, **env: str | None) -> subprocess.CompletedProcess[str]:
    # Exits before it binds when the key is wrong; port 1 would fail later anyway.
    return _cli(target, "serve", "--port", "1", **env)


def _credential(app: WorkflowApplication, keyring: Keyring, org: str, token: str) -> str:
    commands = CredentialCommands(app, keyring)
    result = commands.create(
        CreateCredential(name="crm", type="bearer", secret={"token": token}),
        CommandContext(org_id=org, actor="apikey:test", correlation_id="keys-test"),
    )
    return str(result.credential_id)


def test_keys_generate_prints_a_key_that_parses(target: PgTarget) -> None:
    done = _cli(target, "keys", "generate")
    assert done.returncode == 0, done.stderr
    key = MasterKey.parse(done.stdout.strip().splitlines()[-1])
    assert key.key_id in done.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REPORUNNER_MASTER_KEY": "not-a-key"}, "64 hex digits"),
        ({"REPORUNNER_MASTER_KEY_FILE": "/nonexistent/master-key"}, "cannot read"),
        ({}, "reporunner keys generate"),
    ],
    ids=["malformed", "unreadable file", "external database and no key"],
)
def test_a_bad_or_missing_master_key_stops_every_start_with_exit_2(
    target: PgTarget, env: dict[str, str], says: str
) -> None:
    for command in (("serve", "--port", "1"), ("worker",)):
        done = _cli(target, *command, **env)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "not-a-key" not in done.stderr  # even a wrong key is not printed


def test_a_key_that_did_not_wrap_the_stored_keys_stops_the_start(
    target: PgTarget, tmp_path: Path
) -> None:
    first, other = MasterKey.generate(), MasterKey.generate()
    Keyring(first, connection_source(target)).org_key("org-a")
    done = _serve(target, REPORUNNER_MASTER_KEY=other.encoded())
    assert done.returncode == 2, done.stderr
    assert first.key_id in done.stderr and other.key_id in done.stderr
    # Given in a file, the same.
    key_file = tmp_path / "key"
    key_file.write_text(other.encoded())
    assert _serve(target, REPORUNNER_MASTER_KEY_FILE=str(key_file)).returncode == 2


def test_rotation_rewraps_every_key_and_every_credential_keeps_working(
    target: PgTarget, tmp_path: Path, app_settings: Settings
) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    app = create_workflow_application(target, app_settings)
    try:
        keyring = Keyring(old, connection_source(target), cache_seconds=0)
        tokens = {f"org-{i}": f"token-{uuid.uuid4().hex}" for i in range(3)}
        made = {org: _credential(app, keyring, org, token) for org, token in tokens.items()}
        with app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n, max(notification_id) AS head FROM reporunner_events")
            log_before = cur.fetchone()
        new_file = tmp_path / "new-key"
        new_file.write_text(new.encoded() + "\n")
        done = _cli(
            target,
            "keys",
            "rotate-master",
            "--new-key-file",
            str(new_file),
            REPORUNNER_MASTER_KEY=old.encoded(),
        )
        assert done.returncode == 0, done.stderr
        assert "re-wrapped 3 data key(s)" in done.stderr
        # The log is untouched; the keys answer only to the new master key.
        with app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n, max(notification_id) AS head FROM reporunner_events")
            assert cur.fetchone() == log_before
        rotated = CredentialCommands(app, Keyring(new, connection_source(target), cache_seconds=0))
        for org, credential_id in made.items():
            assert rotated.open(org, credential_id).secret == {"token": tokens[org]}
        with pytest.raises(MasterKeyError):
            Keyring(old, connection_source(target)).check_master()
        assert _serve(target, REPORUNNER_MASTER_KEY=old.encoded()).returncode == 2
        # Rotating again needs the key now in use, and refuses a malformed new one.
        new_file.write_text("nope")
        done = _cli(
            target,
            "keys",
            "rotate-master",
            "--new-key-file",
            str(new_file),
            REPORUNNER_MASTER_KEY=new.encoded(),
        )
        assert done.returncode == 2 and "new master key" in done.stderr
    finally:
        app.close()


def test_the_embedded_default_generates_one_key_on_first_start(tmp_path: Path) -> None:
    settings = Settings(database_url=None, data_dir=tmp_path / "data", master_key=None)
    first = load_master_key(settings)
    assert first is not None
    key_file = tmp_path / "data" / "master-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert load_master_key(settings) == first  # read back, not made again
    external = Settings(database_url="postgresql://x@127.0.0.1/db", master_key=None)
    assert load_master_key(external) is None
