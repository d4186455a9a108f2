"""``/readyz``: ready, degraded (dead letters), failing (this process's own work) or
unavailable, and the settings that decide."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from infrastructure.web import add_health_routes


def _readyz(postgres: str, dead_letters: str, *, fail_when_degraded: bool) -> tuple[int, str]:
    async def postgres_check() -> str:
        return postgres

    async def dead_letters_check() -> str:
        return dead_letters

    app = FastAPI()
    add_health_routes(
        app,
        {"postgres": postgres_check, "dead_letters": dead_letters_check},
        fail_when_degraded=fail_when_degraded,
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
    return response.status_code, response.json()["status"]


@pytest.mark.parametrize(
    ("postgres", "dead_letters", "fail_when_degraded", "expected"),
    [
        ("ok", "none", False, (200, "ready")),
        ("ok", "degraded: 2 unresolved (workflows: 2)", False, (200, "degraded")),
        ("ok", "degraded: 2 unresolved (workflows: 2)", True, (503, "degraded")),
        ("down: OperationalError", "unknown: OperationalError", False, (503, "unavailable")),
        # A check of this process's own work (a stalled projection, a worker that
        # cannot claim, the relay down) fails readiness whatever the setting.
        ("ok", "failing: workflows has not moved for 90 s", False, (503, "failing")),
        ("down: OperationalError", "failing: x", False, (503, "unavailable")),
    ],
)
def test_dead_letters_degrade_readiness_and_fail_it_only_when_configured(
    postgres: str, dead_letters: str, fail_when_degraded: bool, expected: tuple[int, str]
) -> None:
    assert _readyz(postgres, dead_letters, fail_when_degraded=fail_when_degraded) == expected


def test_a_background_role_fails_readiness_alone_and_degrades_it_beside_an_api() -> None:
    from reporunner.wiring import background_problem

    assert background_problem(["projections"], "stuck") == "failing: stuck"
    assert background_problem(["worker"], "stuck") == "failing: stuck"
    assert background_problem(["write-api", "projections"], "stuck") == "degraded: stuck"
    assert background_problem(["read-api", "relay"], "stuck") == "degraded: stuck"


def test_a_projection_fails_readiness_only_past_the_threshold() -> None:
    from infrastructure.metrics import DatabaseSnapshot, FollowerRow
    from reporunner.wiring import projection_lag_problem

    snapshot = DatabaseSnapshot(
        head=100,
        followers={
            "workflows": FollowerRow("workflows", 40, 60, 90.0),
            "executions": FollowerRow("executions", 100, 0, 0.0),
            "relay": FollowerRow("relay", 0, 100, 5000.0),  # not a projection
        },
        dead_letters={},
        queue={},
    )
    problem = projection_lag_problem(snapshot, 60)
    assert problem == "workflows has not moved for 90 s (60 events behind)"
    assert projection_lag_problem(snapshot, 120) is None
    assert projection_lag_problem(snapshot, 0) is None  # 0 turns the check off


class _Queue:
    """A queue whose claim fails (or answers nothing)."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def claim_loaded(self, worker_id: str, lease_s: float, limit: int) -> list[object]:
        if self.error is not None:
            raise self.error
        return []


def test_a_worker_that_cannot_claim_says_why_until_a_claim_succeeds() -> None:
    from reporunner.worker import Worker

    failing = _Queue(ConnectionError("connection refused"))
    worker = Worker(runner=None, queue=failing, concurrency=2, lease_s=5, poll_s=0.01)  # type: ignore[arg-type]
    assert worker.claim_problem() is None
    assert worker.claim_round(2) is None
    assert worker.claim_problem() == (
        f"the 2 workers of {worker.worker_id} cannot claim: ConnectionError: connection refused"
    )
    worker.queue = _Queue(None)  # type: ignore[assignment]
    assert worker.claim_round(2) == []
    assert worker.claim_problem() is None
