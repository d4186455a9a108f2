"""The master key's life cycle: the check at every start, ``keys generate`` and
``keys rotate-master``.

At start (``serve`` in any role, ``worker``, the CLI commands that use keys)
the key is loaded and ``Keyring.check_master`` proves it wrapped the stored
data keys. A malformed key, an unreadable key file, a key that does not open
the stored keys, or an external ``DATABASE_URL`` with no key at all stops the
process with exit code 2 and one line saying what to do: never a service that
starts and then fails on the first credential. (The embedded default makes a
key on first start: ``infrastructure/keyring.py: load_master_key``.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import psycopg
import structlog
import typer
from psycopg.rows import dict_row
from rich.console import Console

from infrastructure.crypto import MasterKey, MasterKeyError
from infrastructure.database import PgTarget
from infrastructure.keyring import Keyring, load_master_key
from infrastructure.settings import Settings

log = structlog.get_logger("reporunner.keys")
console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped

NO_KEY = (
    "no master key: with an external DATABASE_URL set REPORUNNER_MASTER_KEY (or "
    "REPORUNNER_MASTER_KEY_FILE) to a key from `reporunner keys generate`, and keep it safe: "
    "credentials and payloads cannot be read without it"
)


def connection_source(target: PgTarget) -> Any:
    """Short-lived psycopg connections with dict rows, as ``Keyring`` wants them."""

    @contextmanager
    def connect() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(
            target.conninfo(connect_timeout=5, application_name="reporunner-keys"),
            row_factory=dict_row,
        ) as conn:
            yield conn

    return connect


def checked_master_key(settings: Settings, target: PgTarget) -> MasterKey:
    """The configured master key, proven to open the stored data keys; else exit 2."""
    try:
        master = load_master_key(settings)
        if master is None:
            raise MasterKeyError(NO_KEY)
        live = Keyring(master, connection_source(target)).check_master()
    except MasterKeyError as exc:
        log.error("cannot start: master key", error=str(exc))
        console.print(f"[red]error:[/red] master key: {exc}", highlight=False)
        raise SystemExit(2) from None
    log.info("master key checked", master_key_id=master.key_id, data_keys=live)
    return master


def start_keys(settings: Settings, target: PgTarget) -> MasterKey:
    """At a process's start: check the master key (exit 2 if wrong), then seal the
    hook secrets still in clear from before migration 0015."""
    from commands.webhook_secrets import seal_clear_secrets

    master = checked_master_key(settings, target)
    seal_clear_secrets(Keyring(master, connection_source(target)), connection_source(target))
    return master


def generate() -> None:
    """Print a new random master key (stdout, alone on its line)."""
    key = MasterKey.generate()
    console.print(
        f"new master key {key.key_id}: set it as REPORUNNER_MASTER_KEY, or write it to the "
        "file REPORUNNER_MASTER_KEY_FILE names; keep a copy safe"
    )
    print(key.encoded(), flush=True)


def rotate_master(
    new_key_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the new key (else REPORUNNER_NEW_MASTER_KEY)."),
    ] = None,
) -> None:
    """Re-wrap every data key under a new master key (one transaction; the log is untouched).

    Then configure the new key and restart every process: the old key no
    longer opens the data keys, and a process started with it stops (exit 2).
    """
    import os

    import migrations
    from infrastructure.logs import configure_logging
    from infrastructure.settings import get_settings
    from reporunner.wiring import resolve_database

    settings = get_settings()
    # Log lines to stderr, as the other commands do: stdout stays the commands' output.
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    try:
        if new_key_file is not None:
            new = MasterKey.parse(new_key_file.read_text())
        elif os.environ.get("REPORUNNER_NEW_MASTER_KEY"):
            new = MasterKey.parse(os.environ["REPORUNNER_NEW_MASTER_KEY"])
        else:
            raise MasterKeyError("give --new-key-file F or set REPORUNNER_NEW_MASTER_KEY")
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot read {new_key_file}: {exc.strerror}")
        raise typer.Exit(2) from None
    except MasterKeyError as exc:
        console.print(f"[red]error:[/red] new master key: {exc}", highlight=False)
        raise typer.Exit(2) from None
    database = resolve_database(settings)
    migrations.upgrade(database.target)
    old = checked_master_key(settings, database.target)
    if old.key_id == new.key_id:
        console.print("[red]error:[/red] the new key is the key in use")
        raise typer.Exit(2)
    keyring = Keyring(old, connection_source(database.target))
    total = keyring.check_master()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    with Progress("re-wrapping", BarColumn(), MofNCompleteColumn(), console=console) as progress:
        task = progress.add_task("data keys", total=total)
        count = keyring.rewrap_all(new, lambda n: progress.advance(task, n))
    _replace_embedded_key_file(settings, new)
    log.info("master key rotated", old=old.key_id, new=new.key_id, data_keys=count)
    console.print(
        f"re-wrapped {count} data key(s) from master key {old.key_id} to {new.key_id}; "
        "configure the new key and restart every process"
    )


def _replace_embedded_key_file(settings: Settings, new: MasterKey) -> None:
    """On the embedded default (no key configured) the key file under data_dir is the key."""
    from infrastructure.keyring import MASTER_KEY_FILE

    if settings.master_key is not None or settings.master_key_file is not None:
        return
    if settings.database_url is not None:
        return
    path = settings.data_dir / MASTER_KEY_FILE
    tmp = path.with_suffix(".new")
    tmp.write_text(new.encoded() + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def register(keys_app: typer.Typer) -> None:
    keys_app.command("generate")(generate)
    keys_app.command("rotate-master")(rotate_master)


__all__ = ["checked_master_key", "connection_source", "register", "start_keys"]
