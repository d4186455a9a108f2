"""Claim order: a dead worker's execution is taken over before the queue's fresh rows.

Measured in the scale-out trial (issue 15): with 2,000 queued rows and a 30 s
lease, executions whose worker was killed stayed ``running`` for 143-165 s,
because claiming took every never-claimed row first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from infrastructure.database import PgTarget
from infrastructure.queue import ExecutionQueue
from infrastructure.settings import Settings
from reporunner.wiring import create_workflow_application
from tests.helpers import scratch_database

FRESH_ROWS = 2_000


@pytest.fixture(scope="module")
def queue_target(server_target: PgTarget) -> Iterator[PgTarget]:
    # A database of its own: the shared one's queue has other tests' rows and workers.
    with scratch_database(server_target, "reporunner_queue") as target:
        yield target


@pytest.fixture(scope="module")
def queue(queue_target: PgTarget, app_settings: Settings) -> Iterator[ExecutionQueue]:
    app = create_workflow_application(queue_target, app_settings)
    yield ExecutionQueue(app.event_store.datastore, queue_target)
    app.close()


def _fill(target: PgTarget) -> tuple[uuid.UUID, uuid.UUID]:
    """2,000 never-claimed rows, then one row whose worker died (lease expired) and
    one retry whose back-off ended; the expired lease is the older of the two."""
    expired, retry = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM execution_queue")
        conn.execute(
            "INSERT INTO execution_queue (execution_id, org_id, workflow_id, enqueued_at) "
            "SELECT gen_random_uuid(), 'org', gen_random_uuid(), "
            "       clock_timestamp() - make_interval(secs => 3600 - n) "
            "FROM generate_series(1, %s) AS n",
            (FRESH_ROWS,),
        )
        conn.execute(
            "INSERT INTO execution_queue "
            "(execution_id, org_id, workflow_id, claimed_by, lease_expires_at, claims) "
            "VALUES (%s, 'org', gen_random_uuid(), 'dead-worker', "
            "        clock_timestamp() - interval '20 seconds', 1)",
            (expired,),
        )
        conn.execute(
            "INSERT INTO execution_queue (execution_id, org_id, workflow_id, lease_expires_at) "
            "VALUES (%s, 'org', gen_random_uuid(), clock_timestamp() - interval '5 seconds')",
            (retry,),
        )
        conn.execute("ANALYZE execution_queue")
    return expired, retry


def test_an_expired_lease_is_claimed_before_fresh_rows(
    queue: ExecutionQueue, queue_target: PgTarget
) -> None:
    expired, retry = _fill(queue_target)

    first = queue.claim("new-worker", 30)
    assert [(c.execution_id, c.claims) for c in first] == [(expired, 2)]
    # Then the retry whose time came, then the fresh rows in enqueue order.
    assert [c.execution_id for c in queue.claim("new-worker", 30)] == [retry]
    with psycopg.connect(queue_target.conninfo()) as conn:
        oldest = [
            row[0]
            for row in conn.execute(
                "SELECT execution_id FROM execution_queue WHERE claimed_by IS NULL "
                "ORDER BY enqueued_at LIMIT 3"
            )
        ]
    assert {c.execution_id for c in queue.claim("new-worker", 30, limit=3)} == set(oldest)


def test_a_batch_claim_takes_expired_leases_then_fills_up_with_fresh_rows(
    queue: ExecutionQueue, queue_target: PgTarget
) -> None:
    expired, retry = _fill(queue_target)
    claimed = [c.execution_id for c in queue.claim("new-worker", 30, limit=4)]
    assert {expired, retry} < set(claimed)
    assert len(claimed) == 4 and len(set(claimed)) == 4


def test_a_live_lease_is_never_taken(queue: ExecutionQueue, queue_target: PgTarget) -> None:
    _fill(queue_target)
    with psycopg.connect(queue_target.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM execution_queue WHERE lease_expires_at IS NULL")
        conn.execute(
            "UPDATE execution_queue SET lease_expires_at = clock_timestamp() + interval '1 hour'"
        )
    assert queue.claim("new-worker", 30, limit=10) == []


def test_both_halves_of_the_claim_use_the_claimable_index(
    queue: ExecutionQueue, queue_target: PgTarget
) -> None:
    _fill(queue_target)
    with psycopg.connect(queue_target.conninfo()) as conn:
        conn.execute("SET enable_seqscan = off")  # a 2,000-row table may be scanned anyway
        sql, params = _explained_claim()
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
        conn.rollback()
    assert plan.count("execution_queue_claimable") == 2, plan
    assert "Sort" not in plan, plan


def _explained_claim() -> tuple[str, tuple[object, ...]]:
    from infrastructure.queue import CLAIM_SQL

    return CLAIM_SQL, (1, 1, "w", 30, 1)
