"""``set``'s computed fields: CEL per item, from the item as it arrived."""

from __future__ import annotations

import pytest

from domain.definition import validate_definition
from domain.errors import WorkflowInvalid
from tests.unit.test_engine import chain, execute, node, plan_of, trigger


def test_expressions_read_the_arriving_item_and_land_after_the_literal_fields() -> None:
    plan = plan_of(
        [
            trigger(),
            node(
                "s",
                "set",
                fields={"n": 100, "label": "fixed"},
                expressions={"double": "item.n * 2", "label": '"n=" + string(item.n)'},
            ),
        ],
        chain("start", "s"),
    )
    # Both expressions see n=5, not the literal n=100 written before them;
    # the computed label replaces the literal one.
    assert execute(plan, {"n": 5}).output == {"s": [{"n": 100, "label": "n=5", "double": 10}]}


def test_expressions_without_keep_others_still_read_the_input() -> None:
    plan = plan_of(
        [trigger(), node("s", "set", fields={}, keep_others=False, expressions={"a.b": "item.x"})],
        chain("start", "s"),
    )
    assert execute(plan, [{"x": 1, "y": 2}, {"x": 3}]).output == {
        "s": [{"a": {"b": 1}}, {"a": {"b": 3}}]
    }


def test_a_failing_expression_fails_the_node_naming_the_field_and_item() -> None:
    plan = plan_of(
        [trigger(), node("s", "set", fields={}, expressions={"out": "item.missing"})],
        chain("start", "s"),
    )
    outcome = execute(plan, [{"missing": 1}, {"other": 1}])
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "expression for 'out' failed on item 1" in outcome.error


def test_an_expression_that_does_not_compile_fails_when_the_node_runs() -> None:
    plan = plan_of(
        [trigger(), node("s", "set", fields={}, expressions={"out": "item.("})],
        chain("start", "s"),
    )
    outcome = execute(plan)
    assert outcome.status == "failed"
    assert outcome.error is not None and "invalid expression for 'out'" in outcome.error


def test_expression_paths_and_sources_are_validated_when_stored() -> None:
    with pytest.raises(WorkflowInvalid) as raised:
        validate_definition(
            name="wf",
            description="",
            nodes=[trigger(), node("s", "set", fields={}, expressions={"bad path": "1", "ok": ""})],
            connections=chain("start", "s"),
            tags=[],
            settings={},
        )
    locs = [problem.loc for problem in raised.value.problems]
    assert 'nodes[1].parameters.expressions["bad path"]' in locs
    assert "nodes[1].parameters.expressions.ok" in locs
