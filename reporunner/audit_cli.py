"""``reporunner audit``: the log's hash chain, and signed exports of one organisation.

Signing uses ``REPORUNNER_AUDIT_KEY``; without it everything still runs, and
says that nothing was signed or checked against a signature. Human output goes
to stderr; ``verify --json`` prints the result on stdout.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from infrastructure.auth import InvalidOrgId, check_org_id
from infrastructure.database import PgTarget
from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings

audit_app = typer.Typer(
    help="Tamper evidence: the log's hash chain, and signed exports.", no_args_is_help=True
)
console = Console(stderr=True)


def _target() -> PgTarget:
    """The configured database, migrated (the chain's tables come with migration 0006)."""
    import migrations
    from reporunner.wiring import resolve_database

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    target = resolve_database(settings).target
    migrations.upgrade(target)
    return target


def _progress(label: str, total: int) -> tuple[Progress, Any]:
    progress = Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task(label, total=total)
    return progress, lambda count: progress.advance(task, count)


def _instant(raw: str | None, option: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        console.print(
            f"[red]error:[/red] {option} must be an ISO 8601 time with an offset "
            f"(e.g. 2026-11-26T10:00:00Z), not {raw!r}"
        )
        raise typer.Exit(2)
    return value


@audit_app.command("catch-up")
def catch_up() -> None:
    """Extend the chain to the end of the log now (the projections role does it continuously)."""
    from projections.audit_chain import AuditChainFollower

    target = _target()
    follower = AuditChainFollower.from_settings(target, get_settings())
    with follower.connect() as conn:
        chained = follower.catch_up(conn)
    console.print(f"chained {chained:,} events")


@audit_app.command("verify")
def verify(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout.")
    ] = False,
) -> None:
    """Recompute the hash chain over the whole log; exit 1 if anything was tampered with."""
    from projections.audit_chain import chain_status, verify_log

    target = _target()
    progress, advance = _progress("verify", chain_status(target).count)
    with progress:
        result = verify_log(target, get_settings().audit_key, progress=advance)
    if as_json:
        print(orjson.dumps(result.as_json()).decode(), flush=True)
    if not result.ok:
        console.print(
            f"[red]TAMPERED[/red] {result.problem} at position {result.position}: {result.reason}"
        )
        console.print(
            f"the first altered, deleted or inserted row lies in ({result.after}, "
            f"{result.position}]; exactly at {result.position} unless the chain's own "
            "links were rewritten too"
        )
        raise typer.Exit(1)
    console.print(
        f"ok: {result.events:,} events in {result.elapsed_s:.1f} s "
        f"({result.events_per_s:,.0f} events/s), {result.checkpoints:,} checkpoints; "
        f"head {result.head_position}:{result.head_link}"
    )
    if result.warning:
        console.print(f"[yellow]warning:[/yellow] {result.warning}")
    if result.unchained:
        console.print(
            f"[yellow]warning:[/yellow] {result.unchained:,} events after position "
            f"{result.head_position} are not chained yet (is the projections role running?)"
        )


@audit_app.command("export")
def export(
    org: Annotated[str, typer.Option(help="Organisation id.")],
    out: Annotated[Path, typer.Option(help="The file to write (JSON lines).")],
    since: Annotated[str | None, typer.Option(help="From this ISO 8601 time (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Until this ISO 8601 time (exclusive).")] = None,
) -> None:
    """Export an organisation's events, one JSON line each, then a signed manifest."""
    from projections.audit_chain import chain_status, export_org

    try:
        check_org_id(org)
    except InvalidOrgId as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    since_at, until_at = _instant(since, "--since"), _instant(until, "--until")
    target = _target()
    key = get_settings().audit_key
    progress, advance = _progress("export", chain_status(target).position)
    with progress:
        result = export_org(target, org, since_at, until_at, out, key, progress=advance)
    console.print(
        f"exported {result.count:,} events of '{org}' to {out}: "
        f"{result.bytes_written / 1e6:,.1f} MB in {result.elapsed_s:.1f} s "
        f"({result.megabytes_per_s:,.1f} MB/s)"
    )
    if not key:
        console.print(
            "[yellow]warning:[/yellow] no REPORUNNER_AUDIT_KEY: the export is unsigned, so "
            "it proves nothing against deliberate edits"
        )
    if result.unchained:
        console.print(
            f"[yellow]warning:[/yellow] {result.unchained:,} events after position "
            f"{result.chained_upto} are not chained yet and were not exported"
        )


@audit_app.command("verify-export")
def verify_export_command(
    file: Annotated[Path, typer.Argument(help="An export written by 'audit export'.")],
) -> None:
    """Check an export offline (only the file and the key); exit 1 if it was altered."""
    from infrastructure.audit import verify_export

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    result = verify_export(file, settings.audit_key)
    if not result.ok:
        console.print(f"[red]ALTERED[/red] line {result.line}: {result.reason}")
        raise typer.Exit(1)
    checked = "signature checked" if result.signed else "NOT signature-checked"
    console.print(f"ok: {result.count:,} events of '{result.org_id}', {checked}")
    if result.warning:
        console.print(f"[yellow]warning:[/yellow] {result.warning}")


if __name__ == "__main__":
    audit_app()
