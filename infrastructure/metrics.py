"""Prometheus metrics: every metric the service exports, defined here once.

Code that counts imports its metric from this module; ``domain/`` counts
nothing. Names and units follow the Prometheus conventions (``_total``
counters, ``_seconds`` durations, base units). No metric carries an
organisation label: a label per tenant would multiply every series by the
number of organisations.

Three kinds of values:

- Counters and histograms, counted where things happen (a request, an
  appended event, a finished execution). With ``serve --workers N`` each
  process writes them to files under ``PROMETHEUS_MULTIPROC_DIR`` and
  ``/metrics`` on any worker answers the sum (``prometheus_client``'s
  multiprocess mode; the supervisor makes and cleans the directory).
- Per-process gauges (connection pools, Redis breakers), sampled every
  second by ``sample_process`` (in multiprocess mode a gauge's value lives
  in its process's file, so it cannot be read at scrape time).
- Gauges that live in the database (the log's head, each follower's
  position and lag, dead letters, the execution queue): read at scrape time
  by ``DatabaseGauges``, in one round trip under a short statement timeout,
  and cached for a second or two, so a scrape costs one cheap query however
  often it comes and however many processes are scraped. These are the
  same from every process (aggregate them with ``max``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import text

log = structlog.get_logger("reporunner.metrics")

# The ``_created`` series double every counter's and histogram's; rate() needs none.
disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Durations from a millisecond to a minute: commands and reads are milliseconds,
# sync runs and follower batches seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Executions run up to REPORUNNER_EXECUTION_MAX_MS (30 s by default) and wait nodes longer.
_EXECUTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# -- HTTP ---------------------------------------------------------------------------------

HTTP_REQUEST_DURATION = Histogram(
    "reporunner_http_request_duration_seconds",
    "HTTP requests by route template, method and status code, and how long they took.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
COMMANDS = Counter(
    "reporunner_commands_total",
    "Commands (write API requests) by command and outcome.",
    ["command", "outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "reporunner_webhook_deliveries_total",
    "Webhook calls (/hooks/...) by outcome.",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "reporunner_rate_limited_requests_total",
    "Requests refused with 429 by an organisation's rate limit, by API (read or write).",
    ["api"],
)

# -- the log and its followers ------------------------------------------------------------

EVENTS_APPENDED = Counter(
    "reporunner_events_appended_total", "Events this service appended to the log."
)
FOLLOWER_BATCH_DURATION = Histogram(
    "reporunner_follower_batch_duration_seconds",
    "How long a follower of the log (a projection, the relay, ...) took to apply one batch.",
    ["follower"],
    buckets=_LATENCY_BUCKETS,
)
FOLLOWER_EVENTS = Counter(
    "reporunner_follower_events_total",
    "Log rows a follower of the log applied (or went past), by follower.",
    ["follower"],
)
FOLLOWER_ACTIVE = Gauge(
    "reporunner_follower_active",
    "1 while this process is the active instance of a single-active role (a follower "
    "of the log, or the scheduler), 0 while it stands by.",
    ["follower"],
    multiprocess_mode="livemax",
)

# -- the live event stream (GET /v1/stream) ----------------------------------------------

STREAMS_OPEN = Gauge(
    "reporunner_streams_open",
    "Event streams (GET /v1/stream) this process serves now.",
    multiprocess_mode="livesum",
)
STREAMS_DROPPED = Counter(
    "reporunner_streams_dropped_total",
    "Event streams closed because their client did not keep up (its queue was full).",
)
STREAM_EVENTS_SENT = Counter(
    "reporunner_stream_events_sent_total", "Events sent to event-stream clients."
)
RELAY_REDIS_DATA_LOSSES = Counter(
    "reporunner_relay_redis_data_losses_total",
    "Times the relay found Redis behind what it had published (data lost: a restart "
    "without persistence, a flush) and published the missing events again.",
)

# -- executions ---------------------------------------------------------------------------

EXECUTIONS = Counter(
    "reporunner_executions_total",
    "Executions that ended, by status (succeeded, failed, canceled, crashed) and trigger.",
    ["status", "trigger"],
)
EXECUTION_DURATION = Histogram(
    "reporunner_execution_duration_seconds",
    "From an execution's start (its queueing if it never started) to its end, by status.",
    ["status"],
    buckets=_EXECUTION_BUCKETS,
)

# -- scheduler (the role records its ticks here) ------------------------------------------

SCHEDULER_TICKS = Counter(
    "reporunner_scheduler_ticks_total",
    "Schedule ticks by outcome: fired on time, skipped (missed, not caught up), "
    "caught_up (fired late, after downtime).",
    ["outcome"],
)
SCHEDULER_LAST_TICK = Gauge(
    "reporunner_scheduler_last_tick_timestamp_seconds",
    "When the scheduler last looked for due schedules (Unix time); stalls when it stops.",
    multiprocess_mode="max",
)
SCHEDULER_OUTCOMES = ("fired", "skipped", "caught_up")

# -- retention (the scheduler's leader runs it: commands/retention.py) ----------------------

RETENTION_EXECUTIONS_PRUNED = Counter(
    "reporunner_retention_executions_pruned_total",
    "Executions retention expired (their documents pruned from the views).",
)
RETENTION_KEYS_DESTROYED = Counter(
    "reporunner_retention_day_keys_destroyed_total",
    "Day keys retention destroyed (the payloads sealed under them read as erased).",
)

# -- per process: pools and breakers, sampled ---------------------------------------------

DB_POOL_IN_USE = Gauge(
    "reporunner_db_pool_connections_in_use",
    "Database connections checked out of this service's pools, by pool.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "reporunner_db_pool_waiting_requests",
    "Requests waiting for a connection from the pool (the event store's pool; "
    "SQLAlchemy's does not say).",
    ["pool"],
    multiprocess_mode="livesum",
)
REDIS_BREAKER_OPEN = Gauge(
    "reporunner_redis_breaker_open",
    "1 while a Redis circuit breaker skips Redis (cache or rate_limit), else 0.",
    ["use"],
    multiprocess_mode="livemax",
)

# Series that must exist before anything happened (alerts and dashboards need a zero).
for _outcome in SCHEDULER_OUTCOMES:
    SCHEDULER_TICKS.labels(_outcome)
for _api in ("read", "write"):
    RATE_LIMITED.labels(_api)


# -- outcome labels -----------------------------------------------------------------------

_COMMAND_OUTCOMES = {
    400: "bad_request",
    401: "denied",
    403: "denied",
    404: "not_found",
    409: "conflict",
    410: "gone",
    412: "conflict",
    413: "too_large",
    422: "invalid",
    428: "precondition_required",
    429: "rate_limited",
}


def command_outcome(status: int) -> str:
    """A bounded label for a command's answer: ``ok``, ``conflict`` (409), ``gone`` (410), ..."""
    if status < 400:
        return "ok"
    if status >= 500:
        return "error"
    return _COMMAND_OUTCOMES.get(status, "rejected")


def webhook_outcome(status: int) -> str:
    if status < 400:
        return "accepted"
    if status in (401, 403):
        return "refused"
    if status == 404:
        return "not_found"
    if status >= 500:
        return "error"
    return "rate_limited" if status == 429 else "invalid"


def observe_execution_end(execution: Any) -> None:
    """Count an execution that just ended (its end committed)."""
    EXECUTIONS.labels(execution.status, execution.trigger).inc()
    began = execution.started_at or execution.queued_at
    ended = execution.finished_at
    if began is not None and ended is not None:
        EXECUTION_DURATION.labels(execution.status).observe(
            max(0.0, (ended - began).total_seconds())
        )


# -- per-process sampling -----------------------------------------------------------------


@dataclass
class ProcessSampler:
    """Reads this process's pools and breakers into their gauges (``sample`` each second)."""

    engine: Any = None  # SQLAlchemy AsyncEngine (the read API's queries)
    datastore: Any = None  # eventsourcing's PostgresDatastore (commands, the queue)
    breakers: dict[str, Any] = field(default_factory=dict)

    def sample(self) -> None:
        if self.engine is not None:
            DB_POOL_IN_USE.labels("queries").set(self.engine.pool.checkedout())
        pool = getattr(self.datastore, "pool", None)
        if pool is not None:
            stats = pool.get_stats()
            size = stats.get("pool_size", 0)
            available = stats.get("pool_available", 0)
            DB_POOL_IN_USE.labels("events").set(max(0, size - available))
            DB_POOL_WAITING.labels("events").set(stats.get("requests_waiting", 0))
        for use, breaker in self.breakers.items():
            REDIS_BREAKER_OPEN.labels(use).set(1 if breaker.is_open else 0)


# -- the database's gauges, at scrape time ------------------------------------------------


@dataclass(frozen=True)
class FollowerRow:
    name: str
    position: int
    lag_events: int
    lag_seconds: float


@dataclass(frozen=True)
class DatabaseSnapshot:
    head: int
    followers: dict[str, FollowerRow]
    dead_letters: dict[str, int]
    queue: dict[str, int]


QUEUE_STATES = ("queued", "running", "lease_expired")

# The log's table by name, not from infrastructure.eventstore (which counts into this
# module). max(notification_id) reads one entry of its unique index.
_SNAPSHOT_SQL = text(
    """
    SELECT 'head' AS kind, '' AS name,
           (SELECT coalesce(max(notification_id), 0) FROM reporunner_events) AS n, 0.0 AS s
    UNION ALL
    SELECT 'follower', name, position, extract(epoch FROM now() - updated_at)::float8
    FROM projection_tracking
    UNION ALL
    SELECT 'dead', follower, count(*), 0.0 FROM dead_letters
    WHERE resolved_at IS NULL GROUP BY follower
    UNION ALL
    SELECT 'queue', CASE WHEN lease_expires_at IS NULL THEN 'queued'
                         WHEN lease_expires_at < clock_timestamp() THEN 'lease_expired'
                         ELSE 'running' END, count(*), 0.0
    FROM execution_queue GROUP BY 2
    """
)


async def read_snapshot(engine: Any, timeout_ms: int) -> DatabaseSnapshot:
    """One round trip: the log's head, the trackers, dead letters and the queue."""
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
        rows = (await conn.execute(_SNAPSHOT_SQL)).all()
    head = 0
    trackers: list[tuple[str, int, float]] = []
    dead: dict[str, int] = {}
    queue = dict.fromkeys(QUEUE_STATES, 0)
    for kind, name, n, seconds in rows:
        if kind == "head":
            head = int(n)
        elif kind == "follower":
            trackers.append((str(name), int(n), float(seconds or 0.0)))
        elif kind == "dead":
            dead[str(name)] = int(n)
        else:
            queue[str(name)] = int(n)
    followers = {}
    for name, position, since in trackers:
        behind = max(0, head - position)
        # The tracking row's age says how long it has not moved; only behind is that lag.
        followers[name] = FollowerRow(name, position, behind, since if behind else 0.0)
    return DatabaseSnapshot(head, followers, dead, queue)


class DatabaseGauges(Collector):
    """The gauges that live in the database, read at most every ``cache_s`` (``refresh``).

    ``refresh`` runs in the scrape's request (async); ``collect`` only reads
    the cached snapshot, so it never blocks the registry.
    """

    def __init__(
        self,
        engine: Any,
        projections: Sequence[str],
        relay: str,
        *,
        timeout_ms: int = 1000,
        cache_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.projections = tuple(projections)
        self.relay = relay
        self.timeout_ms = timeout_ms
        self.cache_s = cache_s
        self.snapshot: DatabaseSnapshot | None = None
        self._read_at = float("-inf")
        self._up = False

    async def refresh(self) -> DatabaseSnapshot | None:
        now = time.monotonic()
        if now - self._read_at < self.cache_s:
            return self.snapshot if self._up else None
        self._read_at = now
        try:
            self.snapshot = await read_snapshot(self.engine, self.timeout_ms)
            self._up = True
        except Exception as exc:  # a scrape reports the database down, never fails
            log.warning("metrics could not read the database", error=f"{type(exc).__name__}")
            self._up = False
        return self.snapshot if self._up else None

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "reporunner_metrics_database_up",
            "1 if the last scrape read the database's gauges, else 0 (they are then absent).",
            value=1 if self._up else 0,
        )
        snapshot = self.snapshot
        if not self._up or snapshot is None:
            return
        yield GaugeMetricFamily(
            "reporunner_log_head_position",
            "The log's last position (the newest event's notification id).",
            value=snapshot.head,
        )
        position = GaugeMetricFamily(
            "reporunner_projection_position",
            "The last log position a projection (or other follower of the log) applied.",
            labels=["projection"],
        )
        lag_events = GaugeMetricFamily(
            "reporunner_projection_lag_events",
            "Events a projection is behind the log's head.",
            labels=["projection"],
        )
        lag_seconds = GaugeMetricFamily(
            "reporunner_projection_lag_seconds",
            "While a projection is behind: seconds since it last moved (0 when caught up).",
            labels=["projection"],
        )
        for name in self.projections:
            row = snapshot.followers.get(name, FollowerRow(name, 0, snapshot.head, 0.0))
            position.add_metric([name], row.position)
            lag_events.add_metric([name], row.lag_events)
            lag_seconds.add_metric([name], row.lag_seconds)
        yield from (position, lag_events, lag_seconds)
        relay = snapshot.followers.get(self.relay, FollowerRow(self.relay, 0, snapshot.head, 0.0))
        yield GaugeMetricFamily(
            "reporunner_relay_position",
            "The last log position the relay published to Redis.",
            value=relay.position,
        )
        yield GaugeMetricFamily(
            "reporunner_relay_lag_events",
            "Events the relay is behind the log's head.",
            value=relay.lag_events,
        )
        dead = GaugeMetricFamily(
            "reporunner_dead_letters",
            "Unresolved dead letters, by follower of the log.",
            labels=["follower"],
        )
        for name in (*self.projections, self.relay):
            dead.add_metric([name], snapshot.dead_letters.get(name, 0))
        yield dead
        depth = GaugeMetricFamily(
            "reporunner_execution_queue_depth",
            "Executions in the queue by state: queued (unclaimed), running (leased), "
            "lease_expired (its worker stopped renewing; the next claim takes it).",
            labels=["state"],
        )
        for state in QUEUE_STATES:
            depth.add_metric([state], snapshot.queue.get(state, 0))
        yield depth


# -- exposition ---------------------------------------------------------------------------


class _Combined(Collector):
    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(*extra: Collector) -> bytes:
    """The text format of every metric: this process's (or all workers' summed) and ``extra``."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        base: Any = registry
    else:
        base = REGISTRY
    return generate_latest(_Combined([base, *extra]))  # type: ignore[arg-type]


def mark_process_dead(pid: int) -> None:
    """A worker process ended: drop its live gauges (its counters keep counting in the sum)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
