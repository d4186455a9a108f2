from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_app


def test_read_api_caches_summaries_and_limits_each_organisation(
    db_target: PgTarget, app_settings: Settings, make_key: Callable[[str, str], str], org: str
) -> None:
    if not app_settings.redis_url:
        pytest.skip("needs REDIS_URL")
    settings = app_settings.model_copy(
        update={"rate_limit_read_per_s": 0.01, "rate_limit_read_burst": 3}
    )
    auth = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    with TestClient(create_app(settings, db_target, roles=("read-api",))) as client:
        first = client.get("/v1/dashboards/summary", headers=auth)
        second = client.get("/v1/dashboards/summary", headers=auth)
        pipeline = {"pipeline": [{"$count": "n"}]}
        aggregate = client.post("/v1/query/workflows/aggregate", json=pipeline, headers=auth)
        refused = client.get("/v1/workflows", headers=auth)
        health = client.get("/healthz")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    assert (aggregate.status_code, aggregate.headers["x-cache"]) == (200, "miss")
    remaining = [r.headers["ratelimit-remaining"] for r in (first, second, aggregate)]
    assert remaining == ["2", "1", "0"]
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "100")
    assert health.status_code == 200
    assert "ratelimit-limit" not in health.headers
