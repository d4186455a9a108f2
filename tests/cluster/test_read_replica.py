"""The read API on a streaming replica: read-your-writes across replication lag.

A real primary and hot standby (tests/cluster/postgres.py); the service runs
the write API and the projectors on the primary and the read API's queries on
the replica (``REPORUNNER_READ_DATABASE_URL``), as a deployment would.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text

from infrastructure.database import PgTarget, create_engine
from infrastructure.settings import Settings
from infrastructure.web import RequestContextMiddleware, install_error_handlers
from reporunner.cli import _configuration_errors
from reporunner.wiring import create_app
from tests.cluster.postgres import PostgresCluster
from tests.conftest import key_maker
from tests.helpers import scratch_database, serving, workflow_body

# The bounded X-Min-Position wait, short so the lagging read's 503 comes quickly.
MIN_POSITION_WAIT_S = 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    # A replica query that holds up replay is cancelled after this (default 30 s).
    with PostgresCluster.start(server_settings={"max_standby_streaming_delay": "200ms"}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def primary(cluster: PostgresCluster) -> Iterator[PgTarget]:
    """A migrated database on the primary (the replica gets it by replication)."""
    with scratch_database(PgTarget.from_url(cluster.primary.url()), "reporunner_replica") as db:
        cluster.wait_replayed()
        yield db


@pytest.fixture(scope="module")
def api_url(cluster: PostgresCluster, primary: PgTarget) -> Iterator[str]:
    assert cluster.replica is not None
    replica = PgTarget.from_url(cluster.replica.url(primary.dbname))
    settings = Settings(
        database_url=primary.url(),
        read_database_url=replica.url(),
        redis_url=None,
        min_position_wait_s=MIN_POSITION_WAIT_S,
        projection_poll_s=0.2,
        db_pool_size=2,
    )
    app = create_app(settings, primary, roles=("write-api", "read-api", "projections"))
    with serving(app) as url:
        yield url


@pytest.fixture
def client(api_url: str, primary: PgTarget) -> Iterator[httpx.Client]:
    key = key_maker(primary)(f"org-{uuid.uuid4().hex[:12]}", "owner")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:
        yield client


def _create(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.post("/v1/workflows", json=workflow_body(name))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _position_on(target: PgTarget) -> int:
    """How far the workflows view is on ``target`` (its projection_tracking row)."""
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute(
            "SELECT position FROM projection_tracking WHERE name = 'workflows'"
        ).fetchone()
    return 0 if row is None else int(row[0])


def _wait_projected(target: PgTarget, position: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _position_on(target) < position:
        assert time.monotonic() < deadline, f"the primary's view never reached {position}"
        time.sleep(0.05)


def test_a_read_with_min_position_on_the_replica_returns_the_write(
    client: httpx.Client,
) -> None:
    created = _create(client, "replicated")

    read = client.get(
        f"/v1/workflows/{created['id']}", headers={"X-Min-Position": str(created["position"])}
    )

    assert read.status_code == 200, read.text
    assert read.json()["name"] == "replicated"
    assert int(read.headers["x-projection-position"]) >= created["position"]


def test_with_replay_paused_a_read_waits_then_answers_503_with_retry_after(
    client: httpx.Client, cluster: PostgresCluster, primary: PgTarget
) -> None:
    cluster.pause_replay()
    try:
        created = _create(client, "lagging")
        # The primary's view has the write: only the replica is behind.
        _wait_projected(primary, created["position"])

        started = time.monotonic()
        read = client.get(
            f"/v1/workflows/{created['id']}",
            headers={"X-Min-Position": str(created["position"])},
        )
        waited = time.monotonic() - started

        assert read.status_code == 503, read.text
        assert read.headers["retry-after"]
        problem = read.json()
        assert problem["type"].endswith("not-yet-consistent")
        # It reports the replica's position, short of the write's.
        replica_position = int(read.headers["x-projection-position"])
        assert replica_position == problem["current_position"] < created["position"]
        assert waited >= MIN_POSITION_WAIT_S
        # Without X-Min-Position the replica answers at once, as of its position:
        # the write is not there yet, and the answer says how far it is.
        stale = client.get(f"/v1/workflows/{created['id']}")
        assert stale.status_code == 404, stale.text
        assert int(stale.headers["x-projection-position"]) < created["position"]
    finally:
        cluster.resume_replay()

    caught_up = client.get(
        f"/v1/workflows/{created['id']}", headers={"X-Min-Position": str(created["position"])}
    )
    assert caught_up.status_code == 200, caught_up.text
    assert caught_up.json()["name"] == "lagging"


def test_a_stopped_replica_makes_the_read_api_not_ready_and_its_reads_503(
    client: httpx.Client, cluster: PostgresCluster
) -> None:
    assert cluster.replica is not None
    created = _create(client, "before the stop")
    fresh = {"X-Min-Position": str(created["position"])}
    assert client.get(f"/v1/workflows/{created['id']}", headers=fresh).status_code == 200
    assert client.get("/readyz").status_code == 200

    cluster.replica.stop("fast")
    try:
        # The reads first: the pool's connections to the replica are dead now.
        for path in (f"/v1/workflows/{created['id']}", "/v1/workflows", "/v1/executions"):
            read = client.get(path, headers=fresh)
            assert read.status_code == 503, f"{path}: {read.text}"
            assert read.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["read_replica"].startswith("failing")
        # Commands do not need the replica.
        assert _create(client, "while the replica is down")["position"] > created["position"]
    finally:
        cluster.replica.start()

    assert client.get("/readyz").status_code == 200
    assert client.get(f"/v1/workflows/{created['id']}", headers=fresh).status_code == 200


def test_a_query_the_replica_cancels_to_replay_the_primary_is_503(
    cluster: PostgresCluster, primary: PgTarget
) -> None:
    """A hot standby cancels a query that holds a lock the primary's change needs
    (SQLSTATE 40001): the service answers 503 with Retry-After, not a 500."""
    assert cluster.replica is not None
    replica = PgTarget.from_url(cluster.replica.url(primary.dbname))
    with psycopg.connect(primary.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE conflict_probe (x int)")
    cluster.wait_replayed()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = create_engine(replica, pool_size=1)
        yield
        await app.state.engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024)
    install_error_handlers(app, {})

    @app.get("/slow")
    async def slow(request: Request) -> dict[str, int]:
        # Holds conflict_probe's lock for up to 10 s; the primary's TRUNCATE needs it.
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT count(*) FROM conflict_probe, pg_sleep(10)"))
        return {"done": 1}

    def truncate_soon() -> None:
        time.sleep(1)
        with psycopg.connect(primary.conninfo(), autocommit=True) as conn:
            conn.execute("TRUNCATE conflict_probe")

    truncating = threading.Thread(target=truncate_soon)
    with TestClient(app) as client:
        truncating.start()
        started = time.monotonic()
        answer = client.get("/slow")
    truncating.join()

    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert "conflicting change" in answer.json()["detail"]
    assert time.monotonic() - started < 9  # cancelled, not finished


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"REPORUNNER_READ_DATABASE_URL": "postgresql://u@127.0.0.1/db"}, "needs DATABASE_URL"),
        (
            {
                "DATABASE_URL": "postgresql://u@127.0.0.1/db",
                "REPORUNNER_READ_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:54x/db",
            },
            "port '54x'",
        ),
    ],
)
def test_an_unusable_read_database_url_is_refused_at_start_naming_it(
    env: dict[str, str], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if "DATABASE_URL" in name]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError) as refused:
        Settings()

    # What every command prints before exiting 2 (reporunner.cli.main).
    message = _configuration_errors(refused.value)
    assert message.strip().startswith("REPORUNNER_READ_DATABASE_URL:"), message
    assert reason in message and "hunter2" not in message
