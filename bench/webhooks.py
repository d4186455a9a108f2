"""Webhook throughput and latency: a webhook -> ``set`` workflow, n8n's benchmark shape.

In a scratch database, against ``reporunner serve --only write-api --workers 2``
(one HTTP process per core, as one would serve for throughput; with
``REPORUNNER_SYNC_RUNS_PER_ORG=32``, as the load is one organisation's):

- ``when_finished``: each call answers with the run's output; executions/s
  and p50/p95/p99 of the call, at 1, 8 and 32 clients;
- ``immediately``: each call answers 202 once the run is queued; accepted/s
  and p50/p95/p99 of the call at 1, 8 and 32 clients, then the backlog
  drained by ``reporunner worker`` processes: finished/s counted from their
  start (process start-up included), finished/s once running (first start
  to last end, from the executions' own event timestamps), and accepted ->
  finished p50/p95/p99 from those timestamps.

    python bench/webhooks.py [--calls 2000] [--workers 2] [--server-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._common import (
    ROOT,
    create_key,
    database_url,
    percentile,
    running_server,
    scratch_database,
)
from bench.executions import queue_wait
from commands import WorkflowApplication
from domain.execution import Execution
from infrastructure.eventstore import eventsourcing_env
from infrastructure.settings import Settings

ORG = "bench"
BODY = {"event": {"type": "order.created"}, "order": {"id": 7, "amount": 21}}
CLIENTS = (1, 8, 32)
WORKER = [sys.executable, "-m", "reporunner", "worker", "--no-migrate"]


async def hooked_workflow(base: str, key: str, path: str, response: str) -> None:
    body = {
        "name": f"bench webhook {response}",
        "nodes": [
            {
                "id": "hook",
                "type": "webhook_trigger",
                "parameters": {"path": path, "auth": {"type": "none"}, "response": response},
            },
            {"id": "tag", "type": "set", "parameters": {"fields": {"seen": True}}},
        ],
        "connections": [{"from": "hook", "to": "tag"}],
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(base, headers=headers) as session:
        async with session.post("/v1/workflows", json=body) as created:
            workflow_id = (await created.json())["id"]
            assert created.status == 201
        activate = f"/v1/workflows/{workflow_id}/activate"
        async with session.post(activate, headers={"If-Match": '"1"'}) as activated:
            assert activated.status == 200, await activated.text()


async def call_many(
    base: str, path: str, clients: int, total: int, expected: int
) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    ids: list[str] = []
    url = f"/hooks/{ORG}/{path}"
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def one_client(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                async with session.post(url, json=BODY) as response:
                    answer = await response.json()
                    if response.status != expected:
                        raise RuntimeError(f"{response.status} {answer}")
                latencies.append(time.perf_counter() - started)
                ids.append(answer["execution_id"])

        started = time.perf_counter()
        share = [total // clients + (1 if c < total % clients else 0) for c in range(clients)]
        await asyncio.gather(*(one_client(n) for n in share))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, ids


def report(label: str, count: int, elapsed: float, latencies: list[float]) -> None:
    latencies = sorted(latencies)
    p50, p95, p99 = (percentile(latencies, p) * 1000 for p in (50, 95, 99))
    print(
        f"  {label:<40} {count:>6} in {elapsed:6.2f} s = {count / elapsed:7.0f}/s"
        f"   p50 {p50:7.2f}   p95 {p95:7.2f}   p99 {p99:7.2f} ms"
    )


def drained(app: WorkflowApplication, ids: list[str]) -> tuple[list[float], float]:
    """Each run's accepted -> finished, and the span from the first start to the last end."""
    latencies: list[float] = []
    starts, ends = [], []
    for execution_id in ids:
        execution = app.repository.get(uuid.UUID(execution_id))
        assert isinstance(execution, Execution) and execution.status == "succeeded"
        assert execution.started_at is not None and execution.finished_at is not None
        latencies.append((execution.finished_at - execution.queued_at).total_seconds())
        starts.append(execution.started_at)
        ends.append(execution.finished_at)
    return latencies, (max(ends) - min(starts)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (x 4 each)")
    parser.add_argument(
        "--server-workers", type=int, default=2, help="HTTP processes of `serve --workers`"
    )
    args = parser.parse_args()
    with scratch_database() as target:
        key = create_key(target, ORG)
        app = WorkflowApplication(
            env=eventsourcing_env(target, Settings(database_url="postgresql://x"))
        )
        # One organisation's 32 clients: its sync-run cap (4 by default) would
        # answer most when_finished calls 429.
        server_env = {"REPORUNNER_ROLES": "write-api", "REPORUNNER_SYNC_RUNS_PER_ORG": "32"}
        with running_server(target, workers=args.server_workers, extra_env=server_env) as base:
            asyncio.run(hooked_workflow(base, key, "bench/finished", "when_finished"))
            asyncio.run(hooked_workflow(base, key, "bench/accepted", "immediately"))
            asyncio.run(call_many(base, "bench/finished", 8, 400, 200))  # warm-up, both processes
            print(f"serve --only write-api --workers {args.server_workers}")
            print("webhook -> set, response when_finished:")
            for clients in CLIENTS:
                elapsed, latencies, _ = asyncio.run(
                    call_many(base, "bench/finished", clients, args.calls, 200)
                )
                report(f"{clients} client(s)", args.calls, elapsed, latencies)
            print("webhook -> set, response immediately (accepted, no workers running):")
            accepted: list[str] = []
            for clients in CLIENTS:
                elapsed, latencies, ids = asyncio.run(
                    call_many(base, "bench/accepted", clients, args.calls, 202)
                )
                accepted += ids
                report(f"{clients} client(s)", args.calls, elapsed, latencies)
            env = {
                **os.environ,
                "DATABASE_URL": database_url(target),
                "REPORUNNER_LOG_LEVEL": "warning",
            }
            started = time.perf_counter()
            workers = [
                subprocess.Popen(
                    [*WORKER, "--concurrency", "4"],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(args.workers)
            ]
            try:
                queue_wait(target)
                elapsed = time.perf_counter() - started  # includes the workers' start
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.wait(timeout=30)
            latencies, running = drained(app, accepted)
            label = f"backlog drained by {args.workers} worker(s) x 4"
            report(f"{label}, from their start", len(accepted), elapsed, latencies)
            report(f"{label}, once running", len(accepted), running, latencies)
            print("  (latencies of the drain: accepted -> finished)")
        app.close()


if __name__ == "__main__":
    main()
