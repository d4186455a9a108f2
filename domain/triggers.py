"""Parameters of the trigger nodes that start runs from outside: webhooks and schedules.

Strict models like every node's (see ``domain/nodes.py``); the decisions
they feed live in ``domain/webhooks.py`` and ``domain/schedule.py``. A
webhook's secret is never a parameter: the service generates it at
activation and keeps it outside the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from domain.errors import Problem
from domain.schedule import (
    MAX_CATCH_UP_WINDOW_S,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    CatchUpPolicy,
    OverlapPolicy,
    Schedule,
    ScheduleInvalid,
)
from domain.webhooks import (
    DEFAULT_SIGNATURE_HEADER,
    DEFAULT_TIMESTAMP_HEADER,
    DEFAULT_TOKEN_HEADER,
    DEFAULT_TOLERANCE_S,
    Dedupe,
    ResponseMode,
    check_header_name,
    check_hook_path,
)

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

HookMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


def _header(value: str) -> str:
    problem = check_header_name(value)
    if problem:
        raise PydanticCustomError("header_name", problem)
    return value.lower()


class NoAuth(BaseModel):
    model_config = _STRICT
    type: Literal["none"]


class HeaderTokenAuth(BaseModel):
    """The caller sends the token the service generated, in ``header``."""

    model_config = _STRICT
    type: Literal["header_token"]
    header: str = DEFAULT_TOKEN_HEADER

    _lower = field_validator("header")(_header)


class HmacAuth(BaseModel):
    """The caller signs ``"<timestamp>." + body`` with the shared secret (HMAC-SHA256)."""

    model_config = _STRICT
    type: Literal["hmac_sha256"]
    signature_header: str = DEFAULT_SIGNATURE_HEADER
    timestamp_header: str = DEFAULT_TIMESTAMP_HEADER
    tolerance_s: Annotated[int, Field(ge=1, le=3600)] = DEFAULT_TOLERANCE_S

    _lower = field_validator("signature_header", "timestamp_header")(_header)


class DedupeParameters(BaseModel):
    """Where a delivery's identity comes from: ``{"header": "Idempotency-Key"}`` or a body path."""

    model_config = _STRICT
    source: Literal["header", "body"]
    header: str = "idempotency-key"
    path: str = "$"

    _lower = field_validator("header")(_header)

    @model_validator(mode="after")
    def _path_for_body(self) -> DedupeParameters:
        try:
            self.rule()
        except ValueError as exc:
            raise PydanticCustomError("dedupe_path", str(exc)) from None
        return self

    def rule(self) -> Dedupe:
        return Dedupe(self.source, self.path, self.header)


class WebhookTriggerParameters(BaseModel):
    """Starts a run when ``METHOD /hooks/{org}/{path}`` is called."""

    model_config = _STRICT
    path: str
    method: HookMethod = "POST"
    auth: Annotated[NoAuth | HeaderTokenAuth | HmacAuth, Field(discriminator="type")]
    response: ResponseMode = "immediately"
    dedupe: DedupeParameters | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        problem = check_hook_path(value)
        if problem:
            raise PydanticCustomError("hook_path", problem)
        return value


class ScheduleTriggerParameters(BaseModel):
    """Starts a run at every instant of a cron expression or an interval."""

    model_config = _STRICT
    cron: str | None = None
    interval_s: Annotated[int, Field(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)] | None = None
    timezone: str = "UTC"
    overlap: OverlapPolicy = "skip"
    catch_up: CatchUpPolicy = "skip_missed"
    catch_up_window_s: Annotated[int, Field(ge=0, le=MAX_CATCH_UP_WINDOW_S)] = 3600

    @model_validator(mode="after")
    def _readable(self) -> ScheduleTriggerParameters:
        try:
            self.schedule()
        except ScheduleInvalid as exc:
            raise PydanticCustomError("schedule", str(exc)) from None
        return self

    def schedule(self) -> Schedule:
        return Schedule(
            cron=self.cron,
            interval_s=self.interval_s,
            timezone=self.timezone,
            overlap=self.overlap,
            catch_up=self.catch_up,
            catch_up_window_s=self.catch_up_window_s,
        )


WEBHOOK_TRIGGER: Final = "webhook_trigger"
SCHEDULE_TRIGGER: Final = "schedule_trigger"

# The hook auth kinds that need a secret the service generates at activation.
SECRET_AUTH: Final = frozenset({"header_token", "hmac_sha256"})

# The trigger types that fire on their own once their workflow is active
# (``manual_trigger`` only ever runs when a client asks).
ACTIVATABLE_TRIGGERS: Final = frozenset({WEBHOOK_TRIGGER, SCHEDULE_TRIGGER})


@dataclass(frozen=True)
class HookRoute:
    """One webhook trigger of a workflow: ``method /hooks/{org}/{path}`` starts it."""

    node_id: str
    method: str
    path: str
    parameters: WebhookTriggerParameters


def webhook_routes(nodes: Iterable[Mapping[str, Any]]) -> list[HookRoute]:
    """The webhook triggers among a stored definition's nodes (already validated)."""
    routes = []
    for node in nodes:
        if node.get("type") == WEBHOOK_TRIGGER:
            parameters = WebhookTriggerParameters.model_validate(node.get("parameters", {}))
            routes.append(HookRoute(node["id"], parameters.method, parameters.path, parameters))
    return routes


@dataclass(frozen=True)
class ScheduleTrigger:
    """One schedule trigger of a workflow: the scheduler fires it at each of its instants."""

    node_id: str
    schedule: Schedule


def schedule_triggers(nodes: Iterable[Mapping[str, Any]]) -> list[ScheduleTrigger]:
    """The schedule triggers among a stored definition's nodes (already validated)."""
    return [
        ScheduleTrigger(
            node["id"],
            ScheduleTriggerParameters.model_validate(node.get("parameters", {})).schedule(),
        )
        for node in nodes
        if node.get("type") == SCHEDULE_TRIGGER
    ]


def activation_problems(nodes: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """Why a definition cannot be activated: nothing would fire it, or it holds a route twice."""
    if not any(node.get("type") in ACTIVATABLE_TRIGGERS for node in nodes):
        return [
            Problem(
                "nodes",
                f"has no trigger that fires on its own ({', '.join(sorted(ACTIVATABLE_TRIGGERS))});"
                " a manual_trigger workflow runs only when asked and needs no activation",
            )
        ]
    problems = []
    seen: dict[tuple[str, str], str] = {}
    for index, node in enumerate(nodes):
        if node.get("type") != WEBHOOK_TRIGGER:
            continue
        [route] = webhook_routes([node])
        first = seen.setdefault((route.method, route.path), route.node_id)
        if first != route.node_id:
            problems.append(
                Problem(
                    f"nodes[{index}].parameters.path",
                    f"{route.method} {route.path} is already the route of node '{first}'",
                )
            )
    return problems
