"""The n8n importer's translation (pure): our fixtures in n8n's format, node by node."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.n8n_import import (
    ExportInvalid,
    ImportRefused,
    LoopRefused,
    Translation,
    translate_export,
)
from commands.n8n_import.expressions import (
    Expression,
    Literal,
    NotTranslatable,
    parameter_value,
)
from domain.definition import validate_definition
from domain.engine import compile_plan
from domain.expressions import compile_expression
from tests.unit.test_engine import execute

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "n8n"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def translated(name: str, *, partial: bool = False) -> Translation:
    translation = translate_export(load(name), partial=partial)
    validate_definition(**translation.definition)  # every import is a storable workflow
    return translation


def nodes_of(translation: Translation) -> dict[str, dict[str, Any]]:
    return {node["name"]: node for node in translation.definition["nodes"]}


def run(translation: Translation, execution_input: Any) -> dict[str, Any]:
    outcome = execute(compile_plan(translation.definition), execution_input)
    assert outcome.status == "succeeded", outcome.error
    return outcome.output


# -- one fixture per node type and version ------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "name", "expected_type", "expected_parameters"),
    [
        (
            "set_v1",
            "Set",
            "set",
            {
                "fields": {"greeting": "hello", "count": 3, "ok": True},
                "keep_others": True,
                "expressions": {"copy": "item.name"},
            },
        ),
        (
            "set_v2",
            "Keep only",
            "set",
            {
                "fields": {},
                "keep_others": False,
                "expressions": {"customer.name": 'item.first + " " + item.last'},
            },
        ),
        (
            "set_v3_2",
            "Fields",
            "set",
            {
                "fields": {"total": 12.5, "paid": True, "meta": {"source": "n8n"}},
                "keep_others": False,
                "expressions": {"label": '"Order " + string(item.id)'},
            },
        ),
        (
            "set_v3_4",
            "Edit Fields",
            "set",
            {
                "fields": {"tags": ["a", "b"]},
                "keep_others": True,
                "expressions": {"doubled": "item.n * 2", "big": "item.n > 10"},
            },
        ),
        (
            "if_v1",
            "IF",
            "if",
            {
                "conditions": [
                    {"field": "amount", "op": "gt", "value": 100},
                    {"field": "status", "op": "eq", "value": "open"},
                ],
                "combine": "or",
            },
        ),
        (
            "if_v2",
            "If",
            "if",
            {
                "conditions": [
                    {"field": "name", "op": "regex", "value": "(?i)^ad"},
                    {"field": "age", "op": "gte", "value": 18},
                    {"field": "email", "op": "exists", "value": True},
                ],
                "combine": "and",
            },
        ),
        (
            "filter_v1",
            "Filter",
            "filter",
            {"conditions": [{"field": "active", "op": "eq", "value": True}], "combine": "and"},
        ),
        (
            "filter_v2",
            "Filter",
            "filter",
            {
                "conditions": [
                    {"field": "score", "op": "lt", "value": 50},
                    {"field": "code", "op": "regex", "value": r"(?i)^A-\d+$"},
                ],
                "combine": "or",
            },
        ),
        ("merge_v1", "Merge", "merge", {"mode": "append"}),
        ("merge_v2", "Merge", "merge", {"mode": "combine", "key": "id"}),
        ("merge_v3", "Merge", "merge", {"mode": "append"}),
        ("wait_v1", "Wait", "wait", {"ms": 0}),
        ("wait_v1_1", "Wait", "wait", {"ms": 90_000}),
        ("noop_stop", "Nothing", "noop", {}),
        ("noop_stop", "Fail", "stop_and_error", {"message": "stopped on purpose"}),
        (
            "http_v1",
            "Call",
            "http_request",
            {
                "method": "POST",
                "url": "http://127.0.0.1:9/v1/things?page=2",
                "headers": {"X-Trace": "abc"},
                "body": {"title": "hello"},
                "timeout_ms": 5000,
            },
        ),
        (
            "http_v3",
            "Call",
            "http_request",
            {"method": "PUT", "url": "https://example.com/api", "body": {"a": 1}},
        ),
        (
            "http_v4_2",
            "Call",
            "http_request",
            {
                "method": "GET",
                "url": "https://example.com/items?q=a+b",
                "headers": {"Accept": "application/json"},
            },
        ),
        (
            "webhook_v1",
            "Webhook",
            "webhook_trigger",
            {
                "path": "orders/new",
                "method": "GET",
                "auth": {"type": "none"},
                "response": "immediately",
            },
        ),
        (
            "webhook_v2_respond",
            "Webhook",
            "webhook_trigger",
            {
                "path": "intake",
                "method": "POST",
                "auth": {"type": "none"},
                "response": "when_finished",
            },
        ),
        ("webhook_v2_respond", "Respond", "noop", {}),
        (
            "schedule_v1_2",
            "Every 6 hours",
            "schedule_trigger",
            {"cron": "15 */6 * * *", "timezone": "Europe/Berlin"},
        ),
        ("cron_v1", "Cron", "schedule_trigger", {"cron": "30 9 * * 1", "timezone": "UTC"}),
        ("noop_stop", "Start", "manual_trigger", {}),
    ],
)
def test_each_supported_node_type_and_version_maps(
    fixture: str, name: str, expected_type: str, expected_parameters: dict[str, Any]
) -> None:
    node = nodes_of(translated(fixture))[name]
    assert (node["type"], node["parameters"]) == (expected_type, expected_parameters)


def test_positions_names_tags_and_timeout_are_kept() -> None:
    translation = translated("schedule_v1_2")
    assert translation.definition["settings"] == {"timeout_ms": 120_000}
    tick = nodes_of(translation)["Tick"]
    assert tick["position"] == [200, 0] and tick["id"] == "tick"
    assert translated("sticky_disabled").definition["tags"] == ["imported", "demo"]


def test_sticky_notes_are_dropped_and_a_disabled_node_passes_items_through() -> None:
    translation = translated("sticky_disabled")
    assert translation.dropped == ["Read me"]
    assert [node["name"] for node in translation.definition["nodes"]] == ["Start", "Off", "End"]
    assert nodes_of(translation)["Off"]["type"] == "noop"
    assert run(translation, {"a": 1}) == {"end": [{"a": 1}]}


def test_error_output_and_retries_become_on_error_and_retry() -> None:
    translation = translated("http_v4_2")
    call = nodes_of(translation)["Call"]
    assert call["on_error"] == "continue_error_output"
    assert call["retry"] == {"max_tries": 2, "wait_ms": 10}
    assert {"from": "call", "to": "failed", "output": "error"} in translation.definition[
        "connections"
    ]
    assert {"from": "call", "to": "worked", "output": "main"} in translation.definition[
        "connections"
    ]


# -- behaviour: the translated workflows do what the n8n ones did --------------------


def test_set_v3_4_computes_its_expressions_and_keeps_other_fields() -> None:
    assert run(translated("set_v3_4"), {"n": 12, "keep": "me"}) == {
        "edit-fields": [{"n": 12, "keep": "me", "tags": ["a", "b"], "doubled": 24, "big": True}]
    }


def test_template_expressions_concatenate_text_and_values() -> None:
    output = run(translated("set_v3_2"), {"id": 42})
    assert output == {
        "fields": [{"label": "Order 42", "total": 12.5, "paid": True, "meta": {"source": "n8n"}}]
    }


def test_if_outputs_map_to_true_and_false_branches() -> None:
    translation = translated("if_v2")
    output = run(translation, [{"name": "ADA", "age": 30, "email": "a@x"}, {"name": "Bob"}])
    assert output == {
        "adult": [{"name": "ADA", "age": 30, "email": "a@x"}],
        "other": [{"name": "Bob"}],
    }


def test_switch_rules_sharing_an_output_and_a_fallback_route_like_n8n() -> None:
    items = [{"kind": "a"}, {"kind": "xbx"}, {"kind": "c"}, {"kind": "z"}]
    assert run(translated("switch_v1"), items) == {
        "a-or-c": [{"kind": "a"}, {"kind": "c"}],
        "b": [{"kind": "xbx"}],
        "else": [{"kind": "z"}],
    }


def test_switch_v3_renamed_outputs_and_the_extra_fallback() -> None:
    translation = translated("switch_v3")
    [switch] = [node for node in translation.definition["nodes"] if node["type"] == "switch"]
    assert [case["name"] for case in switch["parameters"]["cases"]] == ["one", "1"]
    output = run(translation, [{"code": 2}, {"code": 1}, {"code": 9}])
    assert output == {"one": [{"code": 1}], "two": [{"code": 2}], "fallback": [{"code": 9}]}


def test_merge_inputs_follow_n8n_input_indexes_not_connection_order() -> None:
    # The export connects Three first and Right before Left; n8n appends by input index.
    assert run(translated("merge_v3"), {}) == {"merge": [{"n": 1}, {"n": 2}, {"n": 3}]}
    assert run(translated("merge_v1"), {"k": 1}) == {
        "merge": [{"k": 1, "side": "left"}, {"k": 1, "side": "right"}]
    }


def test_merge_combine_joins_on_the_field() -> None:
    assert run(translated("merge_v2"), {}) == {"merge": [{"id": 7, "total": 10, "customer": "Ada"}]}


# -- refusals -------------------------------------------------------------------------


def test_every_unmappable_node_is_listed_with_its_reason() -> None:
    with pytest.raises(ImportRefused) as refused:
        translate_export(load("refused"))
    listed = [(node.name, node.type, node.version, node.reason) for node in refused.value.nodes]
    code = "runs JavaScript/Python, which Reporunner does not run"
    assert listed == [
        ("JS Code", "n8n-nodes-base.code", 2, code),
        ("Py Code", "n8n-nodes-base.code", 2, code),
        ("Function", "n8n-nodes-base.function", 1, code),
        ("Function Item", "n8n-nodes-base.functionItem", 1, code),
        (
            "Sheets",
            "n8n-nodes-base.googleSheets",
            4,
            "has no Reporunner equivalent (a built-in n8n node the importer does not map)",
        ),
        (
            "Agent",
            "@n8n/n8n-nodes-langchain.agent",
            1.7,
            "is not a built-in n8n node (a community or LangChain node), which Reporunner "
            "cannot run",
        ),
        (
            "Future Set",
            "n8n-nodes-base.set",
            9,
            "version 9 is not one the importer reads (1 to 3.4)",
        ),
        (
            "Other node data",
            "n8n-nodes-base.set",
            3.4,
            "field 1 ('x') is an expression that uses '$node', which has no CEL equivalent",
        ),
        (
            "Signed call",
            "n8n-nodes-base.httpRequest",
            4.2,
            "it signs requests with n8n credentials ('genericCredentialType'), which are not "
            "imported",
        ),
    ]


def test_a_loop_is_refused_naming_its_nodes_in_order() -> None:
    with pytest.raises(LoopRefused) as refused:
        translate_export(load("loop"), partial=True)  # partial does not make a loop importable
    assert refused.value.cycle == ["Fetch page", "More pages?", "Next page", "Fetch page"]


@pytest.mark.parametrize(
    ("document", "loc"),
    [
        ([], "body"),
        ("text", "body"),
        ({"name": "x"}, "nodes"),
        ({"nodes": [], "connections": []}, "connections"),
        ({"nodes": [{"name": "a"}]}, "nodes[0].type"),
        ({"nodes": [{"name": "a", "type": "t", "typeVersion": "1"}]}, "nodes[0].typeVersion"),
        (
            {"nodes": [{"name": "a", "type": "t"}, {"name": "a", "type": "t"}], "connections": {}},
            "nodes[1].name",
        ),
        ({"nodes": [{"name": "a", "type": "t"}] * 501}, "nodes"),
        ({"name": 5, "nodes": []}, "name"),
        ({"nodes": [], "settings": []}, "settings"),
        ({"nodes": [{"name": "a", "type": "t", "position": [1]}]}, "nodes[0].position"),
        ({"nodes": [{"name": "a", "type": "t", "disabled": "yes"}]}, "nodes[0].disabled"),
        (
            {"nodes": [{"name": "a", "type": "t"}], "connections": {"a": {"main": [7]}}},
            "connections.a.main[0]",
        ),
        (
            {"nodes": [{"name": "a", "type": "t"}], "connections": {"a": {"main": [[3]]}}},
            "connections.a.main[0]",
        ),
    ],
)
def test_what_is_not_an_n8n_export_is_named(document: Any, loc: str) -> None:
    with pytest.raises(ExportInvalid) as invalid:
        translate_export(document)
    assert loc in [problem["loc"] for problem in invalid.value.problems]


def test_parameters_in_an_unexpected_shape_make_the_node_unsupported_not_a_crash() -> None:
    document = {
        "nodes": [
            {"name": "Start", "type": "n8n-nodes-base.manualTrigger", "parameters": {}},
            {
                "name": "Odd",
                "type": "n8n-nodes-base.httpRequest",
                "typeVersion": 4,
                "parameters": {"url": "https://example.com", "options": "x"},
            },
        ],
        "connections": {},
    }
    with pytest.raises(ImportRefused) as refused:
        translate_export(document)
    assert [node.name for node in refused.value.nodes] == ["Odd"]
    assert "not in the shape" in refused.value.nodes[0].reason


# -- partial mode ---------------------------------------------------------------------


def test_partial_mode_makes_placeholders_that_validate_and_lists_them() -> None:
    translation = translated("partial", partial=True)
    placeholders = {node.name: node for node in translation.placeholders}
    assert set(placeholders) == {"Transform", "Check other node"}
    nodes = nodes_of(translation)
    transform = nodes["Transform"]
    assert transform["type"] == "stop_and_error"
    assert (
        "Placeholder for n8n node 'Transform' (n8n-nodes-base.code@2)"
        in transform["parameters"]["message"]
    )
    # The IF had two outputs; a placeholder has one, so the false branch is listed as dropped.
    assert placeholders["Check other node"].dropped_connections == ("output 1 -> 'Small'",)
    assert {"from": "check-other-node", "to": "big", "output": "main"} in translation.definition[
        "connections"
    ]
    outcome = execute(compile_plan(translation.definition), {})
    assert outcome.status == "failed" and outcome.failed_node_id == "transform"


def test_an_unsupported_trigger_becomes_a_manual_trigger_placeholder() -> None:
    document = {
        "nodes": [
            {
                "name": "Mail",
                "type": "n8n-nodes-base.emailReadImapTrigger",
                "typeVersion": 2,
                "parameters": {},
            },
            {"name": "Next", "type": "n8n-nodes-base.noOp", "typeVersion": 1, "parameters": {}},
        ],
        "connections": {"Mail": {"main": [[{"node": "Next", "type": "main", "index": 0}]]}},
    }
    translation = translate_export(document, partial=True)
    validate_definition(**translation.definition)
    assert [node["type"] for node in translation.definition["nodes"]] == ["manual_trigger", "noop"]
    assert [node.name for node in translation.placeholders] == ["Mail"]


# -- expressions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n8n", "cel"),
    [
        ("={{ $json.a }}", "item.a"),
        ('={{ $json["a b"].c }}', 'item["a b"].c'),
        ("={{ $json.list[0] }}", "item.list[0]"),
        ("={{ $json.in }}", 'item["in"]'),
        ("={{ $json.a === 'x' || !$json.b }}", 'item.a == "x" || ! item.b'),
        ("={{ ($json.n + 1) * 2 }}", "( item.n + 1 ) * 2"),
        ("={{ $json.n > 3 ? 'big' : 'small' }}", 'item.n > 3 ? "big" : "small"'),
        ("=Hello {{ $json.name }}", '"Hello " + string(item.name)'),
    ],
)
def test_expressions_with_a_cel_equivalent_translate(n8n: str, cel: str) -> None:
    parsed = parameter_value(n8n)
    assert isinstance(parsed, Expression) and parsed.cel == cel
    compile_expression(parsed.cel)


@pytest.mark.parametrize(
    ("n8n", "reason"),
    [
        ('={{ $node["Webhook"].json.a }}', "uses '$node'"),
        ("={{ $('Prepare').item.json.n }}", "uses '$'"),
        ("={{ $now }}", "uses '$now'"),
        ("={{ $json.name.toUpperCase() }}", "calls the method 'toUpperCase()'"),
        ("={{ $json.list.length }}", "'.length'"),
        ("={{ new Date() }}", "uses 'new'"),
        ("={{ [1, 2] }}", "uses '['"),
        ("={{ $json.a?.b }}", "optional path"),
        ("={{ items.map(i => i) }}", "uses 'items'"),
    ],
)
def test_expressions_without_one_are_refused_naming_the_construct(n8n: str, reason: str) -> None:
    with pytest.raises(NotTranslatable, match=re.escape(reason)):
        parameter_value(n8n)


def test_plain_and_equals_prefixed_text_are_literals() -> None:
    assert parameter_value("plain") == Literal("plain")
    assert parameter_value("=second") == Literal("second")
    assert parameter_value(3) == Literal(3)


_KEY = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters='"\\\n\r'), min_size=1, max_size=8
)
_VALUE = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=10), st.booleans(), st.none())


@given(path=st.lists(_KEY, min_size=1, max_size=4), value=_VALUE)
def test_a_json_path_translates_to_cel_reading_the_same_value(path: list[str], value: Any) -> None:
    item: Any = value
    for key in reversed(path):
        item = {key: item}
    source = "$json" + "".join(f'["{key}"]' for key in path)
    parsed = parameter_value("={{ " + source + " }}")
    assert isinstance(parsed, Expression)
    assert parsed.path == tuple(path)
    assert compile_expression(parsed.cel).evaluate(item) == value


# -- graphs ---------------------------------------------------------------------------

_NAMES = st.lists(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
    ),
    min_size=1,
    max_size=8,
    unique=True,
)


def _export(names: list[str], edges: set[tuple[int, int]]) -> dict[str, Any]:
    nodes = [{"name": "Start", "type": "n8n-nodes-base.manualTrigger", "typeVersion": 1}]
    nodes += [
        {"name": f"n {name}", "type": "n8n-nodes-base.noOp", "typeVersion": 1} for name in names
    ]
    connections: dict[str, Any] = {
        "Start": {"main": [[{"node": f"n {names[0]}", "type": "main", "index": 0}]]}
    }
    for source, target in sorted(edges):
        targets = connections.setdefault(f"n {names[source]}", {"main": [[]]})["main"][0]
        targets.append({"node": f"n {names[target]}", "type": "main", "index": 0})
    return {"name": "graph", "nodes": nodes, "connections": connections}


@given(names=_NAMES, data=st.data())
def test_any_acyclic_graph_imports_with_every_node_and_connection(
    names: list[str], data: Any
) -> None:
    pairs = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
    edges = set(data.draw(st.lists(st.sampled_from(pairs), max_size=12))) if pairs else set()
    translation = translate_export(_export(names, edges))
    validate_definition(**translation.definition)
    ids = [node["id"] for node in translation.definition["nodes"]]
    assert len(set(ids)) == len(names) + 1
    assert len(translation.definition["connections"]) == len(edges) + 1


@given(names=_NAMES, data=st.data())
def test_a_back_edge_is_refused_naming_a_real_cycle(names: list[str], data: Any) -> None:
    pairs = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
    edges = set(data.draw(st.lists(st.sampled_from(pairs), max_size=12))) if pairs else set()
    back = data.draw(st.sampled_from(sorted(edges))) if edges else (0, 0)
    edges.add((back[1], back[0]))
    with pytest.raises(LoopRefused) as refused:
        translate_export(_export(names, edges))
    cycle = refused.value.cycle
    assert cycle[0] == cycle[-1] and len(cycle) >= 2
    followed = {(f"n {names[a]}", f"n {names[b]}") for a, b in edges}
    assert all(step in followed for step in itertools.pairwise(cycle))
