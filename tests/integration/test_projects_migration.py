"""Migration 0019: live workflow documents get the project and shares a rebuild would give."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from alembic import command

import migrations
from commands import CommandContext, CreateWorkflow, WorkflowCommands
from domain.project import default_project_id
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from projections.rebuild import verify
from projections.runner import Projector
from projections.workflows import WorkflowsProjection
from reporunner.wiring import create_workflow_application
from tests.helpers import scratch_database, workflow_body


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this test's own: it migrates down and up."""
    with scratch_database(server_target, "reporunner_test") as target:
        yield target


def _documents(target: PgTarget) -> list[tuple[object, ...]]:
    with psycopg.connect(target.conninfo()) as conn:
        return conn.execute("SELECT _id, org_id, data FROM doc_workflows ORDER BY _id").fetchall()


def test_documents_from_before_projects_are_in_their_default_project(
    own_database: PgTarget, app_settings: Settings
) -> None:
    app = create_workflow_application(own_database, app_settings)
    try:
        commands = WorkflowCommands(app)
        for org in ("acme", "globex"):
            ctx = CommandContext(org_id=org, actor="apikey:t", correlation_id="c")
            commands.create(CreateWorkflow(**workflow_body(org)), ctx)
        projector = Projector(app, own_database, WorkflowsProjection())
        with projector.connect() as conn:
            projector.ensure_tracking(conn)
            projector.catch_up(conn)
        projected = _documents(own_database)
        command.downgrade(migrations.alembic_config(own_database), "0014_data_keys")
        with psycopg.connect(own_database.conninfo()) as conn:  # as a view from before 0019
            conn.execute("UPDATE doc_workflows SET data = data - 'project_id' - 'shares'")
        migrations.upgrade(own_database)
        migrated = _documents(own_database)
        assert migrated == projected
        assert {(row[1], row[2]["project_id"]) for row in migrated} == {  # type: ignore[index]
            (org, str(default_project_id(org))) for org in ("acme", "globex")
        }
        assert verify(projector).ok
    finally:
        app.close()
