"""The ``reporunner`` command line."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infrastructure.auth import ApiKeyStore, InvalidOrgId, Role
from infrastructure.database import create_engine
from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings
from reporunner.wiring import resolve_database

app = typer.Typer(
    help="Reporunner: event-sourced workflow automation backend.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# Human output (tables) goes to stderr so stdout stays machine-readable.
console = Console(stderr=True)


def _setup() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    migrate: Annotated[bool, typer.Option(help="Apply migrations at start.")] = True,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="HTTP worker processes (one per core).")
    ] = 1,
) -> None:
    """Run the service (write API)."""
    from reporunner.server import run_server

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    run_server(settings, host=host, port=port, migrate=migrate, workers=workers)


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


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation id, e.g. 'acme'.")],
    role: Annotated[Role, typer.Option(help="owner, editor, viewer or auditor.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
) -> None:
    """Create an API key; the key is printed alone on the last line of stdout."""
    try:
        info, plaintext = _key_store_call(lambda store: store.create(org, role, name))
    except InvalidOrgId as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"created key {info.id} ({info.role}) for organisation '{info.org_id}'; "
        "it is shown only once"
    )
    print(plaintext, flush=True)


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option(help="Only this organisation.")] = None,
) -> None:
    """List API keys (never the secrets)."""
    infos = _key_store_call(lambda store: store.list(org))
    table = Table("id", "org", "role", "name", "prefix", "created", "revoked")
    for info in infos:
        table.add_row(
            str(info.id),
            info.org_id,
            info.role.value,
            info.name,
            info.prefix + "…",
            info.created_at.isoformat(timespec="seconds"),
            info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "",
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
    if not _key_store_call(lambda store: store.revoke(parsed)):
        console.print(f"[red]error:[/red] no active key with id {key_id}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def main() -> None:
    app()
