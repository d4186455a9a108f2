"""Migration 0009: execution documents from before retries gain their trigger fields."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command

import migrations
from domain.execution import Execution
from domain.meta import EventMeta
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from projections.executions import ExecutionsProjection
from projections.rebuild import verify
from projections.runner import Projector
from reporunner.wiring import create_workflow_application
from tests.helpers import scratch_database

_FIELDS = ("trigger", "retry_of", "reused_nodes", "retried_by")


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this test's own: it migrates down and up."""
    with scratch_database(server_target, "reporunner_test") as target:
        yield target


def _documents(target: PgTarget, table: str = "doc_executions") -> list[dict[str, object]]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute(f"SELECT data FROM {table} ORDER BY _id").fetchall()
    return [row[0] for row in rows]


def test_documents_without_trigger_fields_get_the_manual_defaults_and_equal_a_rebuild(
    own_database: PgTarget, app_settings: Settings
) -> None:
    app = create_workflow_application(own_database, app_settings)
    try:
        meta = EventMeta(org_id="acme", actor="apikey:t", correlation_id="c")
        for n in range(3):
            execution = Execution.create(
                execution_id=uuid.uuid4(),
                workflow_id=uuid.uuid4(),
                workflow_version=1,
                workflow_revision=1,
                mode="async",
                input={"n": n},
                meta=meta,
            )
            app.save(execution)
        projector = Projector(app, own_database, ExecutionsProjection())
        with projector.connect() as conn:
            projector.ensure_tracking(conn)
            projector.catch_up(conn)
        projected = _documents(own_database)
        counted = _documents(own_database, "doc_execution_stats")
        assert len(projected) == 3 and {"manual": 1} in [c["by_trigger"] for c in counted]

        # The documents as the projection wrote them before retries.
        command.downgrade(migrations.alembic_config(own_database), "0008")
        assert all(not set(_FIELDS) & set(data) for data in _documents(own_database))
        stats = _documents(own_database, "doc_execution_stats")
        assert all("by_trigger" not in data for data in stats)
        migrations.upgrade(own_database)
        assert _documents(own_database) == projected
        assert _documents(own_database, "doc_execution_stats") == counted
        assert verify(projector).ok
    finally:
        app.close()
