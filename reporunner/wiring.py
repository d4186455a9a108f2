"""Composition root: turn settings into connected services and the HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio.to_thread
import structlog
from fastapi import FastAPI
from sqlalchemy import text

from commands import WorkflowApplication, WorkflowCommands
from infrastructure.auth import ApiKeyStore
from infrastructure.database import PgTarget, create_engine
from infrastructure.embedded import start_embedded_postgres
from infrastructure.eventstore import eventsourcing_env
from infrastructure.settings import Settings
from infrastructure.web import RequestContextMiddleware, add_health_routes, install_error_handlers
from write_api import COMMAND_PROBLEMS, include_write_api

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


def create_workflow_application(target: PgTarget, settings: Settings) -> WorkflowApplication:
    return WorkflowApplication(env=eventsourcing_env(target, settings))


def create_app(settings: Settings, target: PgTarget) -> FastAPI:
    """The HTTP service: the write API (the read API joins it in a later issue)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Commands run in the thread pool (eventsourcing is synchronous). A few
        # threads keep PostgreSQL busy; dozens only fight over the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.command_threads
        engine = create_engine(target, pool_size=settings.db_pool_size)
        workflow_app = create_workflow_application(target, settings)
        app.state.api_keys = ApiKeyStore(engine, cache_seconds=settings.auth_cache_seconds)
        app.state.workflow_commands = WorkflowCommands(workflow_app)
        app.state.engine = engine
        try:
            yield
        finally:
            workflow_app.close()
            await engine.dispose()

    app = FastAPI(
        title="Reporunner",
        version="0.1.0",
        summary="Event-sourced workflow automation backend",
        description=(
            "Commands (POST/PATCH/DELETE) append events to the log; every response "
            "carries the log position of its last event. Authenticate with "
            "`Authorization: Bearer <api key>`. Errors are RFC 9457 problem+json."
        ),
        lifespan=lifespan,
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app, COMMAND_PROBLEMS)

    async def postgres_check() -> str:
        try:
            async with app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # readiness reports any failure, never raises
            return f"down: {type(exc).__name__}"
        return "ok"

    async def redis_check() -> str:
        if not settings.redis_url:
            return "disabled"
        return await ping_redis(settings.redis_url)

    add_health_routes(app, {"postgres": postgres_check, "redis": redis_check})
    include_write_api(app)
    return app
