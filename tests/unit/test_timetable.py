"""The Timetable aggregate (domain/timetable.py) and the schedule trigger in definitions: no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.engine import compile_plan, run
from domain.errors import WorkflowInvalid
from domain.meta import EventMeta
from domain.timetable import (
    RECENT_FIRED,
    Timetable,
    instant_key,
    scheduled_execution_id,
    timetable_id,
)
from domain.triggers import activation_problems, schedule_triggers
from domain.workflow import Workflow
from tests.helpers import noop, workflow_body
from tests.unit.test_engine import FakeWorld

META = EventMeta(org_id="acme", actor="scheduler:tick", correlation_id="schedule:x")
WORKFLOW = uuid.UUID("9d1fe56f-0041-4186-8385-6e00b190ed11")
T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_timetable() -> Timetable:
    return Timetable.create(workflow_id=WORKFLOW, node_id="tick", meta=META)


def replay(timetable: Timetable) -> Timetable:
    state: Any = None
    for event in timetable.collect_events():
        state = event.mutate(state)
    assert isinstance(state, Timetable)
    return state


def names(timetable: Timetable) -> list[str]:
    return [type(e).__qualname__.split(".")[1] for e in timetable.pending_events]


def test_ids_and_keys_follow_from_workflow_node_and_instant_alone() -> None:
    assert timetable_id(WORKFLOW, "tick") == new_timetable().id
    assert timetable_id(WORKFLOW, "tick") != timetable_id(WORKFLOW, "tock")
    # The same instant however written (another zone, same moment): one id, one key.
    berlin = at(3600).astimezone(datetime.now().astimezone().tzinfo)
    assert scheduled_execution_id(WORKFLOW, "tick", berlin) == scheduled_execution_id(
        WORKFLOW, "tick", at(3600)
    )
    assert instant_key(WORKFLOW, "tick", at(1)) == f"schedule:{WORKFLOW}/tick/2026-03-29T00:00:01Z"
    assert scheduled_execution_id(WORKFLOW, "tick", at(1)) != scheduled_execution_id(
        WORKFLOW, "tick", at(2)
    )


def test_fire_skip_and_buffer_by_the_overlap_policy() -> None:
    timetable = new_timetable()
    assert timetable.take(at(1), overlap="skip", running=[], revision=3, meta=META) == "fire"
    first = str(scheduled_execution_id(WORKFLOW, "tick", at(1)))
    assert timetable.recent == [first] and timetable.last == at(1)
    assert timetable.take(at(2), overlap="skip", running=[first], revision=3, meta=META) == "skip"
    assert timetable.take(at(3), overlap="buffer_one", running=[first], revision=3, meta=META) == (
        "buffer"
    )
    assert timetable.buffered == at(3)
    assert timetable.take(at(4), overlap="buffer_one", running=[first], revision=3, meta=META) == (
        "skip"
    )
    assert timetable.release(running=[first], revision=3, meta=META) is None
    assert timetable.release(running=[], revision=4, meta=META) == at(3)
    assert timetable.buffered is None and timetable.last == at(4)
    assert names(timetable) == ["Created", "Fired", "Skipped", "Buffered", "Skipped", "Fired"]
    skipped = timetable.pending_events[4]
    assert skipped.reason == (
        f"overlap buffer_one: execution {first} is still running "
        "and 2026-03-29T00:00:03Z waits behind it"
    )
    released = timetable.pending_events[5]
    assert (released.instant, released.revision, released.buffered) == (
        "2026-03-29T00:00:03Z",
        4,
        True,
    )
    assert released.workflow_id == str(WORKFLOW) and released.node_id == "tick"
    # Replaying the events gives the same state.
    again = replay(timetable)
    assert (again.last, again.buffered, again.recent) == (at(4), None, timetable.recent)


def test_allow_all_fires_whatever_runs() -> None:
    timetable = new_timetable()
    for second in range(1, 4):
        assert timetable.take(
            at(second), overlap="allow_all", running=["a", "b"], revision=1, meta=META
        ) == ("fire")


def test_an_instant_is_decided_once() -> None:
    timetable = new_timetable()
    timetable.take(at(5), overlap="skip", running=[], revision=1, meta=META)
    for instant in (at(5), at(4)):
        with pytest.raises(ValueError, match="not after the last decided"):
            timetable.take(instant, overlap="skip", running=[], revision=1, meta=META)
    with pytest.raises(ValueError, match="not after the last decided"):
        timetable.miss(after=at(0), through=at(5), reason="r", meta=META)
    with pytest.raises(ValueError, match="timezone-aware"):
        timetable.take(datetime(2026, 1, 1), overlap="skip", running=[], revision=1, meta=META)


def test_missed_range_moves_last_and_since_never_precedes_activation() -> None:
    timetable = new_timetable()
    assert timetable.since(at(7)) == at(7)  # never fired: from the activation
    timetable.miss(after=at(0), through=at(30), reason="catch_up skip_missed", meta=META)
    assert timetable.last == at(30)
    assert timetable.since(at(7)) == at(30)
    assert timetable.since(at(90)) == at(90)  # activated again after a pause
    with pytest.raises(ValueError, match="ends after it starts"):
        timetable.miss(after=at(40), through=at(40), reason="r", meta=META)


@given(st.lists(st.sampled_from(["fire", "skip", "buffer_one"]), max_size=60))
def test_recent_stays_bounded_and_last_only_moves_forward(steps: list[str]) -> None:
    timetable = new_timetable()
    running: list[str] = []
    last = None
    for second, step in enumerate(steps, start=1):
        if step == "fire":
            running = []
        timetable.release(running=running, revision=1, meta=META)
        overlap = "allow_all" if step == "fire" else step
        decision = timetable.take(
            at(second), overlap=overlap, running=running or ["x"], revision=1, meta=META
        )
        assert decision in ("fire", "skip", "buffer")
        assert last is None or timetable.last > last
        last = timetable.last
        assert len(timetable.recent) <= RECENT_FIRED
    fired = [e for e in timetable.pending_events if type(e).__qualname__ == "Timetable.Fired"]
    assert len({e.instant for e in fired}) == len(fired)  # no instant fired twice


def schedule_body(**parameters: Any) -> dict[str, Any]:
    return workflow_body(
        "scheduled",
        nodes=[
            {"id": "tick", "type": "schedule_trigger", "parameters": parameters},
            noop("a"),
        ],
        connections=[{"from": "tick", "to": "a"}],
    )


def test_a_schedule_trigger_is_a_node_type_that_activates_a_workflow() -> None:
    body = schedule_body(cron="30 2 * * *", timezone="Europe/Berlin", catch_up="run_latest")
    workflow = Workflow.create(workflow_id=uuid.uuid4(), definition=body, meta=META)
    assert activation_problems(workflow.nodes) == []
    assert workflow.activate(META) is True
    [trigger] = schedule_triggers(workflow.nodes)
    assert trigger.node_id == "tick" and trigger.schedule.catch_up == "run_latest"
    assert trigger.schedule.next_after(T0 - timedelta(hours=12)) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )  # 02:30 does not exist that night in Berlin: 03:30 CEST


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({}, "give exactly one of cron and interval_s"),
        ({"cron": "* * *"}, "five fields"),
        ({"interval_s": 0}, "greater than or equal to 1"),
        ({"interval_s": 5, "timezone": "Mars/Olympus"}, "unknown IANA time zone"),
        ({"interval_s": 5, "overlap": "queue"}, ".overlap: Input should be 'skip', 'buffer_one'"),
        ({"interval_s": 5, "catch_up": "all"}, ".catch_up: Input should be 'skip_missed'"),
        ({"interval_s": 5, "every": 3}, ".every: Extra inputs are not permitted"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_node_parameters(
    parameters: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(WorkflowInvalid) as refused:
        Workflow.create(workflow_id=uuid.uuid4(), definition=schedule_body(**parameters), meta=META)
    problems = refused.value.problems
    said = [f"{p.loc}: {p.msg}" for p in problems]
    assert any(s.startswith("nodes[0].parameters") and fragment in s for s in said), said


def test_the_trigger_step_passes_the_scheduled_instant_on() -> None:
    workflow = Workflow.create(
        workflow_id=uuid.uuid4(), definition=schedule_body(interval_s=60), meta=META
    )
    item = {"scheduled_at": "2026-03-29T00:01:00Z", "node_id": "tick"}
    outcome = run(compile_plan(workflow.definition()), item, ports=FakeWorld().ports())
    assert outcome.status == "succeeded"
    assert outcome.output == {"a": [item]}


def test_a_refused_instant_is_skipped_with_its_reason_and_would_fire_matches_take() -> None:
    timetable = new_timetable()
    assert timetable.would_fire(overlap="skip", running=[])
    assert not timetable.would_fire(overlap="skip", running=["run-1"])
    assert timetable.would_fire(overlap="allow_all", running=["run-1"])
    assert names(timetable) == ["Created"]  # asking records nothing
    timetable.refuse(at(1), reason="organisation 'acme' is at its limit", meta=META)
    assert names(timetable) == ["Created", "Skipped"]
    assert timetable.pending_events[-1].reason == "organisation 'acme' is at its limit"
    assert replay(timetable).last == at(1)
    with pytest.raises(ValueError, match="not after the last decided"):
        timetable.refuse(at(1), reason="again", meta=META)
