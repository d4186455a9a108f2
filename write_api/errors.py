"""How the write side's command errors look from outside."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from commands import IdempotencyKeyReused, VersionConflict, WorkflowNotFound
from infrastructure.problems import Problem, problem_type


def _not_found(exc: WorkflowNotFound) -> Problem:
    return Problem(404, str(exc), type_=problem_type("not-found"))


def _conflict(exc: VersionConflict) -> Problem:
    return Problem(
        409,
        str(exc),
        type_=problem_type("version-conflict"),
        headers={"ETag": f'"{exc.current}"'},
        current_version=exc.current,
        expected_version=exc.expected,
    )


def _key_reused(exc: IdempotencyKeyReused) -> Problem:
    return Problem(422, str(exc), type_=problem_type("idempotency-key-reused"))


COMMAND_PROBLEMS: dict[type[Exception], Callable[[Any], Problem]] = {
    WorkflowNotFound: _not_found,
    VersionConflict: _conflict,
    IdempotencyKeyReused: _key_reused,
}
