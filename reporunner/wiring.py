"""Composition root: turn settings into connected services and the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio.to_thread
import structlog
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import text

from commands import WorkflowApplication, WorkflowCommands
from commands.auto_retries import NAME as AUTO_RETRIES_FOLLOWER
from commands.auto_retries import AutoRetrier
from commands.credentials import CredentialCommands
from commands.erasure import DataSubjectErasure
from commands.executions import (
    ExecutionCommands,
    ExecutionRunner,
    RunnerSettings,
    default_worker_id,
)
from commands.payloads import ExecutionPayloads
from commands.pins import PinCommands
from commands.projects import ProjectCommands
from commands.retention import PeriodicRetention, Retention
from commands.tenancy import ApiKeyCommands, OrganisationCommands
from commands.webhooks import HookDeliveries
from commands.workflow_runs import NAME as RUNS_FOLLOWER
from commands.workflow_runs import WorkflowRunsRecorder
from domain.engine import EngineLimits
from infrastructure import tracing
from infrastructure.auth import ApiKeyStore
from infrastructure.cache import CacheConfig, ReadCache, connect_redis
from infrastructure.database import PgTarget, create_engine
from infrastructure.embedded import start_embedded_postgres
from infrastructure.eventstore import eventsourcing_env
from infrastructure.http_port import AllowListedHttp
from infrastructure.keyring import AsyncKeyring, ConnectionSource, Keyring, load_master_key
from infrastructure.metrics import DatabaseGauges, DatabaseSnapshot, ProcessSampler
from infrastructure.openapi import install_openapi
from infrastructure.org_policy import OrgPolicies
from infrastructure.org_slots import OrgSlots
from infrastructure.queue import ExecutionQueue
from infrastructure.ratelimit import RateLimitConfig, RateLimiter
from infrastructure.settings import ROLES, Settings
from infrastructure.web import (
    DEGRADED,
    FAILING,
    ReadyCheck,
    RequestContextMiddleware,
    add_health_routes,
    add_metrics_route,
    install_error_handlers,
)
from projections.audit_chain import NAME as AUDIT_FOLLOWER
from projections.audit_chain import start_audit_follower
from projections.executions import ExecutionsProjection
from projections.follower import RetryPolicy
from projections.follower import start_in_thread as start_follower
from projections.relay import RELAY_NAME, BusConfig, start_relay_in_thread
from projections.runner import Projection, Projector, start_in_thread
from projections.workflows import WorkflowsProjection
from read_api import QUERY_PROBLEMS
from read_api import router as read_router
from read_api.aggregate import router as aggregate_router
from read_api.audit import router as audit_router
from read_api.console import install_console
from read_api.credentials import router as credentials_router
from read_api.executions import router as executions_router
from read_api.history import router as history_router
from read_api.projects import router as projects_read_router
from read_api.stream import StreamHub
from read_api.stream import router as stream_router
from read_api.templates import router as templates_router
from read_api.tenancy import router as tenancy_router
from read_api.transfer import router as transfer_router
from reporunner.scheduler import Scheduler, start_scheduler
from reporunner.worker import Worker
from write_api import COMMAND_PROBLEMS, include_write_api
from write_api.bulkhead import SyncRunBulkhead

log = structlog.get_logger("reporunner")


@dataclass(frozen=True)
class Database:
    target: PgTarget
    embedded: bool


def resolve_database(settings: Settings) -> Database:
    """``DATABASE_URL`` if given, else the embedded PostgreSQL under ``data_dir``."""
    if settings.database_url:
        return Database(PgTarget.from_url(settings.database_url), embedded=False)
    return Database(start_embedded_postgres(settings.data_dir), embedded=True)


async def ping_redis(url: str) -> str:
    """``ok`` or why not; Redis is downstream of the log, so never fatal."""
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # any failure means "not usable now"
        return f"down: {type(exc).__name__}"
    finally:
        await client.aclose()
    return "ok"


def read_replica(settings: Settings, roles: Sequence[str]) -> PgTarget | None:
    """Where the read API queries its views, if not on the primary (a process with it)."""
    if "read-api" not in roles or not settings.read_database_url:
        return None
    return PgTarget.from_url(settings.read_database_url, variable="REPORUNNER_READ_DATABASE_URL")


def create_workflow_application(target: PgTarget, settings: Settings) -> WorkflowApplication:
    return WorkflowApplication(env=eventsourcing_env(target, settings))


@dataclass
class ExecutionServices:
    """What runs executions in this process: the queue, the runner, the commands."""

    queue: ExecutionQueue
    runner: ExecutionRunner
    commands: ExecutionCommands
    http: AllowListedHttp

    def close(self) -> None:
        self.runner.close()
        self.http.close()


def keyring_for(settings: Settings, connect: ConnectionSource) -> Keyring | None:
    """The process's one keyring (None: no master key, external database; the
    start checks refuse that before any service is built: reporunner/keys.py)."""
    master = load_master_key(settings)
    return None if master is None else Keyring(master, connect)


def create_execution_services(
    workflow_app: WorkflowApplication,
    workflows: WorkflowCommands,
    target: PgTarget,
    settings: Settings,
    keyring: Keyring | None = None,
) -> ExecutionServices:
    """The execution runner, queue and commands; ``keyring`` None: the settings' own
    (so every runner of a deployment seals and opens payloads alike)."""
    if keyring is None:
        keyring = keyring_for(settings, workflow_app.event_store.datastore.get_connection)
    credentials = None if keyring is None else CredentialCommands(workflow_app, keyring)
    queue = ExecutionQueue(workflow_app.event_store.datastore, target)
    http = AllowListedHttp(settings.allowed_http_hosts(), settings.http_max_response_bytes)
    runner = ExecutionRunner(
        workflow_app,
        queue,
        RunnerSettings(
            lease_s=settings.execution_lease_s,
            output_max_bytes=settings.execution_output_max_bytes,
            limits=EngineLimits(
                max_wait_ms=settings.wait_max_ms,
                allowed_http_hosts=settings.allowed_http_hosts(),
                max_execution_ms=settings.execution_max_ms,
                max_execution_bytes=settings.execution_max_bytes,
            ),
        ),
        http,
        # Without a keyring (no master key configured) payloads stay in clear.
        ExecutionPayloads(keyring, seal=settings.seal_payloads),
        credentials,
    )
    commands = ExecutionCommands(workflow_app, workflows, runner, default_worker_id("api"))
    return ExecutionServices(queue=queue, runner=runner, commands=commands, http=http)


def create_worker(
    services: ExecutionServices, settings: Settings, concurrency: int | None = None
) -> Worker:
    return Worker(
        runner=services.runner,
        queue=services.queue,
        concurrency=concurrency or settings.worker_concurrency,
        lease_s=settings.execution_lease_s,
    )


def start_workers(
    services: ExecutionServices,
    settings: Settings,
    stop: threading.Event,
    concurrency: int | None = None,
) -> list[threading.Thread]:
    return create_worker(services, settings, concurrency).start(stop)


# Every follower of the log with a tracking row, as the metrics name them.
FOLLOWERS = ("workflows", "executions", RUNS_FOLLOWER, AUTO_RETRIES_FOLLOWER, AUDIT_FOLLOWER)


def database_gauges(engine: Any) -> DatabaseGauges:
    return DatabaseGauges(engine, FOLLOWERS, RELAY_NAME)


async def sample_process_metrics(sampler: ProcessSampler, stop: asyncio.Event) -> None:
    """Refresh this process's pool and breaker gauges every second until ``stop``."""
    while not stop.is_set():
        try:
            sampler.sample()
        except Exception as exc:  # a gauge never takes the service down
            log.warning("metrics sampling failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def background_problem(roles: Sequence[str], problem: str) -> str:
    """How a background role's trouble shows in ``/readyz``: ``failing`` (503) in a
    process of background roles only, ``degraded`` in one that also serves an API.

    A readiness probe takes a failing pod out of the load balancer; an API pod must
    not stop answering because a thread beside it (a projector, the relay) is stuck.
    """
    serves_api = bool({"write-api", "read-api"} & set(roles))
    return f"{DEGRADED if serves_api else FAILING}: {problem}"


def projection_lag_problem(snapshot: DatabaseSnapshot, max_lag_s: float) -> str | None:
    """Why the projections are not keeping up, if one stalls past ``max_lag_s``."""
    if max_lag_s <= 0:
        return None
    stalled = [
        f"{row.name} has not moved for {row.lag_seconds:.0f} s ({row.lag_events} events behind)"
        for name in FOLLOWERS
        if (row := snapshot.followers.get(name)) is not None and row.lag_seconds > max_lag_s
    ]
    return "; ".join(stalled) or None


def create_app(settings: Settings, target: PgTarget, roles: Sequence[str] = ROLES) -> FastAPI:
    """The HTTP service with the given roles (all of them by default, on one port)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {ROLES}")
    if list(roles) == ["relay"] and not settings.redis_url:
        raise ValueError("the relay role needs REDIS_URL")
    # The pools are sized for the roles this app runs (Settings.pool_sizes).
    settings = settings.model_copy(update={"roles": ",".join(roles)})
    replica = read_replica(settings, roles)
    if replica is not None:
        log.info("read replica", url=replica.display())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Commands run in the thread pool (eventsourcing is synchronous). A few
        # threads keep PostgreSQL busy; dozens only fight over the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.command_threads
        app.state.sync_runs = SyncRunBulkhead(settings.sync_run_threads, settings.sync_runs_per_org)
        pools = settings.pool_sizes()
        engine = create_engine(
            target,
            pool_size=pools.queries,
            max_overflow=pools.queries_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
            statement_timeout_ms=settings.query_timeout_ms,
        )
        app.state.engine = engine
        # The read API's view queries (and X-Min-Position's waits) go to the
        # replica when there is one; everything else stays on the primary.
        read_engine = (
            create_engine(
                replica,
                pool_size=pools.queries,
                max_overflow=pools.queries_overflow,
                pool_timeout_s=settings.db_pool_timeout_s,
                statement_timeout_ms=settings.query_timeout_ms,
            )
            if replica is not None
            else engine
        )
        app.state.read_engine = read_engine
        app.state.db_gauges = database_gauges(engine)
        app.state.pg_target = target
        app.state.settings = settings
        app.state.pipeline_slots = OrgSlots(
            settings.pipelines_per_org, "pipelines", "REPORUNNER_PIPELINES_PER_ORG"
        )
        app.state.api_keys = ApiKeyStore(engine, cache_seconds=settings.auth_cache_seconds)
        app.state.org_policies = OrgPolicies(engine, settings.org_policy_cache_s)
        redis_client = (
            connect_redis(
                settings.redis_url,
                timeout_s=settings.redis_timeout_ms / 1000,
                connect_timeout_s=settings.redis_connect_timeout_ms / 1000,
            )
            if settings.redis_url
            else None
        )
        app.state.read_cache = (
            ReadCache(redis_client, cache_config(settings))
            if redis_client is not None and settings.cache_ttl_s > 0
            else None
        )
        app.state.rate_limiter = (
            RateLimiter(redis_client, rate_limit_config(settings))
            if redis_client is not None
            else None
        )
        workflow_app = create_workflow_application(target, settings)
        keyring = keyring_for(settings, workflow_app.event_store.datastore.get_connection)
        app.state.workflow_commands = WorkflowCommands(
            workflow_app, keyring, max_workflows=settings.max_workflows_per_org
        )
        app.state.credential_commands = (
            None if keyring is None else CredentialCommands(workflow_app, keyring)
        )
        app.state.project_commands = ProjectCommands(workflow_app)
        app.state.organisation_commands = OrganisationCommands(workflow_app)
        app.state.key_commands = ApiKeyCommands(workflow_app)
        executions = create_execution_services(
            workflow_app, app.state.workflow_commands, target, settings, keyring
        )
        app.state.execution_commands = executions.commands
        # Payloads are opened with keys read on the primary: a replica could
        # still show a key an erasure just destroyed.
        app.state.payload_keys = None if keyring is None else AsyncKeyring(keyring.master, engine)
        app.state.data_subject_erasure = DataSubjectErasure(
            workflow_app,
            executions.runner.payloads,
            target,
            [] if app.state.payload_keys is None else [app.state.payload_keys.forget],
        )
        app.state.pin_commands = PinCommands(executions.commands)
        app.state.hook_deliveries = HookDeliveries(app.state.workflow_commands, executions.commands)
        stop = threading.Event()
        projector_threads = []
        app.state.worker = None
        if "worker" in roles:
            app.state.worker = create_worker(executions, settings)
            projector_threads += app.state.worker.start(stop)
        if "projections" in roles:
            # Not a view, but the same kind of log follower: one per deployment suffices.
            projector_threads.append(
                start_follower(
                    WorkflowRunsRecorder(workflow_app, target=target),
                    stop,
                    batch_size=500,
                    poll_s=min(settings.projection_poll_s, 0.2),
                    policy=follower_policy(settings),
                )
            )
            # Records a workflow's automatic retries (settings.retry); workers run them.
            projector_threads.append(
                start_follower(
                    AutoRetrier(
                        executions.commands,
                        target=target,
                        executions_per_day=settings.executions_per_org_per_day,
                    ),
                    stop,
                    batch_size=500,
                    poll_s=min(settings.projection_poll_s, 0.2),
                    policy=follower_policy(settings),
                )
            )
            projector_threads.append(start_audit_follower(target, settings, stop))
            for projection in all_projections():
                projector = Projector(
                    workflow_app,
                    target,
                    projection,
                    batch_size=settings.projection_batch_size,
                    poll_interval=settings.projection_poll_s,
                    policy=follower_policy(settings),
                )
                projector_threads.append(start_in_thread(projector, stop))
        app.state.relay = None
        if "relay" in roles and settings.redis_url:
            app.state.relay, relay_thread = start_relay_in_thread(
                target,
                workflow_app,
                settings.redis_url,
                bus_config(settings),
                stop,
                poll_s=settings.projection_poll_s,
                retry_attempts=settings.follower_retry_attempts,
            )
            projector_threads.append(relay_thread)
        elif "relay" in roles:
            log.info("event relay off: REDIS_URL is not set")
        # The live stream's one tailer of the log in this process.
        app.state.stream_hub = None
        if "read-api" in roles:
            app.state.stream_hub = StreamHub(workflow_app, target, settings)
            app.state.stream_hub.start()
        app.state.scheduler = None
        if "scheduler" in roles:
            app.state.scheduler = create_scheduler(workflow_app, target, settings)
            app.state.scheduler.retention = create_periodic_retention(workflow_app, settings)
            projector_threads.append(start_scheduler(app.state.scheduler, stop))
        breakers = {
            use: holder.breaker
            for use, holder in (
                ("cache", app.state.read_cache),
                ("rate_limit", app.state.rate_limiter),
            )
            if holder is not None
        }
        sampler = ProcessSampler(engine, workflow_app.event_store.datastore, breakers)
        sampling_stop = asyncio.Event()
        sampling = asyncio.create_task(sample_process_metrics(sampler, sampling_stop))
        log.info("service roles", roles=list(roles))
        try:
            yield
        finally:
            sampling_stop.set()
            await sampling
            stop.set()
            if app.state.stream_hub is not None:
                app.state.stream_hub.close()
                app.state.stream_hub.join(timeout=10)
            for thread in projector_threads:
                thread.join(timeout=10)
            executions.close()
            workflow_app.close()
            await engine.dispose()
            if read_engine is not engine:
                await read_engine.dispose()
            if redis_client is not None:
                await redis_client.aclose()

    # The docs pages' scripts come from fastapi-offline's package, not a CDN.
    app = FastAPIOffline(
        title="Reporunner",
        version="0.1.0",
        summary="Event-sourced workflow automation backend",
        description=(
            "Commands (POST/PATCH/DELETE) append events to the log; every response "
            "carries the log position of its last event. Queries (GET) read document "
            "views that projectors keep from the log; send `X-Min-Position` to read "
            "your own writes. Authenticate with `Authorization: Bearer <api key>`. "
            "Errors are RFC 9457 problem+json."
        ),
        lifespan=lifespan,
        # No validator badge: it would fetch an image from outside.
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        # Operation ids are the route functions' names: get_workflow, not FastAPI's
        # get_workflow_v1_workflows__workflow_id__get.
        generate_unique_id_function=lambda route: route.name,
    )
    install_openapi(app)
    # It also adds the rate-limit headers (one layer fewer than a middleware of their own).
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app, {**COMMAND_PROBLEMS, **QUERY_PROBLEMS})
    tracing.instrument_app(app)  # outermost: the access log line has the request's span

    async def postgres_check() -> str:
        try:
            async with app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # readiness reports any failure, never raises
            return f"down: {type(exc).__name__}"
        return "ok"

    async def replica_check() -> str:
        # The read API cannot answer without its replica: out of the load balancer.
        try:
            async with app.state.read_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # readiness reports any failure, never raises
            return f"{FAILING}: down: {type(exc).__name__}"
        return "ok"

    async def redis_check() -> str:
        if not settings.redis_url:
            return "disabled"
        return await ping_redis(settings.redis_url)

    async def relay_check() -> str:
        relay = getattr(app.state, "relay", None)
        if relay is None:
            return "disabled"
        status = relay.status()
        # A relay that is not publishing (a standby, or between attempts) learns of
        # Redis only when it publishes again: look for it, or a standby that lost
        # Redis once would stay "redis down" after Redis is back.
        not_publishing = not status.active and not status.redis_ok and settings.redis_url
        if not_publishing and await ping_redis(str(settings.redis_url)) == "ok":
            relay.redis_reachable()
        summary = str(relay.status().summary())
        healthy = summary == "standby" or summary.startswith("ok")
        return summary if healthy else background_problem(roles, summary)

    async def projections_check() -> str:
        snapshot = await app.state.db_gauges.refresh()
        if snapshot is None:
            return "unknown: the database did not answer"
        problem = projection_lag_problem(snapshot, settings.ready_max_projection_lag_s)
        return "ok" if problem is None else background_problem(roles, problem)

    async def worker_check() -> str:
        worker: Worker | None = getattr(app.state, "worker", None)
        problem = worker.claim_problem() if worker is not None else None
        return "ok" if problem is None else background_problem(roles, problem)

    async def dead_letters_check() -> str:
        try:
            async with app.state.engine.connect() as conn:
                counts = await open_counts(conn)
        except Exception as exc:  # readiness reports any failure, never raises
            return f"unknown: {type(exc).__name__}"
        if not counts:
            return "none"
        listed = ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
        return f"{DEGRADED}: {sum(counts.values())} unresolved ({listed})"

    async def scheduler_check() -> str:
        scheduler = getattr(app.state, "scheduler", None)
        if scheduler is None:
            return "disabled"
        problem = scheduler.problem()
        return scheduler.status() if problem is None else background_problem(roles, problem)

    checks: dict[str, ReadyCheck] = {
        "postgres": postgres_check,
        "redis": redis_check,
        "dead_letters": dead_letters_check,
    }
    if replica is not None:
        checks["read_replica"] = replica_check
    if "projections" in roles:
        checks["projections"] = projections_check
    if "worker" in roles:
        checks["worker"] = worker_check
    if "relay" in roles:
        checks["relay"] = relay_check
    if "scheduler" in roles:
        checks["scheduler"] = scheduler_check
    add_health_routes(app, checks, fail_when_degraded=settings.dead_letters_fail_readyz)
    app.state.ready_checks = checks  # the console's System page shows them too
    add_metrics_route(app)
    if "write-api" in roles:
        include_write_api(app)
    if "read-api" in roles:
        app.include_router(read_router)
        app.include_router(aggregate_router)
        app.include_router(history_router)
        app.include_router(audit_router)
        app.include_router(executions_router)
        app.include_router(credentials_router)
        app.include_router(stream_router)
        app.include_router(templates_router)
        app.include_router(transfer_router)
        app.include_router(projects_read_router)
        app.include_router(tenancy_router)
        install_console(app)
    return app


def create_scheduler(
    workflow_app: WorkflowApplication, target: PgTarget, settings: Settings
) -> Scheduler:
    return Scheduler(
        workflow_app,
        target,
        tick_s=settings.scheduler_tick_s,
        grace=timedelta(seconds=settings.scheduler_grace_s),
        max_fires=settings.scheduler_max_fires_per_tick,
        executions_per_day=settings.executions_per_org_per_day,
    )


def create_retention(workflow_app: WorkflowApplication, settings: Settings) -> Retention:
    return Retention(
        workflow_app,
        keyring_for(settings, workflow_app.event_store.datastore.get_connection),
        global_days=settings.execution_retention_days,
        batch_size=settings.retention_batch_size,
    )


def create_periodic_retention(
    workflow_app: WorkflowApplication, settings: Settings
) -> PeriodicRetention:
    return PeriodicRetention(
        create_retention(workflow_app, settings),
        timedelta(seconds=settings.retention_interval_s),
    )


def bus_config(settings: Settings) -> BusConfig:
    return BusConfig(
        prefix=settings.bus_prefix,
        stream_maxlen=settings.bus_stream_maxlen,
        relay_batch=settings.bus_relay_batch,
    )


def follower_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(attempts=settings.follower_retry_attempts)


def cache_config(settings: Settings) -> CacheConfig:
    return CacheConfig(
        ttl_s=settings.cache_ttl_s,
        max_entry_bytes=settings.cache_max_entry_bytes,
        key_prefix=settings.redis_key_prefix,
        breaker_cooldown_s=settings.redis_breaker_cooldown_s,
    )


def rate_limit_config(settings: Settings) -> RateLimitConfig:
    return RateLimitConfig(
        write_per_s=settings.rate_limit_write_per_s,
        write_burst=settings.rate_limit_write_burst,
        read_per_s=settings.rate_limit_read_per_s,
        read_burst=settings.rate_limit_read_burst,
        fail_open=settings.rate_limit_fail_open,
        key_prefix=settings.redis_key_prefix,
        breaker_cooldown_s=settings.redis_breaker_cooldown_s,
    )


async def open_counts(conn: Any) -> dict[str, int]:
    """Unresolved dead letters per follower (only those that have some)."""
    rows = (
        await conn.execute(
            text(
                "SELECT follower, count(*) FROM dead_letters WHERE resolved_at IS NULL "
                "GROUP BY follower"
            )
        )
    ).all()
    return {str(name): int(count) for name, count in rows}


def all_projections() -> list[Projection]:
    return [WorkflowsProjection(), ExecutionsProjection()]
