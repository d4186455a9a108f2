"""Workflow definition validation: each rule, its exact loc, and a message naming the offender."""

from __future__ import annotations

import itertools
import json
import pickle
import uuid
from typing import Any

import pytest

from domain.definition import (
    MAX_DEFINITION_BYTES,
    TRIGGER_TYPES,
    canonical_definition_size,
    validate_definition,
)
from domain.errors import DomainError, Problem, WorkflowDeleted, WorkflowInvalid
from domain.values import MAX_DEPTH


def trigger(node_id: str = "start", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "manual_trigger", "parameters": {}, **extra}


def noop(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "noop", "parameters": {}, **extra}


def if_node(node_id: str, **extra: Any) -> dict[str, Any]:
    params = {"conditions": [{"field": "ok", "op": "eq", "value": True}]}
    return {"id": node_id, "type": "if", "parameters": params, **extra}


def switch(node_id: str, *cases: str, **extra: Any) -> dict[str, Any]:
    params = {
        "cases": [
            {"name": case, "conditions": [{"field": "kind", "op": "eq", "value": case}]}
            for case in cases
        ]
    }
    return {"id": node_id, "type": "switch", "parameters": params, **extra}


def edge(source: str, target: str, output: str | None = None, **extra: Any) -> dict[str, Any]:
    connection: dict[str, Any] = {"from": source, "to": target, **extra}
    if output is not None:
        connection["output"] = output
    return connection


def definition(**overrides: Any) -> dict[str, Any]:
    """A small valid definition: start -> a."""
    body: dict[str, Any] = {
        "name": "wf",
        "description": "",
        "nodes": [trigger(), noop("a")],
        "connections": [edge("start", "a")],
        "tags": [],
        "settings": {},
    }
    body.update(overrides)
    return body


def chain(*node_ids: str) -> list[dict[str, Any]]:
    return [edge(a, b) for a, b in itertools.pairwise(node_ids)]


def problems(**overrides: Any) -> list[Problem]:
    with pytest.raises(WorkflowInvalid) as caught:
        validate_definition(**definition(**overrides))
    assert caught.value.problems, "WorkflowInvalid without problems"
    return caught.value.problems


def only(**overrides: Any) -> Problem:
    """The single problem the overrides cause."""
    found = problems(**overrides)
    assert len(found) == 1, found
    return found[0]


def accepts(**overrides: Any) -> None:
    validate_definition(**definition(**overrides))


# -- errors -------------------------------------------------------------------


def test_workflow_invalid_joins_problems_and_keeps_them() -> None:
    error = WorkflowInvalid([Problem("name", "bad"), Problem("nodes[0].id", "worse")])
    assert str(error) == "name: bad; nodes[0].id: worse"
    assert error.problems == [Problem("name", "bad"), Problem("nodes[0].id", "worse")]
    assert isinstance(error, DomainError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == str(error)


def test_workflow_deleted_carries_the_id() -> None:
    workflow_id = uuid.uuid4()
    error = WorkflowDeleted(workflow_id)
    assert error.workflow_id == workflow_id
    assert str(workflow_id) in str(error)
    assert isinstance(error, DomainError)
    assert pickle.loads(pickle.dumps(error)).workflow_id == workflow_id


def test_problem_is_frozen() -> None:
    problem = Problem("name", "bad")
    with pytest.raises(AttributeError):
        problem.loc = "other"  # type: ignore[misc]
    assert str(problem) == "name: bad"


# -- valid definitions --------------------------------------------------------


def test_minimal_definition_is_accepted() -> None:
    accepts()


def test_a_single_trigger_is_a_workflow() -> None:
    accepts(nodes=[trigger()], connections=[])


def test_rich_definition_is_accepted() -> None:
    nodes = [
        trigger("start", name="Start", position=[0, 0.5]),
        trigger("start2"),
        if_node("check", on_error="stop"),
        switch("route", "small", "large", on_error="continue_error_output"),
        {
            "id": "call",
            "type": "http_request",
            "name": "Call API",
            "parameters": {"url": "https://example.com/api", "method": "POST", "body": {"a": 1}},
            "retry": {"max_tries": 3, "wait_ms": 1000},
            "on_error": "continue_error_output",
            "position": [-10, 1e6],
        },
        {"id": "set_1", "type": "set", "parameters": {"fields": {"a.b": 1}}},
        {"id": "wait-1", "type": "wait", "parameters": {"ms": 10}, "on_error": "continue"},
        {"id": "merge", "type": "merge", "parameters": {"mode": "combine", "key": "id"}},
        {"id": "fail", "type": "stop_and_error", "parameters": {"message": "no"}},
        {"id": "code", "type": "code", "parameters": {"expression": "1", "into": "x"}},
        {
            "id": "only_ok",
            "type": "filter",
            "parameters": {"conditions": [{"field": "x", "op": "exists"}]},
        },
    ]
    connections = [
        edge("start", "check"),
        edge("start2", "check"),
        edge("check", "route", "true"),
        edge("check", "fail", "false"),
        edge("route", "call", "small"),
        edge("route", "set_1", "large"),
        edge("route", "merge", "default"),
        edge("route", "fail", "error"),
        edge("call", "merge"),
        edge("call", "fail", "error"),
        edge("set_1", "wait-1", "main"),
        edge("wait-1", "merge"),
        edge("merge", "code"),
        edge("code", "only_ok"),
    ]
    accepts(
        name="Order routing",
        description="Routes orders.\n" * 10,
        nodes=nodes,
        connections=connections,
        tags=["orders", "prod"],
        settings={"timeout_ms": 60_000},
    )


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        name="",
        tags=[""],
        settings={"retries": 1},
        nodes=[trigger(), noop("a"), noop("a"), {"id": "b", "type": "nope", "parameters": {}}],
        connections=[edge("a", "ghost")],
    )
    assert [p.loc for p in found] == [
        "name",
        "tags[0]",
        "settings.retries",
        "nodes[2].id",
        "nodes[3].type",
        "connections[0].to",
    ]


# -- name, description ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("   \t\n", "whitespace"),
        ("x" * 201, "201"),
        (None, "null"),
        (42, "integer"),
        (["wf"], "array"),
    ],
)
def test_bad_name(name: Any, words: str) -> None:
    problem = only(name=name)
    assert problem.loc == "name"
    assert words in problem.msg


def test_name_limits() -> None:
    accepts(name="x" * 200)
    accepts(name=" padded ")
    accepts(name="日本語")


def test_description() -> None:
    accepts(description="x" * 10_000)
    problem = only(description="x" * 10_001)
    assert problem == Problem("description", problem.msg)
    assert "10001" in problem.msg
    assert only(description=None) == Problem("description", "must be a string, got null")


# -- tags -----------------------------------------------------------------------


def test_tags_limits() -> None:
    accepts(tags=[f"t{i}" for i in range(50)])
    accepts(tags=["x" * 64])
    problem = only(tags=[f"t{i}" for i in range(51)])
    assert problem.loc == "tags"
    assert "51" in problem.msg


@pytest.mark.parametrize(
    ("tags", "loc", "words"),
    [
        (["a", ""], "tags[1]", "empty"),
        (["a", 3], "tags[1]", "integer"),
        (["a", None], "tags[1]", "null"),
        (["x" * 65], "tags[0]", "65"),
        (["a", "b", "a"], "tags[2]", "duplicate tag 'a' (also tags[0])"),
        ("a,b", "tags", "string"),
        ({"a": 1}, "tags", "object"),
    ],
)
def test_bad_tags(tags: Any, loc: str, words: str) -> None:
    problem = only(tags=tags)
    assert problem.loc == loc
    assert words in problem.msg


def test_tags_are_case_sensitive() -> None:
    accepts(tags=["Prod", "prod"])


# -- settings --------------------------------------------------------------------


def test_settings() -> None:
    accepts(settings={})
    accepts(settings={"timeout_ms": 1})
    accepts(settings={"timeout_ms": 3_600_000})
    accepts(settings={"retention_days": 0})  # for ever, whatever the global setting
    accepts(settings={"retention_days": 36_500})


@pytest.mark.parametrize(
    ("settings", "loc", "words"),
    [
        ({"timeout_ms": 0}, "settings.timeout_ms", "between 1 and 3600000, got 0"),
        ({"timeout_ms": 3_600_001}, "settings.timeout_ms", "3600001"),
        ({"timeout_ms": "60"}, "settings.timeout_ms", "string"),
        ({"timeout_ms": True}, "settings.timeout_ms", "boolean"),
        ({"timeout_ms": 1.5}, "settings.timeout_ms", "number"),
        ({"retries": 3}, "settings.retries", "unknown setting 'retries' (allowed: "),
        ({"retention_days": -1}, "settings.retention_days", "between 0 and 36500, got -1"),
        ({"retention_days": 36_501}, "settings.retention_days", "36501"),
        ({"retention_days": "30"}, "settings.retention_days", "string"),
        ({"retention_days": 1.5}, "settings.retention_days", "number"),
        ({"odd key": 3}, 'settings["odd key"]', "'odd key'"),
        (None, "settings", "null"),
        ([], "settings", "array"),
    ],
)
def test_bad_settings(settings: Any, loc: str, words: str) -> None:
    problem = only(settings=settings)
    assert problem.loc == loc
    assert words in problem.msg


def test_retry_settings() -> None:
    accepts(settings={"retry": {"max_attempts": 1, "backoff_ms": 0}})
    accepts(settings={"retry": {"max_attempts": 10, "backoff_ms": 3_600_000, "on": ["failed"]}})
    accepts(settings={"retry": {"max_attempts": 3, "backoff_ms": 500, "on": ["crashed", "failed"]}})


@pytest.mark.parametrize(
    ("retry", "loc", "words"),
    [
        (3, "settings.retry", "must be an object {max_attempts, backoff_ms, on}, got integer"),
        ({"backoff_ms": 0}, "settings.retry.max_attempts", "missing required key"),
        ({"max_attempts": 2}, "settings.retry.backoff_ms", "missing required key"),
        ({"max_attempts": 0, "backoff_ms": 0}, "settings.retry.max_attempts", "between 1 and 10"),
        ({"max_attempts": 11, "backoff_ms": 0}, "settings.retry.max_attempts", "got 11"),
        ({"max_attempts": 2.0, "backoff_ms": 0}, "settings.retry.max_attempts", "number"),
        ({"max_attempts": True, "backoff_ms": 0}, "settings.retry.max_attempts", "boolean"),
        ({"max_attempts": 2, "backoff_ms": -1}, "settings.retry.backoff_ms", "between 0 and"),
        ({"max_attempts": 2, "backoff_ms": 3_600_001}, "settings.retry.backoff_ms", "3600001"),
        ({"max_attempts": 2, "backoff_ms": "5"}, "settings.retry.backoff_ms", "string"),
        ({"max_attempts": 2, "backoff_ms": 0, "on": []}, "settings.retry.on", "an empty array"),
        ({"max_attempts": 2, "backoff_ms": 0, "on": "failed"}, "settings.retry.on", "string"),
        (
            {"max_attempts": 2, "backoff_ms": 0, "on": ["failed", "canceled"]},
            "settings.retry.on[1]",
            "one of 'failed', 'crashed', got 'canceled'",
        ),
        ({"max_attempts": 2, "backoff_ms": 0, "on": [1]}, "settings.retry.on[0]", "integer"),
        (
            {"max_attempts": 2, "backoff_ms": 0, "on": ["failed", "failed"]},
            "settings.retry.on[1]",
            "duplicate 'failed' (also settings.retry.on[0])",
        ),
        (
            {"max_attempts": 2, "backoff_ms": 0, "delay": 1},
            "settings.retry.delay",
            "unknown retry setting 'delay' (allowed: backoff_ms, max_attempts, on)",
        ),
    ],
)
def test_bad_retry_settings(retry: Any, loc: str, words: str) -> None:
    problem = only(settings={"retry": retry})
    assert problem.loc == loc
    assert words in problem.msg


# -- size --------------------------------------------------------------------------


def test_canonical_size_is_compact_sorted_utf8_json() -> None:
    body = definition(name="café ☕", description="x")
    expected = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert canonical_definition_size(**body) == len(expected.encode("utf-8"))
    assert canonical_definition_size(**definition(name="é")) == canonical_definition_size(
        **definition(name="ab")
    )


def _padded_to(size: int) -> dict[str, Any]:
    """A valid definition whose canonical size is exactly ``size`` bytes."""
    body = definition(nodes=[trigger(), noop("a", name="")])
    pad = size - canonical_definition_size(**body)
    # Bulk padding goes into a set node's value; the description fine-tunes it.
    fields = {"f": "x" * max(0, pad - 1_000)}
    body["nodes"].append({"id": "pad", "type": "set", "parameters": {"fields": fields}})
    body["description"] = "d" * (size - canonical_definition_size(**body))
    assert canonical_definition_size(**body) == size
    return body


def test_size_limit_boundary() -> None:
    validate_definition(**_padded_to(MAX_DEFINITION_BYTES))
    body = _padded_to(MAX_DEFINITION_BYTES + 1)
    with pytest.raises(WorkflowInvalid) as caught:
        validate_definition(**body)
    [problem] = caught.value.problems
    assert problem.loc == "definition"
    assert str(MAX_DEFINITION_BYTES + 1) in problem.msg
    assert "256 KiB" in problem.msg


def test_oversized_definition_skips_node_checks_but_keeps_top_level_ones() -> None:
    found = problems(
        name="",
        nodes=[noop("a", name="x" * 200) for _ in range(2000)],
        connections=[edge("a", "a")],
    )
    assert [p.loc for p in found] == ["name", "definition", "nodes"]
    assert "too many nodes: 2000 (at most 500)" in found[2].msg


def test_too_deeply_nested_value_is_a_problem() -> None:
    deep: Any = 1
    for _ in range(5_000):
        deep = [deep]
    set_node = {"id": "a", "type": "set", "parameters": {"fields": {"deep": deep}}}
    problem = only(nodes=[trigger(), set_node])
    # The value contract names the first level past its depth limit.
    assert problem.loc.startswith("nodes[1].parameters.fields.deep[0][0]")
    assert f"nested deeper than {MAX_DEPTH} levels" in problem.msg


def test_non_finite_number_is_a_problem() -> None:
    found = problems(nodes=[trigger(), noop("a", position=[float("nan"), 0])])
    assert [p.loc for p in found] == ["nodes[1].position[0]"]
    assert "NaN" in found[0].msg


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (2**63, "signed 64-bit range"),
        (-(2**63) - 1, "signed 64-bit range"),
        (10**400, "an integer of 401 digits"),
        (1e20, "whole number of magnitude 2**63 or more"),
        (float("inf"), "not a finite number"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_values_the_log_cannot_carry_are_refused_where_they_are(value: Any, words: str) -> None:
    found = problems(
        nodes=[trigger(), {"id": "a", "type": "set", "parameters": {"fields": {"x": [value]}}}]
    )
    assert [p.loc for p in found] == ["nodes[1].parameters.fields.x[0]"]
    assert words in found[0].msg


def test_a_value_problem_anywhere_in_a_node_is_found() -> None:
    found = problems(
        nodes=[trigger(), noop("a", position=[0, 2**64], name="\x00")],
        settings={"timeout_ms": 1000},
        tags=["fine"],
    )
    assert {p.loc for p in found} == {"nodes[1].name", "nodes[1].position[1]"}


# -- counts ------------------------------------------------------------------------


def test_node_count_limit() -> None:
    nodes = [trigger()] + [noop(f"n{i}") for i in range(499)]
    accepts(nodes=nodes, connections=[])
    problem = only(nodes=[*nodes, noop("extra")], connections=[])
    assert problem == Problem("nodes", "too many nodes: 501 (at most 500)")


def test_connection_count_limit() -> None:
    nodes = [trigger()] + [noop(f"n{i}") for i in range(70)]
    ids = [n["id"] for n in nodes]
    forward = [edge(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    accepts(nodes=nodes, connections=forward[:2000])
    problem = only(nodes=nodes, connections=forward[:2001])
    assert problem == Problem("connections", "too many connections: 2001 (at most 2000)")


@pytest.mark.parametrize("value", [None, {}, "x", 3])
def test_nodes_and_connections_must_be_arrays(value: Any) -> None:
    assert only(nodes=value, connections=[]).loc == "nodes"
    assert only(connections=value).loc == "connections"


# -- nodes ---------------------------------------------------------------------


@pytest.mark.parametrize("node", [None, "start", 1, ["id"]])
def test_node_must_be_an_object(node: Any) -> None:
    problem = only(nodes=[trigger(), noop("a"), node])
    assert problem.loc == "nodes[2]"
    assert "must be an object" in problem.msg


def test_unknown_node_key() -> None:
    problem = only(nodes=[trigger(), noop("a", color="red")])
    assert problem.loc == "nodes[1].color"
    assert "'color'" in problem.msg


def test_node_id_required() -> None:
    node = noop("x")
    del node["id"]
    problem = only(nodes=[trigger(), noop("a"), node])
    assert problem == Problem("nodes[2].id", "missing required key 'id'")


@pytest.mark.parametrize("node_id", ["", "a b", "a.b", "é", "x" * 65, "a\n"])
def test_invalid_node_id(node_id: str) -> None:
    problem = only(nodes=[trigger(), noop("a"), noop(node_id)])
    assert problem.loc == "nodes[2].id"
    assert f"'{node_id}'" in problem.msg


@pytest.mark.parametrize("node_id", [1, None, ["a"]])
def test_node_id_must_be_a_string(node_id: Any) -> None:
    problem = only(nodes=[trigger(), noop("a"), noop(node_id)])
    assert problem.loc == "nodes[2].id"
    assert "must be a string" in problem.msg


def test_node_id_charset_and_length() -> None:
    long_id = "A-z_0" + "x" * 59
    accepts(nodes=[trigger(), noop(long_id)], connections=[edge("start", long_id)])


def test_duplicate_node_id() -> None:
    problem = only(nodes=[trigger(), noop("a"), noop("b"), noop("a")])
    assert problem == Problem("nodes[3].id", "duplicate node id 'a' (also nodes[1])")


def test_node_type_required() -> None:
    node = noop("b")
    del node["type"]
    problem = only(nodes=[trigger(), noop("a"), node])
    assert problem.loc == "nodes[2].type"
    assert "'type'" in problem.msg


def test_unknown_node_type_lists_known_types() -> None:
    problem = only(nodes=[trigger(), noop("a"), {"id": "b", "type": "slack", "parameters": {}}])
    assert problem.loc == "nodes[2].type"
    assert "'slack'" in problem.msg
    for known in ("manual_trigger", "http_request", "noop", "switch"):
        assert known in problem.msg


def test_node_type_must_be_a_string() -> None:
    problem = only(nodes=[trigger(), {"id": "a", "type": 3, "parameters": {}}])
    assert problem == Problem("nodes[1].type", "must be a string, got integer")


def test_parameters_required() -> None:
    node = noop("a")
    del node["parameters"]
    problem = only(nodes=[trigger(), node])
    assert problem.loc == "nodes[1].parameters"
    assert "'parameters'" in problem.msg


@pytest.mark.parametrize("parameters", [None, [], "x"])
def test_parameters_must_be_an_object(parameters: Any) -> None:
    problem = only(nodes=[trigger(), {"id": "a", "type": "noop", "parameters": parameters}])
    assert problem.loc == "nodes[1].parameters"
    assert "must be an object" in problem.msg


def test_unknown_type_still_checks_parameter_shape() -> None:
    found = problems(nodes=[trigger(), {"id": "a", "type": "nope", "parameters": 1}])
    assert [p.loc for p in found] == ["nodes[1].type", "nodes[1].parameters"]


def test_parameter_errors_map_to_nested_locs() -> None:
    nodes = [
        trigger(),
        {"id": "h", "type": "http_request", "parameters": {"url": "ftp://x", "timeout_ms": 0}},
        {"id": "c", "type": "if", "parameters": {"conditions": [{"field": "a", "op": "gt"}]}},
        {"id": "s", "type": "set", "parameters": {"fields": {"a..b": 1}}},
        {
            "id": "h2",
            "type": "http_request",
            "parameters": {"url": "http://x", "headers": {"Bad Header": "v"}},
        },
        {"id": "t", "type": "manual_trigger", "parameters": {"cron": "* * * * *"}},
    ]
    found = problems(nodes=nodes, connections=[])
    assert [p.loc for p in found] == [
        "nodes[1].parameters.url",
        "nodes[1].parameters.timeout_ms",
        "nodes[2].parameters.conditions[0].value",
        'nodes[3].parameters.fields["a..b"]',
        'nodes[4].parameters.headers["Bad Header"]',
        "nodes[5].parameters.cron",
    ]
    assert "http" in found[0].msg
    assert "'gt'" in found[2].msg
    assert found[3].msg.startswith("invalid key: 'a..b'")
    assert "'Bad Header'" in found[4].msg


def test_node_name() -> None:
    accepts(nodes=[trigger(name=""), noop("a", name="x" * 200)])
    problem = only(nodes=[trigger(), noop("a", name="x" * 201)])
    assert problem.loc == "nodes[1].name"
    assert "201" in problem.msg
    assert only(nodes=[trigger(name=5), noop("a")]) == Problem(
        "nodes[0].name", "must be a string, got integer"
    )


@pytest.mark.parametrize("position", [[0, 0], [-1.5, 2], [1e18, -1e-300]])
def test_valid_position(position: list[float]) -> None:
    accepts(nodes=[trigger(position=position), noop("a")])


@pytest.mark.parametrize(
    "position", [[0], [0, 0, 0], ["0", 0], [True, 0], [None, 0], {"x": 0, "y": 0}, None, 5]
)
def test_invalid_position(position: Any) -> None:
    problem = only(nodes=[trigger(), noop("a", position=position)])
    assert problem.loc == "nodes[1].position"
    assert "two finite numbers" in problem.msg


def test_infinite_position() -> None:
    found = problems(nodes=[trigger(), noop("a", position=[float("inf"), 0])])
    assert [p.loc for p in found] == ["nodes[1].position[0]"]


def test_position_jsonb_would_turn_into_a_huge_integer() -> None:
    # jsonb prints 1e300 as a 301-digit integer numeral: refused by the value contract.
    found = problems(nodes=[trigger(), noop("a", position=[1e300, 0])])
    assert [p.loc for p in found] == ["nodes[1].position[0]"]


@pytest.mark.parametrize(
    ("retry", "loc", "words"),
    [
        ({"max_tries": 0, "wait_ms": 0}, "nodes[1].retry.max_tries", "between 1 and 10, got 0"),
        ({"max_tries": 11, "wait_ms": 0}, "nodes[1].retry.max_tries", "got 11"),
        ({"max_tries": "3", "wait_ms": 0}, "nodes[1].retry.max_tries", "string"),
        ({"max_tries": 3, "wait_ms": -1}, "nodes[1].retry.wait_ms", "got -1"),
        ({"max_tries": 3, "wait_ms": 600_001}, "nodes[1].retry.wait_ms", "got 600001"),
        ({"max_tries": 3}, "nodes[1].retry.wait_ms", "'wait_ms'"),
        ({"wait_ms": 3}, "nodes[1].retry.max_tries", "'max_tries'"),
        ({"max_tries": 3, "wait_ms": 0, "backoff": 2}, "nodes[1].retry.backoff", "'backoff'"),
        (3, "nodes[1].retry", "integer"),
        (None, "nodes[1].retry", "null"),
    ],
)
def test_invalid_retry(retry: Any, loc: str, words: str) -> None:
    problem = only(nodes=[trigger(), noop("a", retry=retry)])
    assert problem.loc == loc
    assert words in problem.msg


def test_retry_limits() -> None:
    accepts(nodes=[trigger(), noop("a", retry={"max_tries": 1, "wait_ms": 0})])
    accepts(nodes=[trigger(), noop("a", retry={"max_tries": 10, "wait_ms": 600_000})])


@pytest.mark.parametrize("on_error", ["stop", "continue", "continue_error_output"])
def test_valid_on_error(on_error: str) -> None:
    accepts(nodes=[trigger(), noop("a", on_error=on_error)])


@pytest.mark.parametrize(("on_error", "words"), [("ignore", "'ignore'"), (None, "null")])
def test_invalid_on_error(on_error: Any, words: str) -> None:
    problem = only(nodes=[trigger(), noop("a", on_error=on_error)])
    assert problem.loc == "nodes[1].on_error"
    assert words in problem.msg
    assert "continue_error_output" in problem.msg


# -- triggers -----------------------------------------------------------------------


def test_at_least_one_trigger() -> None:
    problem = only(nodes=[noop("a"), noop("b")], connections=[edge("a", "b")])
    assert problem.loc == "nodes"
    assert "manual_trigger" in problem.msg and "webhook_trigger" in problem.msg
    assert {"manual_trigger", "webhook_trigger", "schedule_trigger"} == TRIGGER_TYPES


def test_empty_workflow_has_no_trigger() -> None:
    assert only(nodes=[], connections=[]).loc == "nodes"


def test_trigger_with_invalid_parameters_still_counts_as_trigger() -> None:
    problem = only(nodes=[trigger(parameters={"x": 1}), noop("a")])
    assert problem.loc == "nodes[0].parameters.x"


def test_several_triggers_are_fine() -> None:
    accepts(nodes=[trigger("t1"), trigger("t2"), noop("a")], connections=chain("t1", "a"))


def test_trigger_cannot_have_incoming_connections() -> None:
    problem = only(
        nodes=[trigger("t1"), trigger("t2"), noop("a")],
        connections=[edge("t1", "a"), edge("a", "t2")],
    )
    assert problem.loc == "connections[1].to"
    assert "'t2'" in problem.msg
    assert "trigger" in problem.msg


# -- connections ----------------------------------------------------------------------


@pytest.mark.parametrize("connection", [None, "start->a", ["start", "a"]])
def test_connection_must_be_an_object(connection: Any) -> None:
    problem = only(connections=[edge("start", "a"), connection])
    assert problem.loc == "connections[1]"
    assert "must be an object" in problem.msg


def test_unknown_connection_key() -> None:
    problem = only(connections=[edge("start", "a", input=0)])
    assert problem.loc == "connections[0].input"
    assert "'input'" in problem.msg


@pytest.mark.parametrize("end", ["from", "to"])
def test_connection_ends_are_required(end: str) -> None:
    connection = edge("start", "a")
    del connection[end]
    assert only(connections=[connection]) == Problem(
        f"connections[0].{end}", f"missing required key '{end}'"
    )


@pytest.mark.parametrize("end", ["from", "to"])
def test_connection_ends_must_be_strings(end: str) -> None:
    problem = only(connections=[{**edge("start", "a"), end: 1}])
    assert problem.loc == f"connections[0].{end}"
    assert "integer" in problem.msg


def test_connection_to_unknown_node() -> None:
    assert only(connections=[edge("start", "a"), edge("a", "foo")]) == Problem(
        "connections[1].to", "unknown node 'foo'"
    )


def test_connection_from_unknown_node() -> None:
    assert only(connections=[edge("ghost", "a")]) == Problem(
        "connections[0].from", "unknown node 'ghost'"
    )


def test_connection_to_a_node_with_an_invalid_id_is_unknown() -> None:
    found = problems(nodes=[trigger(), noop("a b")], connections=[edge("start", "a b")])
    assert [p.loc for p in found] == ["nodes[1].id", "connections[0].to"]


def test_self_loop() -> None:
    problem = only(connections=[edge("start", "a"), edge("a", "a")])
    assert problem.loc == "connections[1].to"
    assert "self-loop" in problem.msg
    assert "'a'" in problem.msg


def test_duplicate_connection() -> None:
    problem = only(connections=[edge("start", "a"), edge("start", "a")])
    assert problem.loc == "connections[1]"
    assert "'start'" in problem.msg
    assert "'a'" in problem.msg
    assert "connections[0]" in problem.msg


def test_omitted_output_and_main_are_the_same_connection() -> None:
    problem = only(connections=[edge("start", "a", "main"), edge("start", "a")])
    assert problem.loc == "connections[1]"


def test_same_ends_on_different_outputs_are_distinct() -> None:
    accepts(
        nodes=[trigger(), if_node("c"), noop("a")],
        connections=[edge("start", "c"), edge("c", "a", "true"), edge("c", "a", "false")],
    )


def test_explicit_main_output() -> None:
    accepts(connections=[edge("start", "a", "main")])


def test_unknown_output_lists_valid_ones() -> None:
    problem = only(connections=[edge("start", "a", "true")])
    assert problem.loc == "connections[0].output"
    assert "'true'" in problem.msg
    assert "'start'" in problem.msg
    assert "'main'" in problem.msg


def test_output_must_be_a_string() -> None:
    problem = only(connections=[edge("start", "a", output=1)])  # type: ignore[arg-type]
    assert problem == Problem("connections[0].output", "must be a string, got integer")


def test_if_connection_needs_an_output() -> None:
    problem = only(
        nodes=[trigger(), if_node("check"), noop("a")],
        connections=[edge("start", "check"), edge("check", "a")],
    )
    assert problem.loc == "connections[1].output"
    assert "'check'" in problem.msg
    assert "'true'" in problem.msg
    assert "'false'" in problem.msg


def test_switch_outputs_are_its_case_names_and_default() -> None:
    nodes = [trigger(), switch("sw", "red", "blue"), noop("a")]
    accepts(
        nodes=nodes,
        connections=[
            edge("start", "sw"),
            edge("sw", "a", "red"),
            edge("sw", "a", "blue"),
            edge("sw", "a", "default"),
        ],
    )
    problem = only(nodes=nodes, connections=[edge("start", "sw"), edge("sw", "a", "green")])
    assert problem.loc == "connections[1].output"
    assert "'green'" in problem.msg
    assert "'red', 'blue', 'default'" in problem.msg
    problem = only(nodes=nodes, connections=[edge("start", "sw"), edge("sw", "a")])
    assert problem.loc == "connections[1].output"
    assert "'red', 'blue', 'default'" in problem.msg


def test_error_output_needs_continue_error_output() -> None:
    nodes = [trigger(), noop("a"), noop("b")]
    problem = only(nodes=nodes, connections=[edge("start", "a"), edge("a", "b", "error")])
    assert problem.loc == "connections[1].output"
    assert "'error'" in problem.msg
    nodes[1]["on_error"] = "continue"
    assert only(nodes=nodes, connections=[edge("a", "b", "error")]).loc == "connections[0].output"
    nodes[1]["on_error"] = "continue_error_output"
    accepts(nodes=nodes, connections=[edge("start", "a"), edge("a", "b", "error"), edge("a", "b")])


def test_error_output_of_if_keeps_output_required() -> None:
    nodes = [trigger(), if_node("c", on_error="continue_error_output"), noop("a")]
    accepts(nodes=nodes, connections=[edge("start", "c"), edge("c", "a", "error")])
    problem = only(nodes=nodes, connections=[edge("start", "c"), edge("c", "a")])
    assert "'true', 'false', 'error'" in problem.msg


def test_outputs_are_not_checked_when_parameters_are_invalid() -> None:
    bad_switch = {"id": "sw", "type": "switch", "parameters": {"cases": []}}
    found = problems(
        nodes=[trigger(), bad_switch, noop("a")],
        connections=[edge("start", "sw"), edge("sw", "a", "whatever")],
    )
    assert [p.loc for p in found] == ["nodes[1].parameters.cases"]


# -- cycles -------------------------------------------------------------------


def test_two_node_cycle() -> None:
    problem = only(
        nodes=[trigger(), noop("a"), noop("b")],
        connections=[edge("start", "a"), edge("a", "b"), edge("b", "a")],
    )
    assert problem == Problem("nodes", "cycle: a -> b -> a")


def test_three_node_cycle() -> None:
    problem = only(
        nodes=[trigger(), noop("a"), noop("b"), noop("c")],
        connections=[edge("start", "a"), *chain("a", "b", "c", "a")],
    )
    assert problem == Problem("nodes", "cycle: a -> b -> c -> a")


def test_cycle_starts_at_the_node_listed_first() -> None:
    problem = only(
        nodes=[trigger(), noop("c"), noop("a"), noop("b")],
        connections=[edge("start", "a"), *chain("a", "b", "c", "a")],
    )
    assert problem == Problem("nodes", "cycle: c -> a -> b -> c")


def test_cycle_through_an_if_output() -> None:
    problem = only(
        nodes=[trigger(), if_node("retry"), noop("work")],
        connections=[edge("start", "work"), edge("work", "retry"), edge("retry", "work", "false")],
    )
    assert problem == Problem("nodes", "cycle: retry -> work -> retry")


def test_one_cycle_per_component_in_node_order() -> None:
    nodes = [trigger(), *(noop(x) for x in ["p", "q", "x", "y", "z"])]
    found = problems(
        nodes=nodes,
        connections=[
            *chain("start", "x", "y", "z", "x"),
            *chain("q", "p", "q"),
            edge("z", "p"),
        ],
    )
    assert found == [
        Problem("nodes", "cycle: p -> q -> p"),
        Problem("nodes", "cycle: x -> y -> z -> x"),
    ]


def test_reported_cycle_is_a_shortest_one_through_its_first_node() -> None:
    nodes = [trigger(), *(noop(x) for x in "abcd")]
    problem = only(
        nodes=nodes,
        connections=[edge("start", "a"), *chain("a", "b", "c", "d", "a"), edge("b", "d")],
    )
    assert problem == Problem("nodes", "cycle: a -> b -> d -> a")


def test_long_cycle_needs_no_recursion() -> None:
    ids = [f"n{i}" for i in range(499)]
    problem = only(
        nodes=[trigger(), *(noop(i) for i in ids)],
        connections=[edge("start", "n0"), *chain(*ids, "n0")],
    )
    assert problem == Problem("nodes", "cycle: " + " -> ".join([*ids, "n0"]))


def test_long_chain_is_accepted() -> None:
    ids = ["start", *(f"n{i}" for i in range(499))]
    accepts(nodes=[trigger(), *(noop(i) for i in ids[1:])], connections=chain(*ids))


def test_diamond_is_not_a_cycle() -> None:
    accepts(
        nodes=[trigger(), noop("a"), noop("b"), noop("c")],
        connections=[*chain("start", "a", "c"), *chain("start", "b", "c")],
    )


def test_self_loop_is_not_also_reported_as_a_cycle() -> None:
    found = problems(connections=[edge("start", "a"), edge("a", "a")])
    assert [p.loc for p in found] == ["connections[1].to"]


# -- robustness and speed ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"nodes": [{}]},
        {"nodes": [{"id": {}, "type": [], "parameters": [], "retry": [], "position": {}}]},
        {"nodes": [trigger(), {"id": "a", "type": "if", "parameters": {"conditions": "x"}}]},
        {"connections": [{"from": [], "to": {}, "output": None}]},
        {"connections": [{}], "nodes": [{"id": "x"}]},
        {"nodes": [{1: "x", None: 2}]},
        {"settings": {1: 2}},
        {"tags": [[], {}]},
        {"nodes": [trigger(parameters={"a": {1, 2}})]},
        {"nodes": [trigger(), noop("a", name=b"bytes")]},
        {"name": "\ud800"},
    ],
)
def test_malformed_input_gives_problems_not_exceptions(overrides: dict[str, Any]) -> None:
    found = problems(**overrides)
    assert all(isinstance(p, Problem) and p.loc and p.msg for p in found)


def largest_definition() -> dict[str, Any]:
    """500 nodes of every kind and 2,000 connections: the limits at once."""
    kinds = [
        {"type": "noop", "parameters": {}},
        {"type": "set", "parameters": {"fields": {"a.b": 1, "c": [1, 2]}}},
        {"type": "wait", "parameters": {"ms": 5}},
        {"type": "http_request", "parameters": {"url": "https://example.com/x"}},
        {"type": "code", "parameters": {"expression": "x + 1", "into": "y"}},
    ]
    nodes = [trigger("n0")] + [{"id": f"n{i}", **kinds[i % 5]} for i in range(1, 500)]
    connections: list[dict[str, Any]] = []
    for i in range(500):
        for step in (1, 7, 31, 97, 211):
            if i + step < 500 and len(connections) < 2000:
                connections.append(edge(f"n{i}", f"n{i + step}"))
    return definition(nodes=nodes, connections=connections)


def test_500_nodes_and_2000_connections_are_a_valid_definition() -> None:
    """How fast this validates is measured by ``bench/validation.py``, not asserted here."""
    body = largest_definition()
    assert len(body["connections"]) == 2000
    validate_definition(**body)


def test_nul_characters_are_refused_wherever_they_are() -> None:
    # PostgreSQL's jsonb cannot hold U+0000: accepting one would log an event
    # that no view can ever show.
    found = problems(
        name="a\x00b",
        tags=["ok", "x\x00"],
        nodes=[trigger(), noop("a", name="n\x00")],
        connections=[edge("start", "a")],
        settings={"note\x00": 1},
    )
    nul = {p.loc for p in found if "NUL" in p.msg}
    assert nul == {"name", "tags[1]", "nodes[1].name", 'settings["note\\u0000"]'}
    accepts(description="a backslash then u0000 is fine: \\u0000")
