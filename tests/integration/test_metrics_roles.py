"""``/metrics`` of each standalone role, as real ``reporunner`` processes, after a workload.

The write API runs with ``--workers 2`` (multiprocess mode: any worker
answers the sum of both); the roles without an API answer on a
``--metrics-port``; ``reporunner worker`` has no other HTTP at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from infrastructure.database import PgTarget
from tests.helpers import free_port, scratch_database, workflow_body
from tests.metrics_scrape import create_key, scrape, wait_for

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _process(target: PgTarget, *args: str, redis: bool = False, **env: str) -> Iterator[None]:
    environment = {
        **os.environ,
        "DATABASE_URL": target.url(),
        "REPORUNNER_LOG_FORMAT": "json",
        "REPORUNNER_LOG_LEVEL": "warning",
        # Small pools: these processes share the test server's connections with others.
        "REPORUNNER_DB_POOL_SIZE": "2",
        "REPORUNNER_DB_MAX_OVERFLOW": "2",
        "REPORUNNER_WORKER_CONCURRENCY": "1",
        **env,
    }
    if not redis:
        environment.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "reporunner", *args, "--no-migrate"],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        process.terminate()
        output = process.communicate(timeout=40)[0].decode()
        assert "Traceback" not in output, output


def _ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{base} did not become ready"
        time.sleep(0.2)


@pytest.fixture
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_metrics_roles") as target:
        yield target


def test_each_standalone_role_exports_its_own_work(target: PgTarget, org: str) -> None:
    bus_prefix = f"reporunner-test-metrics-{uuid.uuid4().hex[:12]}"
    with_relay = bool(os.environ.get("REDIS_URL"))
    ports = {role: free_port() for role in ("write", "read", "projections")}
    metrics_ports = {role: free_port() for role in ("projections", "worker", "relay")}
    write = f"http://127.0.0.1:{ports['write']}"
    read = f"http://127.0.0.1:{ports['read']}"
    projections = f"http://127.0.0.1:{metrics_ports['projections']}"
    worker = f"http://127.0.0.1:{metrics_ports['worker']}"
    relay = f"http://127.0.0.1:{metrics_ports['relay']}"
    headers = {"Authorization": f"Bearer {create_key(target, org)}"}
    with ExitStack() as stack:
        serve = ("serve", "--only")
        stack.enter_context(
            _process(target, *serve, "write-api", "--port", str(ports["write"]), "--workers", "2")
        )
        stack.enter_context(_process(target, *serve, "read-api", "--port", str(ports["read"])))
        stack.enter_context(
            _process(
                target,
                *serve,
                "projections",
                *("--port", str(ports["projections"])),
                *("--metrics-port", str(metrics_ports["projections"])),
            )
        )
        stack.enter_context(
            _process(target, "worker", "--metrics-port", str(metrics_ports["worker"]))
        )
        if with_relay:
            stack.enter_context(
                _process(
                    target,
                    *serve,
                    "relay",
                    *("--port", str(free_port())),
                    *("--metrics-port", str(metrics_ports["relay"])),
                    redis=True,
                    REPORUNNER_BUS_PREFIX=bus_prefix,
                )
            )
        try:
            for base in (write, read, projections, worker, *([relay] if with_relay else [])):
                _ready(base)
            _workload_and_scrapes(write, read, projections, worker, relay, headers, with_relay)
        finally:
            if with_relay:
                import redis

                with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
                    keys = list(client.scan_iter(match=f"{bus_prefix}:*", count=1000))
                    if keys:
                        client.delete(*keys)


def _workload_and_scrapes(
    write: str,
    read: str,
    projections: str,
    worker: str,
    relay: str,
    headers: dict[str, str],
    with_relay: bool,
) -> None:
    created = 6
    ids = []
    for i in range(created):
        # A new connection each: the kernel spreads them over the two workers.
        answer = httpx.post(f"{write}/v1/workflows", json=workflow_body(f"w{i}"), headers=headers)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    run = httpx.post(
        f"{write}/v1/workflows/{ids[0]}/executions", json={"mode": "async"}, headers=headers
    )
    assert run.status_code == 202, run.text
    position = run.json()["position"]

    # Multiprocess mode: whichever worker answers, the sum of both.
    for _ in range(4):
        writes = scrape(write)
        assert writes.value("reporunner_commands_total", command="create_workflow") == created
        assert writes.value("reporunner_commands_total", command="run_workflow") == 1
        assert writes.value("reporunner_events_appended_total") >= created + 1

    # The worker (no API; its metrics port only) ran the execution.
    runs = wait_for(
        worker,
        lambda s: s.value("reporunner_executions_total", status="succeeded", trigger="manual") == 1,
        "the worker to run the execution",
    )
    assert runs.value("reporunner_execution_duration_seconds_count", status="succeeded") == 1
    assert runs.value("reporunner_commands_total") == 0  # it serves no commands
    assert httpx.get(f"{worker}/v1/workflows", headers=headers).status_code == 404
    worker_ready = httpx.get(f"{worker}/readyz").json()
    assert worker_ready["checks"]["worker"] == "ok", worker_ready

    # The projections process applied the events; its views caught up.
    views = wait_for(
        projections,
        lambda s: (
            s.value("reporunner_projection_lag_events", projection="workflows") == 0
            and s.value("reporunner_log_head_position") >= position
        ),
        "the projections to catch up",
    )
    assert views.value("reporunner_follower_events_total", follower="workflows") >= position
    assert views.value("reporunner_follower_batch_duration_seconds_count", follower="workflows")
    # The execution's end took its row off the queue, in the same transaction.
    wait_for(projections, lambda s: s.value("reporunner_execution_queue_depth") == 0, "no queue")

    # The read API counts its reads under the route template.
    got = httpx.get(
        f"{read}/v1/workflows/{ids[-1]}",
        headers={**headers, "X-Min-Position": str(position)},
        timeout=10,
    )
    assert got.status_code == 200, got.text
    reads = scrape(read)
    route = "/v1/workflows/{workflow_id}"
    assert (
        reads.value(
            "reporunner_http_request_duration_seconds_count",
            route=route,
            method="GET",
            status="200",
        )
        == 1
    )

    if with_relay:
        published = wait_for(
            relay,
            lambda s: (
                s.value("reporunner_relay_lag_events") == 0
                and s.value("reporunner_relay_position") >= position
            ),
            "the relay to publish the log",
        )
        assert published.value("reporunner_follower_events_total", follower="relay") >= position
