"""``/metrics`` and ``/readyz`` of in-process services after a scripted workload.

Each test has a database of its own, so the gauges read from it (the log's
head, projection lags, the queue) move only with the test's own workload.
Counters are process-wide (several apps share them in one test process):
tests assert how much they moved, never their absolute values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import FOLLOWERS, create_app
from tests.helpers import scratch_database, serving, workflow_body
from tests.metrics_scrape import Scrape, create_key, scrape, wait_for


@pytest.fixture
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_metrics") as target:
        yield target


def _settings(app_settings: Settings, **changes: Any) -> Settings:
    # This test's own bus streams (the relay runs when REDIS_URL is set), removed after.
    return app_settings.model_copy(
        update={"bus_prefix": f"reporunner-test-metrics-{uuid.uuid4().hex[:12]}", **changes}
    )


@pytest.fixture
def bus_cleanup(app_settings: Settings) -> Iterator[list[str]]:
    prefixes: list[str] = []
    yield prefixes
    if app_settings.redis_url and prefixes:
        import redis

        with redis.Redis.from_url(app_settings.redis_url) as client:
            for prefix in prefixes:
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)


def _ended(execution_id: str, base: str, headers: dict[str, str]) -> bool:
    response = httpx.get(f"{base}/v1/executions/{execution_id}", headers=headers, timeout=10)
    return response.status_code == 200 and response.json()["status"] == "succeeded"


def test_all_in_one_metrics_move_with_the_workload(
    target: PgTarget, app_settings: Settings, bus_cleanup: list[str], org: str
) -> None:
    settings = _settings(app_settings)
    bus_cleanup.append(settings.bus_prefix)
    headers = {"Authorization": f"Bearer {create_key(target, org)}"}
    with serving(create_app(settings, target)) as base:
        before = scrape(base)
        created = httpx.post(f"{base}/v1/workflows", json=workflow_body("m"), headers=headers)
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        stale = httpx.patch(
            f"{base}/v1/workflows/{workflow_id}",
            json={"name": "late"},
            headers={**headers, "If-Match": '"99"'},
        )
        assert stale.status_code == 409, stale.text
        invalid = httpx.post(f"{base}/v1/workflows", json={"nodes": "no"}, headers=headers)
        assert invalid.status_code == 422, invalid.text
        run = httpx.post(
            f"{base}/v1/workflows/{workflow_id}/executions", json={"mode": "async"}, headers=headers
        )
        assert run.status_code == 202, run.text
        doomed = httpx.post(f"{base}/v1/workflows", json=workflow_body("d"), headers=headers)
        doomed_id = doomed.json()["id"]
        deleted = httpx.delete(
            f"{base}/v1/workflows/{doomed_id}", headers={**headers, "If-Match": '"1"'}
        )
        assert deleted.status_code in (200, 204), deleted.text
        gone = httpx.patch(
            f"{base}/v1/workflows/{doomed_id}",
            json={"name": "after"},
            headers={**headers, "If-Match": '"1"'},
        )
        assert gone.status_code == 410, gone.text
        read = httpx.get(f"{base}/v1/workflows/{uuid.uuid4()}", headers=headers)
        assert read.status_code == 404

        def moved(name: str, **labels: str) -> float:
            return after.value(name, **labels) - before.value(name, **labels)

        after = wait_for(
            base,
            lambda s: (
                s.value("reporunner_executions_total", status="succeeded", trigger="manual")
                > before.value("reporunner_executions_total", status="succeeded", trigger="manual")
                and all(
                    s.value("reporunner_projection_lag_events", projection=name) == 0
                    for name in FOLLOWERS
                )
                and s.value("reporunner_log_head_position") > 0
            ),
            "the execution to end and every projection to catch up",
        )
        commands = "reporunner_commands_total"
        assert moved(commands, command="create_workflow", outcome="ok") == 2
        assert moved(commands, command="update_workflow", outcome="conflict") == 1
        assert moved(commands, command="create_workflow", outcome="invalid") == 1
        assert moved(commands, command="update_workflow", outcome="gone") == 1
        assert moved(commands, command="delete_workflow", outcome="ok") == 1
        assert moved(commands, command="run_workflow", outcome="ok") == 1
        # Reads are requests, not commands; every request has its route template.
        assert moved(commands) == 7
        duration = "reporunner_http_request_duration_seconds_count"
        assert moved(duration, route="/v1/workflows", method="POST", status="201") == 2
        assert moved(duration, route="/v1/workflows/{workflow_id}", method="GET", status="404") == 1
        assert not any(
            str(workflow_id) in labels.get("route", "") for _, labels, _ in after.samples
        )
        head = after.value("reporunner_log_head_position")
        assert moved("reporunner_events_appended_total") >= head > 0
        assert moved("reporunner_executions_total", status="succeeded", trigger="manual") == 1
        assert moved("reporunner_execution_duration_seconds_count", status="succeeded") == 1
        for name in FOLLOWERS:
            assert after.value("reporunner_projection_position", projection=name) == head
            assert after.value("reporunner_projection_lag_seconds", projection=name) == 0
            assert after.value("reporunner_dead_letters", follower=name) == 0
        assert moved("reporunner_follower_events_total", follower="workflows") >= head
        assert moved("reporunner_follower_batch_duration_seconds_count", follower="workflows") >= 1
        assert after.value("reporunner_execution_queue_depth") == 0
        assert after.value("reporunner_metrics_database_up") == 1
        assert after.families["reporunner_http_request_duration_seconds"] == "histogram"

        ready = httpx.get(f"{base}/readyz").json()
        assert ready["status"] == "ready", ready
        assert ready["checks"]["projections"] == "ok" and ready["checks"]["worker"] == "ok"
        assert "/metrics" not in httpx.get(f"{base}/openapi.json").json()["paths"]


def test_a_stuck_projection_lags_and_a_queued_execution_shows_in_the_depth(
    target: PgTarget, app_settings: Settings, org: str
) -> None:
    """A write API alone: nothing projects, nothing runs; the gauges say so."""
    settings = _settings(app_settings)
    headers = {"Authorization": f"Bearer {create_key(target, org)}"}
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("INSERT INTO projection_tracking (name) VALUES ('workflows')")
    with serving(create_app(settings, target, roles=("write-api",))) as base:
        first = scrape(base)
        assert "projections" not in httpx.get(f"{base}/readyz").json()["checks"]
        created = httpx.post(f"{base}/v1/workflows", json=workflow_body("q"), headers=headers)
        assert created.status_code == 201, created.text
        run = httpx.post(
            f"{base}/v1/workflows/{created.json()['id']}/executions",
            json={"mode": "async"},
            headers=headers,
        )
        assert run.status_code == 202, run.text
        position = run.json()["position"]

        def queued(s: Scrape) -> bool:
            return s.value("reporunner_log_head_position") >= position

        later = wait_for(base, queued, "the gauges to read the new head")
        assert later.value("reporunner_execution_queue_depth", state="queued") == 1
        assert later.value("reporunner_execution_queue_depth", state="running") == 0
        lag = "reporunner_projection_lag_events"
        assert later.value(lag, projection="workflows") == position
        assert later.value(lag, projection="workflows") > first.value(lag, projection="workflows")
        assert later.value("reporunner_projection_position", projection="workflows") == 0
        # The tracking row has not moved since it was made: its age is the lag in seconds.
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            conn.execute(
                "UPDATE projection_tracking SET updated_at = now() - interval '1 hour' "
                "WHERE name = 'workflows'"
            )
        wait_for(
            base,
            lambda s: s.value("reporunner_projection_lag_seconds", projection="workflows") >= 3600,
            "the lag in seconds to show the hour",
        )


def test_readyz_fails_when_this_process_projection_stalls(
    target: PgTarget, app_settings: Settings, org: str
) -> None:
    """A projections process whose projection does not move past the threshold: 503.

    The test holds the projection's leadership lock, so this process's
    projector stands by and the view stays behind the log.
    """
    settings = _settings(app_settings, ready_max_projection_lag_s=30.0)
    headers = {"Authorization": f"Bearer {create_key(target, org)}"}
    with psycopg.connect(target.conninfo(), autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext('projection:workflows'))")
        lock.execute("INSERT INTO projection_tracking (name) VALUES ('workflows')")
        with (
            serving(create_app(settings, target, roles=("write-api",))) as writer,
            serving(create_app(settings, target, roles=("projections",))) as projections,
        ):
            created = httpx.post(f"{writer}/v1/workflows", json=workflow_body(), headers=headers)
            assert created.status_code == 201, created.text
            ready = httpx.get(f"{projections}/readyz")
            assert ready.status_code == 200, ready.text  # behind, but not for long yet
            lock.execute(
                "UPDATE projection_tracking SET updated_at = now() - interval '1 minute' "
                "WHERE name = 'workflows'"
            )
            deadline_scrape = wait_for(
                projections,
                lambda s: s.value("reporunner_projection_lag_seconds", projection="workflows") > 30,
                "the stall to show",
            )
            assert deadline_scrape.value("reporunner_projection_lag_events", projection="workflows")
            failing = httpx.get(f"{projections}/readyz")
            assert failing.status_code == 503, failing.text
            body = failing.json()
            assert body["status"] == "failing"
            assert body["checks"]["projections"].startswith("failing: workflows has not moved")
            # Liveness stays liveness.
            assert httpx.get(f"{projections}/healthz").status_code == 200


def test_readyz_fails_when_this_process_relay_cannot_reach_redis(
    target: PgTarget, app_settings: Settings
) -> None:
    """A relay process whose Redis is away: 503 ``failing``; beside an API only ``degraded``."""
    settings = _settings(app_settings, redis_url="redis://127.0.0.1:1/0")
    with serving(create_app(settings, target, roles=("relay",))) as relay:
        body = wait_for_readyz(relay, lambda b: b["checks"]["relay"].startswith("failing"))
        assert body["status"] == "failing"
    with serving(create_app(settings, target, roles=("read-api", "relay"))) as both:
        body = wait_for_readyz(both, lambda b: b["checks"]["relay"].startswith("degraded"))
        assert body["status"] == "degraded"


def wait_for_readyz(base: str, condition: Any, timeout: float = 30) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{base}/readyz", timeout=10)
        body: dict[str, Any] = response.json()
        if condition(body):
            assert response.status_code == (200 if body["status"] == "degraded" else 503)
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
