"""The template catalogue is derived from the log: a rebuild gives the same table."""

from __future__ import annotations

from typing import Any

from commands import WorkflowApplication, WorkflowCommands
from commands.models import CommandContext, CreateWorkflow
from commands.templates import PublishTemplate, TemplateCommands, rebuild_catalogue
from tests.helpers import trigger


def _catalogue(app: WorkflowApplication) -> list[dict[str, Any]]:
    with app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM templates ORDER BY template_id")
        return list(cur.fetchall())


def test_a_rebuild_from_the_log_equals_the_live_catalogue(
    commands: WorkflowCommands, org: str
) -> None:
    ctx = CommandContext(org_id=org, actor="test", correlation_id="catalogue")
    templates = TemplateCommands(commands)
    body = {
        "name": "Catalogued",
        "nodes": [
            trigger(),
            {"id": "s", "type": "set", "parameters": {"fields": {"n": "{{ params.n }}"}}},
        ],
        "connections": [{"from": "start", "to": "s"}],
    }
    workflow = commands.create(CreateWorkflow(**body), ctx)
    published = [
        templates.publish(
            PublishTemplate(
                workflow_id=workflow.workflow_id,
                visibility=visibility,
                parameters=[{"name": "n", "type": "integer", "default": 1}],
            ),
            ctx,
        )
        for visibility in ("organisation", "public")
    ]
    templates.unpublish(published[0].template_id, ctx)
    live = _catalogue(commands.app)
    ours = [row for row in live if row["org_id"] == org]
    assert [row["unpublished_at"] is None for row in ours] == [
        row["template_id"] != published[0].template_id for row in ours
    ]

    assert rebuild_catalogue(commands.app) >= 2
    assert _catalogue(commands.app) == live
