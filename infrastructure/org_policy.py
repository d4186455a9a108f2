"""Each organisation's standing and limits, as every request needs them: one cached row.

The ``organisations`` table (written with the Organisation aggregate's events,
``commands/tenancy.py``) is read at most once per ``cache_s`` per organisation
and process, so a request is not a query per limit; a suspension or a limit
change reaches every process within that time (at once in the process that
made it). An organisation with no row is active with the global limits.
Concurrent misses of one organisation share one query.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.problems import Problem, problem_type


@dataclass(frozen=True)
class OrgPolicy:
    org_id: str
    suspended: bool = False
    suspended_reason: str | None = None
    # Only the organisation's own limits; a missing one means the global setting.
    limits: dict[str, Any] = field(default_factory=dict)

    def limit(self, name: str, default: Any) -> Any:
        value = self.limits.get(name)
        return default if value is None else value

    def ensure_active(self) -> None:
        if self.suspended:
            reason = f": {self.suspended_reason}" if self.suspended_reason else ""
            raise Problem(
                403,
                f"organisation '{self.org_id}' is suspended{reason}; nothing is lost, and "
                "its keys work again once a platform administrator reinstates it",
                type_=problem_type("organisation-suspended"),
            )


class OrgPolicies:
    _CACHE_LIMIT = 10_000

    def __init__(self, engine: AsyncEngine, cache_s: float) -> None:
        self._engine = engine
        self._cache_s = cache_s
        self._cache: dict[str, tuple[OrgPolicy, float]] = {}
        self._lookups: dict[str, asyncio.Task[OrgPolicy]] = {}

    async def get(self, org_id: str) -> OrgPolicy:
        now = time.monotonic()
        cached = self._cache.get(org_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        lookup = self._lookups.get(org_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(org_id))
            self._lookups[org_id] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(org_id, None))
        policy = await asyncio.shield(lookup)
        if self._cache_s > 0:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[org_id] = (policy, now + self._cache_s)
        return policy

    def forget(self, org_id: str) -> None:
        """Drop the cached policy (this process changed it)."""
        self._cache.pop(org_id, None)

    async def _lookup(self, org_id: str) -> OrgPolicy:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT status, suspended_reason, limits::text AS limits "
                        "FROM organisations WHERE org_id = :org"
                    ),
                    {"org": org_id},
                )
            ).first()
        if row is None:
            return OrgPolicy(org_id)
        return OrgPolicy(
            org_id,
            suspended=row.status == "suspended",
            suspended_reason=row.suspended_reason,
            limits=orjson.loads(row.limits),
        )
