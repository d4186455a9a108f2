"""Retention and pins over sealed payloads: day keys destroyed, pinned copies kept.

Runs are stamped in 1990 (so the 1990 day keys seal them) and retention runs
at a 1990 ``now``, which no other test's execution is old enough for.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from commands import WorkflowApplication, WorkflowCommands
from commands.models import RunWorkflow
from commands.pins import PinCommands
from commands.retention import Retention
from infrastructure.database import PgTarget, create_engine
from infrastructure.keyring import AsyncKeyring, KeyPurpose
from infrastructure.sealing import ERASED, is_sealed
from infrastructure.settings import Settings
from projections.executions import ExecutionsProjection
from projections.rebuild import verify
from projections.runner import Projector
from read_api.payloads import opened_execution
from read_api.pinned import open_pinned, overlay_pinned
from reporunner.wiring import ExecutionServices, create_execution_services
from tests.integration.test_execution_payloads import ADA, _ctx, subject_workflow
from tests.integration.test_retention import DAY0, Clock, catch_up, counters, stamped_by

GREETED = {**ADA, "greeting": "hello"}


@pytest.fixture
def services(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    db_target: PgTarget,
    app_settings: Settings,
) -> Iterator[ExecutionServices]:
    """Execution services that seal payloads (a master key of their own)."""
    sealing = app_settings.model_copy(update={"seal_payloads": True})
    built = create_execution_services(workflow_app, commands, db_target, sealing)
    yield built
    built.close()


def document(db_target: PgTarget, execution_id: uuid.UUID) -> Any:
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT data FROM doc_executions WHERE _id = %s", (str(execution_id),)
        ).fetchone()
    return None if row is None else row[0]


def opened(built: ExecutionServices, org: str, data: dict[str, Any]) -> dict[str, Any]:
    """The document's payload fields opened as a reader would see them."""
    payloads = built.runner.payloads
    return {
        **data,
        "input": payloads.open(org, data["id"], "input", data["input"]),
        "output": payloads.open(org, data["id"], "output", data["output"]),
    }


def pinned_copy(
    built: ExecutionServices, db_target: PgTarget, org: str, data: dict[str, Any]
) -> Any:
    """The document's pinned copy, opened as the read API opens it."""
    keyring = built.runner.payloads.keyring
    assert keyring is not None

    async def read() -> Any:
        engine = create_engine(db_target, pool_size=1)
        try:
            return await open_pinned(org, data, AsyncKeyring(keyring.master, engine, 0))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def read_as_the_api(
    built: ExecutionServices, db_target: PgTarget, org: str, data: dict[str, Any]
) -> Any:
    keyring = built.runner.payloads.keyring
    assert keyring is not None

    async def read() -> Any:
        engine = create_engine(db_target, pool_size=1)
        try:
            return await opened_execution(data, org, AsyncKeyring(keyring.master, engine, 0))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_past_the_window_payloads_are_erased_and_a_pinned_copy_stays_readable(
    services: ExecutionServices,
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    org: str,
) -> None:
    projector = Projector(workflow_app, db_target, ExecutionsProjection(), batch_size=50)
    workflow_id = subject_workflow(commands, org)
    run = RunWorkflow(mode="sync", input=ADA)
    with stamped_by(Clock(DAY0)):
        gone = services.commands.start(workflow_id, run, _ctx(org))
        kept = services.commands.start(workflow_id, run, _ctx(org))
        unpinned = services.commands.start(workflow_id, run, _ctx(org))
        pins = PinCommands(services.commands)
        assert pins.pin(kept.execution_id, _ctx(org)).changed
        assert pins.pin(unpinned.execution_id, _ctx(org)).changed
        assert pins.unpin(unpinned.execution_id, _ctx(org)).changed
    catch_up(projector)
    execution = workflow_app.repository.get(kept.execution_id)
    assert is_sealed(execution.pin_payload)
    assert len(execution.pin_payload["$sealed"]["keys"]) == 2  # the pin key, the subject's
    kept_before = document(db_target, kept.execution_id)
    assert opened(services, org, kept_before)["input"] == ADA
    assert pinned_copy(services, db_target, org, kept_before)["input"] == ADA
    # Unpinning destroyed its pin key (below): its copy no longer opens.
    unpinned_doc = document(db_target, unpinned.execution_id)
    assert unpinned_doc["pinned"] is False and unpinned_doc["pinned_payload"] is None
    with psycopg.connect(db_target.conninfo()) as conn:
        pin_keys = conn.execute(
            "SELECT scope, wrapped IS NULL, destroyed_by FROM data_keys "
            "WHERE org_id = %s AND purpose = 'pin' ORDER BY scope",
            (org,),
        ).fetchall()
    assert sorted((scope.split("/")[0], gone_, by) for scope, gone_, by in pin_keys) == sorted(
        [(str(kept.execution_id), False, None), (str(unpinned.execution_id), True, "apikey:t")]
    )
    counted = counters(db_target, org)

    keyring = services.runner.payloads.keyring
    assert keyring is not None
    outcome = Retention(workflow_app, keyring, global_days=10, batch_size=1).run(
        DAY0 + timedelta(days=12)
    )
    catch_up(projector)

    assert outcome.keys_destroyed >= 1
    assert document(db_target, gone.execution_id) is None
    assert document(db_target, unpinned.execution_id) is None
    kept_after = document(db_target, kept.execution_id)
    assert kept_after is not None and kept_after["pinned"] is True
    # Its own (day-key) payloads read as erased; the pinned copy stands in for them.
    reader_view = opened(services, org, kept_after)
    assert reader_view["input"] == ERASED
    pinned = pinned_copy(services, db_target, org, kept_after)
    shown = overlay_pinned(reader_view, pinned)
    assert shown["input"] == ADA
    assert shown["output"] == {"greet": [GREETED]}
    # As the read API answers it (GET /v1/executions/{id}).
    answered = read_as_the_api(services, db_target, org, kept_after)
    assert answered["input"] == ADA and answered["output"] == {"greet": [GREETED]}
    assert "pinned_payload" not in answered
    # The log keeps ciphertext of the pruned ones; it no longer opens.
    pruned = workflow_app.repository.get(gone.execution_id)
    assert services.runner.payloads.open(org, pruned.id, "input", pruned.input) == ERASED
    assert counters(db_target, org) == counted
    assert verify(projector).ok

    # Erasing the subject erases the pinned copy too.
    payloads = services.runner.payloads
    scope = payloads.subject_scope(org, "cust-ada-7731")
    keyring.destroy(org, KeyPurpose.SUBJECT, scope, "apikey:t")
    payloads.forget(org, KeyPurpose.SUBJECT, scope)
    assert pinned_copy(services, db_target, org, kept_after) == ERASED
