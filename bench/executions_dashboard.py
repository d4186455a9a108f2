"""Dashboard summary latency at scale, and the executions projection's rebuild rate.

Two ways to fill a scratch database (``--seed``):

- ``counters`` (the default; how ``make bench-executions --dashboard N``
  loads 10,000,000): EXECUTIONS executions are generated in SQL
  (``generate_series``, a fixed ``setseed``) over the last 730 days, in 20
  organisations of 50 workflows each (a few busy workflows, many quiet
  ones), with a realistic mix of outcomes, triggers and log-normal
  durations, and turned into the counter documents by
  ``projections.executions.COUNTERS_SQL``, the statement a test holds equal
  to what the projection keeps incrementally. Neither the log nor execution
  documents are written: the summary reads only counters.
- ``log``: real domain events written to the log with COPY over the last 30
  days, then a rebuild of the executions projection (events/s printed,
  beside the raw rate of reading the same events, and their ratio).

Then p50/p95 of ``GET /v1/dashboards/summary`` for one organisation over
the last 7, 90 and 365 days, through HTTP beside the same query run
directly on asyncpg.

    python bench/executions_dashboard.py [--executions 1000000] [--seed counters|log]
                                         [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


COUNTER_DAYS = 730  # two years: a 365-day summary has a previous period as full as itself
RANGES = (7, 90, 365)

# One row per execution in COUNTERS_SQL's source columns. Each row draws its
# own random numbers (the subquery's select list is evaluated per row).
SYNTHETIC_EXECUTIONS_SQL = """
SELECT 'org' || mod(i, 20) AS org_id,
       md5('wf' || mod(i, 20) || ':' || (floor(exp(u_workflow * ln(51)))::int - 1))::uuid::text
           AS workflow_id,
       queued_at,
       CASE WHEN u_outcome < 0.84 THEN 'succeeded' WHEN u_outcome < 0.94 THEN 'failed'
            WHEN u_outcome < 0.98 THEN 'canceled' ELSE 'crashed' END AS status,
       CASE WHEN u_trigger < 0.70 THEN 'manual' WHEN u_trigger < 0.90 THEN 'schedule'
            WHEN u_trigger < 0.98 THEN 'webhook' ELSE 'retry' END AS trigger,
       CASE WHEN u_outcome BETWEEN 0.96 AND 0.98 THEN NULL  -- canceled while queued
            ELSE round(exp(6.7 + 1.5 * sqrt(-2 * ln(1 - u_d1)) * cos(2 * pi() * u_d2)))::bigint
       END AS duration_ms,
       CASE WHEN u_outcome BETWEEN 0.96 AND 0.98 THEN 2 ELSE 3 END AS counts,
       queued_at AS counted_at,
       i AS position
FROM (
    SELECT i, random() AS u_workflow, random() AS u_outcome, random() AS u_trigger,
           random() AS u_d1, random() AS u_d2,
           %(now)s::timestamptz - %(span)s::interval * random() AS queued_at
    FROM generate_series(1, %(executions)s::bigint) i
) drawn
"""


def seed_counters(target: PgTarget, executions: int, now: datetime) -> None:
    """The counter documents of ``executions`` generated executions, in one statement.

    Secondary indexes are dropped for the load and built again after it (as
    a projection rebuild does).
    """
    import psycopg

    from projections.executions import COUNTERS_SQL

    started = time.perf_counter()
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        indexes = [
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'doc_execution_stats' "
                "AND indexname <> 'doc_execution_stats_pkey'"
            ).fetchall()
        ]
        for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'doc_execution_stats' "
            "AND indexname <> 'doc_execution_stats_pkey'"
        ).fetchall():
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("SET work_mem = '1GB'")
        conn.execute("SELECT setseed(0.11)")
        conn.execute(
            "INSERT INTO doc_execution_stats (_id, org_id, data, _version, _position, created, "
            f"updated) SELECT * FROM ({COUNTERS_SQL.format(source=SYNTHETIC_EXECUTIONS_SQL)}) c",
            {"now": now, "span": f"{COUNTER_DAYS} days", "executions": executions},
        )
        loaded = time.perf_counter() - started
        for statement in indexes:
            conn.execute(statement)
        conn.execute("VACUUM ANALYZE doc_execution_stats")
        (documents,) = conn.execute("SELECT count(*) FROM doc_execution_stats").fetchone() or (0,)
    print(
        f"seeded {executions:,} executions over {COUNTER_DAYS} days as {documents:,} counter "
        f"documents in {loaded:.0f} s (+ {time.perf_counter() - started - loaded:.0f} s indexes)"
    )


def seed_log(target: PgTarget, executions: int, now: datetime) -> None:
    """Real events in the log, then a rebuild of the executions projection."""
    import psycopg

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


def measure_dashboard(
    target: PgTarget, executions: int = 10_000_000, rounds: int = 300, how: str = "counters"
) -> None:
    """Seed, then time the summary over each of RANGES."""
    import aiohttp

    from infrastructure.database import create_engine
    from read_api.executions import Period, load_summary

    now = datetime.now(UTC)
    (seed_counters if how == "counters" else seed_log)(target, executions, now)
    org = ORGS[3]
    key = create_key(target, org, "viewer")
    periods = {days: Period(now - timedelta(days=days), now) for days in RANGES}

    async def direct(period: Period) -> list[float]:
        engine = create_engine(target, pool_size=2)
        timings = []
        try:
            figures = await load_summary(engine, org, period)  # warm-up
            for _ in range(rounds):
                begun = time.perf_counter()
                await load_summary(engine, org, period)
                timings.append(time.perf_counter() - begun)
        finally:
            await engine.dispose()
        print(f"  {figures['totals']['all']:,} executions in the period, org {org}")
        return timings

    async def over_http(base: str, period: Period) -> list[float]:
        timings = []
        headers = {"Authorization": f"Bearer {key}"}
        params = {"since": period.since.isoformat(), "until": period.until.isoformat()}
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
        print(f"  {label:<44} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
        return p95

    with running_server(target, extra_env={"REPORUNNER_ROLES": "read-api"}) as base:
        for days, period in periods.items():
            print(f"GET /v1/dashboards/summary, last {days} days, {rounds} requests:")
            report("same query on asyncpg (load_summary)", asyncio.run(direct(period)))
            http_p95 = report(
                "through HTTP (reporunner serve, read-api)", asyncio.run(over_http(base, period))
            )
            print(f"  HTTP p95 {http_p95:.2f} ms   (target: <= 15 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument(
        "--seed",
        choices=("counters", "log"),
        default="counters",
        help="counters: generated in SQL (fast); log: real events and a projection rebuild",
    )
    parser.add_argument("--rounds", type=int, default=300, help="requests per latency figure")
    args = parser.parse_args()
    with scratch_database() as target:
        measure_dashboard(target, args.executions, args.rounds, args.seed)


if __name__ == "__main__":
    main()
