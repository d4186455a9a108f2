"""PostgreSQL going away is a 503 with Retry-After wherever it surfaces, never a 500.

Reproduces what the scale-out trial saw while PostgreSQL restarted (issue 15):
SQLAlchemy wraps the driver's "the database system is shutting down",
"connection is closed" and "cannot switch to state 15", and those answered
500 in the read API's queries and the API-key lookup of both APIs.

The service talks to a real PostgreSQL through a TCP proxy the test controls
(``tests/pg_proxy.py``): it can cut every connection and refuse new ones (the
server gone), or answer every new connection as a server shutting down does
(SQLSTATE 57P03), while the real server stays up for everyone else.
``pg_terminate_backend`` gives the pooled connections the real server's own
"terminating connection" (57P01).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import httpx
import psycopg
import pytest

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_app
from tests.conftest import key_maker
from tests.helpers import scratch_database, serving, workflow_body
from tests.pg_proxy import PgProxy


@pytest.fixture(scope="module")
def real_target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_unavailable") as target:
        yield target


@pytest.fixture(scope="module")
def proxy(real_target: PgTarget) -> PgProxy:
    if real_target.host.startswith("/"):
        pytest.skip("the proxy needs PostgreSQL on TCP")
    return PgProxy(real_target)


@pytest.fixture(scope="module")
def service(proxy: PgProxy, real_target: PgTarget, app_settings: Settings) -> Iterator[str]:
    proxied = replace(real_target, host="127.0.0.1", port=proxy.port)
    settings = app_settings.model_copy(
        update={
            "auth_cache_seconds": 300,
            "db_pool_size": 1,
            "db_max_overflow": 1,
            # A command waits this long for a connection (eventsourcing tries 10 times).
            "db_pool_timeout_s": 1,
        }
    )
    with serving(create_app(settings, proxied, ("write-api", "read-api"))) as url:
        yield url


@pytest.fixture
def keys(real_target: PgTarget) -> tuple[str, str]:
    """A key the service has cached, and one it has never seen (looked up at once)."""
    org = f"org-{uuid.uuid4().hex[:12]}"
    make = key_maker(real_target)
    return make(org, "owner"), make(org, "owner")


# A command may wait out its connection attempts before it answers.
http = httpx.Client(timeout=60)


def _warm(service: str, proxy: PgProxy, cached: str) -> None:
    """The database back, and both pools holding connections through the proxy.

    The first use of a pooled connection that died answers 503 (no pre-ping),
    and psycopg's pool reconnects with a back-off: never a 500, meanwhile.
    """
    proxy.cut("passing")
    headers = {"Authorization": f"Bearer {cached}"}
    deadline = time.monotonic() + 90
    while True:
        read = http.get(f"{service}/v1/workflows", headers=headers)
        created = http.post(f"{service}/v1/workflows", headers=headers, json=workflow_body())
        assert {read.status_code, created.status_code} <= {200, 201, 503}, created.text
        if (read.status_code, created.status_code) == (200, 201):
            return
        assert time.monotonic() < deadline, (read.text, created.text)
        time.sleep(0.5)


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["type"].endswith("/unavailable"), response.json()


@pytest.mark.parametrize("mode", ["refusing", "shutting_down"])
def test_every_surface_answers_503_while_the_database_is_away(
    service: str, proxy: PgProxy, keys: tuple[str, str], mode: str
) -> None:
    cached, unseen = keys
    _warm(service, proxy, cached)
    proxy.cut(mode)
    try:
        cached_auth = {"Authorization": f"Bearer {cached}"}
        unseen_auth = {"Authorization": f"Bearer {unseen}"}
        # The read API's query, a command, and the key lookup of each API.
        _assert_unavailable(http.get(f"{service}/v1/workflows", headers=cached_auth))
        _assert_unavailable(
            http.post(f"{service}/v1/workflows", headers=cached_auth, json=workflow_body())
        )
        _assert_unavailable(http.get(f"{service}/v1/workflows", headers=unseen_auth))
        _assert_unavailable(
            http.post(f"{service}/v1/workflows", headers=unseen_auth, json=workflow_body())
        )
    finally:
        proxy.cut("passing")
    _warm(service, proxy, cached)  # back: the pools reconnect by themselves


def test_terminated_backends_answer_503_then_the_pool_reconnects(
    service: str, proxy: PgProxy, real_target: PgTarget, keys: tuple[str, str]
) -> None:
    cached, _ = keys
    _warm(service, proxy, cached)
    with psycopg.connect(real_target.with_dbname("postgres").conninfo(), autocommit=True) as conn:
        terminated = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (real_target.dbname,),
        ).fetchone()
    assert terminated is not None and terminated[0] >= 1
    headers = {"Authorization": f"Bearer {cached}"}
    # The pooled query connection died: the request on it is a 503, the next reconnects.
    _assert_unavailable(http.get(f"{service}/v1/workflows", headers=headers))
    assert http.get(f"{service}/v1/workflows", headers=headers).status_code == 200
    # The event store's pooled connections died too: 503s (or a retry that
    # reconnected in time), until the pool has reconnected; never a 500.
    _warm(service, proxy, cached)
