"""Which processes ``reporunner serve`` runs, and which roles each one runs.

By default ``serve`` uses the machine: one HTTP process per usable core
(``--workers`` says otherwise). With several HTTP processes the log's
followers (projections, execution workers, relay, scheduler) do not run in
every one of them: they go to one process of their own, started at a lower
CPU priority (``nice``), so under load the kernel gives the cores to the
processes answering requests first and the followers catch up as soon as
the load lets them (their work is eventual by design: a reader that needs
its own write waits with ``X-Min-Position``). One process per core running
every role would instead run each follower once per core (the single-active
ones standing by) and let a projection rebuild or a burst of executions take
CPU from the requests. ``--workers 1`` keeps the one process with every role.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from infrastructure.settings import PoolSizes, Settings

HTTP_ROLES = frozenset({"write-api", "read-api"})
FOLLOWERS_NICE = 5
"""How much lower the followers' process runs than the HTTP processes (``nice``)."""


@dataclass(frozen=True)
class ProcessGroup:
    """``count`` processes running ``roles``; ``http``: they serve the API port."""

    roles: tuple[str, ...]
    count: int
    http: bool
    nice: int = 0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan(roles: Sequence[str], workers: int | None, cores: int) -> list[ProcessGroup]:
    """The processes for ``roles``: ``workers`` HTTP processes (None: one per core).

    Several HTTP processes take only the API roles; the other roles get one
    process of their own, at a lower priority. Roles without an API run in
    one process (their own ``--workers`` is refused elsewhere).
    """
    http_roles = tuple(role for role in roles if role in HTTP_ROLES)
    other_roles = tuple(role for role in roles if role not in HTTP_ROLES)
    if not http_roles:
        return [ProcessGroup(tuple(roles), workers or 1, http=False)]
    count = workers if workers is not None else cores
    if count == 1 or not other_roles:
        return [ProcessGroup(tuple(roles), count, http=True)]
    return [
        ProcessGroup(http_roles, count, http=True),
        ProcessGroup(other_roles, 1, http=False, nice=FOLLOWERS_NICE),
    ]


def most_connections(settings: Settings, groups: Sequence[ProcessGroup]) -> int:
    """The most connections every process of the plan may hold together."""
    return sum(group.count * pools_of(settings, group.roles).most() for group in groups)


def pools_of(settings: Settings, roles: Sequence[str]) -> PoolSizes:
    return settings.model_copy(update={"roles": ",".join(roles)}).pool_sizes()


def describe(groups: Sequence[ProcessGroup]) -> list[dict[str, object]]:
    """The plan as the start-up log line shows it."""
    return [
        {"roles": list(group.roles), "processes": group.count, "http": group.http}
        | ({"nice": group.nice} if group.nice else {})
        for group in groups
    ]
