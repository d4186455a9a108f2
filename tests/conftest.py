"""Test infrastructure: one fresh database per test run, on the real PostgreSQL.

With ``TEST_DATABASE_URL`` the run creates its own database on that server;
without it, an embedded PostgreSQL (pgserver) in a temporary directory. Either
way the database is dropped at the end. Tests isolate themselves by using a
fresh organisation id each.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from commands import WorkflowApplication, WorkflowCommands
from infrastructure.auth import ApiKeyStore, Role
from infrastructure.crypto import MasterKey
from infrastructure.database import DatabaseUrlError, PgTarget, create_engine
from infrastructure.embedded import start_embedded_postgres
from infrastructure.logs import configure_logging
from infrastructure.settings import Settings
from projections.executions import ExecutionsProjection
from projections.runner import Projector, start_in_thread
from projections.workflows import WorkflowsProjection
from reporunner.wiring import create_app, create_workflow_application
from tests.helpers import scratch_database, serving

settings.register_profile(
    "reporunner", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("reporunner")


def _test_database_target() -> PgTarget | None:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return None
    try:
        return PgTarget.from_url(url, variable="TEST_DATABASE_URL")
    except DatabaseUrlError as exc:
        pytest.exit(str(exc), returncode=2)


def pytest_configure() -> None:
    # Before any test: a bad URL stops the run at once, naming the variable.
    _test_database_target()
    # One master key for the run, inherited by every process a test starts
    # (``serve`` on an external database refuses to start without one).
    os.environ.setdefault("REPORUNNER_MASTER_KEY", MasterKey.generate().encoded())


@pytest.fixture(scope="session")
def server_target() -> PgTarget:
    target = _test_database_target()
    if target is not None:
        return target
    # Not under pytest's basetemp: a concurrent pytest run prunes old
    # basetemps, which would pull the data directory from under the server.
    data_dir = Path(tempfile.mkdtemp(prefix="reporunner-test-pg-"))
    return start_embedded_postgres(data_dir, delete_at_exit=True)


@pytest.fixture(scope="session")
def db_target(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of our own for this run, migrated to head, dropped afterwards."""
    with scratch_database(server_target, "reporunner_test") as target:
        yield target


@pytest.fixture(scope="session")
def app_settings() -> Iterator[Settings]:
    configure_logging("warning", "json")
    settings = Settings(
        database_url=None,
        redis_url=os.environ.get("REDIS_URL"),
        # This run's corner of a shared Redis, emptied afterwards.
        redis_key_prefix=f"reporunner-test-{uuid.uuid4().hex[:12]}:",
        # Tests run a loopback HTTP server for http_request nodes; nothing else.
        http_allowed_hosts="127.0.0.1",
        # Short leases, so a killed worker's execution is settled quickly.
        execution_lease_s=2,
        master_key=os.environ["REPORUNNER_MASTER_KEY"],
        # Most tests read payloads straight from the aggregates and views; the
        # sealing tests (test_erasure, test_payload_sealing, test_execution_payloads,
        # test_retention_sealed) turn it on, as a deployment has it by default.
        seal_payloads=False,
    )
    yield settings
    if settings.redis_url:
        import redis

        with redis.Redis.from_url(settings.redis_url) as client:
            keys = list(client.scan_iter(match=f"{settings.redis_key_prefix}*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture(scope="session")
def workflow_app(db_target: PgTarget, app_settings: Settings) -> Iterator[WorkflowApplication]:
    app = create_workflow_application(db_target, app_settings)
    yield app
    app.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``after_all`` run last, over what the whole suite wrote."""
    last = [item for item in items if item.get_closest_marker("after_all")]
    items[:] = [item for item in items if not item.get_closest_marker("after_all")] + last


@pytest.fixture(scope="session")
def record_runs(workflow_app: WorkflowApplication) -> Callable[[], int]:
    """Catch the workflow-runs recorder up: finished executions become ``Executed``."""
    from commands.workflow_runs import WorkflowRunsRecorder

    recorder = WorkflowRunsRecorder(workflow_app)
    recorder.ensure_tracking()
    return recorder.catch_up


@pytest.fixture(scope="session")
def commands(workflow_app: WorkflowApplication) -> WorkflowCommands:
    return WorkflowCommands(workflow_app)


@pytest.fixture
def org() -> str:
    """A fresh organisation per test keeps tests apart in one shared database."""
    return f"org-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def make_key(db_target: PgTarget) -> Callable[[str, str], str]:
    """Create a real API key; returns the plaintext."""
    return key_maker(db_target)


def key_maker(target: PgTarget) -> Callable[[str, str], str]:
    """A function that creates a real API key in ``target``'s database; it returns the plaintext."""

    def make(org_id: str, role: str = "owner") -> str:
        async def create() -> str:
            engine = create_engine(target, pool_size=1)
            try:
                _, plaintext = await ApiKeyStore(engine).create(org_id, Role(role), "test")
                return plaintext
            finally:
                await engine.dispose()

        return asyncio.run(create())

    return make


@pytest.fixture(scope="module")
def live_projector(workflow_app: WorkflowApplication, db_target: PgTarget) -> Iterator[None]:
    """The workflows projector running live for one test module."""
    stop = threading.Event()
    projector = Projector(workflow_app, db_target, WorkflowsProjection(), poll_interval=0.2)
    thread = start_in_thread(projector, stop)
    yield
    stop.set()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def live_executions_projector(
    workflow_app: WorkflowApplication, db_target: PgTarget
) -> Iterator[None]:
    """The executions projector running live for one test module."""
    stop = threading.Event()
    projector = Projector(workflow_app, db_target, ExecutionsProjection(), poll_interval=0.2)
    thread = start_in_thread(projector, stop)
    yield
    stop.set()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def api_url(db_target: PgTarget, app_settings: Settings) -> Iterator[str]:
    """A real uvicorn server running the service, for HTTP tests."""
    # Projectors run where a test asks for them (see live_projector), so tests
    # that drive projection by hand are not raced by a background one.
    with serving(create_app(app_settings, db_target, roles=("write-api", "read-api"))) as url:
        yield url
