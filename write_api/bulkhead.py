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

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

from infrastructure.org_slots import OrgSlots

T = TypeVar("T")


class SyncRunBulkhead:
    """Runs sync executions on a bounded pool, with a per-organisation cap.

    Used from the event loop only; create it inside the running loop
    (anyio's limiter needs one).
    """

    def __init__(self, threads: int, per_org: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.slots = OrgSlots(per_org, "sync runs", "REPORUNNER_SYNC_RUNS_PER_ORG")

    async def run(
        self, org_id: str, function: Callable[..., T], *args: object, limit: int | None = None
    ) -> T:
        """``limit``: the organisation's own cap on its sync runs (its ``sync_runs`` limit)."""
        with self.slots.hold(org_id, limit):  # 429 with Retry-After beyond the cap
            return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
