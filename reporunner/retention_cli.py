"""``reporunner retention run``: one retention pass now (or at ``--now``), for operators and tests.

The scheduler's leader runs the same passes every ``REPORUNNER_RETENTION_INTERVAL_S``;
running one by hand beside it is safe (every expiry is decided on the
execution's own stream, and destroying a key twice is a no-op). Prints what it
did as one JSON line on stdout.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.console import Console

from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings

retention_app = typer.Typer(
    help="Retention: destroy day keys and prune executions past their window.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _now(raw: str | None) -> datetime:
    if raw is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        console.print(
            "[red]error:[/red] --now must be an ISO 8601 time with an offset "
            f"(e.g. 2026-11-26T10:00:00Z), not {raw!r}"
        )
        raise typer.Exit(2)
    return value


@retention_app.command("run")
def run(
    now: Annotated[
        str | None,
        typer.Option(help="Run as if it were this instant (ISO 8601 with an offset)."),
    ] = None,
) -> None:
    """One whole pass: keys past their window destroyed, expired executions pruned."""
    import migrations
    from reporunner.wiring import create_retention, create_workflow_application, resolve_database

    at = _now(now)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    target = resolve_database(settings).target
    migrations.upgrade(target)
    app = create_workflow_application(target, settings)
    try:
        outcome = create_retention(app, settings).run(at)
    finally:
        app.close()
    console.print(
        f"retention at {at.isoformat()}: {outcome.keys_destroyed} day keys destroyed, "
        f"{outcome.executions_expired} executions pruned "
        f"({outcome.passed_over} passed over) in {outcome.batches} batches"
    )
    sys.stdout.write(
        orjson.dumps(
            {
                "now": at.isoformat(),
                "keys_destroyed": outcome.keys_destroyed,
                "executions_pruned": outcome.executions_expired,
                "passed_over": outcome.passed_over,
                "batches": outcome.batches,
            }
        ).decode()
        + "\n"
    )
