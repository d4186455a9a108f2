"""``max_workflows`` is exact: counted in the log's transaction (``commands/workflow_quota.py``),
whatever the concurrency, and initialised from the log by its migration."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from alembic import command

import migrations
from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.errors import WorkflowLimitReached
from commands.tenancy import OrganisationCommands, cli_actor
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_workflow_application
from tests.api.test_pre_contract_values import _plant_workflow
from tests.helpers import scratch_database, workflow_body


def ctx(org: str, key: str | None = None) -> CommandContext:
    return CommandContext(
        org_id=org, actor="apikey:t", correlation_id=uuid.uuid4().hex, idempotency_key=key
    )


def held(target: PgTarget, org: str) -> int | None:
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute(
            "SELECT workflows FROM organisation_workflows WHERE org_id = %s", (org,)
        ).fetchone()
    return None if row is None else int(row[0])


def test_concurrent_creates_never_pass_the_limit_and_a_delete_makes_room(
    workflow_app: WorkflowApplication, db_target: PgTarget, org: str
) -> None:
    OrganisationCommands(workflow_app).create(org, "", {"max_workflows": 5}, cli_actor())
    commands = WorkflowCommands(workflow_app)

    def create(n: int) -> uuid.UUID | None:
        try:
            return commands.create(CreateWorkflow(**workflow_body(f"w{n}")), ctx(org)).workflow_id
        except WorkflowLimitReached as exc:
            assert exc.limit == 5 and "max_workflows is 5" in str(exc)
            return None

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(create, range(40)))
    created = [workflow_id for workflow_id in outcomes if workflow_id is not None]
    assert len(created) == 5 and outcomes.count(None) == 35
    assert held(db_target, org) == 5
    with pytest.raises(WorkflowLimitReached):
        commands.create(CreateWorkflow(**workflow_body("six")), ctx(org))
    commands.delete(created[0], 1, ctx(org))
    assert held(db_target, org) == 4
    commands.create(CreateWorkflow(**workflow_body("six")), ctx(org))
    assert held(db_target, org) == 5


def test_the_global_limit_applies_without_an_own_one_and_a_keyed_retry_gets_its_answer(
    workflow_app: WorkflowApplication, db_target: PgTarget, org: str
) -> None:
    commands = WorkflowCommands(workflow_app, max_workflows=2)
    first = commands.create(CreateWorkflow(**workflow_body("one")), ctx(org, "key-1"))
    commands.create(CreateWorkflow(**workflow_body("two")), ctx(org))
    with pytest.raises(WorkflowLimitReached):
        commands.create(CreateWorkflow(**workflow_body("three")), ctx(org))
    # At the limit, the retry of a create that succeeded is its first answer, not a 409.
    again = commands.create(CreateWorkflow(**workflow_body("one")), ctx(org, "key-1"))
    assert (again.workflow_id, again.position) == (first.workflow_id, first.position)
    # Without a limit the count is still kept, so a limit set later is exact.
    unlimited = WorkflowCommands(workflow_app)
    unlimited.create(CreateWorkflow(**workflow_body("three")), ctx(org))
    assert held(db_target, org) == 3


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this test's own: it migrates down and up."""
    with scratch_database(server_target, "reporunner_quota") as target:
        yield target


def test_the_migration_counts_each_organisations_workflows_from_the_log(
    own_database: PgTarget, app_settings: Settings
) -> None:
    app = create_workflow_application(own_database, app_settings)
    try:
        commands = WorkflowCommands(app)
        made = [
            commands.create(CreateWorkflow(**workflow_body(f"acme {n}")), ctx("acme"))
            for n in range(3)
        ]
        commands.create(CreateWorkflow(**workflow_body("globex")), ctx("globex"))
        commands.delete(made[0].workflow_id, 1, ctx("acme"))
        counted = {org: held(own_database, org) for org in ("acme", "globex")}
        assert counted == {"acme": 2, "globex": 1}
        # A workflow from before the value contract (NaN, a 64-bit integer):
        # jsonb refuses its state, and the migration still counts it.
        _plant_workflow(app, "globex")
        command.downgrade(migrations.alembic_config(own_database), "0018_tenancy")
        migrations.upgrade(own_database)
        assert {org: held(own_database, org) for org in ("acme", "globex")} == {
            "acme": 2,
            "globex": 2,
        }
    finally:
        app.close()
