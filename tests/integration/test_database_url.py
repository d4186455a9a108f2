"""``DATABASE_URL``: every libpq parameter reaches every kind of connection; bad URLs exit 2.

The positive check is ``application_name`` (plus ``options``) as the server
sees it in ``pg_stat_activity`` for each client the service opens; the
negative one is ``sslmode=require``, which must fail against a server without
SSL (and use SSL against one with it) rather than connect in plain text.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import eventsourcing.persistence
import psycopg
import pytest
from psycopg.rows import tuple_row
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import migrations
from commands import WorkflowApplication
from infrastructure.database import DatabaseUrlError, PgTarget, create_engine
from infrastructure.eventstore import EventStoreFactory, eventsourcing_env
from infrastructure.queue import ExecutionQueue
from infrastructure.settings import Settings
from projections.audit_chain import AuditChainFollower
from projections.relay import Relay
from projections.runner import Projector
from projections.workflows import WorkflowsProjection
from reporunner.wiring import create_workflow_application

ROOT = Path(__file__).resolve().parents[2]

# -- parsing (no I/O) -------------------------------------------------------------------


def test_every_libpq_parameter_is_kept() -> None:
    target = PgTarget.from_url(
        "postgresql://me:s%40cret@db.example:6543/app?sslmode=verify-full"
        "&sslrootcert=/etc/ca.pem&sslcert=/etc/c.pem&sslkey=/etc/k.pem"
        "&application_name=xyz&options=-c%20statement_timeout%3D5s"
        "&target_session_attrs=read-write&connect_timeout=7"
    )
    assert (target.host, target.port, target.user, target.password, target.dbname) == (
        "db.example",
        6543,
        "me",
        "s@cret",
        "app",
    )
    assert target.libpq_params() == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
        "sslcert": "/etc/c.pem",
        "sslkey": "/etc/k.pem",
        "application_name": "xyz",
        "options": "-c statement_timeout=5s",
        "target_session_attrs": "read-write",
        "connect_timeout": "7",
    }
    # psycopg (libpq) gets them all; a default never overrides the URL's own.
    conninfo = psycopg.conninfo.conninfo_to_dict(
        target.conninfo(connect_timeout=5, application_name="reporunner-x")
    )
    assert conninfo["sslmode"] == "verify-full"
    assert conninfo["application_name"] == "xyz"
    assert conninfo["connect_timeout"] == "7"
    assert conninfo["options"] == "-c statement_timeout=5s"
    # asyncpg: SSL in its DSN, startup parameters as server_settings, the timeout.
    args = target.asyncpg_connect_args()
    assert "sslmode=verify-full" in args["dsn"] and "sslrootcert=%2Fetc%2Fca.pem" in args["dsn"]
    assert args["server_settings"] == {
        "application_name": "xyz",
        "options": "-c statement_timeout=5s",
    }
    assert args["timeout"] == 7
    # Alembic's URL carries them in its query.
    assert dict(target.sqlalchemy_url().query)["sslmode"] == "verify-full"
    # A copy for another database keeps them.
    assert target.with_dbname("other").libpq_params() == target.libpq_params()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+psycopg://u@h/db",
        "postgresql+asyncpg://u@h/db",
        "POSTGRESQL://u@h/db",
    ],
)
def test_postgresql_schemes_are_accepted(url: str) -> None:
    assert PgTarget.from_url(url).dbname == "db"


def test_a_socket_directory_travels_as_the_host_parameter() -> None:
    target = PgTarget.from_url("postgresql:///db?host=/run/pg&port=5433&sslmode=disable")
    assert (target.host, target.port, target.libpq_params()) == (
        "/run/pg",
        5433,
        {"sslmode": "disable"},
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u:pw@h/db", "scheme 'mysql' is not PostgreSQL"),
        ("sqlite:///x.db", "scheme 'sqlite' is not PostgreSQL"),
        ("db.example:5432", "not a URL"),
        ("postgresql://u:pw@h:abc/db", "port 'abc'"),
        ("postgresql://u:pw@h:0/db", "port '0'"),
        ("postgresql://u:pw@h:65536/db", "port '65536'"),
        ("postgresql://u:pw@h:５４３２/db", "port"),
        ("postgresql://u:pw@h/db?sslmod=require", 'invalid URI query parameter: "sslmod"'),
        ("postgresql://u:pw@h/db?sslmode=required", "sslmode='required'"),
        ("postgresql://u:pw@h/db?target_session_attrs=rw", "target_session_attrs='rw'"),
        ("postgresql://u:pw@h/db?connect_timeout=soon", "connect_timeout='soon'"),
        ("postgresql://u:pw@h/db?keepalives=1", "keepalives is not supported"),
        ("postgresql://u:pw@h/d%zzb", "invalid percent-encoded token"),
        ("postgresql://u:pw@[::1/db", "IPv6"),
        ("postgresql://u:pw@h1,h2/db", "several hosts"),
    ],
)
def test_a_bad_url_names_the_variable_and_never_the_password(url: str, reason: str) -> None:
    with pytest.raises(DatabaseUrlError) as caught:
        PgTarget.from_url(url, variable="SOME_DATABASE_URL")
    message = str(caught.value)
    assert message.startswith("SOME_DATABASE_URL: ")
    assert reason in message
    assert "pw" not in message.replace("password", "")


def test_settings_refuse_a_bad_url_and_take_an_empty_one_as_unset() -> None:
    assert Settings(database_url="").database_url is None
    with pytest.raises(ValidationError, match="scheme 'mysql' is not PostgreSQL"):
        Settings(database_url="mysql://u@h/db")


# -- every kind of connection, against the real server ------------------------------------


def _with(target: PgTarget, **params: str) -> PgTarget:
    """``target`` as a URL with these libpq parameters would give it."""
    return replace(target, params=tuple(sorted({**target.libpq_params(), **params}.items())))


def _app_settings() -> Settings:
    return Settings(database_url=None, redis_url=None)


def _server_sees(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """This session's application_name and statement_timeout, as the server has them."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT application_name, current_setting('statement_timeout') "
            "FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def _psycopg_connections(target: PgTarget) -> Iterator[tuple[str, AbstractContextManager[Any]]]:
    """Every psycopg connection the service opens, by kind."""
    app = create_workflow_application(target, _app_settings())
    try:
        yield "eventstore", app.event_store.datastore.get_connection()
        yield "projector", Projector(app, target, WorkflowsProjection()).connect()
        yield "audit follower", AuditChainFollower(target, key=None).connect()
        yield "execution queue", ExecutionQueue(app.event_store.datastore, target).listening()
        relay = Relay(app, target, os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0"))
        yield "relay", relay.connect()
    finally:
        app.close()


def test_application_name_and_options_reach_every_psycopg_connection(
    db_target: PgTarget,
) -> None:
    name = f"xyz-{uuid.uuid4().hex[:8]}"
    target = _with(db_target, sslmode="disable", application_name=name)
    target = _with(target, options="-c statement_timeout=4321")
    kinds = []
    for kind, connection in _psycopg_connections(target):
        with connection as conn:
            assert _server_sees(conn) == (name, "4321ms"), kind
        kinds.append(kind)
    assert len(kinds) == 5


def test_eventsourcing_recorder_writes_on_a_connection_with_the_url_parameters(
    db_target: PgTarget,
) -> None:
    """The factory itself (what the recorder's pool uses), not only one of its connections."""
    name = f"es-{uuid.uuid4().hex[:8]}"
    app = create_workflow_application(_with(db_target, application_name=name), _app_settings())
    try:
        assert isinstance(app.factory, EventStoreFactory)
        assert app.event_store.datastore.pool.kwargs["application_name"] == name  # type: ignore[index]
        with app.event_store.datastore.get_connection() as conn:
            assert _server_sees(conn)[0] == name
    finally:
        app.close()


def test_without_a_name_each_follower_keeps_its_own(db_target: PgTarget) -> None:
    app = create_workflow_application(db_target, _app_settings())
    try:
        with Projector(app, db_target, WorkflowsProjection()).connect() as conn:
            assert _server_sees(conn)[0] == "reporunner-projector:workflows"
    finally:
        app.close()


def test_application_name_and_options_reach_asyncpg(db_target: PgTarget) -> None:
    name = f"xyz-{uuid.uuid4().hex[:8]}"
    target = _with(db_target, application_name=name, options="-c statement_timeout=4321")

    async def seen() -> tuple[Any, ...]:
        engine = create_engine(target, pool_size=1)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    text(
                        "SELECT application_name, current_setting('statement_timeout'), "
                        "current_setting('jit') FROM pg_stat_activity "
                        "WHERE pid = pg_backend_pid()"
                    )
                )
                return tuple(result.one())
        finally:
            await engine.dispose()

    assert asyncio.run(seen()) == (name, "4321ms", "off")


@pytest.fixture(scope="module")
def server_ssl(db_target: PgTarget) -> bool:
    if db_target.host.startswith("/"):
        pytest.skip("a Unix socket never uses SSL (libpq ignores sslmode there): TCP only")
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    assert row is not None
    return bool(row[0] == "on")


def _require_ssl(target: PgTarget) -> PgTarget:
    return _with(target, sslmode="require")


def _expect_ssl_outcome(server_ssl: bool, connect: Callable[[], bool]) -> None:
    """``connect`` returns whether its session is encrypted; without SSL it must fail."""
    if server_ssl:
        assert connect() is True
        return
    with pytest.raises((psycopg.OperationalError, OperationalError, ConnectionError)) as caught:
        connect()
    assert "SSL" in str(caught.value)


def _encrypted(conn: psycopg.Connection[Any]) -> bool:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


def test_sslmode_require_never_falls_back_to_plain_text_on_psycopg(
    db_target: PgTarget, server_ssl: bool
) -> None:
    target = _require_ssl(db_target)
    # The recorder's pool: what it runs for each new connection (its own
    # failures surface only as a timeout, so we ask for a short one).
    env = eventsourcing_env(target, _app_settings()) | {"POSTGRES_CONNECT_TIMEOUT": "2"}
    pool = EventStoreFactory(env).datastore.pool
    connections: list[Callable[[], AbstractContextManager[Any]]] = [
        lambda: psycopg.Connection.connect(pool.conninfo, **pool.kwargs)  # type: ignore[arg-type]
    ]
    if not server_ssl:
        with pytest.raises(eventsourcing.persistence.OperationalError):
            WorkflowApplication(env=env)
    # The followers open their own connections, from their own target.
    app = create_workflow_application(db_target, _app_settings())
    try:
        connections += [
            Projector(app, target, WorkflowsProjection()).connect,
            AuditChainFollower(target, key=None).connect,
            ExecutionQueue(app.event_store.datastore, target).listening,
            Relay(app, target, os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")).connect,
        ]
        for open_connection in connections:

            def connect(open_connection: Any = open_connection) -> bool:
                with open_connection() as conn:
                    return _encrypted(conn)

            _expect_ssl_outcome(server_ssl, connect)
    finally:
        app.close()


def test_sslmode_require_never_falls_back_to_plain_text_on_asyncpg(
    db_target: PgTarget, server_ssl: bool
) -> None:
    async def encrypted() -> bool:
        engine = create_engine(_require_ssl(db_target), pool_size=1)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
                return bool(result.scalar_one())
        finally:
            await engine.dispose()

    _expect_ssl_outcome(server_ssl, lambda: asyncio.run(encrypted()))


def test_sslmode_require_reaches_alembic(db_target: PgTarget, server_ssl: bool) -> None:
    if server_ssl:
        assert migrations.current_revision(_require_ssl(db_target)) == migrations.head_revision()
        return
    with pytest.raises(OperationalError, match="SSL"):
        migrations.upgrade(_require_ssl(db_target))
    with pytest.raises(OperationalError, match="SSL"):
        migrations.current_revision(_require_ssl(db_target))


# -- the command line and the test/bench harnesses ---------------------------------------


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [sys.executable, "-m", "reporunner", *args],
        {"DATABASE_URL": url, "REPORUNNER_LOG_FORMAT": "json"},
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://root:hunter2@127.0.0.1/app", "scheme 'mysql' is not PostgreSQL"),
        ("postgresql://root:hunter2@127.0.0.1:54x/app", "port '54x'"),
        # (Every other malformed URL is refused by the same parser: see above.)
    ],
)
def test_the_cli_exits_2_naming_database_url(url: str, reason: str) -> None:
    done = _cli(url, "migrate")
    assert done.returncode == 2, done.stderr
    assert "DATABASE_URL" in done.stderr and reason in done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_the_cli_refuses_plain_text_when_ssl_is_required(
    db_target: PgTarget, server_ssl: bool
) -> None:
    if server_ssl:
        pytest.skip("this server has SSL: sslmode=require connects (see the psycopg test)")
    done = _cli(_require_ssl(db_target).url(), "migrate")
    assert done.returncode == 1, done.stderr
    assert "cannot connect to PostgreSQL" in done.stderr and "SSL" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_connects_with_the_url_parameters(db_target: PgTarget) -> None:
    done = _cli(_with(db_target, sslmode="disable", application_name="cli").url(), "migrate")
    assert done.returncode == 0, done.stderr


def test_a_bad_test_database_url_exits_2_naming_it() -> None:
    done = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"],
        {"TEST_DATABASE_URL": "mysql://u:hunter2@127.0.0.1/x"},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "TEST_DATABASE_URL: scheme 'mysql' is not PostgreSQL" in output
    assert "hunter2" not in output


def test_a_bad_bench_database_url_exits_2_naming_it() -> None:
    done = _run(
        [sys.executable, "-c", "from bench._common import scratch_database as s\nwith s(): pass"],
        {"BENCH_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:x/db"},
    )
    assert done.returncode == 2, done.stderr
    assert "BENCH_DATABASE_URL: port 'x'" in done.stderr and "hunter2" not in done.stderr
