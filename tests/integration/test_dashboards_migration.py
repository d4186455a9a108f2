"""Migration 0012: month counters, summed from the day counters, equal the projection's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from alembic import command

import migrations
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from projections.executions import ExecutionsProjection
from projections.rebuild import verify
from projections.runner import Projector
from reporunner.wiring import create_workflow_application
from tests.helpers import scratch_database
from tests.projections.test_executions_projection import (
    BASE,
    OUTCOMES,
    Clock,
    drive,
    queue,
    stamped_by,
)


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this test's own: it migrates down and up."""
    with scratch_database(server_target, "reporunner_test") as target:
        yield target


def _counters(target: PgTarget) -> list[tuple[object, ...]]:
    with psycopg.connect(target.conninfo()) as conn:
        return conn.execute(
            "SELECT _id, org_id, data, _version, _position, created, updated "
            "FROM doc_execution_stats ORDER BY _id"
        ).fetchall()


def test_month_counters_from_day_counters_equal_the_projections(
    own_database: PgTarget, app_settings: Settings
) -> None:
    app = create_workflow_application(own_database, app_settings)
    workflows = [uuid.uuid4(), uuid.uuid4()]
    try:
        with stamped_by(Clock()) as clock:
            # Over two months and many days; outcomes and durations vary.
            for n in range(24):
                clock.now = BASE + timedelta(days=3 * n, hours=n)
                execution = queue("acme", workflows[n % 2])
                app.save(execution)
                drive(execution, OUTCOMES[n % len(OUTCOMES)], clock, "acme", 40 * n**2)
                app.save(execution)
        projector = Projector(app, own_database, ExecutionsProjection())
        with projector.connect() as conn:
            projector.ensure_tracking(conn)
            projector.catch_up(conn)
        projected = _counters(own_database)
        months = [row for row in projected if row[2]["granularity"] == "month"]  # type: ignore[index]
        assert len(months) == 3 * 3  # March, April, May; the org's and each workflow's

        command.downgrade(migrations.alembic_config(own_database), "0011_autoretry")
        assert len(_counters(own_database)) == len(projected) - len(months)
        migrations.upgrade(own_database)
        assert _counters(own_database) == projected
        assert verify(projector).ok
    finally:
        app.close()
