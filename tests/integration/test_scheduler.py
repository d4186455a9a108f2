"""The scheduler on the real PostgreSQL, driven by a fake clock: each tick is called by hand.

A database of its own: the test apps of other modules run a scheduler on
the shared one, which would fire these workflows on the real clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError

from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.history import History
from commands.models import UpdateWorkflow
from commands.schedules import ScheduleFiring
from commands.tenancy import OrganisationCommands, cli_actor
from domain.execution import Execution
from domain.timetable import scheduled_execution_id, timetable_id
from domain.workflow import WorkflowActivatedEvent
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE
from infrastructure.settings import Settings
from reporunner.scheduler import Scheduler
from reporunner.wiring import create_execution_services, create_workflow_application
from tests.helpers import noop, scratch_database, workflow_body

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_scheduler") as target:
        yield target


@pytest.fixture(scope="module")
def app(target: PgTarget, app_settings: Settings) -> Iterator[WorkflowApplication]:
    built = create_workflow_application(target, app_settings)
    yield built
    built.close()


@pytest.fixture(scope="module")
def workflows(app: WorkflowApplication) -> WorkflowCommands:
    return WorkflowCommands(app)


def scheduler(app: WorkflowApplication, target: PgTarget, grace_s: float = 60) -> Scheduler:
    return Scheduler(app, target, tick_s=0.1, grace=timedelta(seconds=grace_s), max_fires=100)


def ctx(org: str) -> CommandContext:
    return CommandContext(org_id=org, actor="apikey:t", correlation_id=f"req-{uuid.uuid4().hex}")


def schedule_node(node_id: str = "tick", **parameters: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "schedule_trigger",
        "parameters": {
            "overlap": "allow_all",
            **({} if "cron" in parameters else {"interval_s": 1}),
            **parameters,
        },
    }


def scheduled_workflow(
    workflows: WorkflowCommands, org: str, activated_at: datetime, **parameters: Any
) -> UUID:
    """A workflow ``tick`` -> ``a``, activated at ``activated_at`` on the fake clock."""
    body = workflow_body(
        "scheduled",
        nodes=[schedule_node(**parameters), noop("a")],
        connections=[{"from": "tick", "to": "a"}],
    )
    created = workflows.create(CreateWorkflow(**body), ctx(org))
    activate(workflows, created.workflow_id, org, activated_at)
    return created.workflow_id


def activate(workflows: WorkflowCommands, workflow_id: UUID, org: str, when: datetime) -> None:
    """Activate with the event stamped ``when``: the fake clock's moment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WorkflowActivatedEvent, "create_timestamp", staticmethod(lambda: when))
        workflows.activate(workflow_id, workflows.get(workflow_id, org).revision, ctx(org))


def executions(app: WorkflowApplication, workflow_id: UUID) -> list[Execution]:
    with app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            f"SELECT DISTINCT originator_id FROM {EVENTS_TABLE} WHERE topic = %s",
            ("domain.execution:Execution.Queued",),
        )
        ids = [row["originator_id"] for row in curs.fetchall()]
    found = [app.repository.get(i) for i in ids]
    return sorted(
        (e for e in found if e.workflow_id == workflow_id), key=lambda e: e.input["scheduled_at"]
    )


def instants(app: WorkflowApplication, workflow_id: UUID) -> list[str]:
    return [e.input["scheduled_at"] for e in executions(app, workflow_id)]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


def test_every_instant_fires_once_however_often_and_by_whom_it_is_ticked(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0))
    one, two = scheduler(app, target), scheduler(app, target)
    for moment in (0.5, 1.2, 1.2, 2.0, 3.7):
        for each in (one, two):  # both act as leaders: the split brain case
            each.follow()
            each.tick(at(moment))
    assert instants(app, workflow_id) == [iso(1), iso(2), iso(3)]
    [first, *_] = executions(app, workflow_id)
    assert first.trigger == "schedule" and first.workflow_revision == 1
    assert first.id == scheduled_execution_id(workflow_id, "tick", at(1))
    assert first.created_by == "scheduler:tick"
    assert app.event_store.find_idempotency(org, f"schedule:{workflow_id}/tick/{iso(1)}")


def test_the_revision_current_at_firing_time_fires(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target)
    ticking.follow()
    ticking.tick(at(1))
    workflows.update(workflow_id, UpdateWorkflow(name="renamed"), 1, ctx(org))
    ticking.follow()
    ticking.tick(at(2))
    assert [e.workflow_revision for e in executions(app, workflow_id)] == [1, 2]


def test_only_an_active_workflow_fires_and_a_pause_fires_nothing_it_slept_through(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target)
    ticking.follow()
    ticking.tick(at(1))
    workflows.deactivate(workflow_id, 1, ctx(org))
    ticking.follow()
    ticking.tick(at(5))
    assert instants(app, workflow_id) == [iso(1)]
    activate(workflows, workflow_id, org, at(8.5))
    ticking.follow()
    ticking.tick(at(10))
    # Instants 2-8 fell in the pause: never fired, never "missed".
    assert instants(app, workflow_id) == [iso(1), iso(9), iso(10)]
    assert _decisions(app, org, "Timetable.Missed") == []


def test_skip_overlap_records_why_each_instant_was_skipped(
    app: WorkflowApplication,
    workflows: WorkflowCommands,
    target: PgTarget,
    org: str,
    app_settings: Settings,
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0), overlap="skip")
    ticking = scheduler(app, target)
    ticking.follow()
    ticking.tick(at(1))
    # Nothing has run the first execution: it has not ended, so 2 and 3 overlap it.
    ticking.tick(at(2))
    ticking.tick(at(3))
    assert instants(app, workflow_id) == [iso(1)]
    skipped = _decisions(app, org, "Timetable.Skipped")
    first = str(scheduled_execution_id(workflow_id, "tick", at(1)))
    assert [s["instant"] for s in skipped] == [iso(2), iso(3)]
    assert all(s["workflow_id"] == str(workflow_id) and s["node_id"] == "tick" for s in skipped)
    assert skipped[0]["reason"] == f"overlap skip: execution {first} is still running"
    # Once it has ended, the next instant fires.
    _run_queued(app, workflows, target, app_settings)
    ticking.tick(at(4))
    assert instants(app, workflow_id) == [iso(1), iso(4)]


def test_buffer_one_keeps_one_instant_and_fires_it_when_the_run_ends(
    app: WorkflowApplication,
    workflows: WorkflowCommands,
    target: PgTarget,
    org: str,
    app_settings: Settings,
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0), overlap="buffer_one")
    ticking = scheduler(app, target)
    ticking.follow()
    for moment in (1, 2, 3):
        ticking.tick(at(moment))
    assert instants(app, workflow_id) == [iso(1)]
    assert [b["instant"] for b in _decisions(app, org, "Timetable.Buffered")] == [iso(2)]
    assert [s["instant"] for s in _decisions(app, org, "Timetable.Skipped")] == [iso(3)]
    _run_queued(app, workflows, target, app_settings)
    ticking.tick(at(3.5))
    assert instants(app, workflow_id) == [iso(1), iso(2)]


@pytest.mark.parametrize(
    ("catch_up", "fired_after_downtime"),
    [
        ("skip_missed", [50, 60, 70]),  # within the grace of 60 s only
        ("run_latest", [70]),  # the newest one stands for all
        ("run_all", [40, 50, 60, 70]),  # all in the 30 s window
    ],
)
def test_catch_up_after_downtime_follows_the_policy_and_records_what_it_gave_up(
    app: WorkflowApplication,
    workflows: WorkflowCommands,
    target: PgTarget,
    org: str,
    catch_up: str,
    fired_after_downtime: list[int],
) -> None:
    workflow_id = scheduled_workflow(
        workflows, org, at(0), interval_s=10, catch_up=catch_up, catch_up_window_s=30
    )
    # run_latest only fires when nothing is on time: a short grace for it.
    ticking = scheduler(app, target, grace_s=0 if catch_up == "run_latest" else 20)
    ticking.follow()
    ticking.tick(at(10))
    ticking.tick(at(70))  # down from 10 s to 70 s
    assert instants(app, workflow_id) == [iso(10), *(iso(s) for s in fired_after_downtime)]
    [missed] = _decisions(app, org, "Timetable.Missed")
    assert missed["after"] == iso(10)
    assert missed["through"] == iso(fired_after_downtime[0] - 10)
    assert missed["reason"].startswith(f"catch_up {catch_up}")


def test_a_long_downtime_is_one_missed_range_not_every_instant(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target, grace_s=5)
    ticking.follow()
    a_week = 7 * 24 * 3600
    ticking.tick(at(a_week))
    fired = instants(app, workflow_id)
    assert len(fired) == 6 and fired[-1] == iso(a_week)  # the 5 s of grace, and now
    [missed] = _decisions(app, org, "Timetable.Missed")
    # Walked at most MAX_CATCH_UP instants, then one bound before the grace.
    assert missed["after"] == iso(0) and missed["through"] == iso(a_week - 6)


def test_one_failing_trigger_does_not_stop_the_others(
    app: WorkflowApplication,
    workflows: WorkflowCommands,
    target: PgTarget,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = scheduled_workflow(workflows, org, at(0))
    healthy = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target)
    real_tick = ScheduleFiring.tick

    def tick(self: ScheduleFiring, workflow_id: UUID, *args: Any, **kwargs: Any) -> Any:
        if workflow_id == broken:
            raise RuntimeError("a bug in one workflow's schedule")
        return real_tick(self, workflow_id, *args, **kwargs)

    monkeypatch.setattr(ScheduleFiring, "tick", tick)
    ticking.follow()
    ticking.tick(at(1))
    assert instants(app, broken) == [] and instants(app, healthy) == [iso(1)]


def test_the_index_follows_edits_that_add_and_remove_schedule_triggers(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target)
    ticking.follow()
    assert (workflow_id, "tick") in {(t.workflow_id, t.node_id) for t in ticking.index.triggers()}
    body = workflow_body(
        "scheduled",
        nodes=[schedule_node("other", cron="0 9 * * *"), noop("a")],
        connections=[{"from": "other", "to": "a"}],
    )
    workflows.update(
        workflow_id,
        UpdateWorkflow(nodes=body["nodes"], connections=body["connections"]),
        1,
        ctx(org),
    )
    ticking.follow()
    mine = [t for t in ticking.index.triggers() if t.workflow_id == workflow_id]
    assert [(t.node_id, t.schedule.cron) for t in mine] == [("other", "0 9 * * *")]
    workflows.delete(workflow_id, 2, ctx(org))
    ticking.follow()
    assert all(t.workflow_id != workflow_id for t in ticking.index.triggers())
    assert timetable_id(workflow_id, "tick") != timetable_id(workflow_id, "other")


def _decisions(app: WorkflowApplication, org: str, type_: str) -> list[dict[str, Any]]:
    entries = History(app).org_events(org, after_position=0, limit=500, type_=type_)
    return [entry.as_json()["schedule"] for entry in entries]


def _run_queued(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, settings: Settings
) -> None:
    services = create_execution_services(app, workflows, target, settings)
    try:
        while claims := services.queue.claim("test-worker", 30):
            for claim in claims:
                services.runner.run_claimed(claim.execution_id, claim.claims, "test-worker")
    finally:
        services.close()


def test_a_suspended_organisations_schedules_wait_for_its_reinstatement(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    from commands.tenancy import OrganisationCommands, cli_actor

    organisations = OrganisationCommands(app)
    organisations.create(org, "", {}, cli_actor())
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target)
    ticking.follow()
    ticking.tick(at(1))
    assert instants(app, workflow_id) == [iso(1)]
    organisations.suspend(org, "unpaid", cli_actor())
    ticking.tick(at(3))
    assert instants(app, workflow_id) == [iso(1)]  # nothing fired while suspended
    organisations.reinstate(org, cli_actor())
    ticking.tick(at(4))
    # Within the grace period the instants it slept through fire late, as after downtime.
    assert instants(app, workflow_id) == [iso(1), iso(2), iso(3), iso(4)]


def _day_count(app: WorkflowApplication, org: str, day: datetime) -> int | None:
    with app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            "SELECT executions FROM organisation_day_executions WHERE org_id = %s AND day = %s",
            (org, day.date()),
        )
        row = curs.fetchone()
    return None if row is None else int(row["executions"])


def test_scheduled_runs_count_against_the_organisations_executions_per_day(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    OrganisationCommands(app).create(org, "limited", {"executions_per_day": 2}, cli_actor())
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = scheduler(app, target)
    ticking.follow()
    ticking.tick(at(1.2))
    ticking.tick(at(3.5))
    assert instants(app, workflow_id) == [iso(1), iso(2)]
    assert _day_count(app, org, T0) == 2
    (refused,) = _decisions(app, org, "Timetable.Skipped")
    assert refused["instant"] == iso(3)
    assert "executions_per_day" in refused["reason"] and org in refused["reason"]


def test_a_global_limit_counts_scheduled_runs_of_organisations_without_their_own(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    workflow_id = scheduled_workflow(workflows, org, at(0))
    ticking = Scheduler(
        app, target, tick_s=0.1, grace=timedelta(seconds=60), max_fires=100, executions_per_day=1
    )
    ticking.follow()
    ticking.tick(at(2.5))
    assert instants(app, workflow_id) == [iso(1)]
    assert _day_count(app, org, T0) == 1


def test_a_fire_that_finds_the_counter_full_at_its_save_records_nothing(
    app: WorkflowApplication, workflows: WorkflowCommands, target: PgTarget, org: str
) -> None:
    """The race with the write API: room was read, then the API took the last run."""
    OrganisationCommands(app).create(org, "limited", {"executions_per_day": 1}, cli_actor())
    workflow_id = scheduled_workflow(workflows, org, at(0))
    firing = ScheduleFiring(app, grace=timedelta(seconds=60))
    room = firing.day_limit.room(org, at(1))
    assert (room.limit, room.left) == (1, 1)
    with app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            "INSERT INTO organisation_day_executions (org_id, day, executions) VALUES (%s, %s, 1)",
            (org, T0.date()),
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(firing.day_limit, "room", lambda *_: room)  # the stale read
        with pytest.raises(IntegrityError):
            firing.tick(workflow_id, "tick", at(1.2))
    assert instants(app, workflow_id) == []
    assert _day_count(app, org, T0) == 1
    # The next tick reads the full counter and records the instant as refused.
    firing.tick(workflow_id, "tick", at(1.3))
    assert instants(app, workflow_id) == []
    assert [s["instant"] for s in _decisions(app, org, "Timetable.Skipped")] == [iso(1)]
