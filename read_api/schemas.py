"""What the read API answers, as OpenAPI response models.

Documents come from the views as stored (``projections/``), so each model
names the fields every document has and lets the rest through (a view may
add a field; ``_stale`` marks a document that missed an event). The
routes answer raw JSON; these models only describe it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from domain.execution import ExecutionStatus, ExecutionTrigger

_OPEN = ConfigDict(extra="allow")


class LastExecution(BaseModel):
    model_config = _OPEN

    id: UUID
    status: ExecutionStatus
    at: datetime


class WorkflowDocument(BaseModel):
    """A workflow as the views have it (or, with version/as_of, as the log had it then)."""

    model_config = _OPEN

    id: UUID
    name: str
    description: str
    nodes: list[dict[str, Any]]
    connections: list[dict[str, Any]]
    tags: list[str]
    settings: dict[str, Any]
    version: int = Field(ge=1, description="The definition's revision (the ETag).")
    deleted: bool
    runs: int = Field(ge=0)
    active: bool | None = None
    active_since: datetime | None = None
    last_execution: LastExecution | None = None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    project_id: UUID | None = Field(None, description="The project that holds it.")
    shares: dict[str, str] | None = Field(
        None, description="Other projects' grants on it: project id -> viewer | editor."
    )


class WorkflowPage(BaseModel):
    items: list[WorkflowDocument]
    next_cursor: str | None = Field(description="The next page's cursor; null at the end.")


class VersionDocument(BaseModel):
    """A workflow's definition as one version made it."""

    model_config = _OPEN

    workflow_id: UUID
    version: int = Field(ge=1)
    event: str = Field(examples=["Created", "Updated", "Reverted", "Deleted"])
    changed: list[str]
    deleted: bool
    at: datetime
    by: str


class VersionPage(BaseModel):
    items: list[VersionDocument]
    next_cursor: str | None


class NodeSummary(BaseModel):
    model_config = _OPEN

    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)


class ExecutionItem(BaseModel):
    """An execution in a list: without its input, output and node runs."""

    model_config = _OPEN

    id: UUID
    workflow_id: UUID
    workflow_version: int
    mode: Literal["sync", "async"]
    status: ExecutionStatus
    trigger: ExecutionTrigger
    version: int = Field(ge=1, description="The execution's own version (the ETag).")
    retry_of: UUID | None
    retried_by: list[UUID]
    reused_nodes: list[str]
    created_at: datetime
    created_by: str
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    worker_id: str | None
    error: str | dict[str, Any] | None = Field(
        description='Why it failed; {"$erased": true} once its payload keys were destroyed.'
    )
    output_truncated: bool
    canceled_by: str | None
    node_summary: NodeSummary
    pinned: bool = Field(
        default=False, description="Kept past its retention window (POST .../pin)."
    )


class ExecutionDocument(ExecutionItem):
    """One execution, whole."""

    input: Any = None
    output: dict[str, Any] | None = None
    node_runs: list[dict[str, Any]] = Field(default_factory=list)


class ExecutionPage(BaseModel):
    items: list[ExecutionItem]
    next_cursor: str | None


class HistoryEntry(BaseModel):
    """One event from the log: what a workflow's history and the audit trail list."""

    model_config = _OPEN

    position: int = Field(ge=1)
    aggregate_id: UUID
    version: int = Field(ge=1)
    type: str = Field(examples=["Workflow.Updated"])
    timestamp: datetime
    actor: str
    correlation_id: str | None
    changes: list[dict[str, Any]] | None = Field(
        None, description="A JSON Patch of what the event changed (a workflow's history only)."
    )


class HistoryPage(BaseModel):
    items: list[HistoryEntry]
    next_cursor: str | None


class AggregateAnswer(BaseModel):
    results: list[Any]


class AuditVerification(BaseModel):
    """Whether the log's hash chain holds; ``problem`` and ``position`` name the first break."""

    model_config = _OPEN

    ok: bool
    events: int = Field(ge=0)
    problem: str | None
    position: int | None


class Period(BaseModel):
    since: datetime
    until: datetime


class Totals(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    crashed: int
    all: int


class Durations(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None


class PeriodFigures(BaseModel):
    period: Period
    totals: Totals
    by_trigger: dict[str, int]
    failure_rate: float | None
    duration_ms: Durations


class SeriesPoint(BaseModel):
    bucket: datetime
    executions: int
    failed: int


class FailingWorkflow(BaseModel):
    workflow_id: UUID
    failed: int
    executions: int
    failure_rate: float | None


class Summary(PeriodFigures):
    """The dashboard: a period's execution figures, beside the period before it."""

    workflow_id: UUID | None
    series_granularity: Literal["hour", "day"]
    series: list[SeriesPoint]
    top_failing_workflows: list[FailingWorkflow]
    previous: PeriodFigures
