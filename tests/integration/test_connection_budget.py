"""Pool sizes per role, and the warning at start when a deployment would exhaust
PostgreSQL's max_connections (issue 15: 8 idle processes with 10 + 10 connections
a pool held all 100, and every request then failed)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from infrastructure.database import PgTarget
from infrastructure.settings import ROLE_POOLS, PoolSizes, Settings
from reporunner.server import ConnectionBudget, check_connection_budget, connection_budget


def _settings(**values: object) -> Settings:
    return Settings(database_url=None, redis_url=None, **values)  # type: ignore[arg-type]


def test_a_process_adds_up_its_roles_pools_unless_told_otherwise() -> None:
    assert _settings(roles="read-api").pool_sizes() == ROLE_POOLS["read-api"]
    both = _settings(roles="write-api,read-api").pool_sizes()
    assert both == ROLE_POOLS["write-api"] + ROLE_POOLS["read-api"]
    assert _settings(roles="projections", db_pool_size=3, db_max_overflow=0).pool_sizes() == (
        PoolSizes(3, 0, 3, 0, ROLE_POOLS["projections"].dedicated)
    )


def test_the_default_deployment_of_the_scale_out_trial_fits_in_100_connections() -> None:
    """Write API (2 workers), read API, 2 projections, 2 workers, the relay."""
    processes = [("write-api", 2), ("read-api", 1), ("projections", 2), ("worker", 2)]
    most = sum(n * _settings(roles=role).pool_sizes().most() for role, n in processes)
    most += _settings(roles="relay").pool_sizes().most()
    assert most <= 100 - 3, most  # 3: PostgreSQL's superuser_reserved_connections


@pytest.mark.parametrize(
    ("most", "in_use", "expected"),
    [(40, 10, None), (60, 0, "more than 50%"), (30, 70, "beyond the 97")],
)
def test_the_budget_names_what_is_wrong(most: int, in_use: int, expected: str | None) -> None:
    problem = ConnectionBudget(most, 100, 3, in_use, share=0.5).problem()
    assert problem == expected if expected is None else expected in (problem or "")


def test_start_reads_the_servers_figures_and_warns_past_the_share(db_target: PgTarget) -> None:
    modest = _settings(roles="read-api")
    budget = connection_budget(modest, db_target, workers=2)
    assert budget.max_connections >= 1 and budget.in_use >= 1
    assert budget.most == 2 * ROLE_POOLS["read-api"].most()

    greedy = _settings(roles="write-api", db_pool_size=100, db_max_overflow=100)
    with capture_logs() as logs:
        check_connection_budget(greedy, db_target, workers=4)
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["most_connections"] == 4 * (400 + ROLE_POOLS["write-api"].dedicated)
    assert "REPORUNNER_DB_POOL_SIZE" in warning["event"]
    assert warning["max_connections"] == budget.max_connections
