"""Activation and the webhook trigger, in the domain: no database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domain.engine import compile_plan, run
from domain.errors import WorkflowDeleted, WorkflowInactive, WorkflowInvalid
from domain.meta import EventMeta
from domain.triggers import activation_problems, webhook_routes
from domain.webhooks import WebhookBodyInvalid, parse_body, webhook_item
from domain.workflow import Workflow
from tests.helpers import noop, trigger, webhook, webhook_body, workflow_body
from tests.unit.test_engine import FakeWorld

META = EventMeta(org_id="acme", actor="apikey:1", correlation_id="req-1")


def _new(body: dict[str, Any] | None = None) -> Workflow:
    workflow = Workflow.create(
        workflow_id=uuid.uuid4(), definition=body or webhook_body(), meta=META
    )
    workflow.collect_events()
    return workflow


def _replay(events: list[Any]) -> Workflow:
    state: Any = None
    for e in events:
        state = e.mutate(state)
    assert isinstance(state, Workflow)
    return state


def test_activation_is_recorded_and_leaves_the_revision() -> None:
    workflow = _new()
    assert workflow.active is False
    assert workflow.activate(META) is True
    [activated] = workflow.collect_events()
    assert type(activated).__qualname__ == "Workflow.Activated"
    assert activated.meta["actor"] == "apikey:1"
    assert workflow.active is True
    assert workflow.revision == 1 and workflow.version == 2
    assert workflow.deactivate(META) is True
    [deactivated] = workflow.collect_events()
    assert type(deactivated).__qualname__ == "Workflow.Deactivated"
    assert workflow.active is False and workflow.revision == 1


def test_switching_to_the_state_it_is_in_records_nothing() -> None:
    workflow = _new()
    assert workflow.deactivate(META) is False
    workflow.activate(META)
    workflow.collect_events()
    assert workflow.activate(META) is False
    assert workflow.collect_events() == []
    assert workflow.active is True


def test_replay_gives_the_same_active_state() -> None:
    workflow = Workflow.create(workflow_id=uuid.uuid4(), definition=webhook_body(), meta=META)
    workflow.activate(META)
    workflow.update({"name": "renamed"}, META)
    events = list(workflow.collect_events())
    replayed = _replay(events)
    assert replayed.active is True and replayed.revision == 2 and replayed.name == "renamed"
    workflow.deactivate(META)
    assert _replay(events + list(workflow.collect_events())).active is False


def test_a_deleted_workflow_cannot_be_switched_and_is_inactive() -> None:
    workflow = _new()
    workflow.activate(META)
    workflow.delete(META)
    assert workflow.active is False and workflow.deleted
    with pytest.raises(WorkflowDeleted):
        workflow.activate(META)
    with pytest.raises(WorkflowDeleted):
        workflow.deactivate(META)


def test_a_workflow_without_a_firing_trigger_cannot_be_activated() -> None:
    workflow = _new(workflow_body())  # manual_trigger only
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.activate(META)
    [problem] = caught.value.problems
    assert problem.loc == "nodes" and "webhook_trigger" in problem.msg
    assert workflow.active is False and workflow.collect_events() == []


def test_one_route_twice_in_a_workflow_cannot_be_activated() -> None:
    nodes = [
        webhook("h1", "a/b"),
        webhook("h2", "a/b"),
        webhook("h3", "a/b", method="PUT"),
        noop("x"),
    ]
    connections = [{"from": h, "to": "x"} for h in ("h1", "h2", "h3")]
    workflow = _new(workflow_body(nodes=nodes, connections=connections))
    with pytest.raises(WorkflowInvalid) as caught:
        workflow.activate(META)
    [problem] = caught.value.problems
    assert problem.loc == "nodes[1].parameters.path"
    assert "POST a/b" in problem.msg and "'h1'" in problem.msg


def test_an_active_workflow_cannot_lose_its_triggers_by_an_edit() -> None:
    workflow = _new()
    workflow.activate(META)
    workflow.collect_events()
    manual_only = {"nodes": [trigger(), noop("a")], "connections": [{"from": "start", "to": "a"}]}
    with pytest.raises(WorkflowInvalid):
        workflow.update(manual_only, META)
    assert workflow.collect_events() == [] and workflow.revision == 1
    workflow.deactivate(META)
    assert workflow.update(manual_only, META) is True  # inactive: any valid definition


def test_webhook_routes_of_a_definition() -> None:
    nodes = [trigger(), webhook("h", "x/y", "PUT"), noop("a")]
    [route] = webhook_routes(nodes)
    assert (route.node_id, route.method, route.path) == ("h", "PUT", "x/y")
    assert route.parameters.auth.type == "none"
    assert activation_problems(nodes) == []


def test_the_webhook_item_hides_secret_headers() -> None:
    item = webhook_item(
        {"order": 1},
        {
            "Content-Type": "application/json",
            "Authorization": "Bearer x",
            "Cookie": "a=b",
            "X-Webhook-Token": "t",
            "X-Sig": "s",
        },
        {"page": "2"},
        secret_headers=frozenset({"x-sig"}),
    )
    assert item == {
        "body": {"order": 1},
        "headers": {"content-type": "application/json"},
        "query": {"page": "2"},
    }


def test_the_webhook_trigger_starts_the_run_with_the_request_item() -> None:
    definition = webhook_body()
    item = webhook_item({"order": 7}, {"user-agent": "curl"}, {})
    outcome = run(compile_plan(definition), item, ports=FakeWorld().ports())
    assert outcome.status == "succeeded"
    assert outcome.output == {"a": [item]}


@pytest.mark.parametrize(
    ("raw", "content_type", "expected"),
    [
        (b"", "application/json", None),
        (b'{"a": [1, 2]}', "application/json; charset=utf-8", {"a": [1, 2]}),
        (b'{"a": 1}', "application/cloudevents+json", {"a": 1}),
        (b"a=1&b=&a=2&a=3", "application/x-www-form-urlencoded", {"a": ["1", "2", "3"], "b": ""}),
        (b"hello", "text/plain", "hello"),
        (b"<xml/>", None, "<xml/>"),
    ],
)
def test_bodies_are_read_by_their_content_type(
    raw: bytes, content_type: str | None, expected: Any
) -> None:
    assert parse_body(raw, content_type) == expected


@pytest.mark.parametrize(
    ("raw", "content_type", "fragment"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"\xff", "text/plain", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
    ],
)
def test_unreadable_bodies_are_refused(raw: bytes, content_type: str, fragment: str) -> None:
    with pytest.raises(WebhookBodyInvalid, match=fragment):
        parse_body(raw, content_type)


def test_rotating_a_secret_needs_an_active_hook_that_has_one() -> None:
    guarded = webhook("hook", "g")
    guarded["parameters"]["auth"] = {"type": "header_token"}
    workflow = _new(
        workflow_body(nodes=[guarded, noop("a")], connections=[{"from": "hook", "to": "a"}])
    )
    with pytest.raises(WorkflowInactive):
        workflow.rotate_webhook_secret("hook", META)
    workflow.activate(META)
    with pytest.raises(WorkflowInvalid, match="'a'"):
        workflow.rotate_webhook_secret("a", META)
    workflow.collect_events()
    workflow.rotate_webhook_secret("hook", META)
    [rotated] = workflow.collect_events()
    assert type(rotated).__qualname__ == "Workflow.WebhookSecretRotated"
    assert rotated.node_id == "hook" and workflow.revision == 1
