"""``reporunner bus``: the event bus' streams and consumer groups, and dead letters.

Talks to Redis only (``--redis-url``, else ``REDIS_URL``). Tables go to stdout,
messages to stderr.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated

import orjson
import redis
import typer
from rich.console import Console
from rich.table import Table

from infrastructure.bus import DEFAULT_PREFIX, bus_status, connect, dlq_list, dlq_purge, dlq_replay
from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings

bus_app = typer.Typer(
    help="The event bus on Redis Streams: status and dead letters.", no_args_is_help=True
)
dlq_app = typer.Typer(help="A consumer group's dead letters.", no_args_is_help=True)
bus_app.add_typer(dlq_app, name="dlq")
console = Console(stderr=True)

RedisUrl = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (default: REDIS_URL).")
]
Prefix = Annotated[
    str,
    typer.Option(
        "--prefix", envvar="REPORUNNER_BUS_PREFIX", help="Stream names' prefix (per deployment)."
    ),
]
Group = Annotated[str, typer.Option("--group", help="The consumer group.")]


def _client(redis_url: str | None) -> redis.Redis:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    url = redis_url or settings.redis_url
    if not url:
        console.print("[red]error:[/red] no Redis: set REDIS_URL or pass --redis-url")
        raise typer.Exit(2)
    return connect(url)


def _print(table: Table) -> None:
    # Off a terminal, don't squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _dead_letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _unreachable(exc: redis.RedisError) -> typer.Exit:
    console.print(f"[red]error:[/red] Redis: {type(exc).__name__}: {exc}")
    return typer.Exit(1)


@bus_app.command("status")
def status(
    redis_url: RedisUrl = None,
    prefix: Prefix = DEFAULT_PREFIX,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object a line (a stream, with its groups)."),
    ] = False,
) -> None:
    """Per stream and consumer group: length, pending, lag; and dead letters per group."""
    client = _client(redis_url)
    try:
        found = bus_status(client, prefix=prefix)
    except redis.RedisError as exc:
        raise _unreachable(exc) from None
    finally:
        client.close()
    if as_json:
        for stream in found.streams:
            line = dataclasses.asdict(stream)
            for group in line["groups"]:
                group["dead_letters"] = found.dead_letters.get(group["name"], 0)
            print(orjson.dumps(line).decode(), flush=True)
        return
    streams = Table("stream", "length", "last id", "group", "consumers", "pending", "lag")
    for stream in found.streams:
        if not stream.groups:
            streams.add_row(stream.name, str(stream.length), stream.last_id, "", "", "", "")
        for group in stream.groups:
            streams.add_row(
                stream.name,
                str(stream.length),
                stream.last_id,
                group.name,
                str(group.consumers),
                str(group.pending),
                "?" if group.lag is None else str(group.lag),
            )
    _print(streams)
    dead = Table("group", "dead letters")
    for group_name, count in sorted(found.dead_letters.items()):
        dead.add_row(group_name, str(count))
    _print(dead)
    if not found.streams:
        console.print(f"no streams under prefix {prefix!r} (is the relay running?)")


@dlq_app.command("list")
def list_dead_letters(
    group: Group,
    count: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 50,
    redis_url: RedisUrl = None,
    prefix: Prefix = DEFAULT_PREFIX,
) -> None:
    """The group's dead letters, oldest first."""
    client = _client(redis_url)
    try:
        letters = dlq_list(client, group, count, prefix=prefix)
    except redis.RedisError as exc:
        raise _unreachable(exc) from None
    finally:
        client.close()
    table = Table("id", "type", "position", "attempts", "error", "from", "failed at")
    for letter in letters:
        table.add_row(
            letter.id,
            letter.type,
            "" if letter.position is None else str(letter.position),
            str(letter.attempts),
            letter.error,
            f"{letter.source_stream} {letter.source_id}",
            letter.failed_at,
        )
    _print(table)
    console.print(f"{_dead_letters(len(letters))} shown for group {group!r}")


@dlq_app.command("replay")
def replay(
    group: Group,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="A dead letter's id (repeatable).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the group.")] = False,
    redis_url: RedisUrl = None,
    prefix: Prefix = DEFAULT_PREFIX,
) -> None:
    """Deliver dead letters to the group again (through its retry stream)."""
    if bool(ids) == all_:
        console.print("[red]error:[/red] give --id (one or more) or --all")
        raise typer.Exit(2)
    client = _client(redis_url)
    try:
        replayed = dlq_replay(client, group, None if all_ else ids, prefix=prefix)
    except redis.RedisError as exc:
        raise _unreachable(exc) from None
    finally:
        client.close()
    console.print(f"replayed {_dead_letters(len(replayed))} to group {group!r}")
    missing = sorted(set(ids or ()) - set(replayed))
    if missing:
        console.print(f"[red]error:[/red] no such dead letters: {', '.join(missing)}")
        raise typer.Exit(1)


@dlq_app.command("purge")
def purge(group: Group, redis_url: RedisUrl = None, prefix: Prefix = DEFAULT_PREFIX) -> None:
    """Delete all of the group's dead letters."""
    client = _client(redis_url)
    try:
        purged = dlq_purge(client, group, prefix=prefix)
    except redis.RedisError as exc:
        raise _unreachable(exc) from None
    finally:
        client.close()
    console.print(f"purged {_dead_letters(purged)} of group {group!r}")
