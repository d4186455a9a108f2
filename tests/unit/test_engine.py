"""The execution engine, with fake ports: no network, no real sleeping, no database."""

from __future__ import annotations

import copy
import itertools
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.definition import validate_definition
from domain.engine import (
    EngineLimits,
    EnginePorts,
    ExecutionOutcome,
    ExecutionPlan,
    HttpFailure,
    HttpRequest,
    HttpResponse,
    NodeRun,
    compile_plan,
    outputs_needed,
    run,
)

# -- fakes and builders ----------------------------------------------------------


@dataclass
class FakeWorld:
    """Clock, sleep, HTTP and cancellation, all recorded; sleeping advances the clock."""

    now: float = 100.0
    sleeps: list[float] = field(default_factory=list)
    requests: list[HttpRequest] = field(default_factory=list)
    responses: list[HttpResponse | HttpFailure] = field(default_factory=list)
    cancel_after_checks: int | None = None
    cancel_checks: int = 0
    seconds_per_http_call: float = 0.0
    seconds_per_clock_read: float = 0.0

    def clock(self) -> float:
        self.now += self.seconds_per_clock_read
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def http(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        self.now += self.seconds_per_http_call
        response = self.responses.pop(0) if self.responses else HttpResponse(200, {}, {"ok": 1})
        if isinstance(response, HttpFailure):
            raise response
        return response

    def should_cancel(self) -> bool:
        self.cancel_checks += 1
        return (
            self.cancel_after_checks is not None and self.cancel_checks > self.cancel_after_checks
        )

    def ports(self) -> EnginePorts:
        return EnginePorts(
            http=self.http, sleep=self.sleep, clock=self.clock, should_cancel=self.should_cancel
        )


@dataclass
class Recorder:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def node_started(self, node_id: str, attempt: int) -> None:
        self.calls.append(("started", node_id, attempt))

    def node_succeeded(self, node_id: str, outputs: dict[str, list[Any]], attempt: int) -> None:
        self.calls.append(("succeeded", node_id, copy.deepcopy(outputs), attempt))

    def node_failed(self, node_id: str, error: str, attempt: int, will_retry: bool) -> None:
        self.calls.append(("failed", node_id, error, attempt, will_retry))

    def started_nodes(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "started"]


def node(node_id: str, node_type: str, **parameters: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "parameters": parameters}


def trigger(node_id: str = "start") -> dict[str, Any]:
    return node(node_id, "manual_trigger")


def edge(source: str, target: str, output: str | None = None) -> dict[str, Any]:
    connection = {"from": source, "to": target}
    if output is not None:
        connection["output"] = output
    return connection


def chain(*node_ids: str) -> list[dict[str, Any]]:
    return [edge(a, b) for a, b in itertools.pairwise(node_ids)]


def plan_of(
    nodes: list[dict[str, Any]],
    connections: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
) -> ExecutionPlan:
    """Compile a definition after checking it is one the API would have stored."""
    definition: dict[str, Any] = {
        "name": "wf",
        "description": "",
        "nodes": nodes,
        "connections": connections,
        "tags": [],
        "settings": settings or {},
    }
    validate_definition(**definition)
    return compile_plan(definition)


def execute(
    plan: ExecutionPlan,
    execution_input: Any = None,
    *,
    world: FakeWorld | None = None,
    recorder: Recorder | None = None,
    limits: EngineLimits | None = None,
) -> ExecutionOutcome:
    world = world or FakeWorld()
    return run(
        plan,
        {"x": 1} if execution_input is None else execution_input,
        ports=world.ports(),
        listener=recorder,
        limits=limits,
    )


# -- flow ---------------------------------------------------------------------------


def test_linear_chain_passes_items_and_reports_each_node() -> None:
    plan = plan_of(
        [trigger(), node("a", "noop"), node("b", "set", fields={"y": 2})], chain("start", "a", "b")
    )
    recorder = Recorder()
    outcome = execute(plan, {"x": 1}, recorder=recorder)
    assert outcome.status == "succeeded" and outcome.error is None
    assert outcome.output == {"b": [{"x": 1, "y": 2}]}
    assert recorder.calls == [
        ("started", "start", 1),
        ("succeeded", "start", {"main": [{"x": 1}]}, 1),
        ("started", "a", 1),
        ("succeeded", "a", {"main": [{"x": 1}]}, 1),
        ("started", "b", 1),
        ("succeeded", "b", {"main": [{"x": 1, "y": 2}]}, 1),
    ]
    assert [run.node_id for run in outcome.node_runs] == ["start", "a", "b"]
    assert outcome.node_runs[2] == NodeRun("b", 1, "succeeded", {"main": [{"x": 1, "y": 2}]})


def test_list_input_becomes_items() -> None:
    plan = plan_of([trigger()], [])
    outcome = execute(plan, [{"a": 1}, {"a": 2}])
    assert outcome.output == {"start": [{"a": 1}, {"a": 2}]}


@pytest.mark.parametrize(
    ("execution_input", "message"),
    [
        ([{"a": 1}, 5], "input item 1 is a number, items must be JSON objects"),
        ("text", "input is a string, expected an object or an array of objects"),
    ],
)
def test_input_that_is_not_objects_fails_the_trigger(execution_input: Any, message: str) -> None:
    outcome = execute(plan_of([trigger()], []), execution_input)
    assert outcome.status == "failed" and outcome.failed_node_id == "start"
    assert outcome.error == f"node 'start' failed: {message}"


def test_empty_list_input_runs_only_the_trigger() -> None:
    plan = plan_of([trigger(), node("a", "noop")], chain("start", "a"))
    recorder = Recorder()
    outcome = execute(plan, [], recorder=recorder)
    assert outcome.status == "succeeded"
    assert recorder.started_nodes() == ["start"]
    assert outcome.output == {}  # 'a' is the only terminal node and it never ran


def test_topological_order_breaks_ties_by_definition_order() -> None:
    nodes = [
        trigger(),
        node("z", "noop"),
        node("m", "noop"),
        node("a", "noop"),
        node("end", "noop"),
    ]
    connections = [*chain("start", "z", "end"), *chain("start", "m"), *chain("start", "a", "end")]
    recorder = Recorder()
    execute(plan_of(nodes, connections), recorder=recorder)
    assert recorder.started_nodes() == ["start", "z", "m", "a", "end"]


def test_node_with_several_inputs_runs_once_on_their_concatenation() -> None:
    nodes = [
        trigger(),
        node("one", "set", fields={"from": "one"}),
        node("two", "set", fields={"from": "two"}),
        node("join", "noop"),
    ]
    # Connection order, not node order, decides the concatenation order.
    connections = [*chain("start", "one"), *chain("start", "two"), edge("two", "join")]
    connections.append(edge("one", "join"))
    recorder = Recorder()
    outcome = execute(plan_of(nodes, connections), {"x": 1}, recorder=recorder)
    assert recorder.started_nodes().count("join") == 1
    assert outcome.output == {"join": [{"x": 1, "from": "two"}, {"x": 1, "from": "one"}]}


def test_terminal_output_covers_every_terminal_node_that_ran() -> None:
    nodes = [trigger(), node("a", "noop"), node("b", "set", fields={"b": True})]
    outcome = execute(plan_of(nodes, [*chain("start", "a"), *chain("start", "b")]), {"x": 1})
    assert outcome.output == {"a": [{"x": 1}], "b": [{"x": 1, "b": True}]}


def test_compile_plan_rejects_a_cycle() -> None:
    definition = {
        "nodes": [trigger(), node("a", "noop"), node("b", "noop")],
        "connections": [*chain("start", "a", "b"), edge("b", "a")],
    }
    with pytest.raises(ValueError, match="cycle"):
        compile_plan(definition)


# -- set ------------------------------------------------------------------------------


def test_set_writes_dotted_paths_without_touching_the_input() -> None:
    original = {"keep": 1, "customer": {"name": "Ann", "address": {"city": "Oslo"}}, "n": 5}
    snapshot = copy.deepcopy(original)
    plan = plan_of(
        [
            trigger(),
            node(
                "s",
                "set",
                fields={"customer.address.zip": "0150", "n.deep": 1, "new.path": [1, 2]},
            ),
        ],
        chain("start", "s"),
    )
    outcome = execute(plan, original)
    assert outcome.output["s"] == [
        {
            "keep": 1,
            "customer": {"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}},
            "n": {"deep": 1},  # a non-object on the path is replaced by an object
            "new": {"path": [1, 2]},
        }
    ]
    assert original == snapshot


def test_set_without_keep_others_outputs_only_the_assigned_fields() -> None:
    plan = plan_of(
        [trigger(), node("s", "set", fields={"a.b": 1, "c": None}, keep_others=False)],
        chain("start", "s"),
    )
    assert execute(plan, {"x": 1}).output == {"s": [{"a": {"b": 1}, "c": None}]}


# -- conditions ------------------------------------------------------------------------

ITEM: dict[str, Any] = {
    "n": 5,
    "f": 2.5,
    "s": "hello world",
    "b": True,
    "z": None,
    "tags": ["a", 1, {"k": 1}],
    "nested": {"deep": {"v": 10}},
    "rows": [{"id": 7}],
}


@pytest.mark.parametrize(
    ("field_", "op", "value", "expected"),
    [
        ("n", "eq", 5, True),
        ("n", "eq", 5.0, True),  # numbers compare by value
        ("n", "eq", "5", False),  # mismatched types are unequal, not an error
        ("b", "eq", True, True),
        ("b", "eq", 1, False),  # booleans are not numbers
        ("z", "eq", None, True),
        ("missing", "eq", None, False),  # absent is not null: use exists
        ("tags", "eq", ["a", 1, {"k": 1.0}], True),
        ("tags", "eq", ["a", True, {"k": 1}], False),
        ("n", "ne", 6, True),
        ("n", "ne", 5, False),
        ("missing", "ne", 5, True),  # ne is exactly `not eq`
        ("n", "gt", 4, True),
        ("n", "gt", 5, False),
        ("f", "gt", 2, True),
        ("n", "gte", 5, True),
        ("n", "lt", 5.5, True),
        ("n", "lte", 5, True),
        ("n", "lte", 4, False),
        ("s", "gt", "hello", True),  # strings compare with strings
        ("s", "lt", "z", True),
        ("s", "gt", 1, False),  # string vs number: false
        ("n", "lt", "9", False),
        ("b", "gt", 0, False),  # bool is not a number
        ("missing", "lt", 1, False),
        ("s", "contains", "lo wo", True),
        ("s", "contains", "xyz", False),
        ("s", "contains", 1, False),
        ("tags", "contains", 1, True),
        ("tags", "contains", 1.0, True),
        ("tags", "contains", {"k": 1}, True),
        ("tags", "contains", "b", False),
        ("n", "contains", 5, False),
        ("s", "exists", True, True),
        ("z", "exists", None, True),  # present with a null value still exists
        ("missing", "exists", None, False),
        ("missing", "exists", False, True),
        ("s", "exists", False, False),
        ("s", "regex", r"^hel+o\s", True),
        ("s", "regex", r"world$", True),  # search, not match
        ("s", "regex", r"^world", False),
        ("n", "regex", r"5", False),  # only strings match a regex
        ("nested.deep.v", "gte", 10, True),
        ("nested.deep.missing", "exists", False, True),
        ("rows.0.id", "eq", 7, True),  # digit segments index arrays
        ("rows.1.id", "exists", True, False),
        ("s.length", "exists", True, False),  # a path through a string is absent
    ],
)
def test_condition_semantics(field_: str, op: str, value: Any, expected: bool) -> None:
    condition: dict[str, Any] = {"field": field_, "op": op, "value": value}
    plan = plan_of(
        [trigger(), node("f", "filter", conditions=[condition])],
        chain("start", "f"),
    )
    outcome = execute(plan, ITEM)
    assert outcome.status == "succeeded"
    assert outcome.output["f"] == ([ITEM] if expected else [])


def test_exists_without_value_means_present() -> None:
    plan = plan_of(
        [trigger(), node("f", "filter", conditions=[{"field": "a", "op": "exists"}])],
        chain("start", "f"),
    )
    assert execute(plan, [{"a": 1}, {"b": 1}]).output == {"f": [{"a": 1}]}


@pytest.mark.parametrize(
    ("combine", "expected_ids"), [("and", [1]), ("or", [1, 2, 3])], ids=["and", "or"]
)
def test_conditions_combine(combine: str, expected_ids: list[int]) -> None:
    conditions = [{"field": "a", "op": "eq", "value": 1}, {"field": "b", "op": "eq", "value": 1}]
    items = [{"id": 1, "a": 1, "b": 1}, {"id": 2, "a": 1}, {"id": 3, "b": 1}, {"id": 4}]
    plan = plan_of(
        [trigger(), node("f", "filter", conditions=conditions, combine=combine)],
        chain("start", "f"),
    )
    assert [item["id"] for item in execute(plan, items).output["f"]] == expected_ids


# -- routing ------------------------------------------------------------------------------


def _if_plan() -> ExecutionPlan:
    return plan_of(
        [
            trigger(),
            node("check", "if", conditions=[{"field": "n", "op": "gt", "value": 10}]),
            node("big", "set", fields={"size": "big"}),
            node("small", "set", fields={"size": "small"}),
        ],
        [*chain("start", "check"), edge("check", "big", "true"), edge("check", "small", "false")],
    )


def test_if_routes_each_item_to_true_or_false() -> None:
    recorder = Recorder()
    outcome = execute(_if_plan(), [{"n": 50}, {"n": 1}, {"n": 11}], recorder=recorder)
    assert outcome.output == {
        "big": [{"n": 50, "size": "big"}, {"n": 11, "size": "big"}],
        "small": [{"n": 1, "size": "small"}],
    }
    check_outputs = next(c[2] for c in recorder.calls if c[:2] == ("succeeded", "check"))
    assert check_outputs == {"true": [{"n": 50}, {"n": 11}], "false": [{"n": 1}]}


def test_untaken_branch_does_not_run_and_is_not_reported() -> None:
    recorder = Recorder()
    outcome = execute(_if_plan(), {"n": 50}, recorder=recorder)
    assert recorder.started_nodes() == ["start", "check", "big"]
    assert "small" not in {run.node_id for run in outcome.node_runs}
    assert outcome.output == {"big": [{"n": 50, "size": "big"}]}


def test_switch_routes_to_the_first_matching_case_else_default() -> None:
    cases = [
        {"name": "gold", "conditions": [{"field": "points", "op": "gte", "value": 100}]},
        {"name": "silver", "conditions": [{"field": "points", "op": "gte", "value": 10}]},
    ]
    nodes = [
        trigger(),
        node("tier", "switch", cases=cases),
        node("g", "noop"),
        node("s", "noop"),
        node("d", "noop"),
    ]
    connections = [
        *chain("start", "tier"),
        edge("tier", "g", "gold"),
        edge("tier", "s", "silver"),
        edge("tier", "d", "default"),
    ]
    items = [{"points": 500}, {"points": 50}, {"points": 1}, {"name": "no points"}]
    outcome = execute(plan_of(nodes, connections), items)
    assert outcome.output == {
        "g": [{"points": 500}],  # also matches silver: the first case wins
        "s": [{"points": 50}],
        "d": [{"points": 1}, {"name": "no points"}],
    }


# -- merge ------------------------------------------------------------------------------


def _branches_into_merge(**merge_parameters: Any) -> ExecutionPlan:
    nodes = [
        trigger(),
        node("check", "if", conditions=[{"field": "left", "op": "eq", "value": True}]),
        node("left", "set", fields={"side": "left"}),
        node("right", "set", fields={"side": "right"}),
        node("join", "merge", **merge_parameters),
    ]
    connections = [
        *chain("start", "check"),
        edge("check", "left", "true"),
        edge("check", "right", "false"),
        edge("right", "join"),  # first input: right
        edge("left", "join"),
    ]
    return plan_of(nodes, connections)


def test_merge_append_waits_for_all_inputs_and_keeps_connection_order() -> None:
    recorder = Recorder()
    items = [{"left": True, "i": 1}, {"left": False, "i": 2}, {"left": True, "i": 3}]
    outcome = execute(_branches_into_merge(mode="append"), items, recorder=recorder)
    assert recorder.started_nodes() == ["start", "check", "left", "right", "join"]
    assert [(item["side"], item["i"]) for item in outcome.output["join"]] == [
        ("right", 2),
        ("left", 1),
        ("left", 3),
    ]


def test_merge_runs_when_one_input_got_nothing() -> None:
    outcome = execute(_branches_into_merge(mode="append"), [{"left": True}])
    assert outcome.output == {"join": [{"left": True, "side": "left"}]}


def _combine_plan() -> ExecutionPlan:
    nodes = [
        trigger(),
        node("orders", "set", fields={"k": "order"}),
        node("customers", "noop"),
        node("join", "merge", mode="combine", key="id"),
    ]
    connections = [
        *chain("start", "orders"),
        *chain("start", "customers"),
        edge("orders", "join"),
        edge("customers", "join"),
    ]
    return plan_of(nodes, connections)


def test_merge_combine_joins_on_the_key_and_drops_unmatched_items() -> None:
    # Both inputs see the same trigger items; combine joins them by id.
    items = [{"id": 1, "v": "a"}, {"id": 2.0, "v": "b"}, {"v": "no id"}, {"id": True}]
    outcome = execute(_combine_plan(), items)
    assert outcome.output == {
        "join": [
            {"id": 1, "v": "a", "k": "order"},
            {"id": 2.0, "v": "b", "k": "order"},
            {"id": True, "k": "order"},
        ]
    }


def test_merge_combine_first_match_wins_and_later_inputs_override_fields() -> None:
    nodes = [
        trigger(),
        node("a", "filter", conditions=[{"field": "side", "op": "eq", "value": "a"}]),
        node("b", "filter", conditions=[{"field": "side", "op": "eq", "value": "b"}]),
        node("join", "merge", mode="combine", key="user.id"),
    ]
    connections = [
        *chain("start", "a"),
        *chain("start", "b"),
        edge("a", "join"),
        edge("b", "join"),
    ]
    items = [
        {"side": "a", "user": {"id": 1}, "x": "from a"},
        {"side": "a", "user": {"id": 2}},
        {"side": "b", "user": {"id": 1}, "x": "from b", "first": True},
        {"side": "b", "user": {"id": 1}, "x": "second b"},
        {"side": "b", "user": {"id": True}},  # true is not 1
        {"side": "a", "user": {"id": 3}},
        {"side": "b", "user": {"id": 3.0}, "y": 1},  # 3.0 is 3
    ]
    outcome = execute(plan_of(nodes, connections), items)
    assert outcome.output == {
        "join": [
            {"side": "b", "user": {"id": 1}, "x": "from b", "first": True},
            {"side": "b", "user": {"id": 3.0}, "y": 1},
        ],
    }


def test_merge_combine_with_an_empty_input_outputs_nothing() -> None:
    nodes = [
        trigger(),
        node("none", "filter", conditions=[{"field": "nope", "op": "exists"}]),
        node("all", "noop"),
        node("join", "merge", mode="combine", key="id"),
    ]
    connections = [
        *chain("start", "none"),
        *chain("start", "all"),
        edge("all", "join"),
        edge("none", "join"),
    ]
    recorder = Recorder()
    outcome = execute(plan_of(nodes, connections), {"id": 1}, recorder=recorder)
    assert "join" in recorder.started_nodes()
    assert outcome.output == {"join": []}


# -- wait, noop, stop_and_error ------------------------------------------------------------


def test_wait_sleeps_capped_by_the_limit() -> None:
    plan = plan_of([trigger(), node("w", "wait", ms=5_000)], chain("start", "w"))
    world = FakeWorld()
    outcome = execute(plan, world=world, limits=EngineLimits(max_wait_ms=2_000))
    assert outcome.status == "succeeded" and outcome.output == {"w": [{"x": 1}]}
    assert world.sleeps == [2.0]


def test_zero_wait_does_not_call_sleep() -> None:
    world = FakeWorld()
    execute(plan_of([trigger(), node("w", "wait", ms=0)], chain("start", "w")), world=world)
    assert world.sleeps == []


def test_stop_and_error_fails_the_execution_naming_the_node() -> None:
    plan = plan_of(
        [trigger(), node("boom", "stop_and_error", message="bad input"), node("after", "noop")],
        chain("start", "boom", "after"),
    )
    recorder = Recorder()
    outcome = execute(plan, recorder=recorder)
    assert outcome.status == "failed" and outcome.failed_node_id == "boom"
    assert outcome.error == "node 'boom' failed: bad input"
    assert recorder.calls[-1] == ("failed", "boom", "bad input", 1, False)
    assert "after" not in recorder.started_nodes()
    assert outcome.node_runs[-1] == NodeRun("boom", 1, "failed", None, "bad input")


# -- http_request -------------------------------------------------------------------------

API_LIMITS = EngineLimits(allowed_http_hosts=frozenset({"api.example.com"}))


def _http_plan(url: str = "https://api.example.com/v1/things", **params: Any) -> ExecutionPlan:
    return plan_of(
        [trigger(), node("call", "http_request", url=url, **params)], chain("start", "call")
    )


def test_http_to_a_host_not_allowed_is_refused_before_the_port_is_called() -> None:
    world = FakeWorld()
    outcome = execute(_http_plan("http://internal.local:8080/admin"), world=world)
    assert world.requests == []
    assert outcome.status == "failed"
    assert outcome.error == (
        "node 'call' failed: host 'internal.local' is not allowed: it is not in the HTTP allow-list"
    )


def test_http_allow_list_is_empty_by_default_and_case_insensitive() -> None:
    world = FakeWorld()
    assert execute(_http_plan(), world=world).status == "failed"
    assert world.requests == []
    limits = EngineLimits(allowed_http_hosts=frozenset({"API.Example.com"}))
    assert execute(_http_plan("https://api.EXAMPLE.com/x"), limits=limits).status == "succeeded"


def test_http_calls_the_port_once_per_item_and_outputs_the_responses() -> None:
    world = FakeWorld(
        responses=[
            HttpResponse(200, {"content-type": "application/json"}, {"id": 1}),
            HttpResponse(201, {}, "created"),
        ]
    )
    plan = _http_plan(method="POST", headers={"X-Key": "k"}, body={"q": 1}, timeout_ms=5_000)
    outcome = execute(plan, [{"i": 1}, {"i": 2}], world=world, limits=API_LIMITS)
    assert outcome.output == {
        "call": [
            {"status": 200, "headers": {"content-type": "application/json"}, "body": {"id": 1}},
            {"status": 201, "headers": {}, "body": "created"},
        ]
    }
    assert (
        world.requests
        == [
            HttpRequest(
                "POST", "https://api.example.com/v1/things", {"X-Key": "k"}, {"q": 1}, 5_000
            )
        ]
        * 2
    )


def test_http_timeout_is_shortened_to_the_time_left() -> None:
    world = FakeWorld()
    limits = EngineLimits(allowed_http_hosts=API_LIMITS.allowed_http_hosts, max_execution_ms=3_000)
    execute(_http_plan(timeout_ms=10_000), world=world, limits=limits)
    assert [request.timeout_ms for request in world.requests] == [3_000]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            HttpResponse(404, {}, "nope"),
            "GET https://api.example.com/v1/things returned HTTP status 404",
        ),
        (
            HttpFailure("connection refused"),
            "GET https://api.example.com/v1/things failed: connection refused",
        ),
    ],
)
def test_http_error_status_or_failure_fails_the_node(
    response: HttpResponse | HttpFailure, message: str
) -> None:
    world = FakeWorld(responses=[response])
    outcome = execute(_http_plan(), world=world, limits=API_LIMITS)
    assert outcome.status == "failed"
    assert outcome.error == f"node 'call' failed: {message}"


# -- code ---------------------------------------------------------------------------------


def test_code_sets_the_expression_result_at_the_path() -> None:
    plan = plan_of(
        [trigger(), node("calc", "code", expression="item.price * 2", into="totals.double")],
        chain("start", "calc"),
    )
    original = {"price": 21, "totals": {"single": 21}}
    outcome = execute(plan, [original])
    assert outcome.output == {"calc": [{"price": 21, "totals": {"single": 21, "double": 42}}]}
    assert original == {"price": 21, "totals": {"single": 21}}


def test_code_evaluation_error_names_the_item() -> None:
    plan = plan_of(
        [trigger(), node("calc", "code", expression="item.price * 2", into="x")],
        chain("start", "calc"),
    )
    outcome = execute(plan, [{"price": 1}, {"cost": 1}])
    assert outcome.status == "failed"
    assert outcome.error == (
        "node 'calc' failed: expression failed on item 1: no such member in mapping: 'price'"
    )


def test_code_syntax_error_fails_when_the_node_runs() -> None:
    plan = plan_of(
        [trigger(), node("calc", "code", expression="item.price *", into="x")],
        chain("start", "calc"),
    )
    outcome = execute(plan)
    assert outcome.status == "failed" and outcome.failed_node_id == "calc"
    assert outcome.error is not None
    assert outcome.error.startswith("node 'calc' failed: invalid expression: syntax error")


# -- retry and on_error ---------------------------------------------------------------------


def test_retry_backs_off_exponentially_then_succeeds() -> None:
    world = FakeWorld(
        responses=[HttpFailure("reset"), HttpResponse(503, {}, None), HttpResponse(200, {}, "ok")]
    )
    nodes = [trigger(), {**node("call", "http_request", url="https://api.example.com/")}]
    nodes[1]["retry"] = {"max_tries": 4, "wait_ms": 100}
    recorder = Recorder()
    outcome = execute(
        plan_of(nodes, chain("start", "call")), world=world, recorder=recorder, limits=API_LIMITS
    )
    assert outcome.status == "succeeded"
    assert world.sleeps == [0.1, 0.2]
    assert recorder.calls[2:] == [
        ("started", "call", 1),
        ("failed", "call", "GET https://api.example.com/ failed: reset", 1, True),
        ("started", "call", 2),
        ("failed", "call", "GET https://api.example.com/ returned HTTP status 503", 2, True),
        ("started", "call", 3),
        ("succeeded", "call", {"main": [{"status": 200, "headers": {}, "body": "ok"}]}, 3),
    ]
    assert [(r.attempt, r.status) for r in outcome.node_runs[1:]] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]


def test_retry_gives_up_after_max_tries_with_capped_backoff() -> None:
    nodes = [trigger(), node("boom", "stop_and_error", message="no")]
    nodes[1]["retry"] = {"max_tries": 3, "wait_ms": 1_500}
    world = FakeWorld()
    recorder = Recorder()
    outcome = execute(
        plan_of(nodes, chain("start", "boom")),
        world=world,
        recorder=recorder,
        limits=EngineLimits(max_wait_ms=2_000),
    )
    assert outcome.status == "failed" and outcome.error == "node 'boom' failed: no"
    assert world.sleeps == [1.5, 2.0]  # 1.5 s, then 3 s capped to 2 s
    failures = [call for call in recorder.calls if call[0] == "failed"]
    assert [(call[3], call[4]) for call in failures] == [(1, True), (2, True), (3, False)]


def test_on_error_continue_passes_the_input_items_on() -> None:
    nodes = [trigger(), node("boom", "stop_and_error", message="no"), node("after", "noop")]
    nodes[1]["on_error"] = "continue"
    recorder = Recorder()
    outcome = execute(plan_of(nodes, chain("start", "boom", "after")), {"x": 1}, recorder=recorder)
    assert outcome.status == "succeeded"
    assert outcome.output == {"after": [{"x": 1}]}
    assert ("failed", "boom", "no", 1, False) in recorder.calls
    assert outcome.node_runs[1] == NodeRun("boom", 1, "failed", {"main": [{"x": 1}]}, "no")


def test_on_error_continue_on_a_multi_output_node_uses_its_first_output() -> None:
    # An `if` can only fail by overflowing its output: here two inputs of two items each.
    nodes = [
        trigger(),
        node("one", "noop"),
        node("two", "noop"),
        {
            **node("check", "if", conditions=[{"field": "x", "op": "eq", "value": 0}]),
            "on_error": "continue",
        },
    ]
    connections = [*chain("start", "one", "check"), *chain("start", "two", "check")]
    outcome = execute(
        plan_of(nodes, connections), [{"x": 1}, {"x": 2}], limits=EngineLimits(max_items=3)
    )
    assert outcome.status == "succeeded"
    check_run = outcome.node_runs[-1]
    assert check_run.error == "output 'false' has 4 items, at most 3 allowed"
    assert check_run.outputs == {"true": [{"x": 1}, {"x": 2}] * 2, "false": []}


def test_on_error_continue_error_output_sends_items_with_the_error() -> None:
    nodes = [
        trigger(),
        {**node("calc", "code", expression="item.a / item.b", into="q")},
        node("ok", "noop"),
        node("handle", "noop"),
    ]
    nodes[1]["on_error"] = "continue_error_output"
    connections = [*chain("start", "calc"), edge("calc", "ok"), edge("calc", "handle", "error")]
    recorder = Recorder()
    outcome = execute(plan_of(nodes, connections), [{"a": 1, "b": 0}], recorder=recorder)
    error = (
        "expression failed on item 0: modulus or divide by zero "
        "(integer division or modulo by zero)"
    )
    assert outcome.status == "succeeded"
    assert outcome.output == {"handle": [{"a": 1, "b": 0, "error": error}]}
    assert "ok" not in recorder.started_nodes()


def test_error_output_is_empty_when_the_node_succeeds() -> None:
    nodes = [
        trigger(),
        {**node("calc", "code", expression="item.a / item.b", into="q")},
        node("ok", "noop"),
        node("handle", "noop"),
    ]
    nodes[1]["on_error"] = "continue_error_output"
    connections = [*chain("start", "calc"), edge("calc", "ok"), edge("calc", "handle", "error")]
    recorder = Recorder()
    outcome = execute(plan_of(nodes, connections), [{"a": 6, "b": 3}], recorder=recorder)
    assert outcome.output == {"ok": [{"a": 6, "b": 3, "q": 2}]}
    assert ("succeeded", "calc", {"main": [{"a": 6, "b": 3, "q": 2}], "error": []}, 1) in (
        recorder.calls
    )
    assert "handle" not in recorder.started_nodes()


# -- limits, timeout, cancel ----------------------------------------------------------------


def test_too_many_items_fail_the_node() -> None:
    plan = plan_of([trigger(), node("a", "noop")], chain("start", "a"))
    outcome = execute(plan, [{"i": i} for i in range(3)], limits=EngineLimits(max_items=2))
    assert outcome.status == "failed" and outcome.failed_node_id == "start"
    assert outcome.error == "node 'start' failed: output 'main' has 3 items, at most 2 allowed"


def test_timeout_from_settings_overrides_the_default() -> None:
    plan = plan_of(
        [trigger(), node("w", "wait", ms=5_000), node("after", "noop")],
        chain("start", "w", "after"),
        settings={"timeout_ms": 1_000},
    )
    world = FakeWorld()
    recorder = Recorder()
    outcome = execute(plan, world=world, recorder=recorder)
    assert outcome.status == "failed" and outcome.failed_node_id == "w"
    assert outcome.error == "execution timed out after 1000 ms"
    assert world.sleeps == [1.0]  # slept until the deadline, not the full 5 s
    assert "after" not in recorder.started_nodes()


def test_timeout_uses_the_engine_limit_and_a_call_past_it_times_out() -> None:
    world = FakeWorld(seconds_per_http_call=2.0)
    plan = plan_of(
        [
            trigger(),
            node("call", "http_request", url="https://api.example.com/"),
            node("after", "noop"),
        ],
        chain("start", "call", "after"),
    )
    limits = EngineLimits(allowed_http_hosts=API_LIMITS.allowed_http_hosts, max_execution_ms=1_500)
    recorder = Recorder()
    outcome = execute(plan, world=world, recorder=recorder, limits=limits)
    assert outcome.status == "failed" and outcome.error == "execution timed out after 1500 ms"
    # The response came after the deadline: the call itself timed out.
    assert outcome.failed_node_id == "call"
    assert "after" not in recorder.started_nodes()


def test_timeout_is_checked_between_code_evaluations() -> None:
    plan = plan_of(
        [trigger(), node("calc", "code", expression="item.i * 2", into="j")],
        chain("start", "calc"),
        settings={"timeout_ms": 1_000},
    )
    world = FakeWorld(seconds_per_clock_read=0.2)
    outcome = execute(plan, [{"i": i} for i in range(10)], world=world)
    assert outcome.status == "failed" and outcome.failed_node_id == "calc"
    assert outcome.error == "execution timed out after 1000 ms"


def test_timeout_during_retry_backoff() -> None:
    nodes = [trigger(), node("boom", "stop_and_error", message="no")]
    nodes[1]["retry"] = {"max_tries": 5, "wait_ms": 400}
    world = FakeWorld()
    outcome = execute(
        plan_of(nodes, chain("start", "boom"), settings={"timeout_ms": 1_000}), world=world
    )
    assert outcome.error == "execution timed out after 1000 ms"
    assert world.sleeps == pytest.approx([0.4, 0.6])  # 0.4, then the 0.6 left of 0.8


def test_cancel_is_checked_before_each_node() -> None:
    plan = plan_of([trigger(), node("a", "noop"), node("b", "noop")], chain("start", "a", "b"))
    world = FakeWorld(cancel_after_checks=2)
    recorder = Recorder()
    outcome = execute(plan, world=world, recorder=recorder)
    assert outcome.status == "canceled" and outcome.error is None
    assert recorder.started_nodes() == ["start", "a"]
    assert outcome.output == {}


def test_cancel_is_checked_after_a_retry_backoff() -> None:
    nodes = [trigger(), node("boom", "stop_and_error", message="no")]
    nodes[1]["retry"] = {"max_tries": 5, "wait_ms": 10}
    world = FakeWorld(cancel_after_checks=2)
    recorder = Recorder()
    outcome = execute(plan_of(nodes, chain("start", "boom")), world=world, recorder=recorder)
    assert outcome.status == "canceled"
    assert recorder.started_nodes() == ["start", "boom"]
    assert world.sleeps == [0.01]


# -- determinism ------------------------------------------------------------------------


def test_same_inputs_give_identical_outcomes_and_listener_calls() -> None:
    plan = _branches_into_merge(mode="append")
    items = [{"left": i % 2 == 0, "i": i} for i in range(20)]
    results = []
    for _ in range(3):
        recorder = Recorder()
        outcome = execute(plan, copy.deepcopy(items), recorder=recorder)
        results.append((outcome, recorder.calls))
    assert results[0] == results[1] == results[2]


SET_OR_NOOP = st.one_of(
    st.just(("noop", None, None)),
    st.tuples(
        st.just("set"),
        st.sampled_from(["a", "b", "a.b", "c.d.e", "b.x"]),
        st.one_of(
            # Storable values only (the value contract): definitions refuse others.
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            # Storable text: definitions refuse NUL (jsonb cannot hold it).
            st.text(st.characters(exclude_characters="\x00"), max_size=5),
            st.none(),
            st.booleans(),
        ),
    ),
)


@given(st.lists(SET_OR_NOOP, max_size=12))
def test_random_linear_chains_of_set_and_noop(steps: list[tuple[Any, Any, Any]]) -> None:
    nodes = [trigger()]
    expected: dict[str, Any] = {"start": True}
    for index, (node_type, path, value) in enumerate(steps):
        if node_type == "noop":
            nodes.append(node(f"n{index}", "noop"))
            continue
        nodes.append(node(f"n{index}", "set", fields={path: value}))
        target = expected
        *parents, last = path.split(".")
        for segment in parents:
            if not isinstance(target.get(segment), dict):
                target[segment] = {}
            target = target[segment]
        target[last] = value
    plan = plan_of(nodes, chain(*(n["id"] for n in nodes)))
    outcome = execute(plan, {"start": True})
    assert outcome.status == "succeeded"
    assert outcome.output == {nodes[-1]["id"]: [expected]}
    assert [run.node_id for run in outcome.node_runs] == [n["id"] for n in nodes]


# -- budgets inside nodes (issue 11, item 4) -------------------------------------------
# These use the real clock: the issue's bound is wall time, at most 1.2 times the
# timeout. Each case ran for tens of seconds before budgets held inside nodes.


def _real_ports() -> EnginePorts:
    def no_http(request: HttpRequest) -> HttpResponse:
        raise AssertionError("no HTTP in this test")

    return EnginePorts(http=no_http, sleep=time.sleep, clock=time.monotonic)


def _run_timed(
    plan: ExecutionPlan, execution_input: Any, limits: EngineLimits | None = None
) -> tuple[ExecutionOutcome, float]:
    began = time.monotonic()
    outcome = run(plan, execution_input, ports=_real_ports(), limits=limits)
    return outcome, time.monotonic() - began


def test_set_with_many_deep_paths_ends_at_the_deadline() -> None:
    # 1,000 paths 50 levels deep under one prefix: every assignment walks the
    # whole path, 200 items over. Copying the dicts along each path once per
    # assignment made this quadratic (70 s); now it is only long.
    prefix = "s." * 50
    fields = {f"{prefix}k{i}": i for i in range(1000)}
    plan = plan_of(
        [trigger(), node("set", "set", fields=fields)],
        chain("start", "set"),
        {"timeout_ms": 1000},
    )
    items = [{"i": i} for i in range(5000)]
    outcome, elapsed = _run_timed(plan, items)
    assert outcome.status == "failed"
    assert outcome.error == "execution timed out after 1000 ms"
    assert outcome.failed_node_id == "set"
    assert elapsed < 1.0 * 1.2, elapsed


def test_set_builds_each_path_once_per_item_with_the_same_result() -> None:
    fields = {"a.b.c": 1, "a.b.d": 2, "a.e": {"f": 3}, "a.e.g": 4, "x": 5, "x.y": 6}
    plan = plan_of([trigger(), node("set", "set", fields=fields)], chain("start", "set"))
    item = {"a": {"b": {"keep": True}, "other": [1]}, "x": "replaced"}
    outcome = execute(plan, item)
    assert outcome.output["set"] == [
        {
            "a": {"b": {"keep": True, "c": 1, "d": 2}, "other": [1], "e": {"f": 3, "g": 4}},
            "x": {"y": 6},
        }
    ]
    assert item == {"a": {"b": {"keep": True}, "other": [1]}, "x": "replaced"}
    assert fields["a.e"] == {"f": 3}  # the parameter value was copied, not changed


def test_set_stops_at_the_memory_budget_and_its_peak_stays_under_it() -> None:
    # 1,000 distinct paths 50 levels deep: 50,000 new dicts per item, about
    # 11 MB each. With a 16 MiB budget the node fails on the second item.
    budget = 16 * 1024 * 1024
    fields = {f"k{i}." + "s." * 48 + "z": i for i in range(1000)}
    plan = plan_of([trigger(), node("set", "set", fields=fields)], chain("start", "set"))
    items = [{"i": i} for i in range(200)]
    tracemalloc.start()
    try:
        outcome, _ = _run_timed(plan, items, EngineLimits(max_execution_bytes=budget))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status == "failed" and outcome.failed_node_id == "set"
    assert f"more than {budget} bytes of memory" in (outcome.error or "")
    assert peak < budget * 1.25, peak


def test_over_the_memory_budget_is_a_node_failure_and_on_error_applies() -> None:
    fields = {f"k{i}": "v" * 100 for i in range(100)}
    plan = plan_of(
        [trigger(), {**node("set", "set", fields=fields), "on_error": "continue"}],
        chain("start", "set"),
    )
    outcome = execute(
        plan, [{"i": i} for i in range(100)], limits=EngineLimits(max_execution_bytes=100_000)
    )
    assert outcome.status == "succeeded"
    assert outcome.output["set"] == [{"i": i} for i in range(100)]
    (run_,) = outcome.node_runs[1:]
    assert run_.status == "failed" and "bytes of memory" in (run_.error or "")


def test_a_failed_attempt_gives_its_memory_back() -> None:
    # Two attempts that each build almost the whole budget: the retry is not
    # refused for what the failed attempt built.
    world = FakeWorld(responses=[HttpResponse(500, {}, None), HttpResponse(200, {}, "x" * 60_000)])
    plan = plan_of(
        [
            trigger(),
            {
                **node("call", "http_request", url="https://api.example.com/"),
                "retry": {"max_tries": 2, "wait_ms": 0},
            },
        ],
        chain("start", "call"),
    )
    limits = EngineLimits(
        allowed_http_hosts=API_LIMITS.allowed_http_hosts, max_execution_bytes=100_000
    )
    assert execute(plan, world=world, limits=limits).status == "succeeded"


def test_a_long_expression_ends_failed_within_the_timeout() -> None:
    # 50,000 interpreter steps take about a second or more in celpy, depending
    # on the machine: the run ends at its deadline or at the step budget,
    # whichever comes first, never later than 1.2 times the timeout.
    plan = plan_of(
        [trigger(), node("code", "code", expression="item.xs.map(x, x * 2)", into="doubled")],
        chain("start", "code"),
        {"timeout_ms": 1000},
    )
    outcome, elapsed = _run_timed(plan, {"xs": list(range(40_000))})
    assert outcome.status == "failed" and outcome.failed_node_id == "code"
    assert elapsed < 1.0 * 1.2, elapsed


def test_the_deadline_is_polled_at_every_step_of_an_expression() -> None:
    # Every clock read takes a millisecond: the 100 ms deadline passes a
    # hundred reads into the map, long before its step budget.
    world = FakeWorld(seconds_per_clock_read=0.001)
    plan = plan_of(
        [trigger(), node("code", "code", expression="item.xs.map(x, x * 2)", into="doubled")],
        chain("start", "code"),
        {"timeout_ms": 100},
    )
    outcome = execute(plan, {"xs": list(range(3000))}, world=world)
    assert outcome.status == "failed"
    assert outcome.error == "execution timed out after 100 ms"
    assert outcome.failed_node_id == "code"


def test_an_expression_scanning_a_big_list_per_element_stops_early() -> None:
    plan = plan_of(
        [trigger(), node("code", "code", expression="item.xs.map(x, x in item.xs)", into="r")],
        chain("start", "code"),
        {"timeout_ms": 1000},
    )
    outcome, elapsed = _run_timed(plan, {"xs": list(range(40_000))})
    assert outcome.status == "failed"
    assert "bytes of values" in (outcome.error or "")
    assert elapsed < 1.2


def test_an_http_call_past_the_deadline_times_the_execution_out() -> None:
    # The port reports a failure because the deadline cut the exchange: that
    # is the execution's timeout, not a node failure its retry would repeat.
    world = FakeWorld(responses=[HttpFailure("cut")], seconds_per_http_call=2.0)
    plan = plan_of(
        [
            trigger(),
            {
                **node("call", "http_request", url="https://api.example.com/"),
                "retry": {"max_tries": 3, "wait_ms": 0},
                "on_error": "continue",
            },
        ],
        chain("start", "call"),
        {"timeout_ms": 1000},
    )
    outcome = execute(plan, world=world, limits=API_LIMITS)
    assert outcome.status == "failed" and outcome.error == "execution timed out after 1000 ms"
    assert len(world.requests) == 1


# -- values the engine produces hold the value contract (issue 11, item 1) -------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("2.0 * 1e308", "not a JSON number"),
        ("1e20", "whole number of magnitude 2**63"),
        ("18446744073709551615u", "outside the signed 64-bit range"),
        ('"a\\x00b"', "NUL"),
        ("[[[[[1]]]]]", "nested deeper than 64 levels"),
    ],
)
def test_an_expression_result_the_log_cannot_hold_fails_the_node(
    expression: str, message: str
) -> None:
    into = ".".join(["d"] * 60)  # 60 levels down: five lists more reach level 64
    plan = plan_of(
        [trigger(), node("code", "code", expression=expression, into=into)],
        chain("start", "code"),
    )
    outcome = execute(plan)
    assert outcome.status == "failed" and outcome.failed_node_id == "code"
    assert message in (outcome.error or ""), outcome.error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 123456789012345678901234567890}, "body.n: integer 123456789012345678901234567890"),
        ({"x": [float("nan")]}, "body.x[0]: is not a finite number"),
        ("text with a \x00", "body: contains a NUL"),
    ],
)
def test_a_response_the_log_cannot_hold_fails_the_node(body: Any, message: str) -> None:
    world = FakeWorld(responses=[HttpResponse(200, {}, body)])
    outcome = execute(_http_plan(), world=world, limits=API_LIMITS)
    assert outcome.status == "failed" and outcome.failed_node_id == "call"
    assert "answered with a value that cannot be stored" in (outcome.error or "")
    assert message in (outcome.error or ""), outcome.error


def test_a_set_path_deeper_than_the_contract_fails_the_node_when_it_runs() -> None:
    deep = ".".join(["d"] * 65)
    plan = plan_of(
        [trigger(), {**node("set", "set", fields={deep: 1}), "on_error": "continue"}],
        chain("start", "set"),
    )
    outcome = execute(plan, {"x": 1})
    assert outcome.status == "succeeded" and outcome.output["set"] == [{"x": 1}]
    (run_,) = outcome.node_runs[1:]
    assert "nested deeper than 64 levels" in (run_.error or "")


def test_a_failure_message_quoting_a_nul_is_stored_escaped() -> None:
    world = FakeWorld(responses=[HttpFailure("server said a\x00b \ud800")])
    outcome = execute(_http_plan(), world=world, limits=API_LIMITS)
    assert outcome.status == "failed"
    assert "a\\u0000b \\ud800" in (outcome.error or "")
    assert "\x00" not in (outcome.error or "")


# -- resuming from known outputs (a retry from the failed node) --------------------


def test_known_outputs_are_taken_as_they_are_and_only_the_rest_runs() -> None:
    plan = plan_of(
        [trigger(), node("a", "set", fields={"y": 2}), node("b", "set", fields={"z": 3})],
        chain("start", "a", "b"),
    )
    recorder = Recorder()
    known = {"start": {"main": [{"x": 1}]}, "a": {"main": [{"x": 1, "y": "recorded"}]}}
    outcome = run(plan, {"x": 1}, ports=FakeWorld().ports(), listener=recorder, known_outputs=known)
    assert outcome.status == "succeeded"
    # a's recorded output, not a re-run of it, reached b.
    assert outcome.output == {"b": [{"x": 1, "y": "recorded", "z": 3}]}
    assert recorder.started_nodes() == ["b"]
    assert [node_run.node_id for node_run in outcome.node_runs] == ["b"]


def test_known_outputs_keep_the_branch_that_was_taken() -> None:
    plan = _if_plan()
    known = {"start": {"main": [{"n": 1}]}, "check": {"true": [], "false": [{"n": 1}]}}
    recorder = Recorder()
    outcome = run(plan, {"n": 1}, ports=FakeWorld().ports(), listener=recorder, known_outputs=known)
    assert outcome.status == "succeeded"
    assert recorder.started_nodes() == ["small"]


def test_a_known_terminal_output_is_part_of_the_output() -> None:
    plan = plan_of([trigger(), node("a", "noop")], chain("start", "a"))
    known = {"start": {"main": [{"x": 1}]}, "a": {"main": [{"x": 1}]}}
    outcome = run(plan, {"x": 1}, ports=FakeWorld().ports(), known_outputs=known)
    assert outcome.output == {"a": [{"x": 1}]} and outcome.node_runs == ()


def test_outputs_needed_are_those_a_running_node_or_the_output_reads() -> None:
    plan = plan_of(
        [trigger(), node("a", "noop"), node("b", "noop"), node("c", "noop")],
        chain("start", "a", "b", "c"),
    )
    assert outputs_needed(plan, {"start", "a"}) == {"a"}
    assert outputs_needed(plan, {"start"}) == {"start"}
    assert outputs_needed(plan, {"start", "a", "b", "c"}) == {"c"}
    assert outputs_needed(plan, set()) == set()


@given(st.integers(min_value=0, max_value=4))
def test_resuming_after_any_prefix_gives_the_same_output(prefix: int) -> None:
    ids = ["start", "a", "b", "c", "d"]
    plan = plan_of(
        [trigger(), *(node(i, "set", fields={i: ids.index(i)}) for i in ids[1:])], chain(*ids)
    )
    full = execute(plan, {"x": 1})
    known = {node_run.node_id: node_run.outputs for node_run in full.node_runs[:prefix]}
    resumed = run(plan, {"x": 1}, ports=FakeWorld().ports(), known_outputs=known)  # type: ignore[arg-type]
    assert resumed.output == full.output
    assert [node_run.node_id for node_run in resumed.node_runs] == ids[prefix:]
