"""The API contract: the OpenAPI document is valid OpenAPI 3.1, and the service keeps it.

schemathesis (its CLI, as a user would run it) generates positive and
negative requests from the document, follows its links statefully, and
checks every answer against it. It runs over the all-in-one app (the write
and the read API in one document) on a database of its own, seeded with a
real key and real workflows, bounded by a fixed seed and example count so
a run is deterministic and short.

Zero failures, except what EXCLUSIONS below allows, each with its reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_app
from tests.helpers import scratch_database, serving, webhook_body, workflow_body

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "use_after_free",
]
# What positive_data_acceptance expects by default (schemathesis' own list).
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

# Operation -> (check, why). Each is a rule the service keeps that the document
# cannot state in JSON Schema; everything else must pass as is.
_WORKFLOW_COMMANDS = (
    "^(POST /v1/workflows|PATCH /v1/workflows/\\{workflow_id\\}"
    "|DELETE /v1/workflows/\\{workflow_id\\}|POST /v1/workflows/\\{workflow_id\\}/.+"
    "|POST /v1/executions/.+|POST /v1/import/n8n"
    # A template's declarations and placeholders, its parameters' values, and an
    # imported definition are the domain's rules too (README, Templates).
    "|POST /v1/templates|POST /v1/templates/\\{template_id\\}/.+|POST /v1/import)$"
)
EXCLUSIONS: list[dict[str, Any]] = [
    {
        # 422 invalid-workflow: a definition's rules (one trigger, connections between
        # existing nodes, each node type's parameters, activation needing a webhook
        # trigger) are the domain's, named one by one in the 422. 410: a deleted
        # workflow takes no further command (a stateful scenario deletes it first).
        "include-name-regex": _WORKFLOW_COMMANDS,
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "410", "422"]}},
    },
    {
        # 400 bad-cursor: a cursor is opaque, only a next_cursor this API returned is
        # one; 400 bad-query: a filter's operators and values are the query
        # language's (README, Filters and pipelines), checked by projections/filters.
        "include-name-regex": "^GET /v1/(workflows|executions|templates|projects"
        "|workflows/\\{workflow_id\\}/(executions|versions))$",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
    },
    {
        # 400: version and as_of together (one or the other).
        "include-name": "GET /v1/workflows/{workflow_id}",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
    },
    {
        # 400 bad-period: since before until, at most 400 days apart, within 1970-9000.
        "include-name": "GET /v1/dashboards/summary",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
    },
    {
        # 400: a pipeline's stages and their operands are the pipeline language's.
        "include-name": "POST /v1/query/{collection}/aggregate",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
    },
    {
        # Deleting a workflow keeps it (README: "history is kept"): its document
        # (deleted: true), versions, history and executions stay readable by design.
        "include-name-regex": "^GET /v1/workflows/\\{workflow_id\\}(/.*)?$",
        "checks": {"use_after_free": {"enabled": False}},
    },
    {
        # 422: a new key's expires_at must lie in the future (a rule of time, not of
        # JSON Schema); 403: a suspended organisation (tests/api/test_tenancy.py).
        "include-name": "POST /v1/keys",
        "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "422"]}},
    },
    {
        # The live stream never ends: no check can read its whole answer, and every
        # call would wait out the request timeout. Its protocol, parameters and
        # errors are tested in tests/api/test_stream.py.
        "include-name": "GET /v1/stream",
        "enabled": False,
    },
]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


_HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


def schemathesis_config(key: str, seed: int = 20261201, examples: int = 25) -> str:
    lines = [
        f'hooks = "{_HOOKS}"',
        f"seed = {seed}",
        # One worker: a deterministic order (and hypothesis' AST handling is not
        # thread-safe on Python 3.11).
        "workers = 1",
        f'headers = {{ "Authorization" = "Bearer {key}" }}',
        # No failure cache between runs: each run is the seed's, and nothing else.
        "[cache]",
        "enabled = false",
        "[generation]",
        f"max-examples = {examples}",
        'database = "none"',
        # The value contract refuses NUL and lone surrogates anywhere (README,
        # Values at the doors); strings that hold neither are the interesting ones.
        "allow-x00 = false",
        'codec = "utf-8"',
        # Long enough scenarios for create -> update -> delete -> read (use_after_free).
        "[phases.stateful]",
        "max-steps = 10",
        "[checks]",
    ]
    lines += [f"{check}.enabled = true" for check in CHECKS]
    # 503 not-yet-consistent: X-Min-Position past what the views have applied (a
    # drawn position is mostly past the log's head) waits, then answers 503 with
    # Retry-After, as documented; any 500 still fails.
    lines.append('not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]')
    for section in EXCLUSIONS:
        lines.append("[[operations]]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in section.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def contract_api(server_target: PgTarget, app_settings: Settings) -> Iterator[tuple[str, str]]:
    """The all-in-one service on a database of its own, seeded: (URL, API key)."""
    settings = app_settings.model_copy(
        update={
            "redis_key_prefix": f"{app_settings.redis_key_prefix}contract-{uuid.uuid4().hex}:",
            # Drawn X-Min-Positions are mostly past the log: their 503 comes quickly.
            "min_position_wait_s": 0.2,
        }
    )
    with scratch_database(server_target, "reporunner_contract") as target:
        app = create_app(settings, target, roles=("write-api", "read-api", "projections"))
        with serving(app) as url:
            key = _make_key(target)
            _seed(url, key)
            yield url, key


def _make_key(target: PgTarget) -> str:
    import asyncio

    from infrastructure.auth import ApiKeyStore, Role
    from infrastructure.database import create_engine

    async def create() -> str:
        engine = create_engine(target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(_ORG, Role("owner"), "test")
            return plaintext
        finally:
            await engine.dispose()

    return asyncio.run(create())


_ORG = "org-contract"
_HOOK_PATH = "orders/new"


def _seed(url: str, key: str) -> None:
    """A workflow with a run, an active webhook workflow, a deleted one."""
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        created = client.post("/v1/workflows", json=workflow_body("seeded")).json()
        run = client.post(f"/v1/workflows/{created['id']}/executions", json={"input": {"n": 1}})
        assert run.status_code == 200, run.text
        hooked = client.post("/v1/workflows", json=webhook_body("hook", path=_HOOK_PATH)).json()
        activated = client.post(
            f"/v1/workflows/{hooked['id']}/activate", headers={"If-Match": '"1"'}
        )
        assert activated.status_code == 200, activated.text
        gone = client.post("/v1/workflows", json=workflow_body("seeded, deleted")).json()
        deleted = client.delete(f"/v1/workflows/{gone['id']}", headers={"If-Match": '"1"'})
        assert deleted.status_code == 200, deleted.text


@pytest.mark.parametrize("roles", [("write-api",), ("read-api",), ("write-api", "read-api")])
def test_document_is_valid_openapi_31(
    roles: tuple[str, ...], app_settings: Settings, db_target: PgTarget
) -> None:
    document = create_app(app_settings, db_target, roles=roles).openapi()
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_document_describes_every_operation(app_settings: Settings, db_target: PgTarget) -> None:
    document = create_app(app_settings, db_target).openapi()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            assert len(operation["tags"]) == 1, name
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearerAuth": []}], name
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                if status.startswith("2") and status != "204":
                    media_type = "text/event-stream" if path == "/v1/stream" else "application/json"
                    schema = content[media_type]["schema"]
                    assert schema, f"{name} {status} has no response schema"
                elif status.startswith(("4", "5")) and path != "/readyz":
                    assert content == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }, f"{name} {status}"


def test_schemathesis_finds_nothing(contract_api: tuple[str, str], tmp_path: Path) -> None:
    url, key = contract_api
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(key))
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--no-color",
        "--max-failures",
        "50",
        "--request-timeout",
        "30",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env=os.environ.copy(),
        check=False,
    )
    print(result.stdout[-2500:])  # the summary, for -s or -rP
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
