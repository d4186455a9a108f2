"""``reporunner erase --org ORG --subject S``: erase one data subject (``commands/erasure.py``)."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated

import orjson
import typer
from rich.console import Console

from infrastructure.auth import InvalidOrgId, check_org_id
from infrastructure.logs import configure_logging
from infrastructure.settings import get_settings

console = Console(stderr=True)


def erase(
    org: Annotated[str, typer.Option(help="The organisation the subject's data belongs to.")],
    subject: Annotated[
        str,
        typer.Option(help="The subject's id, as the workflows' settings.data_subject finds it."),
    ],
    actor: Annotated[str, typer.Option(help="Who erases, for the Erased event.")] = "cli",
) -> None:
    """Destroy a data subject's key: their executions' payloads read erased from then on.

    Prints the result as JSON on stdout. Idempotent. Exit 2 without a master key.
    """
    import migrations
    from commands import WorkflowCommands
    from commands.erasure import DataSubjectErasure, ErasureUnavailable
    from commands.models import CommandContext
    from domain.data_subjects import MAX_SUBJECT_CHARS
    from reporunner.keys import start_keys
    from reporunner.wiring import (
        create_execution_services,
        create_workflow_application,
        keyring_for,
        resolve_database,
    )

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    try:
        check_org_id(org)
    except InvalidOrgId as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if not subject or len(subject) > MAX_SUBJECT_CHARS:
        console.print(f"[red]--subject must be 1-{MAX_SUBJECT_CHARS} characters[/red]")
        raise typer.Exit(2)
    target = resolve_database(settings).target
    migrations.upgrade(target)
    workflow_app = create_workflow_application(target, settings)
    start_keys(settings, target)  # a wrong master key stops here (exit 2)
    keyring = keyring_for(settings, workflow_app.event_store.datastore.get_connection)
    services = create_execution_services(
        workflow_app, WorkflowCommands(workflow_app, keyring), target, settings, keyring
    )
    try:
        erasure = DataSubjectErasure(workflow_app, services.runner.payloads, target)
        context = CommandContext(
            org_id=org, actor=f"cli:{actor}", correlation_id=f"cli-{uuid.uuid4().hex[:12]}"
        )
        result = erasure.erase(subject, context)
    except ErasureUnavailable as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    finally:
        services.close()
        workflow_app.close()
    sys.stdout.write(orjson.dumps(result.as_json()).decode() + "\n")
    console.print(
        "erased" if result.erased_now else "already erased",
        f"(subject scope {result.subject_scope}, log position {result.position})",
    )
