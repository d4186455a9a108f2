"""Why a command was refused, beyond the domain's own rules."""

from __future__ import annotations

from uuid import UUID


class CommandError(Exception):
    pass


class WorkflowNotFound(CommandError):
    """No such workflow in the caller's organisation (another's is not found either)."""

    def __init__(self, workflow_id: UUID) -> None:
        super().__init__(f"workflow {workflow_id} not found")
        self.workflow_id = workflow_id


class VersionConflict(CommandError):
    """The client's expected version (the definition's revision) is not the current one."""

    def __init__(self, workflow_id: UUID, expected: int, current: int) -> None:
        super().__init__(
            f"workflow {workflow_id} is at version {current}, not the expected {expected}"
        )
        self.workflow_id = workflow_id
        self.expected = expected
        self.current = current


class WorkflowBusy(CommandError):
    """Runs kept being recorded between a command's read and its save."""

    def __init__(self, workflow_id: UUID, attempts: int) -> None:
        super().__init__(
            f"workflow {workflow_id} had runs recorded during each of {attempts} attempts "
            "to save this change; retry shortly"
        )
        self.workflow_id = workflow_id


class WorkflowLimitReached(CommandError):
    """A create past the organisation's ``max_workflows``."""

    def __init__(self, org_id: str, held: int, limit: int) -> None:
        super().__init__(
            f"organisation '{org_id}' holds {held} workflows, its limit max_workflows is "
            f"{limit}; delete one or ask for a higher limit"
        )
        self.limit = limit


class IdempotencyKeyReused(CommandError):
    """The same Idempotency-Key came with a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request; "
            "use a new key for a new request"
        )
        self.key = key


class ExecutionNotFound(CommandError):
    """No such execution in the caller's organisation."""

    def __init__(self, execution_id: UUID) -> None:
        super().__init__(f"execution {execution_id} not found")
        self.execution_id = execution_id


class NoSuchVersion(CommandError):
    """A revert named a version (revision) the workflow never had."""

    def __init__(self, workflow_id: UUID, version: int, current: int) -> None:
        super().__init__(
            f"workflow {workflow_id} has versions 1 to {current}; there is no version {version}"
        )
        self.workflow_id = workflow_id
        self.version = version


class ExecutionInProgress(CommandError):
    """A keyed sync request found its execution still running past its timeout."""

    def __init__(self, execution_id: UUID) -> None:
        super().__init__(
            f"execution {execution_id} of an identical request with this Idempotency-Key "
            f"is still running; read it at /v1/executions/{execution_id} or retry later"
        )
        self.execution_id = execution_id


class ExecutionAnswerUnavailable(CommandError):
    """A sync run was recorded, but its answer could not be read back or sent."""

    def __init__(self, execution_id: UUID) -> None:
        super().__init__(
            f"execution {execution_id} was recorded, but its answer is unavailable right "
            f"now; read it at /v1/executions/{execution_id}"
        )
        self.execution_id = execution_id


class HookRouteTaken(CommandError):
    """Another active workflow of the organisation already holds a webhook route."""

    def __init__(self, workflow_id: UUID, method: str, path: str, holder: UUID) -> None:
        super().__init__(
            f"workflow {holder} is active and already holds the webhook {method} {path}; "
            f"deactivate it or change this workflow's path before activating {workflow_id}"
        )
        self.workflow_id = workflow_id
        self.method = method
        self.path = path
        self.holder = holder


class HookRouteTakenOutsideProject(CommandError):
    """A webhook route is held by a workflow the caller's project does not see.

    Routes are the organisation's (``/hooks/{org}/{path}``), so the route is
    taken all the same; which workflow holds it is not the caller's to know.
    """

    def __init__(self, workflow_id: UUID, method: str, path: str) -> None:
        super().__init__(
            f"the webhook {method} {path} is held by another project's active workflow; "
            f"change this workflow's path before activating {workflow_id}"
        )
        self.workflow_id = workflow_id
        self.method = method
        self.path = path


class HookNotFound(CommandError):
    """No active workflow of the organisation holds this webhook route."""

    def __init__(self, org_id: str, method: str, path: str) -> None:
        super().__init__(f"no active webhook {method} /hooks/{org_id}/{path}")


class ShareNotFound(CommandError):
    """The workflow grants the project nothing."""

    def __init__(self, workflow_id: UUID, project_id: UUID) -> None:
        super().__init__(f"workflow {workflow_id} is not shared with project {project_id}")
        self.workflow_id = workflow_id
        self.project_id = project_id
