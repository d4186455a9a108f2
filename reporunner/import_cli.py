"""``reporunner import n8n FILE``: the same import as ``POST /v1/import/n8n``, from a file.

Runs on a host that reaches the database, like ``keys create``. The answer
(the new workflow's id, placeholders, notes) is JSON on stdout; a refusal is
the same JSON problem the API would answer, on stdout, with exit code 1
(2 for a file that is not an n8n export at all).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from commands.errors import WorkflowLimitReached
from commands.n8n_import import (
    ExportInvalid,
    ImportRefused,
    LoopRefused,
    import_n8n,
    parse_export,
)
from commands.n8n_import.service import ExportNotJson, ExportTooLarge
from commands.n8n_import.translate import MAX_EXPORT_BYTES
from domain.errors import WorkflowInvalid
from infrastructure.auth import InvalidOrgId, check_org_id
from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings

import_app = typer.Typer(help="Create workflows from other tools' exports.", no_args_is_help=True)


def _print(document: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


@import_app.command("n8n")
def import_n8n_file(
    file: Annotated[Path, typer.Argument(help="An n8n workflow export (JSON).")],
    org: Annotated[str, typer.Option(help="The organisation the workflow belongs to.")],
    actor: Annotated[str, typer.Option(help="Who the history names as its creator.")] = "cli",
    partial: Annotated[
        bool, typer.Option(help="Turn unsupported nodes into placeholders instead of refusing.")
    ] = False,
    project: Annotated[uuid.UUID | None, typer.Option(help="The project to create it in.")] = None,
) -> None:
    """Create a workflow from an n8n export; prints the answer as JSON."""
    import migrations
    from commands import CommandContext, WorkflowCommands
    from reporunner.wiring import create_workflow_application, resolve_database

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    try:
        check_org_id(org)
    except InvalidOrgId as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_EXPORT_BYTES + 1)
        document = parse_export(raw)
    except OSError as exc:
        typer.echo(f"cannot read {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    except (ExportTooLarge, ExportNotJson) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    database = resolve_database(settings)
    migrations.upgrade(database.target)
    app = create_workflow_application(database.target, settings)
    context = CommandContext(org_id=org, actor=actor, correlation_id=f"cli-{uuid.uuid4()}")
    try:
        answer = import_n8n(
            WorkflowCommands(app, max_workflows=settings.max_workflows_per_org),
            document,
            context,
            partial=partial,
            project_id=project,
        )
    except ExportInvalid as exc:
        _print(
            {"status": 422, "detail": f"not an n8n workflow export: {exc}", "errors": exc.problems}
        )
        raise typer.Exit(2) from None
    except LoopRefused as exc:
        _print({"status": 422, "detail": str(exc), "cycle": exc.cycle})
        raise typer.Exit(1) from None
    except ImportRefused as exc:
        _print({"status": 422, "detail": str(exc), "nodes": [node.as_json() for node in exc.nodes]})
        raise typer.Exit(1) from None
    except WorkflowInvalid as exc:
        errors = [{"loc": problem.loc, "msg": problem.msg} for problem in exc.problems]
        _print({"status": 422, "detail": str(exc), "errors": errors})
        raise typer.Exit(1) from None
    except WorkflowLimitReached as exc:
        _print({"status": 409, "detail": str(exc), "limit": "max_workflows", "value": exc.limit})
        raise typer.Exit(1) from None
    finally:
        app.close()
    _print(answer.as_json())
