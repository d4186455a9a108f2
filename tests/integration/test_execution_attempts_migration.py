"""Migration 0011: execution documents from before automatic retries gain attempt and not_before."""

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


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this test's own: it migrates down and up."""
    with scratch_database(server_target, "reporunner_test") as target:
        yield target


def _documents(target: PgTarget) -> list[dict[str, object]]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute("SELECT data FROM doc_executions ORDER BY _id").fetchall()
    return [row[0] for row in rows]


def test_documents_without_attempts_are_attempt_1_and_equal_a_rebuild(
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
            [queued] = execution.pending_events
            del queued.__dict__["attempt"], queued.__dict__["not_before"]  # an earlier release
            app.save(execution)
        projector = Projector(app, own_database, ExecutionsProjection())
        with projector.connect() as conn:
            projector.ensure_tracking(conn)
            projector.catch_up(conn)
        projected = _documents(own_database)
        assert [(d["attempt"], d["not_before"]) for d in projected] == [(1, None)] * 3

        # The documents as the projection wrote them before attempts were counted.
        command.downgrade(migrations.alembic_config(own_database), "0010")
        assert all({"attempt", "not_before"}.isdisjoint(d) for d in _documents(own_database))
        migrations.upgrade(own_database)
        assert _documents(own_database) == projected
        assert verify(projector).ok
    finally:
        app.close()
