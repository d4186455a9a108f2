"""Seal -> record -> read back is the identity for every value the value contract admits.

Through the real path: an execution queued with the value in its input is
sealed by the command layer, recorded in PostgreSQL, loaded from the log
and opened again with keys the keyring unwraps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.models import RunWorkflow
from domain.execution import Execution
from domain.payloads import INPUT
from domain.values import check_value
from infrastructure.database import PgTarget
from infrastructure.sealing import is_sealed
from infrastructure.settings import Settings
from reporunner.wiring import ExecutionServices, create_execution_services
from tests.helpers import workflow_body
from tests.integration.test_value_contract_pg import values

ORG = f"org-seal-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def services(
    workflow_app: WorkflowApplication, db_target: PgTarget, app_settings: Settings
) -> Iterator[ExecutionServices]:
    settings = app_settings.model_copy(update={"seal_payloads": True})
    built = create_execution_services(
        workflow_app, WorkflowCommands(workflow_app), db_target, settings
    )
    yield built
    built.close()


@pytest.fixture(scope="module")
def workflow_id(workflow_app: WorkflowApplication) -> uuid.UUID:
    body = workflow_body(settings={"data_subject": "$.subject"})
    return WorkflowCommands(workflow_app).create(CreateWorkflow(**body), _ctx()).workflow_id


def _ctx() -> CommandContext:
    return CommandContext(org_id=ORG, actor="apikey:t", correlation_id="req-seal")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=values, subject=st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_a_sealed_input_reads_back_unchanged(
    services: ExecutionServices,
    workflow_app: WorkflowApplication,
    workflow_id: uuid.UUID,
    value: Any,
    subject: str | None,
) -> None:
    item = {"value": value} if subject is None else {"value": value, "subject": subject}
    if check_value(item):
        return  # the contract refuses it at the door (tested elsewhere)
    queued = services.commands.start(workflow_id, RunWorkflow(mode="async", input=item), _ctx())
    try:
        recorded = workflow_app.repository.get(queued.execution_id)
        assert isinstance(recorded, Execution) and is_sealed(recorded.input)
        payloads = services.runner.payloads
        assert payloads.open(ORG, recorded.id, INPUT, recorded.input) == item
    finally:
        services.commands.cancel(queued.execution_id, _ctx())
