"""Executions: start (sync or async), cancel, and run them as their lease holder.

Every execution's life is events of its ``Execution`` aggregate, and its row
in the execution queue changes in the same transactions (see
``infrastructure.queue``): queued with ``Queued``, removed with the terminal
event. Whoever runs an execution holds the row's lease and renews it; a
cancel removes the row and appends ``Canceled``, so the runner's next save or
lease renewal fails and it stops. The aggregate's version check makes sure
that of two writers (runner and cancel, or a dead worker and its successor)
only one decides how an execution ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, project_aggregate
from eventsourcing.persistence import IntegrityError, StoredEvent

from commands.application import WorkflowApplication
from commands.credentials import CredentialCommands, CredentialUnusable, apply_credential
from commands.errors import (
    ExecutionAnswerUnavailable,
    ExecutionInProgress,
    ExecutionNotFound,
    IdempotencyKeyReused,
    WorkflowNotFound,
)
from commands.handlers import WorkflowCommands, request_fingerprint
from commands.models import (
    CommandContext,
    ExecutionResult,
    RetryExecution,
    RetryFrom,
    RetryRevision,
    RunWorkflow,
)
from commands.payloads import ExecutionPayloads, Sealer
from commands.scope import Access, ensure_access
from domain.data_subjects import data_subject_of
from domain.engine import (
    EngineLimits,
    EnginePorts,
    ExecutionOutcome,
    ExecutionPlan,
    HttpFailure,
    HttpRequest,
    HttpResponse,
    Outputs,
    RunStopped,
    compile_plan,
    outputs_needed,
    run,
)
from domain.errors import ExecutionPayloadErased, RetryFromFailedNodeImpossible
from domain.execution import Execution, ExecutionMode, ExecutionTrigger, truncate_items
from domain.meta import EventMeta
from domain.payloads import ERROR, INPUT, OUTPUT, node_error_field, node_outputs_field
from domain.workflow import Workflow
from infrastructure import tracing
from infrastructure.eventstore import IdempotencyRecord, SideStatement, decode_event
from infrastructure.metrics import observe_execution_end
from infrastructure.queue import ExecutionQueue, dequeue, enqueue
from infrastructure.sealing import ERASED as ERASED_VALUE

log = structlog.get_logger("reporunner.executions")

_IDEMPOTENT_EXECUTION_NAMESPACE = uuid.UUID("0b6f1f0e-7c1a-4f57-9d0e-3f9a8c2b5e41")
# A sync run's lease outlives its timeout by this much before anyone may call
# it crashed; the lease keeper renews it meanwhile anyway.
_LEASE_GRACE_S = 10.0
_CANCEL_ATTEMPTS = 20
# How long a keyed sync request waits for an identical one's run to end: the
# run ends by 1.2 times its timeout, then records its end.
_AWAIT_TIMEOUT_FACTOR = 1.2
_AWAIT_SLACK_S = 2.0


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def default_worker_id(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunnerSettings:
    lease_s: float
    output_max_bytes: int
    limits: EngineLimits


class LeaseKeeper:
    """Renews the leases this process holds, and notices the ones it lost.

    One thread for the whole process: a lease is renewed every third of its
    length however long a node runs (a ``wait`` or a slow HTTP call). A lease
    that cannot be renewed (row deleted by a cancel, or taken over) sets that
    run's ``lost`` event, which the engine polls between nodes and which cuts
    its waits short.
    """

    def __init__(self, queue: ExecutionQueue, lease_s: float) -> None:
        self.queue = queue
        self.lease_s = lease_s
        self._held: dict[UUID, tuple[str, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()

    def hold(self, execution_id: UUID, worker_id: str, lost: threading.Event) -> None:
        with self._lock:
            self._held[execution_id] = (worker_id, lost)

    def drop(self, execution_id: UUID) -> None:
        with self._lock:
            self._held.pop(execution_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                held = list(self._held.items())
            for execution_id, (worker_id, lost) in held:
                try:
                    if not self.queue.renew(execution_id, worker_id, self.lease_s):
                        lost.set()
                except Exception:  # the database is away: retry next round
                    log.warning("lease renewal failed", execution_id=str(execution_id))


class Finished(NamedTuple):
    """An execution as recorded at its end, and whether this writer recorded it."""

    execution: Execution
    saved: bool
    # The log position of its last event, when this writer's save returned it.
    position: int | None = None


@dataclass(frozen=True)
class FirstSave:
    """What the first save of a not yet recorded (sync) execution carries.

    A sync run is recorded only when it first waits on the outside world or
    when it ends: a short run then costs one transaction, not two. Its queue
    row (leased to this process, so a crash is noticed) is only needed from
    the first save that does not also end it.
    """

    idempotency: IdempotencyRecord | None
    enqueue: list[SideStatement]


class _Recorder:
    """The engine's listener: turns progress into the execution's events.

    Events accumulate on the aggregate and are saved when the run ends,
    before the engine waits on the outside world, or when ``flush_s`` has
    passed since the last save: a short run costs few transactions and a
    long one still shows its progress.
    """

    def __init__(
        self,
        runner: ExecutionRunner,
        execution: Execution,
        meta: EventMeta,
        worker_id: str,
        first_save: FirstSave | None,
    ) -> None:
        self.runner = runner
        self.execution = execution
        self.meta = meta
        self.worker_id = worker_id
        self.first_save = first_save
        # The engine runs on plaintext; what it reports is recorded sealed.
        self.sealer: Sealer = runner.payloads.sealer_for(execution)
        self.stopped = threading.Event()
        self.lost = threading.Event()
        self._last_flush = time.monotonic()
        if first_save is None:
            runner.leases.hold(execution.id, worker_id, self.lost)

    def node_started(self, node_id: str, attempt: int) -> None:
        self.execution.record_node_started(node_id=node_id, attempt=attempt, meta=self.meta)

    def node_succeeded(self, node_id: str, outputs: Outputs, attempt: int) -> None:
        kept, truncated = self.runner.truncate_outputs(outputs)
        self.execution.record_node_succeeded(
            node_id=node_id,
            attempt=attempt,
            outputs=self.sealer.seal(node_outputs_field(node_id), kept),
            outputs_truncated=truncated,
            meta=self.meta,
        )
        self._maybe_flush()

    def node_failed(self, node_id: str, error: str, attempt: int, will_retry: bool) -> None:
        self.execution.record_node_failed(
            node_id=node_id,
            attempt=attempt,
            error=self.sealer.seal(node_error_field(node_id, attempt), error),
            will_retry=will_retry,
            meta=self.meta,
        )
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.runner.flush_s:
            self.flush()

    def flush(self) -> None:
        """Save the events so far. Called before the engine waits on the outside
        world (a ``wait``, an HTTP call), so the log shows what is in progress,
        and a side effect is never unrecorded if this worker dies during it."""
        if self.stopped.is_set() or not self.execution.pending_events:
            return
        first = self.first_save
        try:
            if first is None:
                self.runner.app.save(self.execution)
            else:
                self.runner.app.save(
                    self.execution, idempotency=first.idempotency, side_statements=first.enqueue
                )
                self.first_save = None
                self.runner.leases.hold(self.execution.id, self.worker_id, self.lost)
        except IntegrityError:
            # Someone else wrote this execution (a cancel, or an identical
            # keyed request that got there first): stop at the next node.
            self.stopped.set()
        self._last_flush = time.monotonic()


class ExecutionRunner:
    """Runs executions whose queue row this process has claimed."""

    flush_s = 0.5

    def __init__(
        self,
        app: WorkflowApplication,
        queue: ExecutionQueue,
        settings: RunnerSettings,
        http: Callable[[HttpRequest], HttpResponse],
        payloads: ExecutionPayloads | None = None,
        credentials: CredentialCommands | None = None,
    ) -> None:
        self.app = app
        self.queue = queue
        self.settings = settings
        self.http = http
        self.payloads = payloads or ExecutionPayloads(None)
        self.credentials = credentials
        self.leases = LeaseKeeper(queue, settings.lease_s)
        self._plans: OrderedDict[tuple[UUID, int], ExecutionPlan] = OrderedDict()
        self._plans_lock = threading.Lock()

    def close(self) -> None:
        self.leases.close()

    # -- the queue side ---------------------------------------------------------------

    def run_claimed(
        self,
        execution_id: UUID,
        claims: int,
        worker_id: str,
        stored: Sequence[StoredEvent] | None = None,
    ) -> Execution | None:
        """Run (or settle) an execution a worker just claimed.

        ``stored``: its events, read with the claim (``ExecutionQueue.claim_loaded``);
        without them it is loaded here. In a span continuing the trace of the
        request that queued it, and with its correlation id on every log line.
        """
        execution = self.load(execution_id) if stored is None else self.rebuild(stored)
        if execution is None or execution.is_finished:
            # Its terminal event committed, or it never existed: drop the row.
            self.queue.remove(execution_id)
            return execution
        with (
            structlog.contextvars.bound_contextvars(correlation_id=execution.correlation_id),
            tracing.span(
                "execution run",
                parent=execution.traceparent,
                attributes={
                    "reporunner.execution_id": str(execution.id),
                    "reporunner.workflow_id": str(execution.workflow_id),
                    "reporunner.correlation_id": execution.correlation_id,
                    "reporunner.claims": claims,
                },
            ),
        ):
            return self._run_claimed(execution, claims, worker_id)

    def _run_claimed(self, execution: Execution, claims: int, worker_id: str) -> Execution | None:
        execution_id = execution.id
        meta = self._meta(execution, worker_id)
        if execution.status == "running":
            # Started before, by a worker whose lease expired: it died mid-run.
            # Re-running could repeat side effects (HTTP calls), so it ends here.
            execution.crash(
                reason=f"the worker running it ({execution.worker_id}) stopped responding",
                meta=meta,
            )
            execution = self.finish(execution).execution
            log.warning("execution crashed", execution_id=str(execution_id), claims=claims)
            return execution
        execution.start(worker_id=worker_id, meta=meta)
        if claims > 1:
            # Claimed before and never started on record: a worker died while
            # running it unrecorded (say, it ran out of memory). This time the
            # start is recorded first, so a run that kills its worker is
            # crashed by the next claim rather than run again and again.
            try:
                self.app.save(execution)
            except IntegrityError:
                return self.load(execution_id)  # canceled in the meantime
        # Otherwise the start is saved with the run's first save: before the
        # engine first touches the outside world (an HTTP call, a wait; see
        # ``_Recorder.flush``) or with its end. A worker dying before that
        # leaves it queued, with no side effect made: its successor runs it.
        return self.run(execution, worker_id, meta)

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        execution: Execution,
        worker_id: str,
        meta: EventMeta,
        first_save: FirstSave | None = None,
    ) -> Execution:
        """Run a started execution to its end and record it; return it as recorded.

        ``first_save``: the execution is not recorded yet (a sync run).
        """
        return self.run_to_end(execution, worker_id, meta, first_save).execution

    def run_to_end(
        self,
        execution: Execution,
        worker_id: str,
        meta: EventMeta,
        first_save: FirstSave | None = None,
    ) -> Finished:
        """``run``, with the position of the end when this run recorded it."""
        recorder = _Recorder(self, execution, meta, worker_id, first_save)
        try:
            plan = self.plan(execution.workflow_id, execution.workflow_version)

            def should_stop() -> bool:
                return recorder.lost.is_set() or recorder.stopped.is_set()

            def sleep(seconds: float) -> None:
                recorder.flush()
                if should_stop():
                    raise RunStopped
                recorder.lost.wait(seconds)  # a cancel cuts a wait short

            def http(request: HttpRequest) -> HttpResponse:
                began = time.monotonic()
                recorder.flush()
                if should_stop():
                    # Canceled, or the flush found this run to be a duplicate of
                    # one already recorded (a racing request with the same
                    # Idempotency-Key): that one makes the call, this one none.
                    raise RunStopped
                # The flush spent some of the time the engine granted the call.
                spent_ms = math.ceil((time.monotonic() - began) * 1000)
                request = dataclasses.replace(
                    request, timeout_ms=max(1, request.timeout_ms - spent_ms)
                )
                if request.credential is not None:
                    request = self._authenticated(execution.org_id, request)
                return self.http(request)

            ports = EnginePorts(
                http=http, sleep=sleep, clock=time.monotonic, should_cancel=should_stop
            )
            try:
                input = self._opened_input(execution, recorder.sealer)
                known_outputs = self._reused_outputs(execution)
            except ExecutionPayloadErased as erased:
                # Erased while it waited in the queue: nothing to run on.
                execution.fail(error=str(erased), meta=meta)
                return self.finish(execution, recorder.first_save)
            outcome = run(
                plan,
                input,
                ports=ports,
                listener=recorder,
                limits=self.settings.limits,
                known_outputs=known_outputs,
            )
            if outcome.status == "canceled" or recorder.stopped.is_set():
                return Finished(self._reloaded(execution), saved=False)
            self._conclude(execution, outcome, meta, recorder.sealer)
            return self.finish(execution, recorder.first_save)
        except Exception as exc:
            # A bug or an outage: record why rather than leave it running.
            log.exception("execution run failed", execution_id=str(execution.id))
            if recorder.first_save is not None:
                raise  # nothing was recorded: the request fails as a whole
            current = self._reloaded(execution)
            if current.status == "queued":
                # A claimed run whose start was not saved yet: record it with the failure.
                current.start(worker_id=worker_id, meta=meta)
            if current.status == "running":
                current.fail(error=f"internal error: {type(exc).__name__}", meta=meta)
                return self.finish(current)
            return Finished(current, saved=False)
        finally:
            self.leases.drop(execution.id)

    def _opened_input(self, execution: Execution, sealer: Sealer) -> Any:
        if sealer.keys == ():
            raise ExecutionPayloadErased(execution.id, "input")
        return self.payloads.open(execution.org_id, execution.id, INPUT, execution.input)

    def _authenticated(self, org_id: str, request: HttpRequest) -> HttpRequest:
        """The request with its credential's secret applied, in memory only: a
        credential that cannot be used fails the node (the message names the id)."""
        assert request.credential is not None
        if self.credentials is None:
            raise HttpFailure("credentials need a master key, and this process has none")
        try:
            opened = self.credentials.open(org_id, request.credential)
            return apply_credential(request, opened, time.time())
        except CredentialUnusable as exc:
            raise HttpFailure(str(exc)) from None

    def _reused_outputs(self, execution: Execution) -> dict[str, Outputs] | None:
        """For a retry from the failed node: the outputs it takes from the run it retries.

        Those runs are finished, so their recorded outputs never change; the
        retry was refused when one it needs was recorded truncated.
        """
        if not execution.reused_nodes:
            return None
        assert execution.retry_of is not None
        recorded = self.chain_outputs(self._retried(execution))
        return {node_id: recorded[node_id][0] for node_id in execution.reused_nodes}

    def chain_outputs(self, execution: Execution) -> dict[str, tuple[dict[str, list[Any]], bool]]:
        """What a retry of ``execution`` from its failed node may reuse: ``{node: (outputs,
        truncated)}`` of the nodes that succeeded in it, or that it reused in turn.

        A reused node ran in an execution further up the retry chain: each
        step up is the run it retried, until the one where it ran (bounded by
        the chain's length; ``Execution.create`` keeps every step honest).
        In clear; ``ExecutionPayloadErased`` if one of them was erased.
        """
        outputs = self._opened_outputs(execution)
        missing = [node_id for node_id in execution.reused_nodes if node_id not in outputs]
        current = execution
        while missing:
            current = self._retried(current)
            recorded = self._opened_outputs(current)
            outputs |= {node_id: recorded[node_id] for node_id in missing if node_id in recorded}
            missing = [node_id for node_id in missing if node_id not in outputs]
        return outputs

    def _opened_outputs(self, execution: Execution) -> dict[str, tuple[dict[str, list[Any]], bool]]:
        """``retry_outputs`` in clear: each sealed in (and for) its own execution."""
        opened = {}
        for node_id, (outputs, truncated) in execution.retry_outputs().items():
            field = node_outputs_field(node_id)
            clear = self.payloads.open(execution.org_id, execution.id, field, outputs)
            if clear == ERASED_VALUE:
                raise ExecutionPayloadErased(execution.id, f"node '{node_id}' outputs")
            opened[node_id] = (clear, truncated)
        return opened

    def _retried(self, execution: Execution) -> Execution:
        """The execution ``execution`` retries."""
        retried = None if execution.retry_of is None else self.load(execution.retry_of)
        if retried is None:
            raise LookupError(f"execution {execution.retry_of} that {execution.id} retries")
        return retried

    def _conclude(
        self, execution: Execution, outcome: ExecutionOutcome, meta: EventMeta, sealer: Sealer
    ) -> None:
        if outcome.status == "succeeded":
            output, truncated = self.truncate_outputs(outcome.output)
            execution.succeed(
                output=sealer.seal(OUTPUT, output), output_truncated=truncated, meta=meta
            )
        else:
            execution.fail(error=sealer.seal(ERROR, outcome.error or "failed"), meta=meta)

    def finish(self, execution: Execution, first_save: FirstSave | None = None) -> Finished:
        """Save a finished execution's events and remove its queue row, in one transaction.

        If another writer got there first (a cancel, a successor after a lost
        lease, an identical keyed request), theirs stands: the answer is then
        the execution as recorded, not saved. With ``first_save`` the
        execution was never recorded nor queued: this save records all of it.
        (The workflow's ``Executed`` follows from the log: ``workflow_runs``.)
        """
        if first_save is None:
            kwargs: dict[str, Any] = {"side_statements": [dequeue(execution.id)]}
        else:
            kwargs = {"idempotency": first_save.idempotency}
        try:
            recordings = self.app.save(execution, **kwargs)
        except IntegrityError:
            current = self.load(execution.id)
            if current is None:
                raise
            return Finished(current, saved=False)
        if execution.is_finished:
            observe_execution_end(execution)
        return Finished(execution, saved=True, position=recordings[-1].notification.id)

    # -- loading -----------------------------------------------------------------------

    def load(self, execution_id: UUID) -> Execution | None:
        try:
            found: object = self.app.repository.get(execution_id)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, Execution) else None

    def rebuild(self, stored: Sequence[StoredEvent]) -> Execution | None:
        """The execution these stored events (all of them, in order) record; None if none."""
        mapper = self.app.mapper
        events = [
            decode_event(mapper, _uuid(e.originator_id), e.originator_version, e.topic, e.state)
            for e in stored
        ]
        found: object = project_aggregate(None, events)
        return found if isinstance(found, Execution) else None

    def _reloaded(self, execution: Execution) -> Execution:
        return self.load(execution.id) or execution

    def plan(
        self, workflow_id: UUID, version: int, loaded: Workflow | None = None
    ) -> ExecutionPlan:
        """The compiled definition of one workflow version (immutable, so cached).

        ``loaded``: that version, if the caller has it already (saves a load).
        """
        key = (workflow_id, version)
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        workflow: object = loaded or self.app.repository.get(workflow_id, version=version)
        assert isinstance(workflow, Workflow)
        plan = compile_plan(workflow.definition())
        with self._plans_lock:
            self._plans[key] = plan
            while len(self._plans) > 1024:
                self._plans.popitem(last=False)
        return plan

    def truncate_outputs(self, outputs: Outputs) -> tuple[dict[str, list[Any]], bool]:
        kept: dict[str, list[Any]] = {}
        truncated = False
        for name, items in outputs.items():
            kept[name], cut = truncate_items(items, self.settings.output_max_bytes)
            truncated = truncated or cut
        return kept, truncated

    @staticmethod
    def _meta(execution: Execution, worker_id: str) -> EventMeta:
        return EventMeta(
            org_id=execution.org_id,
            actor=f"worker:{worker_id}",
            correlation_id=execution.correlation_id,
            causation_id=str(execution.id),
            traceparent=tracing.current_traceparent(),  # the run's span
        )


class ExecutionCommands:
    """The write side's use cases for executions."""

    def __init__(
        self,
        app: WorkflowApplication,
        workflows: WorkflowCommands,
        runner: ExecutionRunner,
        worker_id: str,
    ) -> None:
        self.app = app
        self.workflows = workflows
        self.runner = runner
        self.worker_id = worker_id

    def start(
        self,
        workflow_id: UUID,
        command: RunWorkflow,
        ctx: CommandContext,
        trigger: ExecutionTrigger = "manual",
        workflow: Workflow | None = None,
    ) -> ExecutionResult:
        """Start a run of the workflow's current revision.

        ``workflow``: the caller has it already, read no earlier than the
        request arrived (a hook's look-up); it is read, never mutated.
        """
        fingerprint = request_fingerprint(ctx, "execute", workflow_id, None, command.model_dump())
        if ctx.project_id is not None and ctx.idempotency_key is not None and workflow is None:
            # Keys are the organisation's: a replay answers nothing outside the project.
            workflow = self.workflows.get(workflow_id, ctx.org_id)
            ensure_access(workflow, ctx, Access.VIEW)
        prior, execution_id = self._claim_key(ctx, fingerprint)
        if prior is not None:
            return prior
        if workflow is None:
            workflow = self.workflows.get(workflow_id, ctx.org_id)
        ensure_access(workflow, ctx, Access.VIEW)  # outside the key's project: 404
        ensure_access(workflow, ctx, Access.EDIT)
        workflow.ensure_not_deleted()
        self.runner.plan(workflow.id, workflow.version, workflow)
        execution = self._queued(
            workflow,
            command.input,
            execution_id=execution_id,
            mode=command.mode,
            meta=self._queued_meta(ctx),
            trigger=trigger,
        )
        return self._submit(execution, ctx, fingerprint)

    def _queued(
        self, workflow: Workflow, input: Any, *, execution_id: UUID, meta: EventMeta, **create: Any
    ) -> Execution:
        """``Execution.create`` of a run of ``workflow`` (the version it runs) over
        ``input`` in clear, recorded sealed under its queued day's and its data
        subject's keys (``commands/payloads.py``)."""
        subject = data_subject_of(workflow.settings, input)
        day = datetime.now(UTC).date()
        for _ in range(2):
            sealer = self.runner.payloads.new_sealer(
                meta.org_id, execution_id, workflow.id, day, subject
            )
            execution = Execution.create(
                execution_id=execution_id,
                workflow_id=workflow.id,
                workflow_version=workflow.version,
                workflow_revision=workflow.revision,
                input=input,
                meta=meta,
                seal_input=functools.partial(sealer.seal, INPUT),
                **create,
            )
            queued_day = execution.queued_at.astimezone(UTC).date()
            if queued_day == day:
                break
            day = queued_day  # midnight passed between the two clock readings
        return execution

    def retry(
        self, execution_id: UUID, command: RetryExecution, ctx: CommandContext
    ) -> ExecutionResult:
        """Run a failed, crashed or canceled execution again, as a new execution.

        ``revision="original"`` runs the workflow version the old one ran;
        ``from_="failed_node"`` also takes the outputs its succeeded nodes
        recorded instead of running them again (their side effects happened).
        """
        payload = command.model_dump(by_alias=True)
        fingerprint = request_fingerprint(ctx, "retry", execution_id, None, payload)
        if ctx.project_id is not None and ctx.idempotency_key is not None:
            self.in_scope(self.get(execution_id, ctx.org_id), ctx)  # before any replay
        prior, new_id = self._claim_key(ctx, fingerprint)
        if prior is not None:
            return prior
        old = self.get(execution_id, ctx.org_id)
        workflow = self.in_scope(old, ctx)
        old.ensure_retryable()
        execution = self.prepare_retry(
            old,
            workflow,
            execution_id=new_id,
            from_=command.from_,
            revision=command.revision,
            mode=command.mode,
            meta=self._queued_meta(ctx),
        )
        return self._submit(execution, ctx, fingerprint)

    def prepare_retry(
        self,
        old: Execution,
        workflow: Workflow,
        *,
        execution_id: UUID,
        from_: RetryFrom,
        revision: RetryRevision,
        mode: ExecutionMode,
        meta: EventMeta,
        not_before: datetime | None = None,
    ) -> Execution:
        """The (unsaved) execution that retries ``old``; ``workflow`` as it is now.

        Refused if the workflow was deleted (at whichever revision), and from
        the failed node if an output it needs was recorded truncated.
        """
        workflow.ensure_not_deleted()
        if revision == "original":
            loaded: object = self.app.repository.get(workflow.id, version=old.workflow_version)
            assert isinstance(loaded, Workflow)
            workflow = loaded
        plan = self.runner.plan(workflow.id, workflow.version, workflow)
        if self.runner.payloads.sealer_for(old).keys == ():
            raise ExecutionPayloadErased(old.id, "input")
        input = self.runner.payloads.open(old.org_id, old.id, INPUT, old.input)
        reused: tuple[str, ...] = ()
        if from_ == "failed_node":
            recorded = self.runner.chain_outputs(old)
            truncated = sorted(n for n in outputs_needed(plan, recorded) if recorded[n][1])
            if truncated:
                raise RetryFromFailedNodeImpossible(old.id, truncated)
            reused = tuple(node.id for node in plan.nodes if node.id in recorded)
        # Sealed afresh: the retry is queued today, maybe about the same subject.
        return self._queued(
            workflow,
            input,
            execution_id=execution_id,
            mode=mode,
            meta=meta,
            retry_of=old,
            reused_nodes=reused,
            trigger="retry",
            not_before=not_before,
        )

    def _claim_key(
        self, ctx: CommandContext, fingerprint: str
    ) -> tuple[ExecutionResult | None, UUID]:
        """The answer already given to this keyed request, or the id its execution gets.

        A keyed request's execution id follows from the key, so that racing
        identical requests collide on one aggregate and only one is recorded.
        """
        if ctx.idempotency_key is None:
            return None, uuid.uuid4()
        prior = self._prior_answer(ctx, fingerprint)
        execution_id = uuid.uuid5(
            uuid.uuid5(_IDEMPOTENT_EXECUTION_NAMESPACE, ctx.org_id), ctx.idempotency_key
        )
        return prior, execution_id

    @staticmethod
    def _queued_meta(ctx: CommandContext) -> EventMeta:
        return EventMeta(
            org_id=ctx.org_id,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id,
            idempotency_key=ctx.idempotency_key,
            traceparent=ctx.traceparent,
        )

    def _submit(
        self, execution: Execution, ctx: CommandContext, fingerprint: str
    ) -> ExecutionResult:
        """Record a new (not yet saved) execution: run it here if sync, else queue it."""
        execution_id = execution.id
        sync = execution.mode == "sync"
        record = None
        if ctx.idempotency_key is not None:
            record = IdempotencyRecord(
                org_id=ctx.org_id,
                key=ctx.idempotency_key,
                request_hash=fingerprint,
                aggregate_id=execution_id,
                aggregate_version=1,
                status_code=200 if sync else 202,
            )
        if sync:
            run_meta = EventMeta(
                org_id=ctx.org_id,
                actor=ctx.actor,
                correlation_id=ctx.correlation_id,
                causation_id=str(execution_id),
                traceparent=ctx.traceparent,
            )
            execution.start(worker_id=self.worker_id, meta=run_meta)
            timeout_s = self.runner.settings.limits.max_execution_ms / 1000
            first_save = FirstSave(
                idempotency=record,
                enqueue=enqueue(
                    execution_id,
                    ctx.org_id,
                    execution.workflow_id,
                    claimed_by=self.worker_id,
                    lease_s=max(timeout_s, self.runner.settings.lease_s) + _LEASE_GRACE_S,
                ),
            )
            finished = self.runner.run_to_end(execution, self.worker_id, run_meta, first_save)
            # The execution is recorded now: whatever goes wrong from here on,
            # the client must learn its id.
            try:
                if ctx.idempotency_key is not None and not finished.saved:
                    # That of an identical request which got there first.
                    prior = self._prior_answer(ctx, fingerprint)
                    assert prior is not None
                    return prior
                return self._result(finished.execution, 200, finished.position)
            except (ExecutionInProgress, IdempotencyKeyReused):
                raise
            except Exception as exc:
                log.exception("sync run answer failed", execution_id=str(execution_id))
                raise ExecutionAnswerUnavailable(execution_id) from exc
        try:
            recordings = self.app.save(
                execution,
                idempotency=record,
                side_statements=enqueue(execution_id, ctx.org_id, execution.workflow_id),
            )
        except IntegrityError:
            # An identical keyed request won the race: answer as it did.
            if ctx.idempotency_key is not None:
                prior = self._prior_answer(ctx, fingerprint)
                if prior is not None:
                    return prior
            raise
        return ExecutionResult(
            execution_id=execution_id,
            status=execution.status,
            position=recordings[-1].notification.id,
            status_code=202,
        )

    def cancel(self, execution_id: UUID, ctx: CommandContext) -> ExecutionResult:
        meta = EventMeta(
            org_id=ctx.org_id,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id,
            traceparent=ctx.traceparent,
        )
        for _ in range(_CANCEL_ATTEMPTS):
            execution = self.get(execution_id, ctx.org_id)
            self.in_scope(execution, ctx)
            execution.cancel(meta=meta)  # ExecutionFinished (409) once it has ended
            recorded, saved, position = self.runner.finish(execution)
            if saved:
                return self._result(recorded, 200, position)
            # A runner recorded progress or its end first: look again.
        raise RuntimeError(f"could not cancel execution {execution_id}")

    def in_scope(self, execution: Execution, ctx: CommandContext) -> Workflow:
        """The execution's workflow, if ``ctx``'s project may run it (else 404, or 403)."""
        try:
            workflow = self.workflows.get(execution.workflow_id, ctx.org_id)
            ensure_access(workflow, ctx, Access.VIEW)
        except WorkflowNotFound:
            raise ExecutionNotFound(execution.id) from None
        ensure_access(workflow, ctx, Access.EDIT)
        return workflow

    def get(self, execution_id: UUID, org_id: str) -> Execution:
        execution = self.runner.load(execution_id)
        if execution is None or execution.org_id != org_id:
            raise ExecutionNotFound(execution_id)
        return execution

    def _result(
        self, execution: Execution, status_code: int, position: int | None = None
    ) -> ExecutionResult:
        """The answer about ``execution``; ``position``: of its last event, if known."""
        if position is None:
            position = self.app.event_store.position_of(execution.id, execution.version)
        payloads = self.runner.payloads
        return ExecutionResult(
            execution_id=execution.id,
            status=execution.status,
            position=position,
            status_code=status_code,
            # A sync run's caller (and a keyed request's repeat) reads it in clear.
            output=payloads.open(execution.org_id, execution.id, OUTPUT, execution.output),
            error=payloads.open(execution.org_id, execution.id, ERROR, execution.error),
        )

    def _prior_answer(self, ctx: CommandContext, fingerprint: str) -> ExecutionResult | None:
        assert ctx.idempotency_key is not None
        record = self.app.event_store.find_idempotency(ctx.org_id, ctx.idempotency_key)
        if record is None:
            return None
        if record.request_hash != fingerprint:
            raise IdempotencyKeyReused(record.key)
        execution = self.get(record.aggregate_id, ctx.org_id)
        if record.status_code == 200 and not execution.is_finished:
            # A sync run's answer is its end: wait for the request running it.
            execution = self._await_end(execution)
        return self._result(execution, status_code=record.status_code)

    def _await_end(self, execution: Execution) -> Execution:
        """The execution once finished, polled from the log; bounded by its timeout.

        Past the run's own timeout (plus slack for recording its end) it
        should have ended: 409 with its id, never a "running" answer.
        """
        plan = self.runner.plan(execution.workflow_id, execution.workflow_version)
        timeout_ms = plan.timeout_ms or self.runner.settings.limits.max_execution_ms
        deadline = time.monotonic() + timeout_ms * _AWAIT_TIMEOUT_FACTOR / 1000 + _AWAIT_SLACK_S
        pause = 0.01
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            current = self.runner.load(execution.id)
            if current is not None and current.is_finished:
                return current
        raise ExecutionInProgress(execution.id)
