"""The Execution aggregate: one run of one workflow version, as an event history.

Lifecycle::

    queued --start--> running --succeed--> succeeded
       |                 |------fail-----> failed
       |                 |------crash----> crashed   (the worker was lost)
       +-----cancel------+------cancel---> canceled

A finished execution (succeeded, failed, canceled, crashed) accepts nothing
more; ``cancel`` then raises ``ExecutionFinished`` (a 409 for the API). An
execution starts only once: if its worker is lost (lease expired) it is marked
``crashed`` rather than re-run, because node side effects such as HTTP calls
must not silently happen twice; re-running is a new execution: a retry
(``trigger="retry"``, ``retry_of`` the execution it retries) of a finished
execution that did not succeed, which may reuse the recorded outputs of the
nodes that succeeded there (``reused_nodes``). Each execution is one
``attempt`` of its chain: 1 for a first run, one more than the execution it
retries for a retry; a retry may wait (``not_before``, the back-off of an
automatic retry: workers take it from then on). Cancelling is
immediate: the worker notices through its ``should_cancel`` port or when its
next report is refused with ``ExecutionFinished``.

Conventions as in ``domain/workflow.py``: public methods decide, ``@event``
methods only apply, every event carries ``meta``. Times come from the events
themselves: an ``@event`` method with a ``timestamp`` parameter receives the
event's own timestamp (eventsourcing passes event attributes by name), both
when the event is triggered and when it is replayed, so the state's times are
exactly the recorded ones. (The parameter must not be keyword-only, which
eventsourcing would treat as required; ``queued_at`` is the aggregate's
``created_on``.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import (
    ExecutionExpired,
    ExecutionFinished,
    ExecutionInputInvalid,
    ExecutionNotFinished,
    ExecutionNotRetryable,
    InvalidExecutionTransition,
    NodeRunNotStarted,
    NodeRunStillRunning,
    Problem,
)
from domain.meta import EventMeta
from domain.values import check_value

__all__ = [
    "EXECUTION_MODES",
    "EXECUTION_STATUSES",
    "EXECUTION_TRIGGERS",
    "FINISHED_STATUSES",
    "RETRYABLE_STATUSES",
    "Execution",
    "ExecutionMode",
    "ExecutionStatus",
    "ExecutionTrigger",
    "NodeRunStatus",
    "truncate_items",
]

ExecutionMode = Literal["sync", "async"]
ExecutionStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "crashed"]
NodeRunStatus = Literal["running", "succeeded", "failed", "interrupted"]
"""``interrupted``: the execution ended (cancel, crash, timeout) while the node ran."""

EXECUTION_MODES: Final[tuple[ExecutionMode, ...]] = ("sync", "async")
EXECUTION_STATUSES: Final[tuple[ExecutionStatus, ...]] = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled",
    "crashed",
)
FINISHED_STATUSES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "canceled", "crashed"})
RETRYABLE_STATUSES: Final[frozenset[str]] = frozenset({"failed", "canceled", "crashed"})
ExecutionTrigger = Literal["manual", "webhook", "schedule", "retry"]
EXECUTION_TRIGGERS: Final[tuple[ExecutionTrigger, ...]] = ("manual", "webhook", "schedule", "retry")


class Execution(Aggregate):
    """One run of a workflow version; its events are the run's audit trail."""

    @classmethod
    def create(
        cls,
        *,
        execution_id: UUID,
        workflow_id: UUID,
        workflow_version: int,
        workflow_revision: int,
        mode: ExecutionMode,
        input: Any,
        meta: EventMeta,
        retry_of: Execution | None = None,
        reused_nodes: tuple[str, ...] = (),
        trigger: ExecutionTrigger | None = None,
        not_before: datetime | None = None,
        seal_input: Callable[[Any], Any] | None = None,
    ) -> Execution:
        """Queue a run of ``workflow_version`` over ``input`` (an object or array of objects).

        ``workflow_version`` is the workflow's stream version (what a worker
        loads the definition at); ``workflow_revision`` the definition's
        revision there, what clients call the workflow's version.
        ``retry_of``: the execution this one retries (see ``retry_outputs``);
        ``reused_nodes``: its nodes whose recorded outputs this run takes
        instead of running them (same workflow version only).
        ``not_before``: no worker starts it earlier (an aware datetime).
        ``seal_input``: the form ``input`` is recorded in, once checked (the
        command layer seals personal data; ``domain/`` holds no keys), so
        ``self.input`` is then the sealed form.
        """
        if mode not in EXECUTION_MODES:
            raise ValueError(f"mode must be one of {EXECUTION_MODES}, got {mode!r}")
        if workflow_version < 1:
            raise ValueError(f"workflow_version must be at least 1, got {workflow_version}")
        if not 1 <= workflow_revision <= workflow_version:
            raise ValueError(
                f"workflow_revision must be 1 to workflow_version, got {workflow_revision}"
            )
        _check_input(input)
        if trigger is None:
            trigger = "manual" if retry_of is None else "retry"
        if trigger not in EXECUTION_TRIGGERS or (trigger == "retry") != (retry_of is not None):
            raise ValueError(f"trigger {trigger!r} does not fit retry_of {retry_of!r}")
        if retry_of is not None:
            retry_of.ensure_retryable()
            if retry_of.workflow_id != workflow_id:
                raise ValueError("a retry runs the workflow of the execution it retries")
        if not_before is not None and not_before.utcoffset() is None:
            raise ValueError("not_before must be an aware datetime")
        if reused_nodes and (retry_of is None or retry_of.workflow_version != workflow_version):
            raise ValueError("reused_nodes needs a retry of the same workflow version")
        if reused_nodes and retry_of is not None:
            # Its own successes, or what it reused in turn (from further up its chain).
            reusable = retry_of.retry_outputs().keys() | set(retry_of.reused_nodes)
            unknown = set(reused_nodes) - reusable
            if unknown:
                raise ValueError(f"reused_nodes not succeeded in {retry_of.id}: {sorted(unknown)}")
        # Every argument explicit: eventsourcing records only what is passed,
        # and the defaults below are for Queued events recorded before them.
        return cls(
            id=execution_id,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            workflow_revision=workflow_revision,
            mode=mode,
            input=input if seal_input is None else seal_input(input),
            meta=meta.as_dict(),
            trigger=trigger,
            retry_of=None if retry_of is None else retry_of.id,
            reused_nodes=list(reused_nodes),
            attempt=1 if retry_of is None else retry_of.attempt + 1,
            not_before=not_before,
        )

    @event("Queued")
    def __init__(
        self,
        *,
        id: UUID,
        workflow_id: UUID,
        workflow_version: int,
        mode: ExecutionMode,
        input: Any,
        meta: dict[str, Any],
        workflow_revision: int | None = None,
        trigger: ExecutionTrigger = "manual",
        retry_of: UUID | None = None,
        reused_nodes: list[str] | None = None,
        attempt: int = 1,
        not_before: datetime | None = None,
    ) -> None:
        self.org_id: str = meta["org_id"]
        self.workflow_id = workflow_id
        self.workflow_version = workflow_version
        # None in the Queued events recorded before executions kept it.
        self.workflow_revision = workflow_revision
        self.mode: ExecutionMode = mode
        self.input = input
        # Queued events recorded before retries existed have none of these.
        self.trigger: ExecutionTrigger = trigger
        self.retry_of = retry_of
        self.reused_nodes: list[str] = list(reused_nodes or [])
        # Queued events recorded before attempts were counted: attempt 1.
        self.attempt = attempt
        self.not_before = not_before
        self.created_by: str = meta["actor"]
        # Events recorded while running it carry the request's id too.
        self.correlation_id: str = meta["correlation_id"]
        # The trace context of the request that queued it: a worker's run continues it.
        self.traceparent: str | None = meta.get("traceparent")
        self.status: ExecutionStatus = "queued"
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.worker_id: str | None = None
        # A message, or its sealed form (see commands/payloads.py).
        self.error: Any = None
        self.output: dict[str, Any] | None = None
        self.output_truncated = False
        self.canceled_by: str | None = None
        self.node_runs: list[dict[str, Any]] = []
        # Retention (``domain/retention.py``): a pinned execution is kept past
        # its window; an expired one was pruned from the views.
        self.pinned = False
        self.pin_scope: str | None = None  # the pin key's scope while pinned
        self.pin_payload: Any = None  # the payload re-sealed under it
        self.expired = False

    @property
    def queued_at(self) -> datetime:
        """When the execution was queued: its first event's timestamp."""
        return self.created_on

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    # -- retrying --------------------------------------------------------

    def ensure_retryable(self) -> None:
        """Refuse (``ExecutionNotRetryable``) unless it finished without succeeding;
        ``ExecutionExpired`` once retention pruned it (its payload is erased)."""
        if self.expired:
            raise ExecutionExpired(self.id, "retry")
        if self.status not in RETRYABLE_STATUSES:
            raise ExecutionNotRetryable(self.id, self.status)

    def retry_outputs(self) -> dict[str, tuple[dict[str, list[Any]], bool]]:
        """The recorded outputs of each node that succeeded: ``{node_id: (outputs, truncated)}``.

        A node runs once per execution and its attempts stop at the first
        success, so each node has at most one.
        """
        return {
            run["node_id"]: (run["outputs"], run["outputs_truncated"])
            for run in self.node_runs
            if run["status"] == "succeeded"
        }

    # -- start -----------------------------------------------------------

    def start(self, *, worker_id: str, meta: EventMeta) -> None:
        """A worker took the execution: queued -> running."""
        self._ensure_status("start", "queued")
        self._started(worker_id=worker_id, meta=meta.as_dict())

    @event("Started")
    def _started(
        self, worker_id: str, meta: dict[str, Any], timestamp: datetime | None = None
    ) -> None:
        self.status = "running"
        self.worker_id = worker_id
        self.started_at = timestamp

    # -- node progress (while running) -----------------------------------

    def record_node_started(self, *, node_id: str, attempt: int, meta: EventMeta) -> None:
        self._ensure_status("record a node start for", "running")
        if attempt < 1:
            raise ValueError(f"attempt must be at least 1, got {attempt}")
        if self.node_runs and self.node_runs[-1]["status"] == "running":
            # The engine runs one node attempt at a time; each reports its end.
            running = self.node_runs[-1]
            raise NodeRunStillRunning(self.id, running["node_id"], running["attempt"])
        self._node_started(node_id=node_id, attempt=attempt, meta=meta.as_dict())

    @event("NodeStarted")
    def _node_started(
        self,
        node_id: str,
        attempt: int,
        meta: dict[str, Any],
        timestamp: datetime | None = None,
    ) -> None:
        self.node_runs.append(
            {
                "node_id": node_id,
                "attempt": attempt,
                "status": "running",
                "started_at": timestamp,
                "finished_at": None,
                "outputs": None,
                "outputs_truncated": False,
                "error": None,
                "will_retry": False,
            }
        )

    def record_node_succeeded(
        self,
        *,
        node_id: str,
        attempt: int,
        outputs: dict[str, list[Any]],
        outputs_truncated: bool,
        meta: EventMeta,
    ) -> None:
        """``outputs`` as the caller chose to keep them (see ``truncate_items``), or
        their sealed form."""
        self._ensure_running_node("record a node result for", node_id, attempt)
        self._node_succeeded(
            node_id=node_id,
            attempt=attempt,
            outputs=outputs,
            outputs_truncated=outputs_truncated,
            meta=meta.as_dict(),
        )

    @event("NodeSucceeded")
    def _node_succeeded(
        self,
        node_id: str,
        attempt: int,
        outputs: dict[str, list[Any]],
        outputs_truncated: bool,
        meta: dict[str, Any],
        timestamp: datetime | None = None,
    ) -> None:
        run = self.node_runs[-1]
        run["status"] = "succeeded"
        run["finished_at"] = timestamp
        run["outputs"] = outputs
        run["outputs_truncated"] = outputs_truncated

    def record_node_failed(
        self, *, node_id: str, attempt: int, error: Any, will_retry: bool, meta: EventMeta
    ) -> None:
        """``error``: the message, or its sealed form (it may quote data)."""
        self._ensure_running_node("record a node failure for", node_id, attempt)
        self._node_failed(
            node_id=node_id,
            attempt=attempt,
            error=error,
            will_retry=will_retry,
            meta=meta.as_dict(),
        )

    @event("NodeFailed")
    def _node_failed(
        self,
        node_id: str,
        attempt: int,
        error: Any,
        will_retry: bool,
        meta: dict[str, Any],
        timestamp: datetime | None = None,
    ) -> None:
        run = self.node_runs[-1]
        run["status"] = "failed"
        run["finished_at"] = timestamp
        run["error"] = error
        run["will_retry"] = will_retry

    # -- finishing -------------------------------------------------------

    def succeed(self, *, output: dict[str, Any], output_truncated: bool, meta: EventMeta) -> None:
        """The run completed; ``output`` maps terminal node ids to (possibly truncated) items."""
        self._ensure_status("complete", "running")
        self._succeeded(output=output, output_truncated=output_truncated, meta=meta.as_dict())

    @event("Succeeded")
    def _succeeded(
        self,
        output: dict[str, Any],
        output_truncated: bool,
        meta: dict[str, Any],
        timestamp: datetime | None = None,
    ) -> None:
        self._finish("succeeded", timestamp)
        self.output = output
        self.output_truncated = output_truncated

    def fail(self, *, error: Any, meta: EventMeta) -> None:
        """The run failed (a node failed, or it timed out); ``error``: the message, or
        its sealed form."""
        self._ensure_status("fail", "running")
        self._failed(error=error, meta=meta.as_dict())

    @event("Failed")
    def _failed(self, error: Any, meta: dict[str, Any], timestamp: datetime | None = None) -> None:
        self._finish("failed", timestamp)
        self.error = error

    def cancel(self, *, meta: EventMeta) -> None:
        """Stop a queued or running execution; refused with ``ExecutionFinished`` once finished."""
        self._ensure_status("cancel", "queued", "running")
        self._canceled(meta=meta.as_dict())

    @event("Canceled")
    def _canceled(self, meta: dict[str, Any], timestamp: datetime | None = None) -> None:
        self._finish("canceled", timestamp)
        self.canceled_by = meta["actor"]

    def crash(self, *, reason: str, meta: EventMeta) -> None:
        """The worker running it was lost (e.g. its lease expired)."""
        self._ensure_status("mark as crashed", "running")
        self._crashed(reason=reason, meta=meta.as_dict())

    @event("Crashed")
    def _crashed(
        self, reason: str, meta: dict[str, Any], timestamp: datetime | None = None
    ) -> None:
        self._finish("crashed", timestamp)
        self.error = reason

    def _finish(self, status: ExecutionStatus, timestamp: datetime | None) -> None:
        """Apply part shared by the finishing events: a node still running was cut off."""
        self.status = status
        self.finished_at = timestamp
        if self.node_runs and self.node_runs[-1]["status"] == "running":
            self.node_runs[-1]["status"] = "interrupted"
            self.node_runs[-1]["finished_at"] = timestamp

    # -- retention: pins and expiry ---------------------------------------

    def pin(self, *, payload: Any, key_scope: str | None, meta: EventMeta) -> bool:
        """Keep this finished execution past its retention window; False (nothing
        recorded) if it is pinned already. ``payload``: its payload re-sealed under
        the pin key of ``key_scope`` (``commands/pins.py``), which retention does not
        destroy; both None where payloads are not sealed."""
        self.ensure_pinnable()
        if self.pinned:
            return False
        self._pinned(payload=payload, key_scope=key_scope, meta=meta.as_dict())
        return True

    @property
    def next_pin_scope(self) -> str:
        """The pin key scope a pin now would use: new for every pin, because a
        destroyed scope (an unpin destroys its key) is never keyed again."""
        return f"{self.id}/{self.version}"

    @event("Pinned")
    def _pinned(self, payload: Any, key_scope: str | None, meta: dict[str, Any]) -> None:
        self.pinned = True
        self.pin_scope = key_scope
        self.pin_payload = payload

    def unpin(self, *, meta: EventMeta) -> bool:
        """Let retention take it again; False (nothing recorded) if it was not pinned."""
        if self.expired:
            raise ExecutionExpired(self.id, "unpin")
        if not self.pinned:
            return False
        self._unpinned(meta=meta.as_dict())
        return True

    @event("Unpinned")
    def _unpinned(self, meta: dict[str, Any]) -> None:
        self.pinned = False
        self.pin_scope = None
        self.pin_payload = None

    @property
    def expirable(self) -> bool:
        """Whether retention may take it: finished, not pinned, not taken yet."""
        return self.is_finished and not self.pinned and not self.expired

    def expire(self, *, as_of: str, retention_days: int, meta: EventMeta) -> None:
        """Retention took it: past ``retention_days`` at ``as_of`` (an ISO date, the
        day the window ends). The views prune its document; the log keeps its events."""
        if not self.expirable:
            raise ValueError(f"execution {self.id} may not expire (finished, unpinned, once)")
        if retention_days < 1:
            raise ValueError(f"retention_days must be at least 1, got {retention_days}")
        self._expired(as_of=as_of, retention_days=retention_days, meta=meta.as_dict())

    @event("Expired")
    def _expired(self, as_of: str, retention_days: int, meta: dict[str, Any]) -> None:
        self.expired = True

    def ensure_pinnable(self) -> None:
        """Refuse a pin: ``ExecutionExpired`` once retention took it,
        ``ExecutionNotFinished`` while it is queued or running."""
        if self.expired:
            raise ExecutionExpired(self.id, "pin")
        if not self.is_finished:
            raise ExecutionNotFinished(self.id, self.status, "pin")

    # -- rules -----------------------------------------------------------

    def _ensure_status(self, action: str, *allowed: ExecutionStatus) -> None:
        if self.status in allowed:
            return
        if self.is_finished:
            raise ExecutionFinished(self.id, self.status, action)
        raise InvalidExecutionTransition(self.id, self.status, action)

    def _ensure_running_node(self, action: str, node_id: str, attempt: int) -> None:
        self._ensure_status(action, "running")
        current = self.node_runs[-1] if self.node_runs else None
        if not (
            current is not None
            and current["status"] == "running"
            and current["node_id"] == node_id
            and current["attempt"] == attempt
        ):
            raise NodeRunNotStarted(self.id, node_id, attempt)


def _check_input(value: Any) -> None:
    if not isinstance(value, dict | list):
        raise ExecutionInputInvalid(f"expected an object or an array of objects, got {value!r:.80}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ExecutionInputInvalid(f"item {index} is not an object")
    # Checked here, before the run is recorded: a value no follower can carry
    # would otherwise be logged and stall every view behind it.
    found = check_value(value, ("input",))
    if found:
        raise ExecutionInputInvalid(
            "; ".join(str(problem) for problem in found),
            [Problem(problem.loc, problem.msg) for problem in found],
        )


def truncate_items(items: list[Any], max_bytes: int) -> tuple[list[Any], bool]:
    """The longest prefix of ``items`` whose compact JSON array fits in ``max_bytes``.

    Returns ``(kept, truncated)``; ``truncated`` is True when items were dropped.
    Items are serialized one at a time and the scan stops at the first that
    does not fit, so the cost is bounded by ``max_bytes`` plus one item.
    """
    size = 2  # "[]"
    for index, item in enumerate(items):
        encoded = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
        size += len(encoded.encode("utf-8")) + (1 if index else 0)
        if size > max_bytes:
            return items[:index], True
    return list(items), False


# eventsourcing makes the event classes from the @event decorators; they are
# named here for readers of the log (projectors) and for type checkers.
ExecutionQueuedEvent: Any = Execution.Queued  # type: ignore[attr-defined]
ExecutionStartedEvent: Any = Execution.Started  # type: ignore[attr-defined]
ExecutionNodeStartedEvent: Any = Execution.NodeStarted  # type: ignore[attr-defined]
ExecutionNodeSucceededEvent: Any = Execution.NodeSucceeded  # type: ignore[attr-defined]
ExecutionNodeFailedEvent: Any = Execution.NodeFailed  # type: ignore[attr-defined]
ExecutionSucceededEvent: Any = Execution.Succeeded  # type: ignore[attr-defined]
ExecutionFailedEvent: Any = Execution.Failed  # type: ignore[attr-defined]
ExecutionCanceledEvent: Any = Execution.Canceled  # type: ignore[attr-defined]
ExecutionCrashedEvent: Any = Execution.Crashed  # type: ignore[attr-defined]
ExecutionPinnedEvent: Any = Execution.Pinned  # type: ignore[attr-defined]
ExecutionUnpinnedEvent: Any = Execution.Unpinned  # type: ignore[attr-defined]
ExecutionExpiredEvent: Any = Execution.Expired  # type: ignore[attr-defined]
