"""How the write side's command errors look from outside."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from commands import IdempotencyKeyReused, VersionConflict, WorkflowNotFound
from commands.errors import (
    ExecutionAnswerUnavailable,
    ExecutionInProgress,
    ExecutionNotFound,
    HookNotFound,
    HookRouteTaken,
    NoSuchVersion,
    WorkflowBusy,
    WorkflowLimitReached,
)
from domain.errors import (
    DataSubjectErased,
    ExecutionFinished,
    ExecutionInputInvalid,
    ExecutionNotRetryable,
    ExecutionPayloadErased,
    RetryFromFailedNodeImpossible,
    WorkflowInactive,
)
from domain.webhooks import WebhookBodyInvalid, WebhookRefused
from infrastructure.problems import Problem, problem_type, said_as
from write_api.pins import PIN_PROBLEMS


def _conflict(exc: VersionConflict) -> Problem:
    return Problem(
        409,
        str(exc),
        type_=problem_type("version-conflict"),
        headers={"ETag": f'"{exc.current}"'},
        current_version=exc.current,
        expected_version=exc.expected,
    )


def _route_taken(exc: HookRouteTaken) -> Problem:
    return Problem(
        409,
        str(exc),
        type_=problem_type("webhook-route-taken"),
        conflicting_workflow_id=str(exc.holder),
        method=exc.method,
        path=exc.path,
    )


def _hook_refused(exc: WebhookRefused) -> Problem:
    return Problem(401, exc.reason, type_=problem_type("webhook-unauthorized"))


def _limit_reached(exc: WorkflowLimitReached) -> Problem:
    return Problem(
        409,
        str(exc),
        type_=problem_type("limit-reached"),
        limit="max_workflows",
        value=exc.limit,
    )


def _busy(exc: WorkflowBusy) -> Problem:
    return Problem(503, str(exc), type_=problem_type("busy"), headers={"Retry-After": "1"})


def _finished(exc: ExecutionFinished) -> Problem:
    return Problem(409, str(exc), type_=problem_type("execution-finished"), status_now=exc.status)


def _not_retryable(exc: ExecutionNotRetryable) -> Problem:
    return Problem(
        409, str(exc), type_=problem_type("execution-not-retryable"), status_now=exc.status
    )


def _not_from_failed_node(exc: RetryFromFailedNodeImpossible) -> Problem:
    return Problem(
        409,
        str(exc),
        type_=problem_type("retry-from-failed-node-impossible"),
        truncated_nodes=exc.node_ids,
    )


def _bad_input(exc: ExecutionInputInvalid) -> Problem:
    return Problem(
        422,
        str(exc),
        type_=problem_type("invalid-input"),
        errors=[{"loc": problem.loc, "msg": problem.msg} for problem in exc.problems],
    )


def _no_such_version(exc: NoSuchVersion) -> Problem:
    return Problem(
        422,
        str(exc),
        type_=problem_type("validation"),
        errors=[{"loc": ["body", "to_version"], "msg": str(exc)}],
    )


def _in_progress(exc: ExecutionInProgress) -> Problem:
    return Problem(
        409,
        str(exc),
        type_=problem_type("execution-in-progress"),
        headers={"Location": f"/v1/executions/{exc.execution_id}", "Retry-After": "1"},
        execution_id=str(exc.execution_id),
    )


def _answer_unavailable(exc: ExecutionAnswerUnavailable) -> Problem:
    # Recorded, so never a 500: the client gets the id and reads the rest.
    return Problem(
        503,
        str(exc),
        type_=problem_type("execution-answer-unavailable"),
        headers={"Location": f"/v1/executions/{exc.execution_id}", "Retry-After": "1"},
        execution_id=str(exc.execution_id),
    )


COMMAND_PROBLEMS: dict[type[Exception], Callable[[Any], Problem]] = {
    NoSuchVersion: _no_such_version,
    WorkflowNotFound: said_as(404, "not-found"),
    ExecutionNotFound: said_as(404, "not-found"),
    ExecutionFinished: _finished,
    ExecutionInputInvalid: _bad_input,
    ExecutionNotRetryable: _not_retryable,
    RetryFromFailedNodeImpossible: _not_from_failed_node,
    ExecutionPayloadErased: said_as(409, "execution-payload-erased"),
    DataSubjectErased: said_as(409, "data-subject-erased"),
    VersionConflict: _conflict,
    HookRouteTaken: _route_taken,
    HookNotFound: said_as(404, "not-found"),
    WorkflowInactive: said_as(409, "workflow-inactive"),
    WebhookRefused: _hook_refused,
    WebhookBodyInvalid: said_as(422, "invalid-webhook-body"),
    WorkflowBusy: _busy,
    WorkflowLimitReached: _limit_reached,
    IdempotencyKeyReused: said_as(422, "idempotency-key-reused"),
    ExecutionInProgress: _in_progress,
    ExecutionAnswerUnavailable: _answer_unavailable,
    **PIN_PROBLEMS,
}
