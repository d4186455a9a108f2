"""``--json`` on the CLI's listings: one JSON object a line on stdout, the tables' facts."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import redis

from domain.project import default_project_id
from infrastructure.database import PgTarget
from tests.integration.test_cli import _cli


def _lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_keys_list_json_has_each_key_and_never_its_secret(db_target: PgTarget, org: str) -> None:
    made = _cli(db_target, "keys", "create", "--org", org, "--role", "editor", "--name", "ci")
    secret = made.stdout.strip().splitlines()[-1]
    listed = _cli(db_target, "keys", "list", "--org", org, "--json")
    assert listed.returncode == 0, listed.stderr
    (key,) = _lines(listed.stdout)
    assert key["org_id"] == org and key["role"] == "editor" and key["name"] == "ci"
    assert key["revoked_at"] is None and str(key["created_at"]).endswith("+00:00")
    assert secret.startswith(str(key["prefix"])) and secret not in listed.stdout


def test_projections_status_json_has_a_line_per_follower(db_target: PgTarget) -> None:
    done = _cli(db_target, "projections", "status", "--json")
    assert done.returncode == 0, done.stderr
    rows = {str(row["name"]): row for row in _lines(done.stdout)}
    assert {"workflows", "executions", "workflow-runs", "audit-chain"} <= set(rows)
    for row in rows.values():
        assert row["lag_events"] == int(row["head"]) - int(row["position"])  # type: ignore[call-overload]
        assert isinstance(row["dead_letters"], int)


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
def test_bus_status_json_has_a_line_per_stream_with_its_groups(db_target: PgTarget) -> None:
    prefix = f"reporunner-test-clijson-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        client.xadd(f"{prefix}:events", {"position": "1"}, id="1-0")
        client.xgroup_create(f"{prefix}:events", "notifier", id="0")
        done = _cli(db_target, "bus", "status", "--prefix", prefix, "--json")
        assert done.returncode == 0, done.stderr
        (stream,) = _lines(done.stdout)
        assert stream["name"] == f"{prefix}:events" and stream["length"] == 1
        (group,) = stream["groups"]  # type: ignore[misc]
        assert group["name"] == "notifier" and group["lag"] == 1 and group["dead_letters"] == 0
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_keys_create_with_a_project_confines_the_key(db_target: PgTarget, org: str) -> None:
    project = str(default_project_id(org))
    made = _cli(db_target, "keys", "create", "--org", org, "--role", "viewer", "--project", project)
    assert made.returncode == 0, made.stderr
    listed = _cli(db_target, "keys", "list", "--org", org, "--json")
    (key,) = _lines(listed.stdout)
    assert key["project_id"] == project
    refused = _cli(db_target, "keys", "create", "--org", org, "--role", "viewer", "--project", "x")
    assert refused.returncode == 2 and "not a project id" in refused.stdout + refused.stderr
    unknown = str(uuid.uuid4())
    refused = _cli(
        db_target, "keys", "create", "--org", org, "--role", "viewer", "--project", unknown
    )
    assert refused.returncode == 2 and "not found" in refused.stderr
