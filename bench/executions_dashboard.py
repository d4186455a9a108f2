"""Dashboard summary latency over many executions, and the executions projection's rebuild rate.

Seeds a scratch database's log with EXECUTIONS executions (Queued, Started,
then Succeeded / Failed / Canceled / Crashed in a realistic mix; some
canceled while still queued) over 1,000 workflows in 20 organisations, with
the events' timestamps spread over the last 30 days. Then:

- rebuilds the executions projection and prints events/s, beside the raw
  rate of reading the same events from the store, and their ratio;
- prints p50/p95 of ``GET /v1/dashboards/summary`` (the last 7 days, one
  organisation) through HTTP, beside the same query run directly on asyncpg,
  and their ratio; and, for context, the direct latency of list queries.

    python bench/executions_dashboard.py [--executions 1000000] [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
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
from domain.execution import Execution
from domain.meta import EventMeta
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, eventsourcing_env
from infrastructure.settings import Settings
from projections.executions import ExecutionsProjection
from projections.rebuild import rebuild
from projections.runner import Projector

ORGS = [f"org{i}" for i in range(20)]
WORKFLOWS_PER_ORG = 50
DAYS = 30
# Final outcomes, by weight. "canceled_queued" never starts (no duration).
OUTCOMES = {
    "succeeded": 84,
    "failed": 10,
    "canceled_running": 2,
    "canceled_queued": 2,
    "crashed": 2,
}


def create_workflow_application(target: PgTarget) -> WorkflowApplication:
    return WorkflowApplication(
        env=eventsourcing_env(target, Settings(database_url="postgresql://unused"))
    )


@contextmanager
def event_clock() -> Iterator[list[datetime]]:
    """Execution events are stamped with ``clock[0]`` instead of now."""
    clock = [datetime.now(UTC)]
    Execution.Event.create_timestamp = staticmethod(lambda: clock[0])  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        del Execution.Event.create_timestamp


def seed(target: PgTarget, executions: int, now: datetime) -> int:
    """Write the log with COPY: real domain events, stored as the app stores them.

    Queued times are uniform over the last DAYS days and written in time
    order, as a real log would be; workflows are picked with a skew (a few
    busy ones, many quiet ones), the org first, then one of its workflows.
    """
    import psycopg

    app = create_workflow_application(target)
    rng = random.Random(11)
    workflows = {org: [uuid.uuid4() for _ in range(WORKFLOWS_PER_ORG)] for org in ORGS}
    popularity = [1 / (rank + 1) for rank in range(WORKFLOWS_PER_ORG)]
    outcomes, weights = list(OUTCOMES), list(OUTCOMES.values())
    span = DAYS * 86400.0
    offsets = sorted(rng.uniform(0, span) for _ in range(executions))
    start = now - timedelta(days=DAYS)
    started = time.perf_counter()
    written = 0
    with (
        event_clock() as clock,
        psycopg.connect(target.conninfo()) as conn,
        conn.cursor() as cur,
        cur.copy(
            f"COPY {EVENTS_TABLE} (originator_id, originator_version, topic, state) FROM STDIN"
        ) as copy,
    ):
        for n, offset in enumerate(offsets):
            org = rng.choice(ORGS)
            meta = EventMeta(org_id=org, actor="apikey:bench", correlation_id="seed")
            clock[0] = start + timedelta(seconds=offset)
            execution = Execution.create(
                execution_id=uuid.uuid4(),
                workflow_id=rng.choices(workflows[org], popularity)[0],
                workflow_version=1,
                workflow_revision=1,
                mode="async",
                input={"order": n},
                meta=meta,
            )
            outcome = rng.choices(outcomes, weights)[0]
            clock[0] += timedelta(milliseconds=rng.lognormvariate(5, 1))  # ~150 ms in the queue
            if outcome == "canceled_queued":
                execution.cancel(meta=meta)
            else:
                execution.start(worker_id=f"worker-{n % 8}", meta=meta)
                clock[0] += timedelta(milliseconds=rng.lognormvariate(6.7, 1.5))  # ~800 ms
                if outcome == "succeeded":
                    execution.succeed(output={"ok": [{"n": n}]}, output_truncated=False, meta=meta)
                elif outcome == "failed":
                    execution.fail(error="node http: HTTP 502", meta=meta)
                elif outcome == "crashed":
                    execution.crash(reason="lease expired", meta=meta)
                else:
                    execution.cancel(meta=meta)
            for event in execution.collect_events():
                stored = app.mapper.to_stored_event(event)
                copy.write_row(
                    (stored.originator_id, stored.originator_version, stored.topic, stored.state)
                )
                written += 1
            if (n + 1) % 100_000 == 0:
                print(f"  seeded {n + 1:,} executions ({written:,} events)", flush=True)
    app.close()  # leaving the connection's block committed the COPY
    elapsed = time.perf_counter() - started
    print(f"seeded {executions:,} executions = {written:,} events in {elapsed:.0f} s")
    return written


def measure_dashboard(target: PgTarget, executions: int = 1_000_000, rounds: int = 300) -> None:
    """Seed, rebuild the executions projection, then time the summary."""
    import aiohttp
    import psycopg

    from infrastructure.database import create_engine
    from read_api.executions import Period, load_summary, workflow_executions_page
    from read_api.queries import list_documents, parse_sort

    now = datetime.now(UTC)
    events = seed(target, executions, now)
    raw = raw_read_rate(target)
    app = create_workflow_application(target)
    projector = Projector(app, target, ExecutionsProjection(), batch_size=2000)
    started = time.perf_counter()
    rebuild(projector)
    elapsed = time.perf_counter() - started
    app.close()
    print(f"rebuild: {events:,} events in {elapsed:.1f} s = {events / elapsed:,.0f} events/s")
    print(f"ratio rebuild / raw read: {events / elapsed / raw:.2f}")
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        # Fresh tables have no planner statistics until autovacuum gets to them.
        conn.execute("ANALYZE doc_executions")
        conn.execute("ANALYZE doc_execution_stats")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM doc_executions), "
            "(SELECT count(*) FROM doc_execution_stats)"
        ).fetchone()
        assert counts is not None
        busiest, quietest = conn.execute(
            "SELECT (array_agg(w ORDER BY n DESC))[1], (array_agg(w ORDER BY n))[1] FROM ("
            "SELECT data->>'workflow_id' AS w, count(*) AS n FROM doc_executions "
            "WHERE org_id = %s GROUP BY 1) t",
            (ORGS[3],),
        ).fetchone() or (None, None)
    print(f"views: {counts[0]:,} execution documents, {counts[1]:,} counter documents")

    org = ORGS[3]
    period = Period(now - timedelta(days=7), now)
    params = {"since": period.since.isoformat(), "until": period.until.isoformat()}
    key = create_key(target, org, "viewer")

    async def direct(query: Callable[[Any], Awaitable[Any]]) -> list[float]:
        engine = create_engine(target, pool_size=2)
        timings = []
        try:
            await query(engine)  # warm-up
            for _ in range(rounds):
                begun = time.perf_counter()
                await query(engine)
                timings.append(time.perf_counter() - begun)
        finally:
            await engine.dispose()
        return timings

    async def over_http(base: str) -> list[float]:
        timings = []
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(base, headers=headers) as session:
            for round_ in range(rounds + 20):  # the first 20 warm up
                begun = time.perf_counter()
                async with session.get("/v1/dashboards/summary", params=params) as response:
                    await response.read()
                    assert response.status == 200, response.status
                if round_ >= 20:
                    timings.append(time.perf_counter() - begun)
        return timings

    def report(label: str, timings: list[float]) -> float:
        timings.sort()
        p50, p95 = percentile(timings, 50) * 1000, percentile(timings, 95) * 1000
        print(f"  {label:<52} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
        return p95

    async def summary_sql(engine: Any) -> None:
        await load_summary(engine, org, period)

    print(f"GET /v1/dashboards/summary, last 7 days, org {org}, {rounds} requests:")
    sql_p95 = report("same query on asyncpg (load_summary)", asyncio.run(direct(summary_sql)))
    with running_server(target, extra_env={"REPORUNNER_ROLES": "read-api"}) as base:
        http_p95 = report("through HTTP (reporunner serve, read-api)", asyncio.run(over_http(base)))
    print(f"  ratio HTTP / SQL p95: {http_p95 / sql_p95:.2f}   (target: HTTP p95 <= 25 ms)")

    def listing(filter_: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
        async def query(engine: Any) -> None:
            await list_documents(
                engine,
                "executions",
                org,
                filter_=filter_,
                sort=parse_sort(None, "-created_at"),
                limit=50,
                cursor=None,
            )

        return query

    def of_workflow(workflow_id: str) -> Callable[[Any], Awaitable[Any]]:
        async def query(engine: Any) -> None:
            await workflow_executions_page(
                engine, org, workflow_id, filter_={}, limit=50, cursor=None
            )

        return query

    print(f"for context, first pages of 50 on asyncpg, org {org}:")
    for label, query in (
        ("GET /v1/executions", listing({})),
        ("GET /v1/executions, filter status failed", listing({"status": "failed"})),
        ("GET /v1/workflows/{busiest}/executions", of_workflow(busiest)),
        ("GET /v1/workflows/{quietest}/executions", of_workflow(quietest)),
    ):
        report(label, asyncio.run(direct(query)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=300, help="requests per latency figure")
    args = parser.parse_args()
    with scratch_database() as target:
        measure_dashboard(target, args.executions, args.rounds)


if __name__ == "__main__":
    main()
