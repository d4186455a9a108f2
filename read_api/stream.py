"""``GET /v1/stream``: the organisation's events as they land, as Server-Sent Events.

The protocol (what a client sees) is in the README, "Live stream". How it works:

- One tailer per process (``StreamHub``): a thread follows the log by
  position (LISTEN/NOTIFY wake-ups, polling as a backstop, as the followers
  do), decodes each event once, renders its SSE frame once, and hands each
  batch to the event loop, which offers every event to the streams of its
  organisation whose filters take it. No stream queries the log while live.
- A stream that resumes (``Last-Event-ID`` or ``after``) first catches up
  from the log with its own bounded page queries (a few at a time per
  process: ``CATCH_UP_THREADS``), then joins the fan-out at the hub's
  position, reads from the log what lies between where it got to and that
  position, and from then on takes the fan-out, skipping any position it
  already sent. Positions only grow, so "position > the last one sent" is the
  rule for both no gap and no duplicate; the log is gap-free in position
  order for a tailing reader (writers hold the table lock, so a lower
  position never commits after a higher one was read).
- Each stream's queue holds at most ``REPORUNNER_STREAM_QUEUE_EVENTS``
  events. A client that does not keep up fills it, and its stream is closed
  (it reconnects with ``Last-Event-ID`` and catches up from the log) instead
  of being buffered without limit; the others go on.
- At most ``REPORUNNER_STREAM_CONNECTIONS_PER_ORG`` streams per organisation
  and ``REPORUNNER_STREAM_CONNECTIONS_MAX`` in all, per process; beyond, 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
import psycopg
import structlog
from fastapi import APIRouter, Query, Request
from psycopg import sql
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from commands.application import WorkflowApplication
from commands.history import apply_with_patch, event_type, meta_is
from domain.execution import Execution
from domain.project import Project
from domain.template import Template
from domain.timetable import Timetable
from domain.workflow import Workflow
from infrastructure.auth import Permission
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, decode_event
from infrastructure.json_codec import dumps_answer
from infrastructure.metrics import STREAM_EVENTS_SENT, STREAMS_DROPPED, STREAMS_OPEN
from infrastructure.openapi import problems
from infrastructure.org_slots import OrgSlots
from infrastructure.problems import Problem, problem_type
from infrastructure.sealing import is_sealed
from infrastructure.settings import Settings
from infrastructure.web import authorize
from projections.follower import Backoff, connect
from read_api.params import MAX_POSITION, parse_position

log = structlog.get_logger("reporunner.stream")

router = APIRouter(prefix="/v1", tags=["stream"])

TAIL_BATCH = 500
"""Log rows the tailer reads per query."""
CATCH_UP_PAGE = 500
"""Log rows a resuming stream reads per query."""
CATCH_UP_THREADS = 2
"""Catch-up queries running at once per process: resuming streams never take
the threads commands run on."""
CHUNK_EVENTS = 500
"""Events sent in one write to the client at most."""
PRELUDE = b"retry: 1000\n: connected\n\n"
HEARTBEAT = b": keep-alive\n\n"

# Every event type of the log, by the name the history API gives it. (An
# aggregate whose first event has another name, Execution.Queued, also gets a
# default ``Created`` class from eventsourcing: it declares no field of its
# own and is never recorded.)
_AGGREGATES: tuple[type[Any], ...] = (Workflow, Execution, Timetable, Template, Project)
EVENT_TYPES = frozenset(
    f"{aggregate.__name__}.{name}"
    for aggregate in _AGGREGATES
    for name, value in vars(aggregate).items()
    if isinstance(value, type)
    and issubclass(value, aggregate.Event)
    and name != "Event"
    and vars(value).get("__annotations__")
)
AGGREGATE_NAMES = frozenset(aggregate.__name__ for aggregate in _AGGREGATES)
MAX_TYPES_CHARS = 2048
_TYPE_PATTERN = re.compile(r"^[A-Za-z]+\.(\*|[A-Za-z]+)$")
# An execution's or schedule's facts a client follows progress by (never its
# items: outputs and inputs may be large; read them from /v1/executions/{id}).
_DETAILS = (
    "workflow_id",
    "workflow_revision",
    "mode",
    "trigger",
    "retry_of",
    "attempt",
    "not_before",
    "worker_id",
    "node_id",
    "error",
    "will_retry",
    "outputs_truncated",
    "output_truncated",
    "reason",
    "instant",
    "execution_id",
    "revision",
    "buffered",
    "running",
    "after",
    "through",
)


@dataclass(frozen=True)
class StreamEvent:
    """One event of the log, rendered once for every stream that takes it.

    ``frame`` is None when the tailer read it while its organisation had no
    stream: a stream that joined since reads it from the log instead.
    """

    position: int
    org_id: str
    type: str
    aggregate_id: str
    frame: bytes | None
    # The projects that see the event (``Membership``); None when not rendered.
    projects: frozenset[str] | None = None


@dataclass(frozen=True)
class StreamFilter:
    """What a stream asked for: event types (exact, or ``Workflow.*``) and one aggregate;
    and, for a project-scoped key, its project."""

    types: frozenset[str] = frozenset()
    aggregates: frozenset[str] = frozenset()
    aggregate_id: UUID | None = None
    project_id: UUID | None = None

    def accepts(self, event: StreamEvent) -> bool:
        if self.aggregate_id is not None and event.aggregate_id != str(self.aggregate_id):
            return False
        # An unrendered event (projects None) is never sent as is: the stream reads
        # it from the log, rendered, and this test runs again then.
        if (
            self.project_id is not None
            and event.projects is not None
            and str(self.project_id) not in event.projects
        ):
            return False
        if not self.types and not self.aggregates:
            return True
        return event.type in self.types or event.type.partition(".")[0] in self.aggregates


def parse_types(raw: str | None) -> tuple[frozenset[str], frozenset[str]]:
    """``types=Workflow.Updated,Execution.*``: (exact names, aggregates); 400 naming a bad one."""
    if raw is None or not raw.strip():
        return frozenset(), frozenset()
    if len(raw) > MAX_TYPES_CHARS:
        raise Problem(
            400,
            f"types must be at most {MAX_TYPES_CHARS} characters",
            type_=problem_type("bad-parameter"),
        )
    exact, aggregates = set(), set()
    for name in (part.strip() for part in raw.split(",")):
        shown = name if len(name) <= 60 else name[:60] + "…"
        if not _TYPE_PATTERN.match(name):
            raise Problem(
                400,
                f"types must be event types like Workflow.Updated or Execution.*, "
                f"separated by commas; not {shown!r}",
                type_=problem_type("bad-parameter"),
            )
        aggregate, _, event_name = name.partition(".")
        if event_name == "*" and aggregate in AGGREGATE_NAMES:
            aggregates.add(aggregate)
        elif name in EVENT_TYPES:
            exact.add(name)
        else:
            raise Problem(
                400,
                f"types: {shown!r} is no event type; known: {', '.join(sorted(EVENT_TYPES))}, "
                f"or {', '.join(sorted(AGGREGATE_NAMES))} followed by .*",
                type_=problem_type("bad-parameter"),
            )
    return frozenset(exact), frozenset(aggregates)


class WorkflowStates:
    """The workflows the stream saw last, so a workflow event's patch needs no replay.

    A workflow is taken out while an event is applied to it (by the tailer or
    a catch-up thread), so no two threads change one object; a miss (or a
    workflow at another version) loads it from the log as it was just before
    the event.
    """

    def __init__(self, app: WorkflowApplication, size: int = 128) -> None:
        # At most 128 definitions of at most 256 KiB: a bounded 32 MiB at worst.
        self.app = app
        self.size = size
        self._lock = threading.Lock()
        self._states: OrderedDict[UUID, Any] = OrderedDict()

    def apply(self, event: Any) -> tuple[int, list[dict[str, Any]]]:
        """(the workflow's revision after ``event``, the JSON Patch of what it changed)."""
        workflow, patch = self.apply_full(event)
        return workflow.revision, patch

    def apply_full(self, event: Any) -> tuple[Workflow, list[dict[str, Any]]]:
        """(the workflow after ``event``, the JSON Patch of what it changed)."""
        workflow_id, version = event.originator_id, event.originator_version
        with self._lock:
            workflow = self._states.pop(workflow_id, None)
        if workflow is None or workflow.version != version - 1:
            workflow = (
                self.app.repository.get(workflow_id, version=version - 1) if version > 1 else None
            )
        workflow, patch = apply_with_patch(workflow, event)
        with self._lock:
            self._states[workflow_id] = workflow
            while len(self._states) > self.size:
                self._states.popitem(last=False)
        return workflow, patch


def _seen_by(workflow: Workflow) -> frozenset[str]:
    return frozenset({workflow.project_id, *workflow.shares})


class Membership:
    """Which projects see each event, for project-scoped streams.

    A workflow's event: its project and the projects it is shared with, just
    after the event (a move: the project it left too, so that stream learns
    it left). A project's event: that project. Any other (an execution's, a
    schedule's): the projects that see its workflow as this process last saw
    it. Bounded LRU maps; a miss reads the log. Used by the tailer and the
    catch-up threads: one lock.
    """

    def __init__(self, app: WorkflowApplication, size: int = 10_000) -> None:
        self.app = app
        self.size = size
        self._lock = threading.Lock()
        # workflow id -> (its version then, the projects that see it): a catch-up
        # rendering an old event never replaces what a newer one said.
        self._workflows: OrderedDict[str, tuple[int, frozenset[str]]] = OrderedDict()
        self._owners: OrderedDict[str, str] = OrderedDict()  # aggregate id -> its workflow's

    def after_workflow_event(self, event: Any, workflow: Workflow) -> frozenset[str]:
        seen = _seen_by(workflow)
        self._remember(str(workflow.id), workflow.version, seen)
        moved_from = getattr(event, "from_project_id", None)
        return seen | {moved_from} if moved_from else seen

    def of_event(self, event: Any, name: str) -> frozenset[str]:
        aggregate = name.partition(".")[0]
        if aggregate == "Project":
            return frozenset({str(event.originator_id)})
        workflow_id = self._workflow_of(event)
        return frozenset() if workflow_id is None else self._projects_of(workflow_id)

    def _workflow_of(self, event: Any) -> str | None:
        originator = str(event.originator_id)
        named = getattr(event, "workflow_id", None)
        if named is not None:
            self._keep(self._owners, originator, str(named))
            return str(named)
        with self._lock:
            known = self._owners.get(originator)
        if known is not None:
            return known
        try:
            aggregate: Any = self.app.repository.get(event.originator_id)
        except Exception:  # no such aggregate: no project sees it
            return None
        found = getattr(aggregate, "workflow_id", None)
        if found is None:
            return None
        self._keep(self._owners, originator, str(found))
        return str(found)

    def _projects_of(self, workflow_id: str) -> frozenset[str]:
        with self._lock:
            known = self._workflows.get(workflow_id)
        if known is not None:
            return known[1]
        try:
            workflow: Any = self.app.repository.get(UUID(workflow_id))
        except Exception:
            return frozenset()
        if not isinstance(workflow, Workflow):
            return frozenset()
        seen = _seen_by(workflow)
        self._remember(workflow_id, workflow.version, seen)
        return seen

    def _remember(self, workflow_id: str, version: int, seen: frozenset[str]) -> None:
        with self._lock:
            known = self._workflows.get(workflow_id)
            if known is not None and known[0] > version:
                return
            self._workflows[workflow_id] = (version, seen)
            self._workflows.move_to_end(workflow_id)
            while len(self._workflows) > self.size:
                self._workflows.popitem(last=False)

    def _keep(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > self.size:
                table.popitem(last=False)


def unrendered(position: int, event: Any) -> StreamEvent:
    """What the fan-out needs to know of an event no stream of its organisation wants yet."""
    meta = getattr(event, "meta", None) or {}
    return StreamEvent(
        position=position,
        org_id=str(meta.get("org_id") or ""),
        type=event_type(event),
        aggregate_id=str(event.originator_id),
        frame=None,
    )


def render(
    position: int, event: Any, states: WorkflowStates, membership: Membership | None = None
) -> StreamEvent:
    """An event of the log as one SSE message (``id``, ``event``, one-line JSON ``data``)."""
    name = event_type(event)
    aggregate = name.partition(".")[0]
    meta = getattr(event, "meta", None) or {}
    body: dict[str, Any] = {
        "position": position,
        "type": name,
        "aggregate_id": str(event.originator_id),
        "aggregate_type": aggregate.lower(),
        "revision": None,
        "version": event.originator_version,
        "timestamp": event.timestamp.isoformat(),
        "actor": meta.get("actor"),
        "correlation_id": meta.get("correlation_id"),
    }
    projects: frozenset[str] = frozenset()  # unknown: no project-scoped stream takes it
    if aggregate == "Workflow":
        try:
            workflow, body["patch"] = states.apply_full(event)
            body["revision"] = workflow.revision
            if membership is not None:
                projects = membership.after_workflow_event(event, workflow)
        except Exception as exc:  # one odd workflow never stops the stream
            log.warning("no patch for a workflow event", position=position, error=repr(exc))
            body["patch"] = None
        if name == "Workflow.Executed":
            body["execution"] = {
                "id": str(event.execution_id),
                "status": event.status,
                "revision": getattr(event, "revision", None),
            }
    else:
        # A sealed error stays out, as on the relay: read it from /v1/executions/{id}.
        details = {
            key: getattr(event, key)
            for key in _DETAILS
            if hasattr(event, key) and not is_sealed(getattr(event, key))
        }
        body["details"] = {key: _plain(value) for key, value in details.items()}
        if membership is not None:
            projects = membership.of_event(event, name)
    frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (position, name.encode(), dumps_answer(body))
    return StreamEvent(
        position=position,
        org_id=str(meta.get("org_id") or ""),
        type=name,
        aggregate_id=str(event.originator_id),
        frame=frame,
        projects=projects,
    )


def _plain(value: Any) -> Any:
    """A detail as JSON: instants in ISO 8601, ids as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, str | int | float | bool | None) else str(value)


class Subscriber:
    """One open stream: its organisation, its filter, and its bounded queue.

    Touched on the event loop only.
    """

    def __init__(self, org_id: str, stream_filter: StreamFilter, capacity: int) -> None:
        self.org_id = org_id
        self.filter = stream_filter
        self.capacity = capacity
        self.queue: deque[StreamEvent] = deque()
        self.wake = asyncio.Event()
        self.dropped = asyncio.Event()
        self.slot = contextlib.ExitStack()

    def offer(self, event: StreamEvent) -> None:
        if self.dropped.is_set():
            return
        if len(self.queue) >= self.capacity:
            # The client does not keep up: close its stream; it resumes from the log.
            self.queue.clear()
            self.dropped.set()
            STREAMS_DROPPED.inc()
            log.warning("stream dropped: the client does not keep up", org_id=self.org_id)
            return
        self.queue.append(event)
        self.wake.set()


class StreamHub:
    """The process's one tailer of the log, and the streams it feeds."""

    def __init__(self, app: WorkflowApplication, target: PgTarget, settings: Settings) -> None:
        self.app = app
        self.target = target
        self.heartbeat_s = settings.stream_heartbeat_s
        self.poll_s = settings.stream_poll_s
        self.queue_events = settings.stream_queue_events
        self.max_streams = settings.stream_connections_max
        self.per_org = OrgSlots(
            settings.stream_connections_per_org,
            "event streams",
            "REPORUNNER_STREAM_CONNECTIONS_PER_ORG",
        )
        self.states = WorkflowStates(app)
        self.membership = Membership(app)
        self.catch_up_limiter = anyio.CapacityLimiter(CATCH_UP_THREADS)
        # On the event loop: the last position fanned out (None until the tailer
        # has read the log's head), the open streams, those that take the fan-out.
        self.position: int | None = None
        self.open = 0
        self.closed = asyncio.Event()
        self._live: dict[str, set[Subscriber]] = {}
        # Replaced (never changed) on the event loop; the tailer reads it to
        # skip rendering events nobody streams (see StreamEvent.frame).
        self._live_orgs: frozenset[str] = frozenset()
        # The tailer thread's own.
        self._read_position: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- on the event loop -------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="stream-tailer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """End every stream (each sends its last bytes and completes) and stop the tailer."""
        self.closed.set()
        for subscribers in self._live.values():
            for subscriber in subscribers:
                subscriber.wake.set()
        self._stop.set()

    def close_soon(self) -> None:
        """``close`` from another thread or a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def subscribe(self, org_id: str, stream_filter: StreamFilter) -> Subscriber:
        """A new stream's place (429 beyond the caps; 503 while the tailer starts)."""
        if self.position is None:
            raise Problem(
                503,
                "the event stream is starting (or cannot reach the log); retry shortly",
                type_=problem_type("unavailable"),
                headers={"Retry-After": "1"},
            )
        if self.closed.is_set():
            raise Problem(
                503,
                "the server is stopping; reconnect to another one",
                type_=problem_type("unavailable"),
                headers={"Retry-After": "1"},
            )
        if self.open >= self.max_streams:
            raise Problem(
                429,
                f"this server already serves {self.max_streams} event streams "
                "(REPORUNNER_STREAM_CONNECTIONS_MAX); retry later",
                type_=problem_type("too-many-concurrent"),
                headers={"Retry-After": "5"},
            )
        subscriber = Subscriber(org_id, stream_filter, self.queue_events)
        subscriber.slot.enter_context(self.per_org.hold(org_id))  # 429 beyond the org's cap
        self.open += 1
        STREAMS_OPEN.inc()
        return subscriber

    def attach(self, subscriber: Subscriber) -> int:
        """Join the fan-out; every event after the returned position will be offered."""
        assert self.position is not None
        self._live.setdefault(subscriber.org_id, set()).add(subscriber)
        self._live_orgs = frozenset(self._live)
        return self.position

    def release(self, subscriber: Subscriber) -> None:
        live = self._live.get(subscriber.org_id)
        if live is not None:
            live.discard(subscriber)
            if not live:
                del self._live[subscriber.org_id]
                self._live_orgs = frozenset(self._live)
        subscriber.slot.close()
        self.open -= 1
        STREAMS_OPEN.dec()

    def streams_of(self, org_id: str) -> int:
        """Streams of ``org_id`` taking the fan-out now (for tests and the console)."""
        return len(self._live.get(org_id, ()))

    def _ready(self, head: int) -> None:
        if self.position is None:
            self.position = head

    def _fan_out(self, events: list[StreamEvent], last: int) -> None:
        for event in events:
            for subscriber in self._live.get(event.org_id, ()):
                if subscriber.filter.accepts(event):
                    subscriber.offer(event)
        self.position = max(self.position or 0, last)

    # -- in a thread -------------------------------------------------------------------

    def read_page(
        self, org_id: str, stream_filter: StreamFilter, after: int, until: int | None
    ) -> tuple[list[StreamEvent], int, bool]:
        """An organisation's events after ``after`` (through ``until``), one bounded query.

        (the events the filter takes, the last position read, whether the log ended).
        """
        where = f"notification_id > %s AND {meta_is('org_id')}"
        params: list[Any] = [after, org_id]
        if until is not None:
            where += " AND notification_id <= %s"
            params.append(until)
        if stream_filter.aggregate_id is not None:
            where += " AND originator_id = %s"
            params.append(stream_filter.aggregate_id)
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                f"FROM {EVENTS_TABLE} WHERE {where} ORDER BY notification_id LIMIT %s",
                (*params, CATCH_UP_PAGE),
            )
            rows = [tuple(row.values()) for row in cur.fetchall()]
        events = [
            event
            for event in self._render_rows(rows, only=None)
            if event.org_id == org_id and stream_filter.accepts(event)
        ]
        last = int(rows[-1][0]) if rows else after
        return events, last, len(rows) < CATCH_UP_PAGE

    def _render_rows(
        self, rows: list[tuple[Any, ...]], only: frozenset[str] | None
    ) -> list[StreamEvent]:
        """The rows' events, rendered (only those of the organisations ``only`` names, if given)."""
        events = []
        for position, originator_id, version, topic, state in rows:
            try:
                event = decode_event(self.app.mapper, originator_id, version, topic, state)
                org_id = str((getattr(event, "meta", None) or {}).get("org_id") or "")
                if only is not None and org_id not in only:
                    events.append(unrendered(int(position), event))
                else:
                    events.append(render(int(position), event, self.states, self.membership))
            except Exception as exc:  # the history API cannot read it either
                log.error("stream cannot decode an event", position=position, error=repr(exc))
        return events

    def _run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while not self._stop.is_set():
            try:
                self._tail(backoff)
            except Exception as exc:
                retry_in = backoff.next()
                log.warning(
                    "stream tailer lost the log; reconnecting",
                    error=f"{type(exc).__name__}: {str(exc).strip()}",
                    retry_in_s=retry_in,
                )
                self._stop.wait(retry_in)

    def _tail(self, backoff: Backoff) -> None:
        with (
            connect(self.target, "reporunner-stream", autocommit=True) as work,
            connect(self.target, "reporunner-stream-listen", autocommit=True) as listen,
        ):
            # LISTEN before reading the head: no wake-up is missed in between.
            listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
            if self._read_position is None:
                row = work.execute(
                    f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
                ).fetchone()
                self._read_position = int(row[0]) if row else 0
                self._call(self._ready, self._read_position)
            backoff.reset()
            while not self._stop.is_set():
                while self._tail_batch(work) and not self._stop.is_set():
                    pass
                # Woken by a NOTIFY (one per committed write), or after poll_s regardless.
                for _ in listen.notifies(timeout=self.poll_s, stop_after=1):
                    pass

    def _tail_batch(self, conn: psycopg.Connection[Any]) -> bool:
        """Fan out the next rows of the log; whether there may be more at once."""
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (self._read_position, TAIL_BATCH),
        ).fetchall()
        if not rows:
            return False
        last = int(rows[-1][0])
        self._call(self._fan_out, self._render_rows(rows, only=self._live_orgs), last)
        self._read_position = last
        return len(rows) == TAIL_BATCH

    def _call(self, function: Any, *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: the service is stopping
            self._stop.set()


class EventStreamResponse(StreamingResponse):
    """The SSE answer of one stream: catch up, join the fan-out, heartbeat, until closed."""

    media_type = "text/event-stream"

    def __init__(
        self, hub: StreamHub, subscriber: Subscriber, after: int | None, headers: dict[str, str]
    ) -> None:
        super().__init__(content=iter(()), media_type="text/event-stream", headers=headers)
        self.hub = hub
        self.subscriber = subscriber
        self.after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ended = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as tasks:

                async def until_disconnected() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tasks.cancel_scope.cancel()

                async def until_dropped() -> None:
                    await self.subscriber.dropped.wait()
                    tasks.cancel_scope.cancel()

                tasks.start_soon(until_disconnected)
                tasks.start_soon(until_dropped)
                await self._pump(send)
                ended = True
                tasks.cancel_scope.cancel()
            if ended or self.subscriber.dropped.is_set():
                # A dropped client that still reads gets a clean end; one that is
                # stuck does not, and the server closes the connection unfinished.
                with anyio.move_on_after(1.0):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.hub.release(self.subscriber)

    async def _pump(self, send: Send) -> None:
        """Send the stream until the hub closes."""
        hub, subscriber = self.hub, self.subscriber

        async def write(chunk: bytes, events: int = 0) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if events:
                STREAM_EVENTS_SENT.inc(events)

        async def catch_up(after: int, until: int | None) -> int:
            """Send the log's events after ``after`` (through ``until``); the last position read."""
            ended = False
            while not ended:
                events, after, ended = await anyio.to_thread.run_sync(
                    hub.read_page,
                    subscriber.org_id,
                    subscriber.filter,
                    after,
                    until,
                    limiter=hub.catch_up_limiter,
                )
                if events:
                    frames = [event.frame for event in events if event.frame is not None]
                    await write(b"".join(frames), len(frames))
            return after

        await write(PRELUDE)
        if self.after is None:
            sent = hub.attach(subscriber)  # live from here on
        else:
            read = await catch_up(self.after, None)
            live_from = hub.attach(subscriber)
            if live_from > read:
                read = await catch_up(read, live_from)
            sent = max(read, live_from)
        # ``sent``: every event of the stream up to it was sent (or filtered out).
        while not hub.closed.is_set():
            frames: list[bytes] = []
            count = 0
            while subscriber.queue and count < CHUNK_EVENTS:
                event = subscriber.queue.popleft()
                if event.position <= sent:
                    continue
                if event.frame is None:
                    # Read while this organisation had no stream: from the log.
                    if frames:
                        await write(b"".join(frames), count)
                        frames, count = [], 0
                    await catch_up(sent, event.position)
                else:
                    frames.append(event.frame)
                    count += 1
                sent = event.position
            if frames:
                await write(b"".join(frames), count)
                continue
            subscriber.wake.clear()
            if subscriber.queue:
                continue
            with anyio.move_on_after(hub.heartbeat_s) as waited:
                await subscriber.wake.wait()
            if waited.cancelled_caught:
                await write(HEARTBEAT)


_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this log position (the id of the last event received); "
    "wins over `after`.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
}
_AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "Start after this log position: the events after it come first, from the "
    "log, then the live ones. To see your own write, send the position its command "
    "returned minus one. Without it (and without Last-Event-ID) the stream starts live.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
}
_STREAM_DESCRIPTION = """Server-Sent Events: every event of the caller's organisation as it lands.

Each message has `id` (the log position), `event` (the event type, e.g. `Workflow.Updated`)
and one line of JSON `data`: `position`, `type`, `aggregate_id`, `aggregate_type`,
`revision`, `version`, `timestamp`, `actor`, `correlation_id`, and `patch` (RFC 6902) for
workflow events or `details` for the others. Comment lines (`: keep-alive`) come every
`REPORUNNER_STREAM_HEARTBEAT_S` seconds of silence. A client too slow to read is
disconnected; it resumes with `Last-Event-ID`, losing and repeating nothing."""


@router.get(
    "/stream",
    summary="The organisation's events, live (Server-Sent Events)",
    description=_STREAM_DESCRIPTION,
    response_class=EventStreamResponse,
    status_code=200,
    responses={
        200: {
            "description": "An endless text/event-stream.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problems(400, 429),
    },
    openapi_extra={"parameters": [_AFTER, _LAST_EVENT_ID]},
)
async def stream_events(
    request: Request,
    types: Annotated[
        str | None,
        Query(
            description="Comma-separated event types, e.g. `Workflow.Updated,Execution.*`.",
            json_schema_extra={"maxLength": MAX_TYPES_CHARS},
        ),
    ] = None,
    aggregate_id: Annotated[UUID | None, Query(description="Only this aggregate's.")] = None,
    # Parsed by parse_position (400 naming it), documented as the integer it is.
    after: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    exact, aggregates = parse_types(types)
    last_event_id = request.headers.get("last-event-id")
    start = None
    if last_event_id is not None and last_event_id.strip():
        start = parse_position("Last-Event-ID", last_event_id.strip())
    elif after is not None:
        start = parse_position("after", after)
    hub: StreamHub = request.app.state.stream_hub
    subscriber = hub.subscribe(
        principal.org_id, StreamFilter(exact, aggregates, aggregate_id, principal.project_id)
    )
    log.info(
        "stream opened",
        after=start,
        types=types,
        aggregate_id=None if aggregate_id is None else str(aggregate_id),
    )
    return EventStreamResponse(
        hub,
        subscriber,
        start,
        # No caching, and no buffering by a proxy in front (nginx reads X-Accel-Buffering).
        {"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
