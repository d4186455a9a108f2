"""Errors the domain raises when a command breaks a rule.

Adapters (HTTP, CLI) translate these into responses; the domain never knows how.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID


class DomainError(Exception):
    """Base for every rule violation the domain refuses."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition.

    ``loc`` points at the offending spot in the submitted document
    (``"nodes[2].parameters.url"``, ``"connections[5].to"``, ``"name"``), so a
    client can highlight it; ``msg`` says what is wrong in words.
    """

    loc: str
    msg: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.msg}"


class WorkflowInvalid(DomainError):
    """A workflow definition broke one or more rules; carries all of them at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles its args (the joined text); rebuild from the problems instead.
        return (type(self), (self.problems,))


class WorkflowDeleted(DomainError):
    """A deleted workflow keeps its history but accepts no further command."""

    def __init__(self, workflow_id: UUID | str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id} is deleted")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id,))
