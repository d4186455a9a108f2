"""Which processes ``serve`` starts: HTTP workers per core, the followers apart."""

from __future__ import annotations

from infrastructure.settings import ROLES, Settings
from reporunner.serve_plan import FOLLOWERS_NICE, ProcessGroup, most_connections, plan

FOLLOWER_ROLES = ("projections", "worker", "relay", "scheduler")


def test_plain_serve_runs_an_http_process_per_core_and_the_followers_once_below_them() -> None:
    groups = plan(ROLES, None, cores=4)
    assert groups == [
        ProcessGroup(("write-api", "read-api"), 4, http=True),
        ProcessGroup(FOLLOWER_ROLES, 1, http=False, nice=FOLLOWERS_NICE),
    ]
    assert FOLLOWERS_NICE > 0
    # Every role runs, and exactly one process runs each follower role.
    assert sorted(role for group in groups for role in group.roles) == sorted(ROLES)


def test_workers_given_win_over_the_cores() -> None:
    assert plan(ROLES, 3, cores=8)[0].count == 3


def test_one_worker_or_one_core_keeps_one_process_with_every_role() -> None:
    assert plan(ROLES, 1, cores=8) == [ProcessGroup(tuple(ROLES), 1, http=True)]
    assert plan(ROLES, None, cores=1) == [ProcessGroup(tuple(ROLES), 1, http=True)]


def test_an_api_alone_is_only_http_processes() -> None:
    assert plan(["write-api"], None, cores=2) == [ProcessGroup(("write-api",), 2, http=True)]


def test_roles_without_an_api_run_in_one_process() -> None:
    assert plan(["projections"], None, cores=8) == [ProcessGroup(("projections",), 1, http=False)]


def test_the_connection_budget_adds_up_every_process_of_the_plan() -> None:
    settings = Settings()
    http = settings.model_copy(update={"roles": "write-api,read-api"}).pool_sizes().most()
    followers = settings.model_copy(update={"roles": ",".join(FOLLOWER_ROLES)}).pool_sizes().most()
    assert most_connections(settings, plan(ROLES, None, cores=2)) == 2 * http + followers
    # One process with every role: that process's own pools, as before.
    single = plan(ROLES, 1, cores=2)
    assert most_connections(settings, single) == settings.pool_sizes().most()
