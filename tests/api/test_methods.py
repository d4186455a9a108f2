"""Wrong methods and ``OPTIONS``: 405 problem+json whose ``Allow`` names every method of the path.

One path is often served by both APIs (``GET /v1/workflows`` reads a view,
``POST`` appends an event), so the expected ``Allow`` is worked out here from
the published OpenAPI document, independently of the router.
"""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.testclient import TestClient

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_app

_PROBED = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", template)


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts) + "$"
    )


def _expected_allow(paths: dict[str, dict[str, object]], concrete: str) -> list[str]:
    methods = {
        method.upper()
        for template, operations in paths.items()
        if _pattern(template).match(concrete)
        for method in operations
    }
    return [method for method in _ORDER if method in methods]


def test_every_route_family_answers_405_with_its_allow(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    families = {
        template.split("/")[2] if template.startswith("/v1/") else template for template in paths
    }
    # Both APIs' families, health included: a route added later is covered too.
    assert {"workflows", "executions", "audit", "/healthz", "/readyz"} <= families
    checked = 0
    for template in paths:
        concrete = _concrete(template)
        allow = _expected_allow(paths, concrete)
        for method in _PROBED:
            if method in allow:
                continue
            answer = client.request(method, concrete)
            where = f"{method} {concrete}"
            assert answer.status_code == 405, (where, answer.text)
            assert answer.headers["content-type"] == "application/problem+json", where
            assert answer.headers["allow"] == ", ".join(allow), where
            body = answer.json()
            assert body["status"] == 405 and body["allowed_methods"] == allow, where
            assert method in body["detail"] and concrete in body["detail"], where
            checked += 1
    assert checked > 3 * len(paths)


def test_a_path_both_apis_serve_allows_both_apis_methods(client: httpx.Client) -> None:
    answer = client.options("/v1/workflows")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("roles", "allow"),
    [(("read-api",), "GET"), (("write-api",), "POST"), (("write-api", "read-api"), "GET, POST")],
)
def test_allow_names_only_the_roles_this_process_serves(roles: tuple[str, ...], allow: str) -> None:
    app = create_app(
        Settings(database_url=None, redis_url=None), PgTarget.parse("postgresql:///x"), roles
    )
    # No lifespan: a 405 is decided by the router, before any dependency is touched.
    answer = TestClient(app).put("/v1/workflows")
    assert answer.status_code == 405
    assert answer.headers["allow"] == allow
