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


class WorkflowInactive(DomainError):
    """A command that needs the workflow's triggers on came while they are off."""

    def __init__(self, workflow_id: UUID | str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id} is not active; activate it first")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id,))


class ExecutionInputInvalid(DomainError):
    """An execution's input is not a JSON object or an array of JSON objects, or
    holds a value the log cannot carry; ``problems`` say where (``input.a[0]``)."""

    def __init__(self, reason: str, problems: list[Problem] | None = None) -> None:
        self.reason = reason
        self.problems: list[Problem] = list(problems or [Problem("input", reason)])
        super().__init__(f"invalid execution input: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.problems))


class InvalidExecutionTransition(DomainError):
    """An execution was asked for a change its current status does not allow."""

    def __init__(self, execution_id: UUID | str, status: str, action: str) -> None:
        self.execution_id = execution_id
        self.status = status
        self.action = action
        super().__init__(self._message())

    def _message(self) -> str:
        return f"cannot {self.action} execution {self.execution_id}: it is {self.status}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.status, self.action))


class ExecutionFinished(InvalidExecutionTransition):
    """A finished execution (succeeded, failed, canceled, crashed) accepts no change."""

    def _message(self) -> str:
        return (
            f"cannot {self.action} execution {self.execution_id}: "
            f"it already finished ({self.status})"
        )


class ExecutionNotFinished(InvalidExecutionTransition):
    """Pins are for finished executions: a queued or running one is refused."""

    def _message(self) -> str:
        return (
            f"cannot {self.action} execution {self.execution_id}: it is {self.status}; "
            "only a finished execution can be pinned"
        )


class ExecutionExpired(DomainError):
    """Retention took the execution: its document is pruned and its payload erased."""

    def __init__(self, execution_id: UUID | str, action: str) -> None:
        self.execution_id = execution_id
        self.action = action
        super().__init__(
            f"cannot {action} execution {execution_id}: retention pruned it "
            "(past its workflow's retention window, not pinned)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.action))


class NodeRunNotStarted(DomainError):
    """A node result was reported for a node attempt that is not the one running."""

    def __init__(self, execution_id: UUID | str, node_id: str, attempt: int) -> None:
        self.execution_id = execution_id
        self.node_id = node_id
        self.attempt = attempt
        super().__init__(
            f"execution {execution_id}: node '{node_id}' attempt {attempt} is not running"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.node_id, self.attempt))


class NodeRunStillRunning(DomainError):
    """A node start was reported while another node attempt had not reported its result."""

    def __init__(self, execution_id: UUID | str, node_id: str, attempt: int) -> None:
        self.execution_id = execution_id
        self.node_id = node_id
        self.attempt = attempt
        super().__init__(
            f"execution {execution_id}: node '{node_id}' attempt {attempt} is still running"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.node_id, self.attempt))


class ExecutionNotRetryable(DomainError):
    """Only a finished execution that did not succeed can be retried."""

    def __init__(self, execution_id: UUID | str, status: str) -> None:
        self.execution_id = execution_id
        self.status = status
        super().__init__(
            f"execution {execution_id} is {status}: only a failed, crashed or canceled "
            "execution can be retried"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.status))


class RetryFromFailedNodeImpossible(DomainError):
    """A retry from the failed node needs outputs the log kept only truncated."""

    def __init__(self, execution_id: UUID | str, node_ids: list[str]) -> None:
        self.execution_id = execution_id
        self.node_ids = node_ids
        names = ", ".join(f"'{node_id}'" for node_id in node_ids)
        super().__init__(
            f"execution {execution_id} cannot be retried from the failed node: the outputs "
            f'of {names} were recorded truncated; retry it with "from": "start"'
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.node_ids))


class ExecutionPayloadErased(DomainError):
    """What a command needs from an execution (its input, a node's outputs) was erased."""

    def __init__(self, execution_id: UUID | str, what: str) -> None:
        self.execution_id = execution_id
        self.what = what
        super().__init__(
            f"execution {execution_id} cannot be retried: its {what} was erased "
            "(its data subject's or its day's key was destroyed)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.what))


class DataSubjectErased(DomainError):
    """A new execution names a data subject whose key was destroyed by an erasure."""

    def __init__(self, workflow_id: UUID | str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"the input names a data subject (settings.data_subject of workflow {workflow_id}) "
            "that was erased: its personal data is not collected again"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id,))
