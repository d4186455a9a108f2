"""The console's own answers under ``/ui``: its shell and assets, and ``/ui/api/*``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest

from tests.helpers import webhook, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")


def test_the_shell_and_its_assets(client: httpx.Client) -> None:
    shell = client.get("/ui/workflows/anything")
    assert shell.status_code == 200
    assert shell.headers["content-type"].startswith("text/html")
    assert shell.headers["cache-control"] == "no-store"
    assert 'id="sign-in-form"' in shell.text
    [script] = [
        part.split('"')[0] for part in shell.text.split('src="')[1:] if "console.js" in part
    ]
    asset = client.get(script)
    assert asset.status_code == 200
    assert "immutable" in asset.headers["cache-control"]
    assert client.get("/ui/static/nothing.js").status_code == 404
    mistyped = client.get("/ui/api/nothing")
    assert mistyped.status_code == 404
    assert mistyped.headers["content-type"] == "application/problem+json"
    assert client.post("/ui/overview").status_code == 405


def test_session_says_what_the_role_may_do(
    client: httpx.Client, org: str, make_key: Callable[[str, str], str]
) -> None:
    viewer = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    answer = client.get("/ui/api/session", headers=viewer)
    assert answer.status_code == 200
    assert answer.json() | {"key_name": "test"} == {
        "org_id": org,
        "project_id": None,
        "role": "viewer",
        "key_name": "test",
        "permissions": ["workflows:read"],
        "write_api_url": "",
    }
    refused = client.get("/ui/api/session")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"


def test_triggers_name_webhook_urls_and_next_fires(
    client: httpx.Client, owner: dict[str, str], api_url: str, org: str
) -> None:
    schedule = {
        "id": "nightly",
        "type": "schedule_trigger",
        "parameters": {"cron": "0 3 * * *", "timezone": "UTC"},
    }
    body = workflow_body(
        "triggered",
        nodes=[webhook(path="orders/new"), schedule, {"id": "a", "type": "noop", "parameters": {}}],
        connections=[{"from": "hook", "to": "a"}, {"from": "nightly", "to": "a"}],
    )
    created = client.post("/v1/workflows", json=body, headers=owner)
    assert created.status_code == 201, created.text
    workflow_id, position = created.json()["id"], created.json()["position"]
    client.get(
        f"/v1/workflows/{workflow_id}", headers={**owner, "X-Min-Position": str(position)}
    ).raise_for_status()

    before = datetime.now(UTC)
    answer = client.get(f"/ui/api/workflows/{workflow_id}/triggers", headers=owner)
    assert answer.status_code == 200, answer.text
    triggers: dict[str, Any] = answer.json()
    assert triggers["active"] is False
    assert triggers["webhooks"] == [
        {
            "node_id": "hook",
            "method": "POST",
            "path": "orders/new",
            "url": f"{api_url}/hooks/{org}/orders/new",
            "auth": "none",
        }
    ]
    [nightly] = triggers["schedules"]
    fires = [datetime.fromisoformat(at) for at in nightly["next_fires"]]
    assert len(fires) == 5
    assert all(at.hour == 3 and at.minute == 0 for at in fires)
    assert before < fires[0] <= before + timedelta(days=1)
    assert all(later - earlier == timedelta(days=1) for earlier, later in pairwise(fires))

    missing = client.get(
        "/ui/api/workflows/00000000-0000-4000-8000-000000000000/triggers", headers=owner
    )
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]
    assert client.get("/ui/api/workflows/not-a-uuid/triggers", headers=owner).status_code == 422


def test_system_lists_followers_queue_and_checks(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    answer = client.get("/ui/api/system", headers=owner)
    assert answer.status_code == 200, answer.text
    system = answer.json()
    assert system["head"] >= 1
    assert "workflows" in {row["name"] for row in system["followers"]}
    assert system["checks"]["postgres"] == "ok"
    assert set(system["rate_limits"]) >= {"enabled", "write_per_s", "read_per_s"}
