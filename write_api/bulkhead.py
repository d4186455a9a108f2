"""Sync runs get threads of their own, and each organisation a share of them.

A sync run holds its thread for the whole run (a ``wait`` node, a slow HTTP
call), while a command holds one for a few milliseconds. When both shared the
command threads, eight sync runs of a workflow with a 15 s ``wait`` made
another organisation's ``POST /v1/workflows`` take 13.2 s. So sync runs run
on their own bounded pool (``REPORUNNER_SYNC_RUN_THREADS``), and one
organisation may hold at most ``REPORUNNER_SYNC_RUNS_PER_ORG`` of its threads
at once in this process: past that, 429 with ``Retry-After``, so one
organisation cannot take the pool from the others either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

from infrastructure.problems import Problem, problem_type

T = TypeVar("T")

# A sync run lasts up to its timeout; a second is a polite first retry.
_RETRY_AFTER_S = 1


class SyncRunBulkhead:
    """Runs sync executions on a bounded pool, with a per-organisation cap.

    Used from the event loop only (so the counts need no lock); create it
    inside the running loop (anyio's limiter needs one).
    """

    def __init__(self, threads: int, per_org: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.per_org = per_org
        self._running: Counter[str] = Counter()

    async def run(self, org_id: str, function: Callable[..., T], *args: object) -> T:
        if self._running[org_id] >= self.per_org:
            raise Problem(
                429,
                f"organisation {org_id!r} already has {self.per_org} sync runs in progress "
                "(REPORUNNER_SYNC_RUNS_PER_ORG); retry later or run it async",
                type_=problem_type("too-many-sync-runs"),
                headers={"Retry-After": str(_RETRY_AFTER_S)},
                limit=self.per_org,
            )
        self._running[org_id] += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
        finally:
            self._running[org_id] -= 1
            if not self._running[org_id]:
                del self._running[org_id]
