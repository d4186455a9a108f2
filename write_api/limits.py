"""Per-organisation limits the write API enforces: runs a day, sync runs.

Each organisation's own limit (``OrgPolicy.limits``) overrides the global
setting; 0 globally means no limit.

(``max_workflows`` is the create command's own: ``commands/workflow_quota.py``.)

- ``executions_per_day``: a counter per organisation and UTC day, taken
  atomically before a run starts (``UPDATE ... WHERE executions < limit``)
  and given back if the start fails, so concurrent runs never pass it.
  Counted only while a limit applies. Past it: 429 with ``Retry-After`` at
  the next UTC midnight. Scheduled runs and automatic retries take from the
  same counter, in the transaction that records them (``commands/day_limit.py``).

A retry of a request whose ``Idempotency-Key`` already has its answer is
neither counted nor refused: it writes nothing and gets the first answer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from starlette.requests import Request

from infrastructure.database import single_statement
from infrastructure.problems import Problem, problem_type
from infrastructure.settings import Settings
from infrastructure.web import org_policy


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def sync_run_limit(request: Request, org_id: str) -> int | None:
    """The organisation's own cap on concurrent sync runs, if it has one."""
    limit = (await org_policy(request, org_id)).limits.get("sync_runs")
    return None if limit is None else int(limit)


async def _already_answered(request: Request, org_id: str) -> bool:
    """Whether this request retries a keyed one that has its answer already."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return False
    async with single_statement(request.app.state.engine) as conn:
        found = await conn.execute(
            text("SELECT 1 FROM idempotency_keys WHERE org_id = :org AND key = :key"),
            {"org": org_id, "key": key},
        )
        return found.first() is not None


def seconds_to_utc_midnight(now: datetime) -> int:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


@contextlib.asynccontextmanager
async def execution_allowance(
    request: Request, org_id: str, *, keyed: bool = True
) -> AsyncIterator[None]:
    """Count one run against the organisation's executions per day (429 past it);
    given back when the body raises (the run did not start). ``keyed``: the route
    honours ``Idempotency-Key`` (webhook calls do not, so their header proves nothing)."""
    policy = await org_policy(request, org_id)
    limit = int(policy.limit("executions_per_day", _settings(request).executions_per_org_per_day))
    if limit <= 0 or (keyed and await _already_answered(request, org_id)):
        yield
        return
    now = datetime.now(UTC)
    day = now.date()
    engine = request.app.state.engine
    async with single_statement(engine) as conn:  # commits alone
        taken = (
            await conn.execute(
                text(
                    "INSERT INTO organisation_day_executions AS c (org_id, day, executions) "
                    "VALUES (:org, :day, 1) ON CONFLICT (org_id, day) DO UPDATE "
                    "SET executions = c.executions + 1 WHERE c.executions < :cap "
                    "RETURNING executions"
                ),
                {"org": org_id, "day": day, "cap": limit},
            )
        ).first()
    if taken is None:
        retry_after = seconds_to_utc_midnight(now)
        raise Problem(
            429,
            f"organisation '{org_id}' has run {limit} executions today (UTC), its limit "
            f"executions_per_day; more from the next UTC midnight, in {retry_after} s",
            type_=problem_type("limit-reached"),
            headers={"Retry-After": str(retry_after)},
            limit="executions_per_day",
            value=limit,
        )
    try:
        yield
    except BaseException:
        async with single_statement(engine) as conn:
            await conn.execute(
                text(
                    "UPDATE organisation_day_executions SET executions = executions - 1 "
                    "WHERE org_id = :org AND day = :day AND executions > 0"
                ),
                {"org": org_id, "day": day},
            )
        raise
