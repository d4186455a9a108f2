"""The node-type registry and each type's parameter model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from domain.nodes import (
    NODE_TYPES,
    TRIGGER_TYPES,
    Condition,
    HttpRequestParameters,
    MergeParameters,
    SetParameters,
    SwitchParameters,
    validate_parameters,
)


def _errors(node_type: str, parameters: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(loc, msg) of every error; fails the test if the parameters are valid."""
    with pytest.raises(ValidationError) as caught:
        validate_parameters(node_type, parameters)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def _locs(node_type: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [loc for loc, _ in _errors(node_type, parameters)]


def _cond(**overrides: Any) -> dict[str, Any]:
    return {"field": "status", "op": "eq", "value": "ok", **overrides}


# -- registry ---------------------------------------------------------------


def test_registry_has_exactly_the_contract_types() -> None:
    assert set(NODE_TYPES) == {
        "manual_trigger",
        "webhook_trigger",
        "schedule_trigger",
        "set",
        "if",
        "filter",
        "switch",
        "merge",
        "wait",
        "noop",
        "stop_and_error",
        "http_request",
        "code",
    }
    assert all(name == node_type.name for name, node_type in NODE_TYPES.items())


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        NODE_TYPES["evil"] = NODE_TYPES["noop"]  # type: ignore[index]


def test_the_triggers_are_manual_webhook_and_schedule() -> None:
    expected = {"manual_trigger", "webhook_trigger", "schedule_trigger"}
    assert {name for name, t in NODE_TYPES.items() if t.is_trigger} == expected
    assert expected == TRIGGER_TYPES


@pytest.mark.parametrize("name", sorted(NODE_TYPES))
def test_every_model_forbids_unknown_keys(name: str) -> None:
    assert NODE_TYPES[name].parameters.model_config.get("extra") == "forbid"


def test_unknown_type_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="nope"):
        validate_parameters("nope", {})


# -- outputs ----------------------------------------------------------------


def test_ordinary_nodes_have_a_single_main_output() -> None:
    for name in ("manual_trigger", "noop", "filter", "merge", "wait", "code"):
        node_type = NODE_TYPES[name]
        params = validate_parameters(name, VALID[name])
        assert node_type.outputs(params) == ("main",), name


def test_if_outputs_true_then_false() -> None:
    params = validate_parameters("if", VALID["if"])
    assert NODE_TYPES["if"].outputs(params) == ("true", "false")


def test_switch_outputs_case_names_in_order_then_default() -> None:
    params = validate_parameters(
        "switch",
        {
            "cases": [
                {"name": "b", "conditions": [_cond()]},
                {"name": "a", "conditions": [_cond()], "combine": "or"},
            ]
        },
    )
    assert NODE_TYPES["switch"].outputs(params) == ("b", "a", "default")


def test_outputs_never_include_error() -> None:
    for name, node_type in NODE_TYPES.items():
        params = validate_parameters(name, VALID[name])
        assert "error" not in node_type.outputs(params)


# -- valid samples ----------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "webhook_trigger": {"path": "orders/new", "auth": {"type": "none"}},
    "manual_trigger": {},
    "schedule_trigger": {"cron": "*/5 * * * *", "timezone": "Europe/Berlin"},
    "noop": {},
    "set": {"fields": {"customer.name": "Ada", "a-b_c.d1": [1, {"x": None}]}, "keep_others": False},
    "if": {"conditions": [_cond()], "combine": "or"},
    "filter": {"conditions": [_cond(op="gt", value=3), {"field": "x", "op": "exists"}]},
    "switch": {"cases": [{"name": "ok", "conditions": [_cond()]}]},
    "merge": {"mode": "combine", "key": "order.id"},
    "wait": {"ms": 3_600_000},
    "stop_and_error": {"message": "boom"},
    "http_request": {
        "method": "POST",
        "url": "https://api.example.com:8443/v1/items?q=1",
        "headers": {"Content-Type": "application/json", "X-Empty": ""},
        "body": {"a": [1, 2.5, True, None, "s"]},
        "timeout_ms": 300_000,
    },
    "code": {"expression": "item.price * 2", "into": "price.doubled"},
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_sample_is_accepted(name: str) -> None:
    model = validate_parameters(name, VALID[name])
    assert isinstance(model, NODE_TYPES[name].parameters)
    assert isinstance(model, BaseModel)


def test_defaults() -> None:
    assert validate_parameters("set", {"fields": {}}) == SetParameters(fields={}, keep_others=True)
    assert validate_parameters("merge", {}) == MergeParameters(mode="append", key=None)
    http = validate_parameters("http_request", {"url": "http://localhost"})
    assert http == HttpRequestParameters(
        method="GET", url="http://localhost", headers={}, body=None, timeout_ms=10_000
    )
    condition = validate_parameters("if", {"conditions": [_cond()]})
    assert condition.model_dump()["combine"] == "and"


# -- invalid samples --------------------------------------------------------


@pytest.mark.parametrize("name", ["manual_trigger", "noop"])
def test_parameterless_types_reject_any_key(name: str) -> None:
    assert _locs(name, {"x": 1}) == [("x",)]


def test_models_are_strict_about_types() -> None:
    assert _locs("wait", {"ms": "100"}) == [("ms",)]
    assert _locs("wait", {"ms": True}) == [("ms",)]
    assert _locs("wait", {"ms": 1.0}) == [("ms",)]
    assert _locs("set", {"fields": {}, "keep_others": "true"}) == [("keep_others",)]


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a", True),
        ("a.b.c", True),
        ("A-1_b.c-2", True),
        ("x" * 256, True),
        ("x" * 257, False),
        ("", False),
        ("a..b", False),
        (".a", False),
        ("a.", False),
        ("a b", False),
        ("a.$b", False),
        ("a\n", False),
        ("ä", False),
    ],
)
def test_dotted_path(path: str, ok: bool) -> None:
    params = {"expression": "1", "into": path}
    if ok:
        validate_parameters("code", params)
    else:
        assert _locs("code", params) == [("into",)]


def test_set_rejects_bad_field_path_naming_it() -> None:
    [(loc, msg)] = _errors("set", {"fields": {"ok": 1, "bad..path": 2}})
    assert loc == ("fields", "bad..path", "[key]")
    assert "bad..path" in msg


def test_set_rejects_non_json_value_and_missing_fields() -> None:
    assert _locs("set", {"fields": {"a": {1, 2}}}) == [("fields", "a")]
    assert _locs("set", {}) == [("fields",)]


@pytest.mark.parametrize("name", ["if", "filter"])
def test_condition_nodes_need_at_least_one_condition(name: str) -> None:
    assert _locs(name, {"conditions": []}) == [("conditions",)]
    assert _locs(name, {}) == [("conditions",)]


@pytest.mark.parametrize("name", ["if", "filter"])
def test_condition_nodes_reject_bad_combine(name: str) -> None:
    assert _locs(name, {"conditions": [_cond()], "combine": "xor"}) == [("combine",)]


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "gte", "lt", "lte", "contains", "regex"])
def test_value_is_required_except_for_exists(op: str) -> None:
    condition = {"field": "a", "op": op}
    [(loc, msg)] = _errors("if", {"conditions": [condition]})
    assert loc == ("conditions", 0, "value")
    assert f"'{op}'" in msg


def test_explicit_null_is_a_value() -> None:
    model = Condition.model_validate({"field": "a", "op": "eq", "value": None})
    assert model.value is None
    assert "value" in model.model_fields_set


@pytest.mark.parametrize("value", [True, False, None])
def test_exists_takes_an_optional_bool(value: bool | None) -> None:
    Condition.model_validate({"field": "a", "op": "exists"})
    Condition.model_validate({"field": "a", "op": "exists", "value": value})


@pytest.mark.parametrize("value", [1, "yes", [True]])
def test_exists_rejects_non_bool(value: Any) -> None:
    assert _locs("if", {"conditions": [_cond(op="exists", value=value)]}) == [
        ("conditions", 0, "value")
    ]


def test_regex_value_must_be_a_compiling_string_of_at_most_256_chars() -> None:
    Condition.model_validate(_cond(op="regex", value=r"^\d{3}-[a-z]+$"))
    Condition.model_validate(_cond(op="regex", value="a" * 256))
    for bad in (5, None, "a" * 257, "(unclosed", "*"):
        [(loc, msg)] = _errors("if", {"conditions": [_cond(op="regex", value=bad)]})
        assert loc == ("conditions", 0, "value"), bad
        assert "regex" in msg
    [(_, msg)] = _errors("if", {"conditions": [_cond(op="regex", value="(unclosed")]})
    assert "(unclosed" in msg


def test_condition_rejects_unknown_op_bad_field_and_extra_keys() -> None:
    errors = _errors(
        "filter",
        {"conditions": [_cond(op="like"), _cond(field="a..b"), _cond(extra=1)]},
    )
    assert [loc for loc, _ in errors] == [
        ("conditions", 0, "op"),
        ("conditions", 1, "field"),
        ("conditions", 2, "extra"),
    ]


def _case(name: str) -> dict[str, Any]:
    return {"name": name, "conditions": [_cond()]}


def test_switch_case_count_is_1_to_64() -> None:
    assert _locs("switch", {"cases": []}) == [("cases",)]
    SwitchParameters.model_validate({"cases": [_case(f"c{i}") for i in range(64)]})
    assert _locs("switch", {"cases": [_case(f"c{i}") for i in range(65)]}) == [("cases",)]


def test_switch_case_names_are_unique() -> None:
    [(loc, msg)] = _errors("switch", {"cases": [_case("a"), _case("b"), _case("a")]})
    assert loc == ("cases",)
    assert "'a'" in msg
    assert "cases[0]" in msg
    assert "cases[2]" in msg


@pytest.mark.parametrize("name", ["default", "error"])
def test_switch_case_name_cannot_be_reserved(name: str) -> None:
    [(loc, msg)] = _errors("switch", {"cases": [_case(name)]})
    assert loc == ("cases", 0, "name")
    assert f"'{name}'" in msg


def test_switch_case_name_length() -> None:
    SwitchParameters.model_validate({"cases": [_case("x" * 64)]})
    assert _locs("switch", {"cases": [_case("")]}) == [("cases", 0, "name")]
    assert _locs("switch", {"cases": [_case("x" * 65)]}) == [("cases", 0, "name")]


def test_switch_case_needs_conditions() -> None:
    assert _locs("switch", {"cases": [{"name": "a", "conditions": []}]}) == [
        ("cases", 0, "conditions")
    ]


def test_merge_combine_requires_key() -> None:
    [(loc, msg)] = _errors("merge", {"mode": "combine"})
    assert loc == ("key",)
    assert "combine" in msg
    assert _locs("merge", {"mode": "combine", "key": None}) == [("key",)]
    assert _locs("merge", {"mode": "zip"}) == [("mode",)]
    assert _locs("merge", {"key": "a..b"}) == [("key",)]


def test_wait_bounds() -> None:
    validate_parameters("wait", {"ms": 0})
    assert _locs("wait", {"ms": -1}) == [("ms",)]
    assert _locs("wait", {"ms": 3_600_001}) == [("ms",)]
    assert _locs("wait", {}) == [("ms",)]


def test_stop_and_error_message_length() -> None:
    validate_parameters("stop_and_error", {"message": "x" * 1000})
    assert _locs("stop_and_error", {"message": ""}) == [("message",)]
    assert _locs("stop_and_error", {"message": "x" * 1001}) == [("message",)]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com/path",
        "/relative",
        "http://",
        "http:///path",
        "https://exa mple.com",
        "https://example.com/\n",
        "http://example.com:99999/",
        "http://example.com:port/",
        "https://example.com/" + "a" * 2048,
        "",
    ],
)
def test_http_request_rejects_bad_urls(url: str) -> None:
    assert _locs("http_request", {"url": url}) == [("url",)]


@pytest.mark.parametrize(
    "url", ["http://localhost", "HTTPS://Example.COM/x", "http://[::1]:8080/", "http://10.0.0.1"]
)
def test_http_request_accepts_absolute_http_urls(url: str) -> None:
    validate_parameters("http_request", {"url": url})


def test_http_request_other_fields() -> None:
    base = {"url": "https://example.com"}
    assert _locs("http_request", {**base, "method": "HEAD"}) == [("method",)]
    assert _locs("http_request", {**base, "timeout_ms": 0}) == [("timeout_ms",)]
    assert _locs("http_request", {**base, "timeout_ms": 300_001}) == [("timeout_ms",)]
    assert _locs("http_request", {**base, "headers": {"X-A": 1}}) == [("headers", "X-A")]
    assert _locs("http_request", {**base, "headers": {"X-A": "a\r\nX-B: b"}}) == [
        ("headers", "X-A")
    ]
    assert _locs("http_request", {**base, "headers": {"bad name": "v"}}) == [
        ("headers", "bad name", "[key]")
    ]
    [(loc, msg)] = _errors("http_request", {**base, "body": {"a": [1, object()]}})
    assert loc == ("body",)
    assert "a[1]" in msg
    assert _locs("http_request", {}) == [("url",)]


def test_code_expression_length() -> None:
    validate_parameters("code", {"expression": "x" * 10_000, "into": "y"})
    assert _locs("code", {"expression": "", "into": "y"}) == [("expression",)]
    assert _locs("code", {"expression": "x" * 10_001, "into": "y"}) == [("expression",)]
    assert _locs("code", {"expression": "x"}) == [("into",)]


# -- JSON values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (float("nan"), "top level"),
        ({"a": [1, float("inf")]}, "a[1]"),
        ({"a": {1: "x"}}, "a"),
        ({"a": (1, 2)}, "a"),
        ({"a": b"bytes"}, "a"),
    ],
)
def test_json_values_must_be_plain_finite_json(value: Any, where: str) -> None:
    [(loc, msg)] = _errors("http_request", {"url": "http://x", "body": value})
    assert loc == ("body",)
    assert where in msg


def test_deep_json_is_fine() -> None:
    deep: Any = "leaf"
    for _ in range(2_000):
        deep = {"k": [deep]}
    validate_parameters("set", {"fields": {"deep": deep}})


def test_regexes_are_re2_linear_time_and_refuse_backreferences() -> None:
    import time

    from domain.nodes import compile_regex

    [(_, msg)] = _errors("if", {"conditions": [_cond(op="regex", value=r"(a)\1")]})
    assert r"(a)\1" in msg and "escape" in msg
    # A pattern that backtracks exponentially in Python's re stays linear here.
    started = time.perf_counter()
    assert compile_regex(r"^(a+)+$").search("a" * 100_000 + "b") is None
    assert time.perf_counter() - started < 1.0
