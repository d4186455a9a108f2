"""Projection rebuild throughput, and query latency over the rebuilt views.

Seeds a scratch database's log with EVENTS events (a realistic mix: one
Created and then Updated events over WORKFLOWS workflows), then:

- rebuilds the workflows projection and prints events/s, beside the raw rate
  of reading the same events from the store, and their ratio;
- (with --http) the p50/p95 latency of GET /v1/workflows with a two-field
  filter and of a $group pipeline through HTTP, beside the same SQL run
  directly on asyncpg.

    python bench/projection_rebuild.py [--events 1000000] [--workflows 100000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    create_key,
    percentile,
    raw_read_rate,
    running_server,
    scratch_database,
)
from commands import WorkflowApplication
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, eventsourcing_env
from infrastructure.settings import Settings
from projections.rebuild import rebuild
from projections.runner import Projector
from projections.workflows import WorkflowsProjection

ORGS = [f"org{i}" for i in range(20)]
TAGS = ["billing", "ops", "marketing", "sales", "etl", "alerts"]


def create_workflow_application(target: PgTarget, settings: Settings) -> WorkflowApplication:
    return WorkflowApplication(env=eventsourcing_env(target, settings))


def definition(rng: random.Random, i: int) -> dict:
    size = rng.randint(2, 6)
    nodes = [{"id": "start", "type": "manual_trigger", "parameters": {}}]
    nodes += [
        {"id": f"n{k}", "type": "set", "parameters": {"fields": {f"f{k}": k}}}
        for k in range(1, size)
    ]
    connections = [{"from": nodes[k]["id"], "to": nodes[k + 1]["id"]} for k in range(size - 1)]
    return {
        "name": f"workflow {i}",
        "nodes": nodes,
        "connections": connections,
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "settings": {"timeout_ms": rng.choice([1000, 30000, 60000])},
    }


def seed(target: PgTarget, events: int, workflows: int) -> None:
    """Write the log with COPY: generating real domain events, storing them as the app would."""
    import psycopg

    app = create_workflow_application(target, Settings(database_url="postgresql://unused"))
    rng = random.Random(7)
    started = time.perf_counter()
    live: list[Workflow] = []
    written = 0
    with psycopg.connect(target.conninfo()) as conn, conn.cursor() as cur:
        with cur.copy(
            f"COPY {EVENTS_TABLE} (originator_id, originator_version, topic, state) FROM STDIN"
        ) as copy:
            while written < events:
                create = len(live) < workflows and (
                    not live or rng.random() < workflows / events * 1.2
                )
                meta = EventMeta(
                    org_id=rng.choice(ORGS), actor="apikey:bench", correlation_id="seed"
                )
                if create:
                    wf = Workflow.create(
                        workflow_id=uuid.uuid4(), definition=definition(rng, len(live)), meta=meta
                    )
                    live.append(wf)
                else:
                    wf = rng.choice(live)
                    wf.update({"description": f"edit {written}"}, meta)
                for event in wf.collect_events():
                    stored = app.mapper.to_stored_event(event)
                    copy.write_row(
                        (
                            stored.originator_id,
                            stored.originator_version,
                            stored.topic,
                            stored.state,
                        )
                    )
                    written += 1
                if written % 100_000 < 1:
                    print(f"  seeded {written:,} events", flush=True)
        conn.commit()
    app.close()
    elapsed = time.perf_counter() - started
    print(f"seeded {written:,} events over {len(live):,} workflows in {elapsed:.0f} s")


LIST_FILTER = {"tags": "billing", "settings.timeout_ms": 30000}
# A dashboard tile: live workflows per tag, with how often they were edited.
DASHBOARD_PIPELINE = [
    {"$match": {"deleted": False}},
    {"$unwind": "$tags"},
    {
        "$group": {
            "_id": "$tags",
            "workflows": {"$count": {}},
            "avg_version": {"$avg": "$version"},
            "max_version": {"$max": "$version"},
        }
    },
    {"$sort": {"workflows": -1}},
]


def measure_queries(target: PgTarget, org: str, rounds: int) -> None:
    """p50/p95 of a filtered list and of a $group pipeline through HTTP, beside their SQL."""
    import asyncio
    import json

    import aiohttp
    from sqlalchemy import text

    from infrastructure.database import create_engine
    from projections.pipeline import compile_pipeline
    from projections.store import collection_table
    from read_api.queries import list_documents, parse_sort

    key = create_key(target, org, "viewer")
    sort = parse_sort(None, "-created_at")
    fragment = compile_pipeline(
        DASHBOARD_PIPELINE,
        source_sql=f"SELECT data FROM {collection_table('workflows')} WHERE org_id = :org",
        source_params={"org": org},
    )

    async def list_sql(engine: Any) -> None:
        await list_documents(
            engine,
            "workflows",
            org,
            filter_=LIST_FILTER,
            sort=sort,
            limit=50,
            cursor=None,
            hide_deleted=True,
        )

    async def pipeline_sql(engine: Any) -> None:
        async with engine.connect() as conn:
            (await conn.execute(text(fragment.sql), fragment.params)).all()

    async def direct(query: Callable[[Any], Awaitable[None]]) -> list[float]:
        engine = create_engine(target, pool_size=2)
        timings = []
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                await query(engine)
                timings.append(time.perf_counter() - started)
        finally:
            await engine.dispose()
        return timings

    async def over_http(base: str, method: str, path: str, **request: Any) -> list[float]:
        timings = []
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(base, headers=headers) as session:
            for _ in range(rounds):
                started = time.perf_counter()
                async with session.request(method, path, **request) as response:
                    await response.read()
                    assert response.status == 200, response.status
                timings.append(time.perf_counter() - started)
        return timings

    def report(label: str, timings: list[float]) -> float:
        timings.sort()
        p50, p95 = percentile(timings, 50) * 1000, percentile(timings, 95) * 1000
        print(f"  {label:<44} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
        return p95

    list_params = {"filter": json.dumps(LIST_FILTER), "limit": "50"}
    queries = [
        (
            f"GET /v1/workflows, filter {json.dumps(LIST_FILTER)}",
            list_sql,
            ("GET", "/v1/workflows", {"params": list_params}),
        ),
        (
            "POST /v1/query/workflows/aggregate, $unwind + $group by tag",
            pipeline_sql,
            ("POST", "/v1/query/workflows/aggregate", {"json": {"pipeline": DASHBOARD_PIPELINE}}),
        ),
    ]
    with running_server(target, extra_env={"REPORUNNER_ROLES": "read-api"}) as base:
        for label, sql_query, (method, path, request) in queries:
            print(f"{label}, org {org}, {rounds} requests:")
            asyncio.run(direct(sql_query))  # warm-up, as for HTTP below
            sql_p95 = report("same SQL on asyncpg", asyncio.run(direct(sql_query)))
            asyncio.run(over_http(base, method, path, **request))  # warm-up
            http_p95 = report(
                "through HTTP (reporunner serve --only read-api)",
                asyncio.run(over_http(base, method, path, **request)),
            )
            print(f"  ratio HTTP / SQL p95: {http_p95 / sql_p95:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000, help="events per projector batch")
    parser.add_argument("--rounds", type=int, default=300, help="requests per latency figure")
    args = parser.parse_args()
    with scratch_database() as target:
        seed(target, args.events, args.workflows)
        raw = raw_read_rate(target)
        app = create_workflow_application(target, Settings(database_url="postgresql://unused"))
        projector = Projector(app, target, WorkflowsProjection(), batch_size=args.batch)
        started = time.perf_counter()
        rebuild(projector)
        elapsed = time.perf_counter() - started
        rate = args.events / elapsed
        print(f"rebuild: {args.events:,} events in {elapsed:.1f} s = {rate:,.0f} events/s")
        print(f"ratio rebuild / raw read: {rate / raw:.2f}")
        app.close()
        measure_queries(target, ORGS[3], args.rounds)


if __name__ == "__main__":
    main()
