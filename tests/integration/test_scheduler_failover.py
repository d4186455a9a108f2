"""Two real ``reporunner serve --only scheduler`` processes, the active one killed twice.

A one-second interval for about 30 s on a database of its own; the leader
is found by its ``/readyz`` (``checks.scheduler``) and killed with SIGKILL,
then started again. Every instant from activation to the end fires exactly
once, and fires the revision current when it fired; the standby takes over
within ``TAKEOVER_LIMIT_S`` of each kill (measured by polling ``/readyz``,
printed).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from commands import CommandContext, CreateWorkflow, WorkflowCommands
from commands.history import History
from commands.models import UpdateWorkflow
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_workflow_application
from tests.helpers import free_port, noop, scratch_database, workflow_body
from tests.integration.test_cli import ROOT
from tests.integration.test_failover import TAKEOVER_LIMIT_S
from tests.integration.test_scheduler import executions

pytestmark = pytest.mark.slow


class SchedulerProcess:
    def __init__(self, target: PgTarget) -> None:
        self.port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("REPORUNNER_") and key != "REDIS_URL"
        }
        env |= {
            "DATABASE_URL": target.url(),
            # The run's one master key (tests/conftest.py): a start without it exits 2.
            "REPORUNNER_MASTER_KEY": os.environ["REPORUNNER_MASTER_KEY"],
            "REPORUNNER_LOG_FORMAT": "json",
            "REPORUNNER_SCHEDULER_TICK_S": "0.2",
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reporunner",
                "serve",
                "--only",
                "scheduler",
                "--no-migrate",
                # A role without an API answers /readyz on its metrics port only.
                "--metrics-port",
                str(self.port),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def role(self) -> str | None:
        """``leader`` or ``standby`` as it reports itself; None while it cannot answer."""
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
        except httpx.HTTPError:
            return None
        return str(answer.json()["checks"]["scheduler"])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def until(condition: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def leader_of(processes: list[SchedulerProcess]) -> SchedulerProcess | None:
    return next((p for p in processes if p.role() == "leader"), None)


def standing_by(processes: list[SchedulerProcess]) -> bool:
    return all(p.role() == "standby" for p in processes)


@pytest.fixture
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_failover") as target:
        yield target


def test_every_instant_fires_exactly_once_while_the_leader_is_killed_twice(
    target: PgTarget, app_settings: Settings, org: str
) -> None:
    app = create_workflow_application(target, app_settings)
    workflows = WorkflowCommands(app)
    ctx = CommandContext(org_id=org, actor="apikey:t", correlation_id="failover")
    body = workflow_body(
        "every second",
        nodes=[
            {
                "id": "tick",
                "type": "schedule_trigger",
                # Nothing runs the executions here, so none ever ends: allow_all.
                "parameters": {"interval_s": 1, "overlap": "allow_all"},
            },
            noop("a"),
        ],
        connections=[{"from": "tick", "to": "a"}],
    )
    workflow_id = workflows.create(CreateWorkflow(**body), ctx).workflow_id
    workflows.activate(workflow_id, 1, ctx)
    activated_at = workflows.get(workflow_id, org).activated_at
    processes = [SchedulerProcess(target), SchedulerProcess(target)]
    try:
        started = time.monotonic()

        def at(seconds: float) -> None:
            until(lambda: time.monotonic() - started >= seconds, timeout=60)

        takeovers = []
        for kill_at in (8, 20):
            leader = until(functools.partial(leader_of, processes))
            standbys = [p for p in processes if p is not leader]
            until(functools.partial(standing_by, standbys))  # started and caught up
            at(kill_at)
            leader.kill()
            killed_at = time.monotonic()
            until(functools.partial(leader_of, standbys))
            takeovers.append(time.monotonic() - killed_at)
            processes = [*standbys, SchedulerProcess(target)]
            if kill_at == 8:
                # Midway, an edit: instants fired after it run revision 2.
                at(14)
                workflows.update(workflow_id, UpdateWorkflow(name="edited"), 1, ctx)
        # A standby took over after each kill.
        until(lambda: leader_of(processes))
        at(30)
        workflows.deactivate(workflow_id, 2, ctx)
        time.sleep(1)  # a tick that loaded the workflow just before may still record
    finally:
        for process in processes:
            process.stop()
    print(f"\nscheduler takeover after kill -9: {', '.join(f'{t:.2f} s' for t in takeovers)}")
    assert max(takeovers) < TAKEOVER_LIMIT_S
    recorded = executions(app, workflow_id)
    missed = History(app).org_events(org, after_position=0, limit=10, type_="Timetable.Missed")
    edited_at = _event_time(app, org, workflow_id, "Workflow.Updated")
    deactivated_at = _event_time(app, org, workflow_id, "Workflow.Deactivated")
    app.close()

    fired = [datetime.fromisoformat(e.input["scheduled_at"]) for e in recorded]
    assert len(fired) == len(set(fired)), "an instant fired twice"
    first = activated_at.replace(microsecond=0) + timedelta(seconds=1)
    expected = [first + timedelta(seconds=n) for n in range(len(fired))]
    assert fired == expected, "an instant was missed"  # the grace covers each failover
    assert missed == []
    assert fired[-1] >= deactivated_at - timedelta(seconds=3)  # it fired to the end
    assert len(fired) >= 25
    # The revision current when it fired: 1 before the edit, 2 after it.
    for execution in recorded:
        assert execution.workflow_revision == (1 if execution.created_on < edited_at else 2)
    assert {e.workflow_revision for e in recorded} == {1, 2}
    assert execution.trigger == "schedule"


def _event_time(app: Any, org: str, workflow_id: UUID, type_: str) -> datetime:
    [entry] = History(app).org_events(
        org, after_position=0, limit=10, type_=type_, aggregate_id=workflow_id
    )
    return entry.timestamp
