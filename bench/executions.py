"""Execution throughput and latency, and the dashboard summary at scale.

In a scratch database:

- sync: ``POST /v1/workflows/{id}/executions`` of a 10-node workflow through
  HTTP (``reporunner serve --only write-api``), at 1 and 4 concurrent clients:
  executions/s and p50/p95 latency;
- async: the same executions queued through HTTP and run by 1, then 2,
  ``reporunner worker`` processes: executions/s from the first request until
  the last execution finished, and p50/p95 from queued to finished;
- the dashboard summary's p50/p95 over 7, 90 and 365 days with
  ``--dashboard`` executions counted (their counters generated in SQL, see
  ``bench/executions_dashboard.py``).

``--sync 0 --async 0`` runs only the dashboard part:

    python bench/executions.py [--sync 1000] [--async 2000] [--dashboard 1000000]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

import aiohttp
import psycopg

from bench._common import (
    ROOT,
    create_key,
    database_url,
    percentile,
    running_server,
    scratch_database,
)
from commands import WorkflowApplication
from domain.execution import Execution
from infrastructure.database import PgTarget
from infrastructure.eventstore import eventsourcing_env
from infrastructure.settings import Settings

# A 10-node linear workflow that does a little of everything the engine offers.
NODES: list[dict[str, Any]] = [
    {"id": "start", "type": "manual_trigger", "parameters": {}},
    {"id": "tag", "type": "set", "parameters": {"fields": {"meta.source": "bench"}}},
    {
        "id": "big",
        "type": "filter",
        "parameters": {"conditions": [{"field": "amount", "op": "gte", "value": 0}]},
    },
    {
        "id": "double",
        "type": "code",
        "parameters": {"expression": "item.amount * 2", "into": "twice"},
    },
    {
        "id": "route",
        "type": "if",
        "parameters": {"conditions": [{"field": "twice", "op": "gt", "value": 10}]},
    },
    {"id": "mark", "type": "set", "parameters": {"fields": {"flag": True}}},
    {"id": "pass1", "type": "noop", "parameters": {}},
    {
        "id": "name",
        "type": "code",
        "parameters": {"expression": "item.customer + ' #' + string(item.amount)", "into": "label"},
    },
    {"id": "pass2", "type": "noop", "parameters": {}},
    {"id": "done", "type": "set", "parameters": {"fields": {"status": "ok"}}},
]
CONNECTIONS = [
    {"from": a["id"], "to": b["id"], **({"output": "true"} if a["id"] == "route" else {})}
    for a, b in itertools.pairwise(NODES)
]
INPUT = {"customer": "Ada", "amount": 21}


async def create_workflow(base: str, key: str) -> str:
    body = {"name": "bench 10 nodes", "nodes": NODES, "connections": CONNECTIONS}
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(base, headers=headers) as session,
        session.post("/v1/workflows", json=body) as response,
    ):
        answer = await response.json()
        assert response.status == 201, answer
        return str(answer["id"])


async def run_many(
    base: str, key: str, workflow_id: str, mode: str, clients: int, total: int
) -> tuple[float, list[float], list[str]]:
    """``total`` executions from ``clients`` concurrent clients: elapsed, latencies, ids."""
    latencies: list[float] = []
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=clients)
    path = f"/v1/workflows/{workflow_id}/executions"
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:

        async def one_client(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                async with session.post(path, json={"input": INPUT, "mode": mode}) as response:
                    answer = await response.json()
                    expected = 200 if mode == "sync" else 202
                    if response.status != expected or answer["status"] == "failed":
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
    p50, p95 = percentile(latencies, 50) * 1000, percentile(latencies, 95) * 1000
    print(
        f"  {label:<34} {count:>6} in {elapsed:6.2f} s = {count / elapsed:7.0f}/s"
        f"   p50 {p50:7.2f} ms   p95 {p95:7.2f} ms"
    )


def queue_depth(target: PgTarget) -> int:
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute("SELECT count(*) FROM execution_queue").fetchone()
    return int(row[0]) if row else 0


async def paced(base: str, key: str, workflow_id: str, total: int, rate: float) -> list[str]:
    """``total`` async runs submitted at ``rate`` per second (a moderate, steady load)."""
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    path = f"/v1/workflows/{workflow_id}/executions"
    async with aiohttp.ClientSession(base, headers=headers) as session:
        started = time.perf_counter()
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            async with session.post(path, json={"input": INPUT, "mode": "async"}) as response:
                ids.append((await response.json())["execution_id"])
    return ids


def queue_wait(target: PgTarget) -> None:
    while queue_depth(target):
        time.sleep(0.02)


def finish_latencies(app: WorkflowApplication, ids: list[str]) -> list[float]:
    """Queued -> finished, from the executions' own event timestamps."""
    latencies = []
    for execution_id in ids:
        execution = app.repository.get(uuid.UUID(execution_id))
        assert isinstance(execution, Execution) and execution.status == "succeeded"
        assert execution.finished_at is not None
        latencies.append((execution.finished_at - execution.queued_at).total_seconds())
    return latencies


def measure_async(target: PgTarget, base: str, key: str, workflow_id: str, total: int) -> None:
    app = WorkflowApplication(
        env=eventsourcing_env(target, Settings(database_url="postgresql://x"))
    )
    env = {**os.environ, "DATABASE_URL": database_url(target), "REPORUNNER_LOG_LEVEL": "warning"}
    for processes in (1, 2):
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reporunner",
                    "worker",
                    "--no-migrate",
                    "--concurrency",
                    "4",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(processes)
        ]
        try:
            time.sleep(2)  # let the workers connect
            # Throughput: how fast the workers drain a backlog fed by 8 clients.
            started = time.perf_counter()
            _, _, ids = asyncio.run(run_many(base, key, workflow_id, "async", 8, total))
            queue_wait(target)
            elapsed = time.perf_counter() - started
            backlog = finish_latencies(app, ids)
            # Latency: queued -> finished at a steady 20 runs/s.
            paced_ids = asyncio.run(paced(base, key, workflow_id, 200, 20.0))
            queue_wait(target)
            steady = finish_latencies(app, paced_ids)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
        label = f"{processes} worker process(es) x 4"
        report(f"async backlog, {label}", total, elapsed, backlog)
        steady.sort()
        p50, p95 = (percentile(steady, p) * 1000 for p in (50, 95))
        print(f"  async at 20/s, {label}: queued -> finished p50 {p50:.2f} ms   p95 {p95:.2f} ms")
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sync", type=int, default=1000, help="sync executions per round")
    parser.add_argument("--async", dest="async_", type=int, default=2000, help="async executions")
    parser.add_argument("--dashboard", type=int, default=1_000_000, help="0 skips it")
    args = parser.parse_args()
    if args.sync or args.async_:
        measure_runs(args.sync, args.async_)
    if args.dashboard:
        from bench.executions_dashboard import measure_dashboard

        with scratch_database() as target:
            measure_dashboard(target, executions=args.dashboard)


def measure_runs(sync: int, async_: int) -> None:
    with scratch_database() as target:
        key = create_key(target, "bench")
        print(f"10-node workflow, input {INPUT}:")
        with running_server(target, extra_env={"REPORUNNER_ROLES": "write-api"}) as base:
            workflow_id = asyncio.run(create_workflow(base, key))
            asyncio.run(run_many(base, key, workflow_id, "sync", 2, 100))  # warm-up
            for clients in (1, 4):
                elapsed, latencies, _ = asyncio.run(
                    run_many(base, key, workflow_id, "sync", clients, sync)
                )
                report(f"sync over HTTP, {clients} client(s)", sync, elapsed, latencies)
            measure_async(target, base, key, workflow_id, async_)


if __name__ == "__main__":
    main()
