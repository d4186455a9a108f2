"""The node-type registry: which node types exist and what parameters each accepts.

The parameter models are the contract with the execution engine: a definition
is only stored if every node's parameters validate here, so the engine can
re-validate them into the same models and trust their shape. Extend these
models, never rename fields: stored workflows depend on them.

Every model is strict (no ``"10"`` -> ``10`` or ``1`` -> ``True`` coercion) and
forbids unknown keys, because definitions arrive as parsed JSON and a silently
coerced or ignored field is a bug the author never sees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import re2  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from domain.triggers import (
    SCHEDULE_TRIGGER,
    WEBHOOK_TRIGGER,
    ScheduleTriggerParameters,
    WebhookTriggerParameters,
)

__all__ = [
    "DEFAULT_OUTPUT",
    "ERROR_OUTPUT",
    "MAX_CONDITIONS",
    "MAX_DOTTED_PATH_CHARS",
    "MAX_HEADERS",
    "MAX_REGEX_CHARS",
    "MAX_SET_FIELDS",
    "MAX_SWITCH_CASES",
    "NODE_TYPES",
    "SWITCH_DEFAULT_OUTPUT",
    "TRIGGER_TYPES",
    "CelSource",
    "CodeParameters",
    "Combine",
    "Condition",
    "ConditionOp",
    "ConditionParameters",
    "Conditions",
    "DottedPath",
    "FilterParameters",
    "HeaderName",
    "HeaderValue",
    "HttpRequestParameters",
    "IfParameters",
    "JsonData",
    "ManualTriggerParameters",
    "MergeParameters",
    "NodeType",
    "NoopParameters",
    "SetParameters",
    "StopAndErrorParameters",
    "SwitchCase",
    "SwitchParameters",
    "WaitParameters",
    "compile_regex",
    "validate_parameters",
]

DEFAULT_OUTPUT: Final = "main"
"""The single output of ordinary nodes; what an omitted connection ``output`` means."""
ERROR_OUTPUT: Final = "error"
"""Extra output of a node whose ``on_error`` is ``continue_error_output``."""
SWITCH_DEFAULT_OUTPUT: Final = "default"
"""The ``switch`` output taken by items that match no case."""

MAX_DOTTED_PATH_CHARS: Final = 256
MAX_REGEX_CHARS: Final = 256
MAX_CONDITIONS: Final = 100
MAX_SWITCH_CASES: Final = 64
MAX_SET_FIELDS: Final = 1_000
MAX_HEADERS: Final = 100

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# RFC 9110 token characters: anything else would corrupt the request line.
_CREDENTIAL_ID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


def _check_dotted_path(value: str) -> str:
    if not all(_SEGMENT.fullmatch(segment) for segment in value.split(".")):
        raise PydanticCustomError(
            "dotted_path",
            "'{path}' is not a dotted path: use non-empty segments of letters, digits, "
            "'_' or '-' joined by '.', e.g. 'customer.address.zip'",
            {"path": value},
        )
    return value


DottedPath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_DOTTED_PATH_CHARS),
    AfterValidator(_check_dotted_path),
]
"""A path into an item's JSON, e.g. ``customer.address.zip``."""


def _check_json(value: Any) -> Any:
    # Iterative, so depth costs no recursion; the error names the nested spot
    # in its message because pydantic's own JsonValue puts union tags into locs.
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if math.isfinite(item):
                continue
            problem = f"{item} is not a JSON number"
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
            continue
        elif isinstance(item, dict):
            if all(isinstance(key, str) for key in item):
                pending.extend((f"{path}.{key}", child) for key, child in item.items())
                continue
            problem = "object keys must be strings"
        else:
            problem = f"{type(item).__name__} is not a JSON value"
        raise PydanticCustomError(
            "json_value",
            "not JSON at {where}: {problem}",
            {"where": path.lstrip(".") or "top level", "problem": problem},
        )
    return value


JsonData = Annotated[Any, AfterValidator(_check_json)]
"""Any JSON value: null, bool, finite number, string, array, or object with string keys."""

ConditionOp = Literal["eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists", "regex"]
Combine = Literal["and", "or"]

# Marks a ``value`` key that was absent, as opposed to an explicit JSON null
# (a legitimate operand: ``{"op": "eq", "value": null}``).
_ABSENT: Final = object()


class Condition(BaseModel):
    """One test on an item: ``<field> <op> <value>``.

    ``value`` is required except for ``exists``, where it is an optional bool
    (absent, null or true: the field must exist; false: it must not). A
    ``regex`` value is a Python ``re`` pattern of at most 256 characters.
    """

    model_config = _STRICT

    field: DottedPath
    op: ConditionOp
    value: JsonData = None

    @model_validator(mode="before")
    @classmethod
    def _mark_absent_value(cls, data: Any) -> Any:
        if isinstance(data, dict) and "value" not in data:
            return {**data, "value": _ABSENT}
        return data

    @field_validator("value", mode="wrap")
    @classmethod
    def _check_value(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        op = info.data.get("op")  # absent when op itself was invalid
        if value is _ABSENT:
            if op is None or op == "exists":
                return None
            raise PydanticCustomError("missing", "value is required for op '{op}'", {"op": op})
        if op == "exists":
            if value is not None and not isinstance(value, bool):
                raise PydanticCustomError(
                    "exists_value", "value for op 'exists' must be true, false or absent"
                )
            return value
        if op == "regex":
            _check_regex(value)
            return value
        return handler(value)


def _check_regex(value: Any) -> None:
    if not isinstance(value, str):
        raise PydanticCustomError("regex_type", "value for op 'regex' must be a string")
    if len(value) > MAX_REGEX_CHARS:
        raise PydanticCustomError(
            "regex_too_long",
            "regex is {length} characters, at most {limit} allowed",
            {"length": len(value), "limit": MAX_REGEX_CHARS},
        )
    try:
        compile_regex(value)
    except re2.error as exc:
        raise PydanticCustomError(
            "regex_invalid",
            "invalid regex '{pattern}': {error}",
            {"pattern": value, "error": _re2_message(exc)},
        ) from None


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are raised and reported, not printed


def compile_regex(pattern: str) -> Any:
    """A regex that matches in linear time (RE2), so no item can stall a run.

    RE2 has no backreferences or lookaround; such patterns are refused when
    the workflow is saved.
    """
    return re2.compile(pattern, _RE2_OPTIONS)


def _re2_message(exc: Exception) -> str:
    message = exc.args[0] if exc.args else exc
    return message.decode() if isinstance(message, bytes) else str(message)


Conditions = Annotated[list[Condition], Field(min_length=1, max_length=MAX_CONDITIONS)]


class ManualTriggerParameters(BaseModel):
    """Started by hand (or by the API); takes no parameters."""

    model_config = _STRICT


class NoopParameters(BaseModel):
    """Passes items through unchanged."""

    model_config = _STRICT


CelSource = Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
"""A CEL expression over ``item`` (``domain/expressions.py``)."""


class SetParameters(BaseModel):
    """Writes ``fields`` (dotted path -> JSON value) into each item.

    ``expressions`` (dotted path -> CEL source) are computed per item, every
    one from the item as it arrived (not as the other assignments leave it),
    and written after ``fields``: what n8n's Set does with ``{{ }}`` values.
    """

    model_config = _STRICT

    fields: Annotated[dict[DottedPath, JsonData], Field(max_length=MAX_SET_FIELDS)]
    keep_others: bool = True
    expressions: Annotated[dict[DottedPath, CelSource], Field(max_length=MAX_SET_FIELDS)] = Field(
        default_factory=dict
    )


class ConditionParameters(BaseModel):
    """Shared by ``if`` (routes to true/false) and ``filter`` (drops non-matching items)."""

    model_config = _STRICT

    conditions: Conditions
    combine: Combine = "and"


class IfParameters(ConditionParameters):
    """Routes each item to the ``true`` or ``false`` output."""


class FilterParameters(ConditionParameters):
    """Keeps only the items that match."""


class SwitchCase(BaseModel):
    """One named route of a ``switch``; its name is also the output's name."""

    model_config = _STRICT

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    conditions: Conditions
    combine: Combine = "and"

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        # These names are taken by the fallback and the error outputs.
        if name in (SWITCH_DEFAULT_OUTPUT, ERROR_OUTPUT):
            raise PydanticCustomError(
                "reserved_case_name", "case name '{name}' is reserved", {"name": name}
            )
        return name


class SwitchParameters(BaseModel):
    """Routes each item to the first matching case's output, else to ``default``."""

    model_config = _STRICT

    cases: Annotated[list[SwitchCase], Field(min_length=1, max_length=MAX_SWITCH_CASES)]

    @field_validator("cases")
    @classmethod
    def _unique_names(cls, cases: list[SwitchCase]) -> list[SwitchCase]:
        first_index: dict[str, int] = {}
        for index, case in enumerate(cases):
            if case.name in first_index:
                raise PydanticCustomError(
                    "duplicate_case_name",
                    "duplicate case name '{name}' (cases[{first}] and cases[{index}])",
                    {"name": case.name, "first": first_index[case.name], "index": index},
                )
            first_index[case.name] = index
        return cases


class MergeParameters(BaseModel):
    """Joins its inputs: ``append`` concatenates, ``combine`` pairs items by ``key``."""

    model_config = _STRICT

    mode: Literal["append", "combine"] = "append"
    key: DottedPath | None = Field(default=None, validate_default=True)

    @field_validator("key")
    @classmethod
    def _key_for_combine(cls, key: str | None, info: ValidationInfo) -> str | None:
        if key is None and info.data.get("mode") == "combine":
            raise PydanticCustomError("missing", "key is required when mode is 'combine'")
        return key


class WaitParameters(BaseModel):
    """Pauses the execution for ``ms`` milliseconds (at most one hour)."""

    model_config = _STRICT

    ms: Annotated[int, Field(ge=0, le=3_600_000)]


class StopAndErrorParameters(BaseModel):
    """Fails the execution with ``message``."""

    model_config = _STRICT

    message: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


def _check_url(url: str) -> str:
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        raise PydanticCustomError("url", "URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise PydanticCustomError("url", "invalid URL: {error}", {"error": str(exc)}) from None
    if parts.scheme not in ("http", "https"):
        raise PydanticCustomError("url", "URL must be absolute and start with http:// or https://")
    if not parts.hostname:
        raise PydanticCustomError("url", "URL must have a host")
    return url


def _check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise PydanticCustomError(
            "header_name", "'{name}' is not a valid HTTP header name", {"name": name}
        )
    return name


def _check_header_value(value: str) -> str:
    # CR/LF would let a value inject extra headers.
    if _HEADER_VALUE_FORBIDDEN.search(value):
        raise PydanticCustomError(
            "header_value", "header value must not contain CR, LF or NUL characters"
        )
    return value


HeaderName = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_check_header_name)
]
HeaderValue = Annotated[
    str, StringConstraints(max_length=8192), AfterValidator(_check_header_value)
]


class HttpRequestParameters(BaseModel):
    """Calls an HTTP endpoint; the response becomes the item."""

    model_config = _STRICT

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: Annotated[
        str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_check_url)
    ]
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS)] = Field(
        default_factory=dict
    )
    body: JsonData = None
    timeout_ms: Annotated[int, Field(ge=1, le=300_000)] = 10_000
    credential: Annotated[str, StringConstraints(pattern=_CREDENTIAL_ID)] | None = Field(
        default=None,
        description="A credential's id (POST /v1/credentials): its secret is applied to "
        "the request when the node runs, never stored in the definition.",
    )


class CodeParameters(BaseModel):
    """Evaluates ``expression`` per item and stores the result at ``into``."""

    model_config = _STRICT

    expression: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    into: DottedPath


def _single_output(_params: BaseModel) -> tuple[str, ...]:
    return (DEFAULT_OUTPUT,)


def _if_outputs(_params: BaseModel) -> tuple[str, ...]:
    return ("true", "false")


def _switch_outputs(params: BaseModel) -> tuple[str, ...]:
    if not isinstance(params, SwitchParameters):
        raise TypeError(f"expected SwitchParameters, got {type(params).__name__}")
    return (*(case.name for case in params.cases), SWITCH_DEFAULT_OUTPUT)


@dataclass(frozen=True)
class NodeType:
    """A kind of node: its parameter model, whether it starts executions, its outputs."""

    name: str
    parameters: type[BaseModel]
    is_trigger: bool = False
    output_names: Callable[[BaseModel], tuple[str, ...]] = _single_output

    def outputs(self, params: BaseModel) -> tuple[str, ...]:
        """Output names, in order, for validated ``params`` (``error`` is not included:
        it depends on the node's ``on_error``, not on its type)."""
        return self.output_names(params)


def _registry(*node_types: NodeType) -> Mapping[str, NodeType]:
    return MappingProxyType({node_type.name: node_type for node_type in node_types})


NODE_TYPES: Final[Mapping[str, NodeType]] = _registry(
    NodeType("manual_trigger", ManualTriggerParameters, is_trigger=True),
    NodeType(WEBHOOK_TRIGGER, WebhookTriggerParameters, is_trigger=True),
    NodeType(SCHEDULE_TRIGGER, ScheduleTriggerParameters, is_trigger=True),
    NodeType("set", SetParameters),
    NodeType("if", IfParameters, output_names=_if_outputs),
    NodeType("filter", FilterParameters),
    NodeType("switch", SwitchParameters, output_names=_switch_outputs),
    NodeType("merge", MergeParameters),
    NodeType("wait", WaitParameters),
    NodeType("noop", NoopParameters),
    NodeType("stop_and_error", StopAndErrorParameters),
    NodeType("http_request", HttpRequestParameters),
    NodeType("code", CodeParameters),
)
"""Every node type a definition may use, by name (read-only)."""

TRIGGER_TYPES: Final[frozenset[str]] = frozenset(
    name for name, node_type in NODE_TYPES.items() if node_type.is_trigger
)
"""Node types that start an execution; they may have no incoming connection."""


def validate_parameters(node_type: str, parameters: dict[str, Any]) -> BaseModel:
    """Validate ``parameters`` against ``node_type``'s model and return the model.

    Raises ``pydantic.ValidationError`` for invalid parameters and ``KeyError``
    for an unregistered node type.
    """
    try:
        model = NODE_TYPES[node_type].parameters
    except KeyError:
        raise KeyError(f"unknown node type {node_type!r}") from None
    return model.model_validate(parameters)
