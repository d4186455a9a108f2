"""``/readyz``: ready, degraded (dead letters) or unavailable, and the setting that decides."""

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
    ],
)
def test_dead_letters_degrade_readiness_and_fail_it_only_when_configured(
    postgres: str, dead_letters: str, fail_when_degraded: bool, expected: tuple[int, str]
) -> None:
    assert _readyz(postgres, dead_letters, fail_when_degraded=fail_when_degraded) == expected
