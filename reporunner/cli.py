"""The ``reporunner`` command line."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import psycopg
import sqlalchemy.exc
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from infrastructure.auth import ApiKeyStore, InvalidOrgId, Role
from infrastructure.database import create_engine
from infrastructure.embedded import EmbeddedPostgresMissing
from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings
from infrastructure.tracing import TracingConfigError, configure_tracing
from reporunner.audit_cli import audit_app
from reporunner.bus_cli import bus_app
from reporunner.erase_cli import erase
from reporunner.import_cli import import_app
from reporunner.keys import register as register_master_key_commands
from reporunner.retention_cli import retention_app
from reporunner.wiring import resolve_database


class ServeRole(StrEnum):
    """A role ``serve --only`` can run alone."""

    WRITE_API = "write-api"
    READ_API = "read-api"
    PROJECTIONS = "projections"
    WORKER = "worker"
    RELAY = "relay"
    SCHEDULER = "scheduler"


app = typer.Typer(
    help="Reporunner: event-sourced workflow automation backend.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage API keys and the master key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
register_master_key_commands(keys_app)
projections_app = typer.Typer(help="Inspect, rebuild and verify projections.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")
dead_letters_app = typer.Typer(
    help="Events a follower could not apply and went past: list them, retry them after a fix.",
    no_args_is_help=True,
)
projections_app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(audit_app, name="audit")
app.add_typer(bus_app, name="bus")
app.add_typer(import_app, name="import")
app.add_typer(retention_app, name="retention")
app.command("erase")(erase)

# Human output (tables) goes to stderr so stdout stays machine-readable.
console = Console(stderr=True)


def _setup() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    migrate: Annotated[bool, typer.Option(help="Apply migrations at start.")] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="HTTP worker processes (default: one per core; the log's followers then "
            "run in one process of their own at a lower priority).",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        ServeRole | None,
        typer.Option(help="Run one role alone, to scale it on its own."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Also serve /metrics, /healthz and /readyz on this port."
        ),
    ] = None,
) -> None:
    """Run the service: write API, read API, projectors and a worker in one process."""
    from reporunner.server import run_server

    # Through the environment, so --workers processes inherit them too.
    if only is not None:
        os.environ["REPORUNNER_ROLES"] = only.value
    if metrics_port is not None:
        os.environ["REPORUNNER_METRICS_PORT"] = str(metrics_port)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing()  # here too with --workers: a bad OTEL_* setting stops the start
    run_server(settings, host=host, port=port, migrate=migrate, workers=workers)


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Executions run at once (default: settings)."),
    ] = None,
    migrate: Annotated[bool, typer.Option(help="Apply migrations at start.")] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve /metrics, /healthz and /readyz on this port."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface the metrics port binds.")] = "127.0.0.1",
) -> None:
    """Run execution workers (no HTTP but the metrics port's) until interrupted."""
    import signal
    import threading

    import migrations
    from commands import WorkflowCommands
    from reporunner.keys import start_keys
    from reporunner.server import check_connection_budget
    from reporunner.wiring import (
        create_execution_services,
        create_workflow_application,
        keyring_for,
        start_workers,
    )

    _setup()
    configure_tracing()
    # Its pools are a worker's share (README: Connections), not every role's.
    settings = get_settings().model_copy(update={"roles": "worker"})
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    database = resolve_database(settings)
    if migrate:
        migrations.upgrade(database.target)
    start_keys(settings, database.target)
    check_connection_budget(settings, database.target, workers=1)
    if settings.metrics_port is not None:
        _serve_worker_with_metrics(settings, database.target, host)
        return
    workflow_app = create_workflow_application(database.target, settings)
    keyring = keyring_for(settings, workflow_app.event_store.datastore.get_connection)
    services = create_execution_services(
        workflow_app, WorkflowCommands(workflow_app), database.target, settings, keyring
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    threads = start_workers(services, settings, stop, concurrency)
    stop.wait()
    for thread in threads:
        thread.join(timeout=30)
    services.close()
    workflow_app.close()


def _serve_worker_with_metrics(settings: Any, target: Any, host: str) -> None:
    """The worker role alone, its ops routes (no API) on the metrics port."""
    from reporunner.server import exit_cleanly_on_sigterm, ops_only, serve_app
    from reporunner.wiring import create_app

    exit_cleanly_on_sigterm()
    app = create_app(settings, target, ["worker"])
    options: dict[str, Any] = {
        "host": host,
        "port": settings.metrics_port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
    }
    serve_app(ops_only(app), options, None)


@app.command()
def migrate() -> None:
    """Apply database migrations (the event store's included)."""
    import migrations

    _setup()
    database = resolve_database(get_settings())
    migrations.upgrade(database.target)
    console.print(
        f"migrated {database.target.display()} to {migrations.current_revision(database.target)}"
    )


def _key_store_call(fn):  # type: ignore[no-untyped-def]
    """Run ``fn(store)`` against the configured database, migrating it first."""
    import migrations

    _setup()
    settings = get_settings()
    database = resolve_database(settings)
    migrations.upgrade(database.target)

    async def run():  # type: ignore[no-untyped-def]
        engine = create_engine(database.target, pool_size=1)
        try:
            return await fn(ApiKeyStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _key_commands_call(fn):  # type: ignore[no-untyped-def]
    """Run ``fn(commands)`` (``commands.tenancy.ApiKeyCommands``: the same records and
    events as the API's) against the configured database, migrating it first."""
    import migrations
    from commands.tenancy import ApiKeyCommands
    from reporunner.wiring import create_workflow_application

    _setup()
    settings = get_settings()
    database = resolve_database(settings)
    migrations.upgrade(database.target)
    workflow_app = create_workflow_application(database.target, settings)
    try:
        return fn(ApiKeyCommands(workflow_app))
    finally:
        workflow_app.close()


def _parse_expiry(expires_at: str | None) -> datetime | None:
    if expires_at is None:
        return None
    try:
        parsed = datetime.fromisoformat(expires_at)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        console.print(
            f"[red]error:[/red] --expires-at {expires_at!r} must be an ISO 8601 time with "
            "its offset, e.g. 2027-01-31T00:00:00+00:00"
        )
        raise typer.Exit(2)
    if parsed <= datetime.now(UTC):
        console.print(f"[red]error:[/red] --expires-at {expires_at} is not in the future")
        raise typer.Exit(2)
    return parsed


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation id, e.g. 'acme'.")],
    role: Annotated[Role, typer.Option(help="owner, editor, viewer, auditor or platform_admin.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    expires_at: Annotated[
        str | None, typer.Option(help="When the key stops working (ISO 8601 with offset).")
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(help="Confine the key to this project (its id); default: the whole org."),
    ] = None,
) -> None:
    """Create an API key; the key is printed alone on the last line of stdout.

    Recorded as an ApiKey Created event with actor "cli". A platform_admin key
    manages organisations (/v1/admin) and sees no workflow; only this command makes one.
    """
    from commands.projects import ProjectNotFound
    from commands.tenancy import cli_actor

    expiry = _parse_expiry(expires_at)
    try:
        project_id = None if project is None else uuid.UUID(project)
    except ValueError:
        console.print(f"[red]error:[/red] --project {project!r} is not a project id (a UUID)")
        raise typer.Exit(2) from None
    try:
        info, plaintext, _ = _key_commands_call(
            lambda keys: keys.create(
                org, role, name, cli_actor(), expires_at=expiry, project_id=project_id
            )
        )
    except (InvalidOrgId, ProjectNotFound) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    scope = f", project {info.project_id}" if info.project_id else ""
    console.print(
        f"created key {info.id} ({info.role}) for organisation '{info.org_id}'{scope}; "
        "it is shown only once"
    )
    print(plaintext, flush=True)


AsJson = Annotated[bool, typer.Option("--json", help="One JSON object a line, on stdout.")]


def print_json_lines(rows: list[dict[str, Any]]) -> None:
    import orjson

    for row in rows:
        # default=str: asyncpg's own UUID type, and anything else stringly.
        print(orjson.dumps(row, default=str).decode(), flush=True)


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option(help="Only this organisation.")] = None,
    as_json: AsJson = False,
) -> None:
    """List API keys (never the secrets)."""
    import dataclasses

    infos = _key_store_call(lambda store: store.list(org))
    if as_json:
        print_json_lines([dataclasses.asdict(info) for info in infos])
        return
    table = Table("id", "org", "project", "role", "name", "prefix", "created", "revoked", "expires")
    for info in infos:
        table.add_row(
            str(info.id),
            info.org_id,
            str(info.project_id or ""),
            info.role.value,
            info.name,
            info.prefix + "…",
            info.created_at.isoformat(timespec="seconds"),
            info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "",
            info.expires_at.isoformat(timespec="seconds") if info.expires_at else "",
        )
    # Off a terminal, don't squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from 'keys list').")],
) -> None:
    """Revoke an API key at once."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        console.print(f"[red]error:[/red] {key_id!r} is not a key id (a UUID)")
        raise typer.Exit(2) from None
    from commands.tenancy import cli_actor

    if _key_commands_call(lambda keys: keys.revoke(parsed, cli_actor())) is None:
        console.print(f"[red]error:[/red] no active key with id {key_id}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def main() -> None:
    try:
        app()
    except ValidationError as exc:
        # Only settings are validated outside a command's own handling.
        console.print(f"[red]error:[/red] invalid configuration:\n{_configuration_errors(exc)}")
        raise SystemExit(2) from None
    except (TracingConfigError, EmbeddedPostgresMissing) as exc:
        console.print(f"[red]error:[/red] invalid configuration: {exc}")
        raise SystemExit(2) from None
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError, ConnectionError) as exc:
        # The server is unreachable or refused us (e.g. sslmode=require and no SSL):
        # libpq's reason, not a traceback through the migration machinery.
        reason = exc.orig if isinstance(exc, sqlalchemy.exc.OperationalError) else exc
        console.print(f"[red]error:[/red] cannot connect to PostgreSQL: {reason}", highlight=False)
        raise SystemExit(1) from None


def _configuration_errors(exc: ValidationError) -> str:
    """One line per bad setting, named as the environment variable it came from."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = field if field.isupper() else f"REPORUNNER_{field.upper()}"
        lines.append(f"  {name}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _projectors(name: str | None = None) -> list[Any]:
    """A projector per projection (or the one named), on the configured database."""
    import migrations
    from projections.runner import Projector
    from reporunner.wiring import all_projections, create_workflow_application

    _setup()
    settings = get_settings()
    database = resolve_database(settings)
    migrations.upgrade(database.target)
    projections = all_projections()
    if name is not None:
        projections = [p for p in projections if p.name == name]
        if not projections:
            known = ", ".join(p.name for p in all_projections())
            console.print(f"[red]error:[/red] no projection {name!r} (known: {known})")
            raise typer.Exit(2)
    app = create_workflow_application(database.target, settings)
    return [
        Projector(app, database.target, p, batch_size=settings.projection_batch_size)
        for p in projections
    ]


def _auto_retrier(projector: Any) -> Any:
    """The auto-retrier on a projector's application and database."""
    from commands import WorkflowCommands
    from commands.auto_retries import AutoRetrier
    from reporunner.wiring import create_execution_services, keyring_for

    settings = get_settings()
    # A retry re-seals its run's payloads: it needs the process's keyring.
    keyring = keyring_for(settings, projector.app.event_store.datastore.get_connection)
    services = create_execution_services(
        projector.app, WorkflowCommands(projector.app, keyring), projector.target, settings, keyring
    )
    return AutoRetrier(services.commands, executions_per_day=settings.executions_per_org_per_day)


def _progress_bar(projector: Any) -> Any:
    """A rich progress bar over the events the projection will read."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from projections.runner import status

    with projector.connect() as conn:
        head = status(conn, [projector.projection.name])[0].head
    progress = Progress(
        "[bold]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task(projector.projection.name, total=head)
    return progress, lambda count: progress.advance(task, count)


@projections_app.command("status")
def projections_status(as_json: AsJson = False) -> None:
    """Per projection: position, the log head, lag in events and seconds."""
    from projections.dead_letters import open_counts
    from projections.relay import RELAY_NAME
    from projections.runner import status

    projectors = _projectors()
    # The views, and the other followers of the log that keep a tracking row.
    names = [p.projection.name for p in projectors] + [
        "workflow-runs",
        "auto-retries",
        "audit-chain",
    ]
    settings = get_settings()
    with projectors[0].connect() as conn:
        rows = status(conn, names)
        dead = open_counts(conn, [*names, RELAY_NAME])
        relay = None
        if settings.redis_url:
            from projections.relay import relay_status

            relay = relay_status(conn, settings.redis_url)
    if as_json:
        lines: list[dict[str, Any]] = [
            {
                "name": row.name,
                "position": row.position,
                "head": row.head,
                "lag_events": row.lag_events,
                "lag_seconds": row.lag_seconds,
                "dead_letters": dead[row.name],
            }
            for row in rows
        ]
        if relay is not None:
            lines.append(
                {
                    "name": RELAY_NAME,
                    "position": relay.position,
                    "head": relay.head,
                    "lag_events": relay.lag,
                    "lag_seconds": None,
                    "dead_letters": dead[RELAY_NAME],
                    "running": bool(relay.active),
                    "redis_ok": relay.redis_ok,
                    "last_error": relay.last_error,
                }
            )
        print_json_lines(lines)
        return
    table = Table("projection", "position", "head", "lag (events)", "lag (s)", "dead letters")
    for row in rows:
        table.add_row(
            row.name,
            str(row.position),
            str(row.head),
            str(row.lag_events),
            f"{row.lag_seconds:.1f}",
            str(dead[row.name]),
        )
    if relay is not None:
        table.add_row(
            "relay (to Redis)",
            str(relay.position),
            str(relay.head),
            str(relay.lag),
            "",
            str(dead[RELAY_NAME]),
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if relay is not None:
        console.print(
            f"relay: {'running' if relay.active else 'NOT RUNNING'}; "
            f"redis {'ok' if relay.redis_ok else relay.last_error}"
        )


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str | None, typer.Argument(help="One projection; all by default.")] = None,
) -> None:
    """Rebuild views from the log into shadow tables, then swap them in at once."""
    from projections.rebuild import rebuild

    for projector in _projectors(name):
        progress, advance = _progress_bar(projector)
        with progress:
            position = rebuild(projector, advance)
        console.print(f"rebuilt {projector.projection.name} up to position {position}")


@projections_app.command("verify")
def projections_verify() -> None:
    """Rebuild every view into a scratch schema and diff it with the live one."""
    _verify_views()


@app.command()
def replay(
    check: Annotated[
        bool, typer.Option("--check", help="Rebuild every view from the log and diff it.")
    ] = False,
) -> None:
    """Replay the log: with --check, prove every view equals a fresh rebuild (exit 1 if not)."""
    if not check:
        console.print("nothing to do: use --check (a rebuild is `projections rebuild`)")
        raise typer.Exit(2)
    _verify_views()
    console.print("replay check: no difference")


def _verify_views() -> None:
    from projections.rebuild import verify

    failed = False
    for projector in _projectors():
        progress, advance = _progress_bar(projector)
        with progress:
            result = verify(projector, advance)
        for collection, ids in result.differences.items():
            if ids:
                failed = True
                shown = ", ".join(ids[:10])
                console.print(
                    f"[red]DIFFERS[/red] {collection} at position {result.position}: "
                    f"{len(ids)}{'+' if len(ids) >= 20 else ''} documents, e.g. {shown}"
                )
            else:
                console.print(f"ok {collection} at position {result.position}")
    if failed:
        raise typer.Exit(1)


@dead_letters_app.command("list")
def dead_letters_list(
    follower: Annotated[str | None, typer.Option(help="Only this follower's.")] = None,
    resolved: Annotated[bool, typer.Option("--all", help="Resolved ones too.")] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters (unresolved unless --all): which event, why, how often, since when."""
    from projections.dead_letters import list_letters

    projectors = _projectors()
    with projectors[0].connect() as conn:
        letters = list_letters(conn, follower=follower, include_resolved=resolved)
    if as_json:
        print_json_lines([letter.as_json() for letter in letters])
        return
    table = Table(
        "id", "follower", "position", "event", "event id", "org", "attempts", "last seen", "error"
    )
    for letter in letters:
        table.add_row(
            str(letter.id),
            letter.follower,
            str(letter.position),
            letter.event,
            f"{letter.originator_id}:{letter.originator_version}",
            letter.org_id or "",
            str(letter.attempts),
            letter.last_seen.isoformat(timespec="seconds"),
            (letter.resolution or "") if letter.resolved_at else letter.error,
        )
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dead_letters_app.command("retry")
def dead_letters_retry(
    letter_id: Annotated[int | None, typer.Option("--id", help="This dead letter.")] = None,
    follower: Annotated[str | None, typer.Option(help="Every dead letter of it.")] = None,
) -> None:
    """Apply dead-lettered events again (after a fix); exit 1 if any still fails.

    A projection retries each aggregate's waiting events in log order: what
    applies is resolved and its documents lose their _stale marker.
    """
    from commands.auto_retries import NAME as RETRIES
    from commands.workflow_runs import NAME as RUNS
    from commands.workflow_runs import WorkflowRunsRecorder
    from projections.dead_letters import DeadLetter, list_letters

    if (letter_id is None) == (follower is None):
        console.print("[red]error:[/red] give --id N or --follower NAME (one of them)")
        raise typer.Exit(2)
    projectors = {p.projection.name: p for p in _projectors()}
    any_projector = next(iter(projectors.values()))
    with any_projector.connect() as conn:
        letters = list_letters(conn, follower=follower, letter_id=letter_id)
    if not letters:
        console.print("no unresolved dead letter matches")
        return
    by_follower: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_follower.setdefault(letter.follower, []).append(letter)
    failed = False
    for name, group in by_follower.items():
        if name in projectors:
            with projectors[name].connect() as conn:
                outcome = projectors[name].retry_dead_letters(conn, group)
            console.print(f"{name}: {outcome.resolved} resolved")
            for letter, error in outcome.failed:
                failed = True
                console.print(f"[red]still fails[/red] {letter.id} at {letter.position}: {error}")
        elif name in (RUNS, RETRIES):
            recorder = (
                WorkflowRunsRecorder(any_projector.app)
                if name == RUNS
                else _auto_retrier(any_projector)
            )
            resolved, errors = recorder.retry_dead_letters(group)
            console.print(f"{name}: {resolved} resolved")
            for error in errors:
                failed = True
                console.print(f"[red]still fails[/red] {error}")
        else:
            failed = True
            console.print(
                f"[red]cannot retry[/red] {name}'s dead letters: the relay's stream ids "
                "only grow, so a skipped entry cannot be published in its place; the event "
                "stays in the log (GET /v1/audit/events)"
            )
    if failed:
        raise typer.Exit(1)
