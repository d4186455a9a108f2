"""Execution payloads are sealed in the log and read back in clear by the write side."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.models import RetryExecution, RunWorkflow
from domain.errors import DataSubjectErased, ExecutionPayloadErased, WorkflowInvalid
from domain.execution import Execution
from infrastructure.database import PgTarget
from infrastructure.keyring import KeyPurpose
from infrastructure.sealing import is_sealed
from infrastructure.settings import Settings
from reporunner.wiring import ExecutionServices, create_execution_services
from tests.helpers import trigger, workflow_body

ADA = {
    "customer": {
        "id": "cust-ada-7731",
        "email": "ada.lovelace@example.org",
        "name": "Augusta Ada King-Noel",
    }
}


@pytest.fixture
def sealing_settings(app_settings: Settings) -> Settings:
    return app_settings.model_copy(update={"seal_payloads": True})


@pytest.fixture
def services(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    db_target: PgTarget,
    sealing_settings: Settings,
) -> Iterator[ExecutionServices]:
    built = create_execution_services(workflow_app, commands, db_target, sealing_settings)
    yield built
    built.close()


def _ctx(org: str) -> CommandContext:
    return CommandContext(
        org_id=org, actor="apikey:t", correlation_id=f"req-{uuid.uuid4().hex[:8]}"
    )


def subject_workflow(commands: WorkflowCommands, org: str, fail: bool = False) -> uuid.UUID:
    """trigger -> copy (noop) -> greet (set) [-> boom (stop_and_error)]."""
    nodes: list[dict[str, Any]] = [
        trigger(),
        {"id": "copy", "type": "noop", "parameters": {}},
        {"id": "greet", "type": "set", "parameters": {"fields": {"greeting": "hello"}}},
    ]
    if fail:
        nodes.append({"id": "boom", "type": "stop_and_error", "parameters": {"message": "no luck"}})
    ids = [node["id"] for node in nodes]
    body = workflow_body(
        nodes=nodes,
        connections=[{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
        settings={"data_subject": "$.customer.id"},
    )
    return commands.create(CreateWorkflow(**body), _ctx(org)).workflow_id


def log_bytes(db_target: PgTarget, aggregate_id: uuid.UUID) -> bytes:
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT state FROM reporunner_events WHERE originator_id = %s", (aggregate_id,)
        ).fetchall()
    return b"".join(bytes(row[0]) for row in rows)


def test_a_sync_run_answers_in_clear_and_the_log_holds_only_ciphertext(
    services: ExecutionServices,
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    org: str,
) -> None:
    workflow_id = subject_workflow(commands, org)
    answer = services.commands.start(workflow_id, RunWorkflow(mode="sync", input=ADA), _ctx(org))
    assert answer.status == "succeeded"
    assert answer.output == {"greet": [{**ADA, "greeting": "hello"}]}
    raw = log_bytes(db_target, answer.execution_id)
    for secret in (b"ada.lovelace@example.org", b"cust-ada-7731", b"Augusta Ada King-Noel"):
        assert secret not in raw
    execution = workflow_app.repository.get(answer.execution_id)
    assert isinstance(execution, Execution)
    assert is_sealed(execution.input) and is_sealed(execution.output)
    assert all(is_sealed(run["outputs"]) for run in execution.node_runs)
    # Two keys: the day's and the subject's.
    assert len(execution.input["$sealed"]["keys"]) == 2


def test_a_retry_from_the_failed_node_reuses_sealed_outputs_and_seals_afresh(
    services: ExecutionServices, commands: WorkflowCommands, org: str
) -> None:
    workflow_id = subject_workflow(commands, org, fail=True)
    failed = services.commands.start(workflow_id, RunWorkflow(mode="sync", input=ADA), _ctx(org))
    assert failed.status == "failed"
    assert isinstance(failed.error, str) and "no luck" in failed.error
    retry = services.commands.retry(
        failed.execution_id,
        RetryExecution.model_validate({"from": "failed_node", "mode": "sync"}),
        _ctx(org),
    )
    retried = services.commands.get(retry.execution_id, org)
    assert {"copy", "greet"} <= set(retried.reused_nodes)
    assert is_sealed(retried.input)
    assert retry.error == failed.error


def test_an_erased_subject_cannot_be_run_again_or_retried(
    services: ExecutionServices, commands: WorkflowCommands, org: str
) -> None:
    workflow_id = subject_workflow(commands, org, fail=True)
    failed = services.commands.start(workflow_id, RunWorkflow(mode="sync", input=ADA), _ctx(org))
    payloads = services.runner.payloads
    assert payloads.keyring is not None
    scope = payloads.subject_scope(org, "cust-ada-7731")
    payloads.keyring.destroy(org, KeyPurpose.SUBJECT, scope, "apikey:t")
    payloads.forget(org, KeyPurpose.SUBJECT, scope)
    again = services.commands.get(failed.execution_id, org)
    assert payloads.open(org, again.id, "input", again.input) == {"$erased": True}
    with pytest.raises(ExecutionPayloadErased):
        services.commands.retry(
            failed.execution_id, RetryExecution.model_validate({"from": "start"}), _ctx(org)
        )
    with pytest.raises(DataSubjectErased):
        services.commands.start(workflow_id, RunWorkflow(mode="sync", input=ADA), _ctx(org))
    # Another subject still runs, in clear for its caller.
    other = {"customer": {"id": "cust-bob-1"}}
    answer = services.commands.start(workflow_id, RunWorkflow(mode="sync", input=other), _ctx(org))
    assert answer.status == "failed" and "no luck" in str(answer.error)


def test_a_data_subject_path_is_validated_at_the_door(commands: WorkflowCommands, org: str) -> None:
    body = workflow_body(settings={"data_subject": "customer.id"})
    with pytest.raises(WorkflowInvalid) as caught:
        commands.create(CreateWorkflow(**body), _ctx(org))
    assert any(problem.loc == "settings.data_subject" for problem in caught.value.problems)
