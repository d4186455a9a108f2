"""Execution workers against the real PostgreSQL: queue, leases, a killed worker."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.models import RunWorkflow
from commands.workflow_runs import WorkflowRunsRecorder, runs_held_off
from domain.errors import ExecutionFinished
from domain.execution import Execution
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import ExecutionServices, create_execution_services, start_workers
from tests.helpers import trigger, workflow_body
from tests.integration.test_cli import ROOT, _url


@pytest.fixture
def services(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    db_target: PgTarget,
    app_settings: Settings,
) -> Iterator[ExecutionServices]:
    built = create_execution_services(workflow_app, commands, db_target, app_settings)
    yield built
    built.close()


def _ctx(org: str, key: str | None = None) -> CommandContext:
    return CommandContext(
        org_id=org,
        actor="apikey:t",
        correlation_id=f"req-{uuid.uuid4().hex[:8]}",
        idempotency_key=key,
    )


def _workflow(commands: WorkflowCommands, org: str, *nodes: dict[str, Any]) -> uuid.UUID:
    ids = [node["id"] for node in nodes]
    body = workflow_body(
        nodes=list(nodes), connections=[{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    )
    return commands.create(CreateWorkflow(**body), _ctx(org)).workflow_id


def _wait(ms: int) -> dict[str, Any]:
    return {"id": "nap", "type": "wait", "parameters": {"ms": ms}}


def _load(workflow_app: WorkflowApplication, execution_id: uuid.UUID) -> Execution:
    execution = workflow_app.repository.get(execution_id)
    assert isinstance(execution, Execution)
    return execution


def _until(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _running_node(execution: Execution) -> str | None:
    runs = execution.node_runs
    return runs[-1]["node_id"] if runs and runs[-1]["status"] == "running" else None


def _queue_rows(db_target: PgTarget, execution_id: uuid.UUID) -> int:
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM execution_queue WHERE execution_id = %s", (execution_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_queued_execution_can_be_canceled_before_a_worker_takes_it(
    record_runs: Any,
    services: ExecutionServices,
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    org: str,
) -> None:
    workflow_id = _workflow(commands, org, trigger())
    queued = services.commands.start(workflow_id, RunWorkflow(mode="async"), _ctx(org))
    assert queued.status == "queued" and _queue_rows(db_target, queued.execution_id) == 1
    canceled = services.commands.cancel(queued.execution_id, _ctx(org))
    assert canceled.status == "canceled" and _queue_rows(db_target, queued.execution_id) == 0
    with pytest.raises(ExecutionFinished):
        services.commands.cancel(queued.execution_id, _ctx(org))
    # The workflow's history records how the run ended.
    record_runs()
    workflow = workflow_app.repository.get(workflow_id)
    assert workflow.runs == 1  # type: ignore[attr-defined]


def test_runs_of_a_workflow_an_edit_holds_wait_for_the_edit(
    record_runs: Any,
    services: ExecutionServices,
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    org: str,
) -> None:
    # The follower never waits on the hold: the batch that holds a run of
    # the held workflow is refused whole, and recorded once the hold ends.
    held, other = _workflow(commands, org, trigger()), _workflow(commands, org, trigger())
    for workflow_id in (held, other):
        queued = services.commands.start(workflow_id, RunWorkflow(mode="async"), _ctx(org))
        services.commands.cancel(queued.execution_id, _ctx(org))

    def runs(workflow_id: uuid.UUID) -> int:
        return int(workflow_app.repository.get(workflow_id).runs)  # type: ignore[attr-defined]

    with runs_held_off(workflow_app, held):
        record_runs()
        assert (runs(held), runs(other)) == (0, 0)
    record_runs()
    assert (runs(held), runs(other)) == (1, 1)


def test_competing_workers_run_each_execution_exactly_once(
    services: ExecutionServices,
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    app_settings: Settings,
    org: str,
) -> None:
    workflow_id = _workflow(commands, org, trigger(), {"id": "n", "type": "noop", "parameters": {}})
    ids = [
        services.commands.start(
            workflow_id, RunWorkflow(mode="async", input={"i": i}), _ctx(org)
        ).execution_id
        for i in range(30)
    ]
    stop = threading.Event()
    threads = start_workers(services, app_settings, stop, concurrency=3)
    other = create_execution_services(workflow_app, commands, services.queue.target, app_settings)
    threads += start_workers(other, app_settings, stop, concurrency=3)
    try:
        _until(lambda: all(_load(workflow_app, i).is_finished for i in ids))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        other.close()
    # Two recorders racing over the same log still record each run once.
    racers = [
        threading.Thread(target=WorkflowRunsRecorder(workflow_app, batch_size=7).catch_up)
        for _ in range(2)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    WorkflowRunsRecorder(workflow_app).catch_up()
    for execution_id in ids:
        execution = _load(workflow_app, execution_id)
        assert execution.status == "succeeded"
        assert [run["node_id"] for run in execution.node_runs] == ["start", "n"]
    workflow = workflow_app.repository.get(workflow_id)
    assert workflow.runs == 30  # type: ignore[attr-defined]
    with psycopg.connect(services.queue.target.conninfo()) as conn:
        recorded = conn.execute(
            "SELECT count(*) FROM reporunner_events WHERE originator_id = %s "
            "AND topic LIKE '%%Workflow.Executed'",
            (workflow_id,),
        ).fetchone()
    assert recorded == (30,)


def test_a_killed_worker_leaves_nothing_running(
    services: ExecutionServices,
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    app_settings: Settings,
    db_target: PgTarget,
    org: str,
) -> None:
    workflow_id = _workflow(commands, org, trigger(), _wait(60_000))
    started = services.commands.start(workflow_id, RunWorkflow(mode="async"), _ctx(org))
    env = {
        **os.environ,
        "DATABASE_URL": _url(db_target),
        "REPORUNNER_LOG_FORMAT": "json",
        "REPORUNNER_EXECUTION_LEASE_S": "2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "reporunner", "worker", "--concurrency", "1", "--no-migrate"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it in the middle of the wait node, which it recorded as started.
        _until(lambda: _running_node(_load(workflow_app, started.execution_id)) == "nap")
    finally:
        worker.kill()
        worker.wait()
    assert _load(workflow_app, started.execution_id).status == "running"
    # A surviving worker takes the row over once the dead one's lease expires.
    stop = threading.Event()
    threads = start_workers(services, app_settings, stop, concurrency=1)
    try:
        _until(lambda: _load(workflow_app, started.execution_id).is_finished, timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    execution = _load(workflow_app, started.execution_id)
    assert execution.status == "crashed" and "stopped responding" in (execution.error or "")
    assert execution.node_runs[-1]["status"] == "interrupted"
    assert _queue_rows(db_target, started.execution_id) == 0


def test_a_sync_run_recorded_but_not_answerable_still_names_its_execution(
    services: ExecutionServices,
    commands: WorkflowCommands,
    org: str,
    db_target: PgTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The database goes away between the commit and the answer: the run is in
    # the log, so the client must learn its id (503 with it), never a bare 500.
    from commands.errors import ExecutionAnswerUnavailable

    workflow_id = _workflow(commands, org, trigger(), {"id": "n", "type": "noop", "parameters": {}})

    def gone(*_args: Any) -> int:
        raise psycopg.OperationalError("the database went away")

    # The answer no longer reads the log (the save returned the position), so
    # the failure is injected where the answer is made.
    monkeypatch.setattr(services.commands, "_result", gone)
    with pytest.raises(ExecutionAnswerUnavailable) as raised:
        services.commands.start(workflow_id, RunWorkflow(input={}, mode="sync"), _ctx(org))
    execution_id = raised.value.execution_id
    monkeypatch.undo()
    recorded = services.runner.load(execution_id)
    assert recorded is not None and recorded.status == "succeeded"


def test_a_keyed_sync_request_waits_for_the_run_of_an_identical_one(
    services: ExecutionServices, commands: WorkflowCommands, org: str
) -> None:
    # The second request finds the first one's run recorded but not finished:
    # it answers with the end, never with "running".
    workflow_id = _workflow(commands, org, trigger(), _wait(1000))
    key = f"k-{uuid.uuid4()}"
    answers: list[Any] = []

    def start() -> None:
        answers.append(
            services.commands.start(workflow_id, RunWorkflow(input={}, mode="sync"), _ctx(org, key))
        )

    first = threading.Thread(target=start)
    first.start()
    time.sleep(0.5)  # the first run is in its wait, recorded as running
    start()
    first.join()
    assert [answer.status for answer in answers] == ["succeeded", "succeeded"]
    assert answers[0].execution_id == answers[1].execution_id


def test_a_keyed_sync_request_whose_run_never_ends_gets_409_with_its_id(
    services: ExecutionServices, commands: WorkflowCommands, org: str
) -> None:
    # A run recorded as running whose process died mid-run (no one will end
    # it before its lease expires): past its timeout the identical request
    # answers 409 naming it, never "running".
    from commands.errors import ExecutionInProgress
    from commands.handlers import request_fingerprint
    from domain.meta import EventMeta
    from infrastructure.eventstore import IdempotencyRecord

    body = workflow_body(
        nodes=[trigger(), _wait(100)],
        connections=[{"from": "start", "to": "nap"}],
        settings={"timeout_ms": 100},
    )
    workflow_id = commands.create(CreateWorkflow(**body), _ctx(org)).workflow_id
    key = f"k-{uuid.uuid4()}"
    ctx = _ctx(org, key)
    command = RunWorkflow(input={}, mode="sync")
    meta = EventMeta(org_id=org, actor=ctx.actor, correlation_id=ctx.correlation_id)
    execution = Execution.create(
        execution_id=uuid.uuid4(),
        workflow_id=workflow_id,
        workflow_version=1,
        workflow_revision=1,
        mode="sync",
        input={},
        meta=meta,
    )
    execution.start(worker_id="api:gone", meta=meta)
    record = IdempotencyRecord(
        org_id=org,
        key=key,
        request_hash=request_fingerprint(ctx, "execute", workflow_id, None, command.model_dump()),
        aggregate_id=execution.id,
        aggregate_version=1,
        status_code=200,
    )
    services.commands.app.save(execution, idempotency=record)
    with pytest.raises(ExecutionInProgress) as raised:
        services.commands.start(workflow_id, command, ctx)
    assert raised.value.execution_id == execution.id
