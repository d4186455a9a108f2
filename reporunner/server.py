"""``reporunner serve``: migrate, bootstrap a first key, run uvicorn."""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TextIO

import psycopg
import structlog
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

import migrations
from commands.tenancy import ApiKeyCommands
from infrastructure import metrics
from infrastructure.auth import ApiKeyInfo
from infrastructure.database import PgTarget, starting_or_refused, wait_for_database
from infrastructure.logs import configure_logging
from infrastructure.problems import Problem
from infrastructure.settings import Settings, get_settings
from infrastructure.tracing import configure_tracing
from reporunner import serve_plan
from reporunner.keys import start_keys
from reporunner.wiring import (
    create_app,
    create_workflow_application,
    ping_redis,
    resolve_database,
)

log = structlog.get_logger("reporunner")


def _prepare_database(settings: Settings, target: PgTarget, migrate: bool) -> None:
    """Migrate (or check the schema) and check the master key, once PostgreSQL answers.

    A PostgreSQL that refuses or is starting or stopping (a deployment's start
    order, a restart of the primary, also one that begins mid-way through these
    steps) is waited for, for ``startup_wait_s`` in all; any other failure stops
    the start.
    """
    deadline = time.monotonic() + settings.startup_wait_s
    while True:
        wait_for_database(
            target,
            max(0.0, deadline - time.monotonic()),
            on_wait=lambda error, retry_in_s: log.warning(
                "waiting for PostgreSQL", error=error, retry_in_s=retry_in_s
            ),
        )
        try:
            _migrate_or_check(target, migrate)
            # A wrong or missing master key stops here (exit 2), before anything serves.
            start_keys(settings, target)
            return
        except Exception as exc:
            if not starting_or_refused(exc) or time.monotonic() > deadline:
                raise
            log.warning(
                "PostgreSQL went away during the start; once it answers, again",
                error=str(exc).strip().splitlines()[0],
            )


def _migrate_or_check(target: PgTarget, migrate: bool) -> None:
    if migrate:
        migrations.upgrade(target)
        log.info("migrations applied", revision=migrations.current_revision(target))
        return
    revision, head = migrations.current_revision(target), migrations.head_revision()
    if revision != head:
        log.error(
            "the database schema is not at this version's revision: "
            "run `reporunner migrate`, or serve without --no-migrate",
            revision=revision,
            head=head,
        )
        raise SystemExit(2)


def run_server(
    settings: Settings, *, host: str, port: int, migrate: bool, workers: int | None
) -> None:
    """Serve ``settings``' roles: ``workers`` HTTP processes (None: one per core)."""
    exit_cleanly_on_sigterm()
    database = resolve_database(settings)
    log.info("database", url=database.target.display(), embedded=database.embedded)
    _prepare_database(settings, database.target, migrate)
    roles = settings.role_list()
    if not HTTP_ROLES & set(roles):
        check_connection_budget(settings, database.target, 1)
        asyncio.run(_announce(settings, database.target, host, port))
        run_without_api(settings, database.target, host, workers or 1)
        return
    cores = serve_plan.usable_cores()
    groups = serve_plan.plan(roles, workers, cores)
    if not _HAS_BALANCED_PORTS and len(groups) > 1:
        groups = [serve_plan.ProcessGroup(tuple(roles), groups[0].count, http=True)]
    check_connection_budget(settings, database.target, groups=groups)
    asyncio.run(_announce(settings, database.target, host, port))
    http_workers = groups[0].count
    log.info(
        "serving",
        url=f"http://{host}:{port}",
        docs=f"http://{host}:{port}/docs",
        workers=http_workers,
        cores=cores,
        processes=serve_plan.describe(groups),
        roles=roles,
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
    if settings.metrics_port is not None:
        log.info("metrics", url=f"http://{host}:{settings.metrics_port}/metrics")
    if groups == [serve_plan.ProcessGroup(tuple(roles), 1, http=True)]:
        app = create_app(settings, database.target, roles)
        serve_app(app, options, settings.metrics_port)
        return
    with _metrics_shared_by_workers():
        if _HAS_BALANCED_PORTS:
            _supervise_workers(options, groups, settings.metrics_port)
        else:
            if settings.metrics_port is not None:
                log.warning("--metrics-port needs SO_REUSEPORT with --workers; not served")
            # Each worker process builds its own app; on the embedded database
            # they join the same server (pgserver counts its users).
            uvicorn.run(
                "reporunner.server:create_worker_app",
                factory=True,
                workers=http_workers,
                **options,
            )


HTTP_ROLES = serve_plan.HTTP_ROLES


@dataclass(frozen=True)
class ConnectionBudget:
    """This process's most connections against what PostgreSQL has room for."""

    most: int
    """workers x (both pools' size + overflow + dedicated connections)."""
    max_connections: int
    reserved: int
    """superuser_reserved_connections (+ reserved_connections): not ours to take."""
    in_use: int
    """Client connections open on the server now, by every process."""
    share: float

    def problem(self) -> str | None:
        usable = self.max_connections - self.reserved
        if self.most > self.share * usable:
            return (
                f"this process may open {self.most} connections, more than "
                f"{self.share:.0%} of the {usable} PostgreSQL allows"
            )
        if self.in_use + self.most > usable:
            return (
                f"{self.in_use} connections are open and this process may open {self.most} "
                f"more: beyond the {usable} PostgreSQL allows"
            )
        return None


def connection_budget(
    settings: Settings,
    target: PgTarget,
    workers: int = 1,
    groups: Sequence[serve_plan.ProcessGroup] | None = None,
) -> ConnectionBudget:
    """The budget of ``workers`` processes of ``settings``' roles, or of every process
    of ``groups`` (what ``serve`` starts) together."""
    with psycopg.connect(
        target.conninfo(connect_timeout=5, application_name="reporunner-start"), autocommit=True
    ) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int "
            "+ coalesce(current_setting('reserved_connections', true)::int, 0), "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    most = (
        workers * settings.pool_sizes().most()
        if groups is None
        else serve_plan.most_connections(settings, groups)
    )
    return ConnectionBudget(
        most=most,
        max_connections=int(row[0]),
        reserved=int(row[1]),
        in_use=int(row[2]),
        share=settings.db_connections_share,
    )


def check_connection_budget(
    settings: Settings,
    target: PgTarget,
    workers: int = 1,
    groups: Sequence[serve_plan.ProcessGroup] | None = None,
) -> None:
    """Say at start how many connections this service may take, and warn when
    the deployment would run PostgreSQL out of them (every request then fails)."""
    try:
        budget = connection_budget(settings, target, workers, groups)
    except psycopg.Error as exc:
        log.warning("could not read max_connections", error=str(exc).strip())
        return
    figures: dict[str, Any] = {
        "most_connections": budget.most,
        "max_connections": budget.max_connections,
        "reserved": budget.reserved,
        "in_use": budget.in_use,
    }
    if groups is None:
        figures |= {"workers": workers, "pools": asdict(settings.pool_sizes())}
    else:
        figures["processes"] = [
            {
                "roles": list(group.roles),
                "processes": group.count,
                "pools": asdict(serve_plan.pools_of(settings, group.roles)),
            }
            for group in groups
        ]
    problem = budget.problem()
    if problem is None:
        log.info("database connections", **figures)
        return
    log.warning(
        "database connections: " + problem + "; lower REPORUNNER_DB_POOL_SIZE / "
        "REPORUNNER_DB_MAX_OVERFLOW, run fewer processes (--workers), raise max_connections, "
        "or put PgBouncer in front (README: Connections)",
        **figures,
    )


def run_without_api(settings: Settings, target: PgTarget, host: str, workers: int) -> None:
    """Roles with no API (projections, worker, relay, scheduler): no API port bound,
    so several run on one host without a ``--port`` each. ``--metrics-port``, if set,
    serves their ops routes; else they run until SIGTERM/SIGINT with no socket at all."""
    if workers != 1:
        log.error(
            "--workers runs HTTP worker processes, and these roles serve no API: "
            "start more processes of the role instead",
            roles=settings.role_list(),
        )
        raise SystemExit(2)
    app = create_app(settings, target, settings.role_list())
    log.info("running without an API port", roles=settings.role_list())
    if settings.metrics_port is not None:
        log.info("metrics", url=f"http://{host}:{settings.metrics_port}/metrics")
        options: dict[str, Any] = {
            "host": host,
            "port": settings.metrics_port,
            "log_config": None,
            "access_log": False,
            "server_header": False,
        }
        serve_app(ops_only(app), options, None)
        return
    asyncio.run(_run_lifespan_until_signal(app))


async def _run_lifespan_until_signal(app: FastAPI) -> None:
    """The app's lifespan (it starts and stops the background roles), with no server."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with app.router.lifespan_context(app):
        await stop.wait()
    log.info("stopped")


@contextmanager
def _metrics_shared_by_workers() -> Iterator[None]:
    """A fresh directory where every worker process writes its metrics, removed after.

    Set before the workers start (they read it when they import
    prometheus_client), so ``/metrics`` on any worker answers all of them.
    """
    given = os.environ.get(metrics.MULTIPROC_ENV)
    directory = tempfile.mkdtemp(prefix="reporunner-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if given is None:
            os.environ.pop(metrics.MULTIPROC_ENV, None)
        else:
            os.environ[metrics.MULTIPROC_ENV] = given


OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def ops_only(app: ASGIApp) -> ASGIApp:
    """``app``, answering only its metrics and health routes (for the metrics port)."""

    async def ops(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPS_PATHS:
            problem = Problem(404, "the metrics port serves only /metrics, /healthz and /readyz")
            await problem.to_response(scope["path"])(scope, receive, send)
            return
        await app(scope, receive, send)

    return ops


class _SideServer(uvicorn.Server):
    """The metrics port's server: the main server handles signals and the lifespan."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the app's event streams when told to stop.

    uvicorn waits for every open response before it runs the lifespan's
    shutdown, and an event stream (``GET /v1/stream``) never ends on its own:
    without this, one connected client would keep the process from stopping.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        hub = getattr(getattr(self.config.app, "state", None), "stream_hub", None)
        if hub is not None:
            hub.close_soon()


def serve_app(
    app: Any,
    options: dict[str, Any],
    metrics_port: int | None,
    sockets: list[socket.socket] | None = None,
    metrics_sockets: list[socket.socket] | None = None,
) -> None:
    """Run ``app`` with uvicorn until a signal; with ``metrics_port``, its ops routes there too."""
    main = _Server(uvicorn.Config(app, **options))
    if metrics_port is None:
        main.run(sockets=sockets)
        return
    side_options = {**options, "port": metrics_port, "lifespan": "off"}
    side = _SideServer(uvicorn.Config(ops_only(app), **side_options))

    async def both() -> None:
        side_task = asyncio.create_task(side.serve(metrics_sockets))
        try:
            await main.serve(sockets)
        finally:
            side.should_exit = True
            await side_task

    with asyncio.Runner(loop_factory=main.config.get_loop_factory()) as runner:
        runner.run(both())


# Linux spreads new connections over sockets sharing a port (SO_REUSEPORT).
_HAS_BALANCED_PORTS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
_STARTUP_FAILURE = 3  # uvicorn's exit code when a worker cannot start
_DEATHS_ALLOWED = 5  # a minute, before the supervisor gives up


def _supervise_workers(
    options: dict[str, Any], groups: Sequence[serve_plan.ProcessGroup], metrics_port: int | None
) -> None:
    """Run the HTTP groups' uvicorn processes, each listening on its own socket, and
    the other groups' processes (the followers, at their lower priority).

    Why not uvicorn's own ``--workers``: its processes share one listening
    socket, and whichever wakes first accepts the whole burst of new
    connections. Measured: 30 of 32 keep-alive clients on one worker, the
    other idle, and half the throughput. Here every worker binds the port
    with ``SO_REUSEPORT`` and the kernel spreads connections over them.

    A worker that dies is replaced. One that cannot start, or deaths
    piling up (more than ``_DEATHS_ALLOWED`` a minute), stop the service
    rather than restart it in a loop.
    """
    # Bound, never listening: it gets no connections, but a port taken by
    # another program fails here, once, with a clear message.
    reservation = _reuse_port_socket(options["host"], options["port"])
    reservations = [reservation]
    if metrics_port is not None:
        reservations.append(_reuse_port_socket(options["host"], metrics_port))
    context = multiprocessing.get_context("spawn")
    supervisor = os.getpid()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def start(group: serve_plan.ProcessGroup) -> BaseProcess:
        if group.http:
            process = context.Process(
                target=_run_worker,
                args=(supervisor, options, metrics_port, group.roles),
                name="reporunner-http",
            )
        else:
            niceness = os.getpriority(os.PRIO_PROCESS, 0) + group.nice
            process = context.Process(
                target=_run_followers,
                args=(supervisor, group.roles, niceness),
                name="reporunner-followers",
            )
        process.start()
        if not group.http and process.pid is not None:
            # At once, not when the child gets there: before it starts any thread
            # (threads inherit it) and before anyone looks.
            _lower_priority(process.pid, niceness)
        return process

    slots = [group for group in groups for _ in range(group.count)]
    processes = [start(group) for group in slots]
    deaths: deque[float] = deque()
    exit_code = 0
    try:
        while not stop.wait(0.5):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.pid is not None:
                    metrics.mark_process_dead(process.pid)
                now = time.monotonic()
                deaths.append(now)
                while deaths[0] < now - 60:
                    deaths.popleft()
                if process.exitcode == _STARTUP_FAILURE or len(deaths) > _DEATHS_ALLOWED:
                    log.error(
                        "http worker could not start or keeps dying; stopping",
                        pid=process.pid,
                        code=process.exitcode,
                    )
                    exit_code = 1
                    stop.set()
                    break
                what = "http worker" if slots[index].http else "followers process"
                log.error(f"{what} died; replacing it", pid=process.pid, code=process.exitcode)
                processes[index] = start(slots[index])
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        for sock in reservations:
            sock.close()
    if exit_code:
        raise SystemExit(exit_code)


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("cannot listen", host=host, port=port, error=str(exc))
        raise SystemExit(_STARTUP_FAILURE) from None
    return sock


def _run_worker(
    supervisor: int,
    options: dict[str, Any],
    metrics_port: int | None,
    roles: Sequence[str] | None = None,
) -> None:
    """One HTTP worker process: its own socket (and metrics socket), its own app."""
    exit_cleanly_on_sigterm()
    _end_with(supervisor)
    if roles is not None:
        _take_roles(roles)
    sock = _reuse_port_socket(options["host"], options["port"])
    metrics_sockets = None
    if metrics_port is not None:
        metrics_sockets = [_reuse_port_socket(options["host"], metrics_port)]
    serve_app(create_worker_app(), options, metrics_port, [sock], metrics_sockets)


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with(supervisor: int) -> None:
    """SIGTERM this process when ``supervisor`` dies, however it dies (``kill -9`` too).

    Otherwise an orphaned HTTP worker keeps its SO_REUSEPORT socket: the
    restarted service would share its port with the old generation's
    workers, and the followers would stand by behind an orphan's lock.
    Linux only, as the supervisor is (``_HAS_BALANCED_PORTS``).
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before we asked
        sys.exit(0)


def _take_roles(roles: Sequence[str]) -> None:
    """This (spawned) process runs ``roles``, whatever the environment said."""
    os.environ["REPORUNNER_ROLES"] = ",".join(roles)
    get_settings.cache_clear()


def _lower_priority(pid: int, niceness: int) -> None:
    """Set ``pid``'s niceness to ``niceness`` if that lowers its priority."""
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) < niceness:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError as exc:  # gone already, or not allowed: it runs at the default
        log.warning("could not lower the followers' priority", pid=pid, error=str(exc))


def _run_followers(supervisor: int, roles: Sequence[str], niceness: int) -> None:
    """The process of the roles without an API beside HTTP workers: no port, lower priority."""
    _lower_priority(0, niceness)  # the supervisor did; this makes sure
    exit_cleanly_on_sigterm()
    _end_with(supervisor)
    _take_roles(roles)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing()
    app = create_app(settings, resolve_database(settings).target, settings.role_list())
    log.info("followers running", roles=settings.role_list(), niceness=niceness)
    asyncio.run(_run_lifespan_until_signal(app))


def exit_cleanly_on_sigterm() -> None:
    """Let SIGTERM end the process through ``atexit``, as Ctrl-C does.

    uvicorn handles the signal, shuts down, then raises it again; by default
    that kills the process before ``atexit`` runs, and the embedded
    PostgreSQL, which stops when its last user exits, would be left running.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def create_worker_app() -> FastAPI:
    """The app of one ``--workers`` process, built from the environment."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing()
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
    created = await asyncio.to_thread(_first_owner_key, settings, target)
    if created is not None:
        info, plaintext = created
        hand_over_first_key(info.org_id, plaintext, f"http://{host}:{port}", settings.data_dir)


def _first_owner_key(settings: Settings, target: PgTarget) -> tuple[ApiKeyInfo, str] | None:
    """The first owner key, recorded in the log like every other key (None: keys exist)."""
    workflow_app = create_workflow_application(target, settings)
    try:
        return ApiKeyCommands(workflow_app).create_first_owner_key()
    finally:
        workflow_app.close()


FIRST_KEY_FILE = "first-owner-key"


def hand_over_first_key(
    org_id: str, plaintext: str, base: str, data_dir: Path, terminal: TextIO | None = None
) -> None:
    """Give the first owner key to a person, never to the log.

    On a terminal (stderr, so that stdout can stay JSON log lines for a
    pipe): a banner with a ``curl`` to try. Off one (a service manager, a
    container without a TTY), where nobody reads a banner and whatever is
    printed ends up in a log store: the key goes into a file only its owner
    can read, under the data directory, and the log names the file.
    """
    terminal = terminal or sys.stderr
    if terminal.isatty():
        print(
            "\n"
            f"  First start: created an owner API key for organisation '{org_id}'.\n"
            "  It is shown only this once; keep it:\n\n"
            f"    {plaintext}\n\n"
            "  Try it:\n\n"
            f"    curl -s -X POST {base}/v1/workflows \\\n"
            f"      -H 'Authorization: Bearer {plaintext}' -H 'Content-Type: application/json' \\\n"
            '      -d \'{"name": "hello", "nodes": '
            '[{"id": "start", "type": "manual_trigger", "parameters": {}}]}\'\n',
            file=terminal,
            flush=True,
        )
        return
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / FIRST_KEY_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # an older file keeps its mode through O_CREAT
        file.write(plaintext + "\n")
    log.warning(
        "first start: created an owner API key; it is in the file named here (read it, "
        "then delete the file)",
        org_id=org_id,
        key_file=str(path.resolve()),
    )
