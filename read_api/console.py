"""The operator console at ``/ui``: one server-rendered shell, our own script, no CDN.

The shell (jinja2) holds the navigation and an empty main area; ``console.js``
signs in with an API key kept in the browser's session storage, sends it as the
bearer header to the JSON APIs, and draws each page (charts and graphs as SVG).
The key never reaches a URL, so it is in no access log.

Besides the assets, three small JSON answers the pages need and the public API
lacks: who the key is (to hide what its role may not do), a workflow's triggers
(webhook URLs, schedules' next fire times: computed by the domain), and the
system's state (positions, lag, dead letters, queue, relay, scheduler, limits).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from domain.triggers import schedule_triggers, webhook_routes
from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.workflows import WORKFLOWS
from read_api.queries import get_document

log = structlog.get_logger("reporunner.console")

ASSETS = Path(__file__).parent / "console_assets"
# The pages the script draws; any other /ui path is a 404 page of the shell itself.
PAGES = ("overview", "workflows", "executions", "audit", "system")
NEXT_FIRES = 5

_templates = Environment(
    loader=FileSystemLoader(ASSETS), autoescape=select_autoescape(["html"]), auto_reload=False
)
_shell = _templates.get_template("shell.html")
# The assets' URLs carry a hash of their content, so a browser may keep them for good
# (one request fewer per page load) and still never runs a stale script.
ASSET_VERSION = hashlib.sha256(
    b"".join((ASSETS / "static" / name).read_bytes() for name in ("console.js", "console.css"))
).hexdigest()[:16]

router = APIRouter(prefix="/ui", include_in_schema=False)


def _json(body: Any) -> Response:
    return Response(dumps_answer(body), media_type="application/json")


def write_api_url(request: Request) -> str:
    """Where the console sends commands: the configured write API, else this origin."""
    configured: str = request.app.state.settings.console_write_api_url
    return configured.rstrip("/")


@router.get("", response_class=HTMLResponse)
@router.get("/{page:path}", response_class=HTMLResponse)
async def console_shell(request: Request, page: str = "") -> HTMLResponse:
    """The same shell for every page: the script reads the path and draws it."""
    if page.startswith(("api/", "static/")):  # a mistyped API or asset path is no page
        raise Problem(404, f"nothing at /ui/{page}", type_=problem_type("not-found"))
    html = _shell.render(
        pages=PAGES,
        write_api_url=write_api_url(request),
        asset_version=ASSET_VERSION,
    )
    # No caching of the shell (it names the assets); the key is never in it.
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


api = APIRouter(prefix="/ui/api", include_in_schema=False)


@api.get("/session")
async def console_session(request: Request) -> Response:
    """Who the key is: the console shows only what its role may do (the API enforces it)."""
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    return _json(
        {
            "org_id": principal.org_id,
            "project_id": None if principal.project_id is None else str(principal.project_id),
            "role": str(principal.role),
            "key_name": principal.name,
            "permissions": sorted(p.value for p in Permission if principal.may(p)),
            "write_api_url": write_api_url(request),
        }
    )


def trigger_summary(
    org_id: str, nodes: list[dict[str, Any]], hooks_base: str, now: datetime
) -> dict[str, Any]:
    """A definition's webhooks (with their URLs) and schedules (with their next fires)."""
    hooks = [
        {
            "node_id": route.node_id,
            "method": route.method,
            "path": route.path,
            "url": f"{hooks_base}/hooks/{org_id}/{route.path}",
            "auth": route.parameters.auth.type,
        }
        for route in webhook_routes(nodes)
    ]
    schedules = []
    for trigger in schedule_triggers(nodes):
        schedule = trigger.schedule
        schedules.append(
            {
                "node_id": trigger.node_id,
                "cron": schedule.cron,
                "interval_s": schedule.interval_s,
                "timezone": schedule.timezone,
                "next_fires": [
                    at.astimezone(UTC).isoformat()
                    for at in islice(schedule.instants_after(now), NEXT_FIRES)
                ],
            }
        )
    return {"webhooks": hooks, "schedules": schedules}


@api.get("/workflows/{workflow_id}/triggers")
async def console_triggers(workflow_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    document = await get_document(
        request.app.state.engine,
        WORKFLOWS,
        principal.org_id,
        str(workflow_id),
        principal.project_id,
    )
    if document is None:
        raise Problem(404, f"workflow {workflow_id} not found", type_=problem_type("not-found"))
    hooks_base = write_api_url(request) or str(request.base_url).rstrip("/")
    summary = trigger_summary(
        principal.org_id, document.get("nodes", []), hooks_base, datetime.now(UTC)
    )
    return _json(
        {"active": bool(document.get("active")), "active_since": document.get("active_since")}
        | summary
    )


@api.get("/system")
async def console_system(request: Request) -> Response:
    """The deployment's state as this process sees it: the log's followers, queue, checks."""
    await authorize(request, Permission.READ_WORKFLOWS)
    state = request.app.state
    snapshot = await state.db_gauges.refresh()
    checks = {name: await check() for name, check in state.ready_checks.items()}
    settings = state.settings
    body: dict[str, Any] = {
        "checks": checks,
        "head": None,
        "followers": [],
        "dead_letters": {},
        "queue": {},
        "rate_limits": {
            "enabled": state.rate_limiter is not None,
            "write_per_s": settings.rate_limit_write_per_s,
            "write_burst": settings.rate_limit_write_burst,
            "read_per_s": settings.rate_limit_read_per_s,
            "read_burst": settings.rate_limit_read_burst,
        },
    }
    if snapshot is not None:
        body |= {
            "head": snapshot.head,
            "followers": [
                {
                    "name": name,
                    "position": row.position,
                    "lag_events": row.lag_events,
                    "lag_seconds": round(row.lag_seconds, 1),
                }
                for name, row in sorted(snapshot.followers.items())
            ],
            "dead_letters": snapshot.dead_letters,
            "queue": snapshot.queue,
        }
    return _json(body)


class _ImmutableAssets(StaticFiles):
    """The console's script and styles, cached for a year: their URLs change with them."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console on ``app`` (a process with the read-api role)."""
    app.mount("/ui/static", _ImmutableAssets(directory=ASSETS / "static"), name="console-static")
    app.include_router(api)
    app.include_router(router)
