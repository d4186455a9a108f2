"""Batched claims: one statement claims several executions and reads their events;
the worker claims only for idle threads and gives back what none started."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from commands import CommandContext, CreateWorkflow, WorkflowCommands
from commands.models import RunWorkflow
from domain.execution import Execution
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import (
    ExecutionServices,
    create_execution_services,
    create_worker,
    create_workflow_application,
)
from tests.helpers import scratch_database, trigger, workflow_body


@pytest.fixture
def own(server_target: PgTarget, app_settings: Settings) -> Iterator[ExecutionServices]:
    # A database of its own: the shared one's queue has other tests' rows.
    with scratch_database(server_target, "reporunner_batch") as target:
        app = create_workflow_application(target, app_settings)
        built = create_execution_services(app, WorkflowCommands(app), target, app_settings)
        yield built
        built.close()
        app.close()


def _ctx() -> CommandContext:
    return CommandContext(org_id="org", actor="apikey:t", correlation_id=uuid.uuid4().hex)


def _queue(services: ExecutionServices, count: int) -> list[uuid.UUID]:
    body = workflow_body(
        nodes=[trigger(), {"id": "n", "type": "noop", "parameters": {}}],
        connections=[{"from": "start", "to": "n"}],
    )
    workflows = services.commands.workflows
    workflow_id = workflows.create(CreateWorkflow(**body), _ctx()).workflow_id
    return [
        services.commands.start(
            workflow_id, RunWorkflow(mode="async", input={"i": i}), _ctx()
        ).execution_id
        for i in range(count)
    ]


def _rows(target: PgTarget) -> dict[uuid.UUID, tuple[Any, int]]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute("SELECT execution_id, claimed_by, claims FROM execution_queue")
        return {row[0]: (row[1], row[2]) for row in rows}


def test_a_batch_claim_reads_each_execution_as_a_load_would(own: ExecutionServices) -> None:
    queued = _queue(own, 5)
    loaded = own.queue.claim_loaded("w", 30, 3)
    assert len(loaded) == 3 and {entry.claim.execution_id for entry in loaded} < set(queued)
    for entry in loaded:
        assert entry.claim.claims == 1
        versions = [event.originator_version for event in entry.events]
        assert versions == sorted(versions) and versions
        rebuilt = own.runner.rebuild(entry.events)
        expected = own.runner.load(entry.claim.execution_id)
        assert isinstance(rebuilt, Execution) and isinstance(expected, Execution)
        assert rebuilt.__dict__ == expected.__dict__
    rows = _rows(own.queue.target)
    claimed = {entry.claim.execution_id for entry in loaded}
    assert {i for i, (by, _) in rows.items() if by == "w"} == claimed
    assert sum(1 for by, _ in rows.values() if by is None) == 2
    # The rest in one more claim; then nothing is left to claim.
    assert {e.claim.execution_id for e in own.queue.claim_loaded("w", 30, 10)} == (
        set(queued) - claimed
    )
    assert own.queue.claim_loaded("w", 30, 10) == []


def test_a_row_without_events_is_claimed_with_none_and_dropped_by_the_runner(
    own: ExecutionServices,
) -> None:
    ghost = uuid.uuid4()
    with psycopg.connect(own.queue.target.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO execution_queue (execution_id, org_id, workflow_id) VALUES (%s, 'o', %s)",
            (ghost, uuid.uuid4()),
        )
    [entry] = own.queue.claim_loaded("w", 30, 5)
    assert entry.claim.execution_id == ghost and entry.events == []
    assert own.runner.run_claimed(ghost, entry.claim.claims, "w", stored=entry.events) is None
    assert ghost not in _rows(own.queue.target)


def test_claims_no_thread_started_are_given_back_when_the_worker_stops(
    own: ExecutionServices, app_settings: Settings
) -> None:
    queued = _queue(own, 3)
    worker = create_worker(own, app_settings, concurrency=2)
    # As if claimed for threads that stopped before taking them.
    worker._ready.extend(own.queue.claim_loaded(worker.worker_id, 30, 2))
    worker._release_unstarted()
    assert not worker._ready
    assert _rows(own.queue.target) == {i: (None, 0) for i in queued}


def test_a_worker_runs_a_backlog_larger_than_its_threads_each_run_once(
    own: ExecutionServices, app_settings: Settings
) -> None:
    queued = _queue(own, 25)
    stop = threading.Event()
    worker = create_worker(own, app_settings, concurrency=3)
    threads = worker.start(stop)
    try:
        deadline = time.monotonic() + 60
        while _rows(own.queue.target):
            assert time.monotonic() < deadline, _rows(own.queue.target)
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    for execution_id in queued:
        execution = own.runner.load(execution_id)
        assert execution is not None and execution.status == "succeeded"
        assert [run["node_id"] for run in execution.node_runs] == ["start", "n"]
        assert execution.worker_id == worker.worker_id
        # One start, one end: no run was started twice.
        started = [e for e in own.runner.app.event_store.select_events(execution_id)]
        assert sum(e.topic.endswith(".Started") for e in started) == 1
