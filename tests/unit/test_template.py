"""Templates without I/O: declarations, placeholders, values, substitution, the aggregate."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.definition import validate_definition
from domain.meta import EventMeta
from domain.template import (
    Template,
    TemplateNotVisible,
    TemplateParametersInvalid,
    TemplateUnpublished,
    check_parameter_values,
    parameter_references,
    parse_parameters,
    substitute,
)
from domain.values import INT64_MAX, INT64_MIN

META = EventMeta(org_id="acme", actor="apikey:1", correlation_id="c")


def definition(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Greet {{ params.who }}",
        "description": "",
        "nodes": [
            {"id": "start", "type": "manual_trigger", "parameters": {}},
            {
                "id": "set",
                "type": "set",
                "parameters": {
                    "fields": {
                        "limit": "{{ params.limit }}",
                        "flags": "{{params.flags}}",
                        "greeting": "Hello {{ params.who }}, limit {{ params.limit }}",
                    }
                },
            },
        ],
        "connections": [{"from": "start", "to": "set"}],
        "tags": [],
        "settings": {},
    }
    return body | fields


PARAMETERS = [
    {"name": "who", "type": "string", "default": "world"},
    {"name": "limit", "type": "integer", "required": True, "description": "How many"},
    {"name": "flags", "type": "object", "default": {"a": True}},
]


def publish(**overrides: Any) -> Template:
    arguments: dict[str, Any] = {
        "template_id": uuid.uuid4(),
        "name": "Greeter",
        "description": "",
        "visibility": "organisation",
        "parameters": PARAMETERS,
        "definition": definition(),
        "source_workflow_id": uuid.uuid4(),
        "source_revision": 3,
        "meta": META,
    }
    return Template.publish(**(arguments | overrides))


def locs(exc: pytest.ExceptionInfo[TemplateParametersInvalid]) -> list[str]:
    return [problem.loc for problem in exc.value.problems]


def test_the_source_definition_is_valid_with_its_placeholders() -> None:
    validate_definition(**definition())


def test_references_name_each_placeholder_and_whether_it_is_the_whole_string() -> None:
    found = sorted(parameter_references(definition()))
    assert found == [
        ("flags", "nodes[1].parameters.fields.flags", True),
        ("limit", "nodes[1].parameters.fields.greeting", False),
        ("limit", "nodes[1].parameters.fields.limit", True),
        ("who", "name", False),
        ("who", "nodes[1].parameters.fields.greeting", False),
    ]


def test_substitution_keeps_types_and_renders_embedded_values_as_text() -> None:
    template = publish()
    made = template.instantiate({"limit": 7})
    fields = made["nodes"][1]["parameters"]["fields"]
    assert fields["limit"] == 7 and isinstance(fields["limit"], int)
    assert fields["flags"] == {"a": True}
    assert fields["greeting"] == "Hello world, limit 7"
    assert made["name"] == "Greet world"
    validate_definition(**made)
    # The template itself is untouched.
    assert template.definition == definition()


def test_integral_numbers_are_integers_and_defaults_fill_in() -> None:
    values = check_parameter_values(parse_parameters(PARAMETERS), {"limit": 3.0, "who": "Ada"})
    assert values == {"limit": 3, "who": "Ada", "flags": {"a": True}}
    assert isinstance(values["limit"], int)


def test_bad_values_are_named_by_parameter_all_at_once() -> None:
    with pytest.raises(TemplateParametersInvalid) as exc:
        check_parameter_values(
            parse_parameters(PARAMETERS), {"who": 5, "flags": [1], "extra": True}
        )
    assert locs(exc) == [
        "parameters.extra",
        "parameters.who",
        "parameters.limit",
        "parameters.flags",
    ]
    messages = {problem.loc: problem.msg for problem in exc.value.problems}
    assert messages["parameters.who"] == "must be of type string, got number"
    assert messages["parameters.limit"] == "is required (integer)"


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("string", "x", 1),
        ("number", 1.5, "1.5"),
        ("number", 2, True),
        ("integer", 2, 2.5),
        ("boolean", False, 0),
        ("object", {}, []),
        ("array", [], {}),
    ],
)
def test_each_type_takes_its_values_only(kind: str, good: Any, bad: Any) -> None:
    declared = parse_parameters([{"name": "p", "type": kind}])
    assert check_parameter_values(declared, {"p": good}) == {"p": good}
    with pytest.raises(TemplateParametersInvalid) as exc:
        check_parameter_values(declared, {"p": bad})
    assert locs(exc) == ["parameters.p"]


def test_values_must_keep_the_value_contract() -> None:
    declared = parse_parameters([{"name": "p", "type": "object"}])
    with pytest.raises(TemplateParametersInvalid) as exc:
        check_parameter_values(declared, {"p": {"n": INT64_MAX + 1}})
    assert locs(exc) == ["parameters.p.n"]


def test_declarations_are_checked_and_every_problem_named() -> None:
    with pytest.raises(TemplateParametersInvalid) as exc:
        parse_parameters(
            [
                {"name": "1bad", "type": "string"},
                {"name": "a", "type": "date"},
                {"name": "b", "type": "integer", "default": "3"},
                {"name": "c", "type": "string", "required": True, "default": "x"},
                {"name": "d", "type": "string", "colour": "red"},
                {"name": "d", "type": "string"},
            ]
        )
    assert locs(exc) == [
        "parameters[0].name",
        "parameters[1].type",
        "parameters[2].default",
        "parameters[3].default",
        "parameters[4]",
        "parameters[5].name",
    ]


def test_publish_refuses_undeclared_unused_and_embedded_structured_parameters() -> None:
    with pytest.raises(TemplateParametersInvalid) as exc:
        publish(
            parameters=[
                {"name": "who", "type": "object"},  # embedded in strings: not a scalar
                {"name": "limit", "type": "integer"},
                {"name": "unused", "type": "string"},
            ]
        )
    # By parameter name, then the unused declarations.
    assert locs(exc) == [
        "nodes[1].parameters.fields.flags",  # {{params.flags}}: not declared
        "name",
        "nodes[1].parameters.fields.greeting",
        "parameters[2].name",
    ]


def test_publish_refuses_an_unknown_visibility() -> None:
    with pytest.raises(TemplateParametersInvalid) as exc:
        publish(visibility="everyone")
    assert locs(exc) == ["visibility"]


def test_visibility_and_unpublishing() -> None:
    private, public = publish(), publish(visibility="public")
    private.ensure_visible_to("acme")
    public.ensure_visible_to("other")
    with pytest.raises(TemplateNotVisible):
        private.ensure_visible_to("other")
    assert public.unpublish(META) is True
    assert public.unpublish(META) is False  # nothing more to record
    with pytest.raises(TemplateUnpublished):
        public.instantiate({"limit": 1})
    assert [type(e).__name__ for e in public.collect_events()] == ["Published", "Unpublished"]


def test_object_keys_are_never_substituted() -> None:
    assert substitute({"{{ params.a }}": "{{ params.a }}"}, {"a": 1}) == {"{{ params.a }}": 1}


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)


@given(JSON_VALUES)
def test_a_whole_string_placeholder_becomes_exactly_the_value(value: Any) -> None:
    document = {"a": ["{{ params.v }}", {"b": "{{params.v}}"}], "c": "keep"}
    assert substitute(document, {"v": value}) == {"a": [value, {"b": value}], "c": "keep"}


@given(st.text(st.characters(exclude_characters="{}"), max_size=20))
def test_strings_without_placeholders_are_left_as_they_are(text: str) -> None:
    assert substitute({"s": text}, {}) == {"s": text}
    assert list(parameter_references({"s": text})) == []


def test_problems_never_echo_what_an_answer_cannot_encode() -> None:
    with pytest.raises(TemplateParametersInvalid) as exc:
        parse_parameters([{"name": "a", "type": "string", "\ud800": 1}])
    with pytest.raises(TemplateParametersInvalid) as unknown:
        check_parameter_values([], {"\ud800x": 1})
    with pytest.raises(TemplateParametersInvalid) as stored:
        publish(name="a\x00", description="\udc00")
    for problem in [*exc.value.problems, *unknown.value.problems, *stored.value.problems]:
        f"{problem.loc} {problem.msg}".encode()  # no lone surrogate left to fail on
    assert locs(stored)[:2] == ["name", "description"]
