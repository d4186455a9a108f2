"""One n8n node -> one of our nodes: the mapping of each supported node type and version.

A mapper reads an n8n node's ``parameters`` (in the shape its ``typeVersion``
writes them) and returns our node type, our parameters, and how n8n's
output indexes name our outputs. Whatever it cannot carry over exactly it
refuses with ``Unmappable(reason)``: an import never guesses behaviour.
Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from commands.n8n_import.expressions import (
    Expression,
    Literal,
    NotTranslatable,
    parameter_value,
)
from domain.nodes import DEFAULT_OUTPUT, SWITCH_DEFAULT_OUTPUT, compile_regex
from domain.webhooks import check_hook_path

__all__ = [
    "CODE_REASON",
    "CODE_TYPES",
    "MAPPERS",
    "STICKY_NOTE",
    "MapContext",
    "Mapped",
    "Unmappable",
    "is_trigger_type",
]

STICKY_NOTE: Final = "n8n-nodes-base.stickyNote"
CODE_TYPES: Final = frozenset(
    {
        "n8n-nodes-base.code",
        "n8n-nodes-base.function",
        "n8n-nodes-base.functionItem",
        "n8n-nodes-base.pythonFunction",
        "@n8n/n8n-nodes-langchain.code",
    }
)
CODE_REASON: Final = "runs JavaScript/Python, which Reporunner does not run"

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")


class Unmappable(Exception):
    """This node cannot be imported; the message is the reason shown to the user."""


@dataclass
class Mapped:
    """Our node for one n8n node, and what n8n's output indexes are called on it."""

    type: str
    parameters: dict[str, Any]
    # n8n output index -> our output names (a switch rule list may send
    # several of our cases to one n8n output).
    outputs: dict[int, list[str]] = field(default_factory=lambda: {0: [DEFAULT_OUTPUT]})
    notes: list[str] = field(default_factory=list)
    on_error: str | None = None  # ours: continue / continue_error_output
    retry: dict[str, int] | None = None


def is_trigger_type(n8n_type: str) -> bool:
    """n8n's naming convention for nodes that start executions."""
    short = n8n_type.rsplit(".", 1)[-1]
    return short.lower().endswith("trigger") or short in ("webhook", "cron", "interval", "start")


# -- values ------------------------------------------------------------------------


def _literal(value: Any, what: str) -> Any:
    """A parameter that must be a plain value here (our node takes no expression there)."""
    try:
        parsed = parameter_value(value)
    except NotTranslatable as exc:
        raise Unmappable(f"{what} is an expression that {exc}") from None
    if isinstance(parsed, Expression):
        raise Unmappable(f"{what} is an expression; Reporunner takes a fixed value there")
    return parsed.value


def _value(value: Any, what: str) -> Literal | Expression:
    try:
        return parameter_value(value)
    except NotTranslatable as exc:
        raise Unmappable(f"{what} is an expression that {exc}") from None


def _dotted(name: Any, what: str, *, dot_notation: bool = True) -> str:
    """An n8n field name as our dotted path, when it is one."""
    if not isinstance(name, str) or not name:
        raise Unmappable(f"{what} has no field name")
    segments = name.split(".") if dot_notation else [name]
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise Unmappable(
            f"{what} '{name}' is not a path of letters, digits, '_' or '-' "
            "(joined by '.'), which is what Reporunner's fields are"
        )
    return name


def _field_of(value: Any, what: str) -> str:
    """The left side of a condition: must be a field of the current item."""
    parsed = _value(value, what)
    if isinstance(parsed, Literal) or parsed.path is None or not parsed.path:
        raise Unmappable(
            f"{what} must be a field of the item ({{{{ $json.field }}}}): "
            "Reporunner's conditions test one field against a value"
        )
    return _dotted(".".join(parsed.path), what)


def _number(value: Any, what: str) -> int | float:
    value = _literal(value, what)
    if isinstance(value, bool):
        raise Unmappable(f"{what} is not a number")
    if isinstance(value, int | float):
        number = value
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise Unmappable(f"{what} '{value}' is not a number") from None
    if isinstance(number, float):
        if not math.isfinite(number):
            raise Unmappable(f"{what} is not a finite number")
        if number.is_integer():
            return int(number)
    return number


def _params(node: Mapping[str, Any]) -> dict[str, Any]:
    parameters = node.get("parameters") or {}
    return parameters if isinstance(parameters, dict) else {}


def _entries(container: Any, key: str) -> list[dict[str, Any]]:
    """n8n's fixedCollection lists: ``{"parameters": [{...}]}`` and the like."""
    if not isinstance(container, dict):
        return []
    entries = container.get(key) or []
    return (
        [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []
    )


# -- conditions --------------------------------------------------------------------


def _regex_literal(pattern: Any, what: str) -> str:
    """n8n accepts ``/pattern/flags`` or a bare pattern; ours is RE2 with inline flags."""
    if not isinstance(pattern, str):
        raise Unmappable(f"{what} is not a pattern")
    match = re.fullmatch(r"/(.*)/([a-z]*)", pattern, re.DOTALL)
    if match:
        body, flags = match.groups()
        unknown = set(flags) - set("igms")
        if unknown:
            raise Unmappable(f"{what} uses regex flags {''.join(sorted(unknown))}")
        inline = "".join(flag for flag in "ims" if flag in flags)
        pattern = f"(?{inline}){body}" if inline else body
    try:
        compile_regex(pattern)
    except Exception:
        raise Unmappable(f"{what} '{pattern}' is not a pattern RE2 runs") from None
    return pattern


def _string_test(field_path: str, op: str, value: Any, case_sensitive: bool) -> dict[str, Any]:
    text = "" if value is None else str(value)
    if case_sensitive and op in ("eq", "contains"):
        return {"field": field_path, "op": op, "value": text}
    escaped = re.escape(text)
    pattern = {
        "eq": f"^{escaped}$",
        "contains": escaped,
        "starts": f"^{escaped}",
        "ends": f"{escaped}$",
    }[op]
    return {
        "field": field_path,
        "op": "regex",
        "value": pattern if case_sensitive else f"(?i){pattern}",
    }


_V2_NUMBER_OPS: Final = {
    "equals": "eq",
    "notEquals": "ne",
    "gt": "gt",
    "gte": "gte",
    "lt": "lt",
    "lte": "lte",
}


def _v2_condition(condition: dict[str, Any], case_sensitive: bool, where: str) -> dict[str, Any]:
    """One condition of the filter shape (IF v2, Filter v2, Switch v3)."""
    operator = condition.get("operator") or {}
    kind = operator.get("type", "string")
    operation = operator.get("operation", "equals")
    field_path = _field_of(condition.get("leftValue", ""), f"{where} left value")
    if operation == "exists":
        return {"field": field_path, "op": "exists", "value": True}
    if operation == "notExists":
        return {"field": field_path, "op": "exists", "value": False}
    right = condition.get("rightValue")
    label = f"{where} ({kind} {operation})"
    if kind == "number" and operation in _V2_NUMBER_OPS:
        return {
            "field": field_path,
            "op": _V2_NUMBER_OPS[operation],
            "value": _number(right, label),
        }
    if kind == "boolean":
        if operation in ("true", "false"):
            return {"field": field_path, "op": "eq", "value": operation == "true"}
        if operation in ("equals", "notEquals"):
            value = _literal(right, label)
            if not isinstance(value, bool):
                raise Unmappable(f"{label} compares with {value!r}, not true or false")
            return {
                "field": field_path,
                "op": "eq" if operation == "equals" else "ne",
                "value": value,
            }
    if kind == "string":
        value = _literal(right, label)
        if operation == "notEquals" and case_sensitive:
            return {"field": field_path, "op": "ne", "value": "" if value is None else str(value)}
        simple = {
            "equals": "eq",
            "contains": "contains",
            "startsWith": "starts",
            "endsWith": "ends",
        }
        if operation in simple:
            return _string_test(field_path, simple[operation], value, case_sensitive)
        if operation == "regex":
            pattern = _regex_literal(value, label)
            return {
                "field": field_path,
                "op": "regex",
                "value": pattern if case_sensitive else f"(?i){pattern}",
            }
    raise Unmappable(
        f"{label} has no Reporunner condition (eq, ne, gt, gte, lt, lte, contains, exists, regex)"
    )


def _v2_conditions(block: Any, where: str) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(block, dict):
        raise Unmappable(f"{where or 'it'} has no conditions".strip())
    options = block.get("options") or {}
    case_sensitive = options.get("caseSensitive", True) is not False
    conditions = [
        _v2_condition(condition, case_sensitive, f"{where}condition {index + 1}".strip())
        for index, condition in enumerate(_entries(block, "conditions"))
    ]
    if not conditions:
        raise Unmappable(f"{where or 'it'} has no conditions".strip())
    combinator = block.get("combinator", "and")
    if combinator not in ("and", "or"):
        raise Unmappable(f"{where or 'it '}combines with '{combinator}'")
    return conditions, combinator


_V1_OPS: Final = {
    "equal": "eq",
    "notEqual": "ne",
    "smaller": "lt",
    "smallerEqual": "lte",
    "larger": "gt",
    "largerEqual": "gte",
}


def _v1_condition(kind: str, condition: dict[str, Any], where: str) -> dict[str, Any]:
    """One condition of IF v1 / Filter v1 / Switch v1-2 (``value1 <operation> value2``)."""
    default_operation = {"boolean": "equal", "number": "smaller", "string": "equal"}[kind]
    operation = condition.get("operation", default_operation)
    field_path = _field_of(condition.get("value1", ""), f"{where} value 1")
    label = f"{where} ({kind} {operation})"
    if kind == "boolean":
        value = _literal(condition.get("value2", False), label)
        if operation not in ("equal", "notEqual") or not isinstance(value, bool):
            raise Unmappable(f"{label} has no Reporunner condition")
        return {"field": field_path, "op": _V1_OPS[operation], "value": value}
    if kind == "number":
        if operation not in _V1_OPS:
            raise Unmappable(f"{label} has no Reporunner condition")
        return {
            "field": field_path,
            "op": _V1_OPS[operation],
            "value": _number(condition.get("value2", 0), label),
        }
    value = _literal(condition.get("value2", ""), label)
    if operation in ("equal", "notEqual"):
        return {
            "field": field_path,
            "op": _V1_OPS[operation],
            "value": "" if value is None else str(value),
        }
    simple = {"contains": "contains", "startsWith": "starts", "endsWith": "ends"}
    if operation in simple:
        return _string_test(field_path, simple[operation], value, case_sensitive=True)
    if operation == "regex":
        return {"field": field_path, "op": "regex", "value": _regex_literal(value, label)}
    raise Unmappable(f"{label} has no Reporunner condition (no negated or emptiness tests)")


def _v1_conditions(parameters: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], str]:
    block = parameters.get("conditions") or {}
    conditions = []
    for kind in ("boolean", "number", "string", "dateTime"):
        for index, condition in enumerate(_entries(block, kind)):
            if kind == "dateTime":
                raise Unmappable(
                    f"{where or 'it '}compares dates, which Reporunner's conditions do not"
                )
            conditions.append(
                _v1_condition(kind, condition, f"{where}{kind} condition {index + 1}".strip())
            )
    if not conditions:
        raise Unmappable(f"{where or 'it'} has no conditions".strip())
    combine = parameters.get("combineOperation", "all")
    return conditions, "or" if combine == "any" else "and"


def _conditions(node: Mapping[str, Any], version: float) -> tuple[list[dict[str, Any]], str]:
    parameters = _params(node)
    if version < 2:
        return _v1_conditions(parameters, "")
    return _v2_conditions(parameters.get("conditions"), "")


# -- the mappers -----------------------------------------------------------------


def _manual(_node: Mapping[str, Any], _version: float, _ctx: MapContext) -> Mapped:
    return Mapped("manual_trigger", {})


def _noop(_node: Mapping[str, Any], _version: float, _ctx: MapContext) -> Mapped:
    return Mapped("noop", {})


def _webhook(node: Mapping[str, Any], _version: float, ctx: MapContext) -> Mapped:
    parameters = _params(node)
    path = str(_literal(parameters.get("path", ""), "the path")).strip("/")
    problem = check_hook_path(path)
    if problem:
        raise Unmappable(f"the path '{path}' is not a Reporunner hook path: it {problem}")
    if parameters.get("multipleMethods"):
        raise Unmappable("it listens on several HTTP methods; a Reporunner hook has one")
    method = parameters.get("httpMethod", "GET")
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        raise Unmappable(f"it listens for {method}, which Reporunner hooks do not take")
    notes = []
    authentication = parameters.get("authentication", "none")
    if authentication == "none":
        auth: dict[str, Any] = {"type": "none"}
    elif authentication == "headerAuth":
        auth = {"type": "header_token"}
        notes.append(
            "header auth became a Reporunner header token (x-webhook-token), generated when "
            "the workflow is activated: callers need the new token"
        )
    else:
        raise Unmappable(
            f"it authenticates callers with '{authentication}', which Reporunner hooks do not"
        )
    response_mode = parameters.get("responseMode", "onReceived")
    options = parameters.get("options") or {}
    if response_mode == "onReceived":
        response = "no_content" if options.get("responseData") == "noData" else "immediately"
    elif response_mode in ("lastNode", "responseNode"):
        response = "when_finished"
    else:
        raise Unmappable(f"it answers in mode '{response_mode}'")
    return Mapped(
        "webhook_trigger",
        {"path": path, "method": method, "auth": auth, "response": response},
        notes=notes,
    )


def _respond(node: Mapping[str, Any], _version: float, _ctx: MapContext) -> Mapped:
    """A Respond to Webhook that answers with the items maps to a pass-through: a hook
    in ``when_finished`` mode answers with the run's output."""
    parameters = _params(node)
    respond_with = parameters.get("respondWith", "firstIncomingItem")
    if respond_with not in ("firstIncomingItem", "allIncomingItems"):
        raise Unmappable(
            f"it responds with '{respond_with}'; a Reporunner hook answers with the run's "
            "output only"
        )
    options = parameters.get("options") or {}
    code = options.get("responseCode", parameters.get("responseCode", 200))
    if code != 200:
        raise Unmappable(f"it answers with status {code}; a Reporunner hook answers 200")
    headers = _entries(options.get("responseHeaders"), "entries")
    if any(
        str(h.get("name", "")).lower() != "content-type" or "json" not in str(h.get("value", ""))
        for h in headers
    ):
        raise Unmappable("it sets response headers, which a Reporunner hook does not")
    return Mapped(
        "noop",
        {},
        notes=[
            "answers through its hook (when_finished): the run's output, not only this node's items"
        ],
    )


def _stop_and_error(node: Mapping[str, Any], _version: float, _ctx: MapContext) -> Mapped:
    parameters = _params(node)
    if parameters.get("errorType", "errorMessage") != "errorMessage":
        raise Unmappable(
            "it fails with an error object; Reporunner's stop_and_error takes a message"
        )
    message = _literal(parameters.get("errorMessage", ""), "the error message")
    if not isinstance(message, str) or not message.strip():
        raise Unmappable("it has no error message")
    return Mapped("stop_and_error", {"message": message[:1000]})


_WAIT_UNITS: Final = {"seconds": 1_000, "minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}


def _wait(node: Mapping[str, Any], _version: float, _ctx: MapContext) -> Mapped:
    parameters = _params(node)
    resume = parameters.get("resume", "timeInterval")
    if resume != "timeInterval":
        raise Unmappable(f"it waits for '{resume}'; Reporunner's wait only pauses for a time")
    unit = parameters.get("unit", "hours")
    if unit not in _WAIT_UNITS:
        raise Unmappable(f"it waits in '{unit}'")
    ms = _number(parameters.get("amount", 1), "the amount") * _WAIT_UNITS[unit]
    if not 0 <= ms <= 3_600_000:
        raise Unmappable(f"it waits {ms / 1000:g} s; Reporunner's wait is at most one hour")
    return Mapped("wait", {"ms": round(ms)})


def _set(node: Mapping[str, Any], version: float, _ctx: MapContext) -> Mapped:
    parameters = _params(node)
    options = parameters.get("options") or {}
    dot_notation = options.get("dotNotation", True) is not False
    notes: list[str] = []
    assignments: list[tuple[str, Any, str]] = []  # (name, raw value, declared type)
    if version < 3:
        keep_others = not parameters.get("keepOnlySet", False)
        for kind in ("string", "number", "boolean"):
            for entry in _entries(parameters.get("values"), kind):
                assignments.append((entry.get("name", ""), entry.get("value"), kind))
    else:
        mode = parameters.get("mode", "manual")
        if mode != "manual":
            raise Unmappable(f"it sets fields from '{mode}' JSON; only listed fields are imported")
        if version >= 3.3:
            keep_others = parameters.get("includeOtherFields", False) is True
            include = parameters.get("include", "all") if keep_others else "none"
            for entry in _entries(parameters.get("assignments"), "assignments"):
                assignments.append(
                    (entry.get("name", ""), entry.get("value"), entry.get("type", "string"))
                )
        else:
            include = parameters.get("include", "all")
            keep_others = include == "all"
            for entry in _entries(parameters.get("fields"), "values"):
                kind = str(entry.get("type", "stringValue")).removesuffix("Value")
                assignments.append((entry.get("name", ""), entry.get(f"{kind}Value"), kind))
        if include not in ("all", "none"):
            raise Unmappable(f"it keeps '{include}' input fields; Reporunner keeps all or none")
        if parameters.get("duplicateItem"):
            notes.append("'duplicate item' only applies to n8n's manual test runs: dropped")
    fields: dict[str, Any] = {}
    expressions: dict[str, str] = {}
    for index, (name, raw, kind) in enumerate(assignments):
        what = f"field {index + 1}"
        if name == "" and raw in ("", None):
            notes.append(f"{what} has neither a name nor a value: dropped")
            continue
        path = _dotted(_literal(name, f"{what}'s name"), what, dot_notation=dot_notation)
        parsed = _value(raw, f"{what} ('{path}')")
        fields.pop(path, None)
        expressions.pop(path, None)
        if isinstance(parsed, Expression):
            expressions[path] = parsed.cel
        else:
            fields[path] = _typed(parsed.value, kind, f"{what} ('{path}')")
    parameters_out: dict[str, Any] = {"fields": fields, "keep_others": keep_others}
    if expressions:
        parameters_out["expressions"] = expressions
    return Mapped("set", parameters_out, notes=notes)


def _typed(value: Any, kind: str, what: str) -> Any:
    """A Set field's literal as n8n's declared type turns it into JSON."""
    if kind == "number":
        return _number(value, what) if value not in ("", None) else 0
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("true", "false"):
            return str(value).strip().lower() == "true"
        raise Unmappable(f"{what} '{value}' is not true or false")
    if kind in ("array", "object"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise Unmappable(f"{what} is not valid JSON") from None
        expected = list if kind == "array" else dict
        if not isinstance(value, expected):
            raise Unmappable(f"{what} is not a JSON {kind}")
        return value
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _if(node: Mapping[str, Any], version: float, _ctx: MapContext) -> Mapped:
    conditions, combine = _conditions(node, version)
    return Mapped(
        "if",
        {"conditions": conditions, "combine": combine},
        outputs={0: ["true"], 1: ["false"]},
    )


def _filter(node: Mapping[str, Any], version: float, _ctx: MapContext) -> Mapped:
    conditions, combine = _conditions(node, version)
    return Mapped("filter", {"conditions": conditions, "combine": combine})


def _case_name(wanted: str, taken: set[str]) -> str:
    name = wanted[:60] or "case"
    if name in (SWITCH_DEFAULT_OUTPUT, "error"):
        name = f"{name}_case"
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def _switch(node: Mapping[str, Any], version: float, _ctx: MapContext) -> Mapped:
    parameters = _params(node)
    if parameters.get("mode", "rules") != "rules":
        raise Unmappable(
            "it picks its output with an expression; Reporunner's switch routes by rules"
        )
    cases: list[dict[str, Any]] = []
    outputs: dict[int, list[str]] = {}
    taken: set[str] = set()
    if version < 3:
        data_type = parameters.get("dataType", "number")
        if data_type not in ("boolean", "number", "string"):
            raise Unmappable(
                f"it compares {data_type} values, which Reporunner's conditions do not"
            )
        for index, rule in enumerate(_entries(parameters.get("rules"), "rules")):
            condition = _v1_condition(
                data_type, {**rule, "value1": parameters.get("value1", "")}, f"rule {index + 1}"
            )
            output = rule.get("output", 0)
            if not isinstance(output, int) or isinstance(output, bool) or output < 0:
                raise Unmappable(f"rule {index + 1} sends to output {output!r}")
            name = _case_name(str(output), taken)
            cases.append({"name": name, "conditions": [condition]})
            outputs.setdefault(output, []).append(name)
        fallback = parameters.get("fallbackOutput", -1)
        if isinstance(fallback, int) and fallback >= 0:
            outputs.setdefault(fallback, []).append(SWITCH_DEFAULT_OUTPUT)
    else:
        options = parameters.get("options") or {}
        if options.get("allMatchingOutputs"):
            raise Unmappable(
                "it sends items to every matching output; Reporunner's switch takes the first"
            )
        rules = _entries(parameters.get("rules"), "values")
        for index, rule in enumerate(rules):
            conditions, combine = _v2_conditions(rule.get("conditions"), f"rule {index + 1} ")
            wanted = str(rule.get("outputKey", "")) if rule.get("renameOutput") else ""
            name = _case_name(wanted or str(index), taken)
            cases.append({"name": name, "conditions": conditions, "combine": combine})
            outputs[index] = [name]
        fallback = options.get("fallbackOutput", "none")
        if fallback == "extra":
            outputs[len(rules)] = [SWITCH_DEFAULT_OUTPUT]
        elif isinstance(fallback, int) and not isinstance(fallback, bool) and fallback >= 0:
            outputs.setdefault(fallback, []).append(SWITCH_DEFAULT_OUTPUT)
    if not cases:
        raise Unmappable("it has no rules")
    return Mapped("switch", {"cases": cases}, outputs=outputs)


def _merge(node: Mapping[str, Any], version: float, _ctx: MapContext) -> Mapped:
    parameters = _params(node)
    mode = parameters.get("mode", "append")
    if mode == "append":
        return Mapped("merge", {"mode": "append"})
    key: str | None = None
    if version >= 2 and mode == "combine":
        join = parameters.get("joinMode", "keepMatches")
        output_from = parameters.get("outputDataFrom", "both")
        if version >= 3:
            combine_by = parameters.get("combineBy", "combineByFields")
            fields = str(parameters.get("fieldsToMatchString", "")).split(",")
            if combine_by == "combineByFields" and len(fields) == 1 and fields[0].strip():
                key = fields[0].strip()
        else:
            combine_by = parameters.get("combinationMode", "mergeByFields")
            pairs = _entries(parameters.get("mergeByFields"), "values")
            if (
                combine_by == "mergeByFields"
                and len(pairs) == 1
                and pairs[0].get("field1")
                and pairs[0].get("field1") == pairs[0].get("field2")
            ):
                key = str(pairs[0]["field1"])
        if key is not None and join == "keepMatches" and output_from == "both":
            return Mapped("merge", {"mode": "combine", "key": _dotted(key, "the field to match")})
    raise Unmappable(
        "it merges in a way Reporunner's merge does not (it appends, or keeps matches on one "
        "field of the same name on every input)"
    )


_HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _http(node: Mapping[str, Any], version: float, _ctx: MapContext) -> Mapped:
    parameters = _params(node)
    options = parameters.get("options") or {}
    authentication = parameters.get("authentication", "none")
    if authentication != "none":
        raise Unmappable(
            f"it signs requests with n8n credentials ('{authentication}'), which are not imported"
        )
    query: list[tuple[str, Any]] = []
    headers: dict[str, str] = {}
    body: Any = None
    if version < 3:
        method = parameters.get("requestMethod", "GET")
        if parameters.get("jsonParameters"):
            if parameters.get("bodyParametersJson") not in (None, "", "{}"):
                body = _json_text(parameters.get("bodyParametersJson"), "the JSON body")
            header_json = parameters.get("headerParametersJson")
            if header_json not in (None, "", "{}"):
                headers = _header_map(_json_text(header_json, "the JSON headers"))
        else:
            pairs = _entries(parameters.get("bodyParametersUi"), "parameter")
            if pairs:
                body = _pairs(pairs, "body parameter")
            headers = _header_map(
                _pairs(_entries(parameters.get("headerParametersUi"), "parameter"), "header")
            )
        query = list(
            _pairs(
                _entries(parameters.get("queryParametersUi"), "parameter"), "query parameter"
            ).items()
        )
        content = options.get("bodyContentType", "json")
        if content != "json":
            raise Unmappable(f"it sends a '{content}' body; Reporunner's http_request sends JSON")
    else:
        method = parameters.get("method", "GET")
        if parameters.get("sendQuery"):
            if parameters.get("specifyQuery", "keypair") != "keypair":
                raise Unmappable(
                    "its query is JSON text; only listed query parameters are imported"
                )
            query = list(
                _pairs(
                    _entries(parameters.get("queryParameters"), "parameters"), "query parameter"
                ).items()
            )
        if parameters.get("sendHeaders"):
            if parameters.get("specifyHeaders", "keypair") == "keypair":
                headers = _header_map(
                    _pairs(_entries(parameters.get("headerParameters"), "parameters"), "header")
                )
            else:
                headers = _header_map(_json_text(parameters.get("jsonHeaders"), "the JSON headers"))
        if parameters.get("sendBody"):
            content = parameters.get("contentType", "json")
            if content != "json":
                raise Unmappable(
                    f"it sends a '{content}' body; Reporunner's http_request sends JSON"
                )
            if parameters.get("specifyBody", "keypair") == "keypair":
                body = _pairs(
                    _entries(parameters.get("bodyParameters"), "parameters"), "body parameter"
                )
            else:
                body = _json_text(parameters.get("jsonBody"), "the JSON body")
    if method not in _HTTP_METHODS:
        raise Unmappable(f"it sends {method}, which Reporunner's http_request does not")
    url = _literal(parameters.get("url", ""), "the URL")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise Unmappable(f"the URL {url!r} is not an absolute http(s) URL")
    if query:
        url += ("&" if urlsplit(url).query else "?") + urlencode(query)
    out: dict[str, Any] = {"method": method, "url": url}
    if headers:
        out["headers"] = headers
    if body is not None:
        out["body"] = body
    timeout = options.get("timeout")
    if timeout is not None:
        out["timeout_ms"] = max(1, min(int(_number(timeout, "the timeout")), 300_000))
    return Mapped(
        "http_request",
        out,
        notes=[
            "its output item is {status, headers, body}: what n8n's later nodes read as "
            "$json.x is item.body.x here"
        ],
    )


def _pairs(entries: list[dict[str, Any]], what: str) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        name = _literal(entry.get("name", ""), f"{what} {index + 1}'s name")
        pairs[str(name)] = _literal(entry.get("value", ""), f"{what} '{name}'")
    return pairs


def _header_map(values: Any) -> dict[str, str]:
    if not isinstance(values, dict):
        raise Unmappable("its headers are not a JSON object")
    return {
        str(name): value if isinstance(value, str) else json.dumps(value)
        for name, value in values.items()
    }


def _json_text(value: Any, what: str) -> Any:
    text = _literal(value, what)
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unmappable(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


# -- schedules ---------------------------------------------------------------------

_WEEKDAYS: Final = range(7)


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    number = _number(value, what)
    if not isinstance(number, int) or not low <= number <= high:
        raise Unmappable(f"{what} {number} is not a whole number from {low} to {high}")
    return number


def _schedule_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """One rule of n8n's Schedule Trigger as our schedule (cron or interval)."""
    unit = rule.get("field", "days")
    minute = _int_in(rule.get("triggerAtMinute", 0), 0, 59, "the minute")
    hour = _int_in(rule.get("triggerAtHour", 0), 0, 23, "the hour")
    if unit == "seconds":
        return {
            "interval_s": _int_in(rule.get("secondsInterval", 30), 1, 366 * 86_400, "the interval")
        }
    if unit == "minutes":
        return {
            "interval_s": 60 * _int_in(rule.get("minutesInterval", 5), 1, 527_040, "the interval")
        }
    if unit == "hours":
        every = _int_in(rule.get("hoursInterval", 1), 1, 23, "the interval")
        return {"cron": f"{minute} */{every} * * *" if every > 1 else f"{minute} * * * *"}
    if unit == "days":
        every = _int_in(rule.get("daysInterval", 1), 1, 31, "the interval")
        return {"cron": f"{minute} {hour} */{every} * *" if every > 1 else f"{minute} {hour} * * *"}
    if unit == "weeks":
        if _int_in(rule.get("weeksInterval", 1), 1, 52, "the interval") != 1:
            raise Unmappable("it fires every few weeks, which a cron expression cannot say")
        days = rule.get("triggerAtDay") or [0]
        if not isinstance(days, list) or not all(day in _WEEKDAYS for day in days):
            raise Unmappable("its weekdays are not 0-6")
        return {"cron": f"{minute} {hour} * * {','.join(str(day) for day in sorted(days))}"}
    if unit == "months":
        every = _int_in(rule.get("monthsInterval", 1), 1, 12, "the interval")
        day = _int_in(rule.get("triggerAtDayOfMonth", 1), 1, 31, "the day of month")
        return {"cron": f"{minute} {hour} {day} {'*/' + str(every) if every > 1 else '*'} *"}
    if unit == "cronExpression":
        return {"cron": _cron(rule.get("expression", ""))}
    raise Unmappable(f"it fires by '{unit}'")


def _cron(expression: Any) -> str:
    text = _literal(expression, "the cron expression")
    fields = str(text).split()
    if len(fields) == 6 and fields[0] in ("0", "00"):
        fields = fields[1:]  # n8n allows a seconds field; at second 0 it says nothing more
    if len(fields) != 5:
        raise Unmappable(f"the cron expression '{text}' is not five fields (or six at second 0)")
    return " ".join(fields)


def _schedule(node: Mapping[str, Any], _version: float, ctx: MapContext) -> Mapped:
    rules = _entries(_params(node).get("rule"), "interval")
    if len(rules) != 1:
        raise Unmappable(
            f"it has {len(rules)} schedule rules; a Reporunner schedule trigger has one"
        )
    return Mapped("schedule_trigger", {**_schedule_rule(rules[0]), "timezone": ctx.timezone})


_CRON_MODES: Final = {
    "everyMinute",
    "everyHour",
    "everyDay",
    "everyWeek",
    "everyMonth",
    "custom",
    "everyX",
}


def _cron_node(node: Mapping[str, Any], _version: float, ctx: MapContext) -> Mapped:
    items = _entries(_params(node).get("triggerTimes"), "item")
    if len(items) != 1:
        raise Unmappable(
            f"it has {len(items)} trigger times; a Reporunner schedule trigger has one"
        )
    item = items[0]
    mode = item.get("mode", "everyDay")
    minute = _int_in(item.get("minute", 0), 0, 59, "the minute")
    hour = _int_in(item.get("hour", 14), 0, 23, "the hour")
    if mode == "everyMinute":
        schedule: dict[str, Any] = {"cron": "* * * * *"}
    elif mode == "everyHour":
        schedule = {"cron": f"{minute} * * * *"}
    elif mode == "everyDay":
        schedule = {"cron": f"{minute} {hour} * * *"}
    elif mode == "everyWeek":
        weekday = _int_in(item.get("weekday", 1), 0, 6, "the weekday")
        schedule = {"cron": f"{minute} {hour} * * {weekday}"}
    elif mode == "everyMonth":
        day = _int_in(item.get("dayOfMonth", 1), 1, 31, "the day of month")
        schedule = {"cron": f"{minute} {hour} {day} * *"}
    elif mode == "everyX":
        value = _int_in(item.get("value", 2), 1, 1_000_000, "the interval")
        seconds = {"minutes": 60, "hours": 3600}.get(item.get("unit", "hours"))
        if seconds is None:
            raise Unmappable(f"it repeats every {value} '{item.get('unit')}'")
        schedule = {"interval_s": value * seconds}
    elif mode == "custom":
        schedule = {"cron": _cron(item.get("cronExpression", ""))}
    else:
        raise Unmappable(f"it fires in mode '{mode}' (known: {', '.join(sorted(_CRON_MODES))})")
    return Mapped("schedule_trigger", {**schedule, "timezone": ctx.timezone})


# -- the registry ------------------------------------------------------------------


@dataclass(frozen=True)
class MapContext:
    """What a mapper needs from the workflow around the node."""

    timezone: str = "UTC"


Mapper = Callable[[Mapping[str, Any], float, MapContext], Mapped]


@dataclass(frozen=True)
class Supported:
    mapper: Mapper
    max_version: float
    label: str  # for the README and messages


MAPPERS: Final[Mapping[str, Supported]] = {
    "n8n-nodes-base.manualTrigger": Supported(_manual, 1, "Manual Trigger"),
    "n8n-nodes-base.start": Supported(_manual, 1, "Start (old manual trigger)"),
    "n8n-nodes-base.webhook": Supported(_webhook, 2.99, "Webhook"),
    "n8n-nodes-base.scheduleTrigger": Supported(_schedule, 1.99, "Schedule Trigger"),
    "n8n-nodes-base.cron": Supported(_cron_node, 1, "Cron"),
    "n8n-nodes-base.set": Supported(_set, 3.4, "Set / Edit Fields"),
    "n8n-nodes-base.if": Supported(_if, 2.99, "IF"),
    "n8n-nodes-base.filter": Supported(_filter, 2.99, "Filter"),
    "n8n-nodes-base.switch": Supported(_switch, 3.99, "Switch"),
    "n8n-nodes-base.merge": Supported(_merge, 3.99, "Merge"),
    "n8n-nodes-base.wait": Supported(_wait, 1.99, "Wait"),
    "n8n-nodes-base.noOp": Supported(_noop, 1, "No Operation"),
    "n8n-nodes-base.stopAndError": Supported(_stop_and_error, 1, "Stop and Error"),
    "n8n-nodes-base.httpRequest": Supported(_http, 4.99, "HTTP Request"),
    "n8n-nodes-base.respondToWebhook": Supported(_respond, 1.99, "Respond to Webhook"),
}
"""n8n node type -> its mapper and the newest ``typeVersion`` the mapper reads."""
