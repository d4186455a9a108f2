"""Migration 0007: views numbered by stream version become numbered by revision."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command

import migrations
from commands import CommandContext, CreateWorkflow, UpdateWorkflow, WorkflowCommands
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from projections.rebuild import verify
from projections.runner import Projector
from projections.workflows import WorkflowsProjection
from reporunner.wiring import create_workflow_application
from tests.helpers import record_run, scratch_database, workflow_body


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this test's own: it migrates down and up."""
    with scratch_database(server_target, "reporunner_test") as target:
        yield target


def _views(target: PgTarget) -> dict[str, list[Any]]:
    with psycopg.connect(target.conninfo()) as conn:
        return {
            table: conn.execute(
                f"SELECT _id, org_id, data, _version, _position FROM {table} ORDER BY _id"
            ).fetchall()
            for table in ("doc_workflows", "doc_workflow_versions")
        }


def _catch_up(projector: Projector) -> None:
    with projector.connect() as conn:
        projector.ensure_tracking(conn)
        projector.catch_up(conn)


def test_the_views_are_renumbered_by_revision_and_equal_a_rebuild(
    own_database: PgTarget, app_settings: Settings
) -> None:
    app = create_workflow_application(own_database, app_settings)
    try:
        commands = WorkflowCommands(app)
        ctx = CommandContext(org_id="acme", actor="apikey:t", correlation_id="c")
        edited = commands.create(CreateWorkflow(**workflow_body("a")), ctx).workflow_id
        record_run(app, edited)
        commands.update(edited, UpdateWorkflow(name="a2"), 1, ctx)
        record_run(app, edited)
        record_run(app, edited)
        deleted = commands.create(CreateWorkflow(**workflow_body("b")), ctx).workflow_id
        record_run(app, deleted)
        commands.delete(deleted, 1, ctx)
        busy = commands.create(CreateWorkflow(**workflow_body("c")), ctx).workflow_id
        for _ in range(110):  # snapshots at stream versions 50 and 100
            record_run(app, busy)
        projector = Projector(app, own_database, WorkflowsProjection())
        _catch_up(projector)
        renumbered = _views(own_database)
    finally:
        app.close()

    # Back to the numbering before revisions: stream versions everywhere.
    command.downgrade(migrations.alembic_config(own_database), "0006")
    old = {row[0]: row for rows in _views(own_database).values() for row in rows}
    assert old[str(edited)][2]["version"] == 5 and old[str(edited)][3] == 5
    assert old[str(deleted)][2]["version"] == 3 and old[str(busy)][3] == 111
    assert old[f"{edited}:3"][2]["name"] == "a2" and old[f"{edited}:3"][3] == 3
    assert f"{edited}:2" not in old and f"{deleted}:3" in old
    with psycopg.connect(own_database.conninfo()) as conn:
        # Snapshots as they were then: without a revision.
        stripped = conn.execute(
            "UPDATE reporunner_snapshots SET state = convert_to("
            "(convert_from(state, 'UTF8')::jsonb #- '{state,revision}')::text, 'UTF8')"
        ).rowcount
    assert stripped == 2

    migrations.upgrade(own_database)
    assert _views(own_database) == renumbered
    app = create_workflow_application(own_database, app_settings)
    try:
        assert verify(Projector(app, own_database, WorkflowsProjection())).ok
        # The latest snapshot got its revision back; the older one is gone.
        assert app.snapshots is not None
        [snapshot] = list(app.snapshots.get(busy))
        assert (snapshot.originator_version, snapshot.state["revision"]) == (100, 1)
        assert snapshot.state["runs"] == 99
        commands = WorkflowCommands(app)
        loaded = commands.get(busy, "acme")
        assert (loaded.revision, loaded.version, loaded.runs) == (1, 111, 110)
        assert commands.get(busy, "acme", revision=1).version == 1  # no snapshot before
        assert commands.update(busy, UpdateWorkflow(name="c2"), 1, ctx).version == 2
    finally:
        app.close()
