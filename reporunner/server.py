"""``reporunner serve``: migrate, bootstrap a first key, run uvicorn."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

import migrations
from infrastructure.auth import ApiKeyStore
from infrastructure.database import PgTarget, create_engine
from infrastructure.logs import configure_logging
from infrastructure.settings import Settings, get_settings
from reporunner.wiring import create_app, ping_redis, resolve_database

log = structlog.get_logger("reporunner")


def run_server(settings: Settings, *, host: str, port: int, migrate: bool, workers: int) -> None:
    database = resolve_database(settings)
    log.info("database", url=database.target.display(), embedded=database.embedded)
    if migrate:
        migrations.upgrade(database.target)
        log.info("migrations applied", revision=migrations.current_revision(database.target))
    asyncio.run(_announce(settings, database.target, host, port))
    log.info(
        "serving",
        url=f"http://{host}:{port}",
        docs=f"http://{host}:{port}/docs",
        workers=workers,
        roles=settings.role_list(),
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "loop": "uvloop",
        "http": "httptools",
        "server_header": False,
    }
    if workers == 1:
        app = create_app(settings, database.target, settings.role_list())
        uvicorn.Server(uvicorn.Config(app, **options)).run()
    else:
        # Each worker process builds its own app; on the embedded database
        # they join the same server (pgserver counts its users).
        uvicorn.run("reporunner.server:create_worker_app", factory=True, workers=workers, **options)


def create_worker_app() -> FastAPI:
    """The app of one ``--workers`` process, built from the environment."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, resolve_database(settings).target, settings.role_list())


async def _announce(settings: Settings, target: PgTarget, host: str, port: int) -> None:
    """Say how Redis stands, and hand a new user a first key."""
    if settings.redis_url is None:
        log.warning(
            "REDIS_URL not set: Redis-backed features (event bus, cache, rate limits) are off"
        )
    else:
        state = await ping_redis(settings.redis_url)
        if state != "ok":
            log.warning(
                "redis unreachable: Redis-backed features degrade until it returns", state=state
            )
    engine = create_engine(target, pool_size=1)
    try:
        created = await ApiKeyStore(engine).create_first_owner_key()
    finally:
        await engine.dispose()
    if created is None:
        return
    info, plaintext = created
    base = f"http://{host}:{port}"
    print(
        "\n"
        f"  First start: created an owner API key for organisation '{info.org_id}'.\n"
        "  It is shown only this once; keep it:\n\n"
        f"    {plaintext}\n\n"
        "  Try it:\n\n"
        f"    curl -s -X POST {base}/v1/workflows \\\n"
        f"      -H 'Authorization: Bearer {plaintext}' -H 'Content-Type: application/json' \\\n"
        '      -d \'{"name": "hello", "nodes": '
        '[{"id": "start", "type": "manual_trigger", "parameters": {}}]}\'\n',
        flush=True,
    )
