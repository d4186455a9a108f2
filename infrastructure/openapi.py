"""The OpenAPI document: what every operation really takes and answers.

Routes declare their own answers (a response model for each 2xx, the
problems only they raise); what every operation of a kind shares is added
here, once, after FastAPI has built the document:

- ``/v1`` operations take ``Authorization: Bearer <api key>`` (the
  ``bearerAuth`` scheme, so ``/docs`` can Authorize) and may answer 401, 403,
  429 (rate limit) and 503 (a dependency down, a query out of time);
- an operation with a JSON body may answer 400 (malformed JSON), 413 (over
  the body limit) and 422 (FastAPI's own validation, which here leaves as
  problem+json, not FastAPI's default shape);
- every error is ``application/problem+json`` with the ``Problem`` schema.

The document is checked by tests/api/test_contract.py: it validates against
the OpenAPI 3.1 schema, and schemathesis runs over it against the service.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from infrastructure.problems import PROBLEM_CONTENT_TYPE, TITLES

SECURITY_SCHEME = "bearerAuth"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class FieldError(BaseModel):
    """One thing wrong with the request, where it is."""

    loc: str | list[str | int] = Field(description="Where: body.nodes[0].type, or its parts.")
    msg: str
    type: str | None = None


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; some problems add fields of their own."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(examples=["https://reporunner.dev/problems/not-found"])
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = Field(None, description="The request path.")
    errors: list[FieldError] | None = Field(
        None, description="Validation problems (422), one per thing wrong."
    )


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the problems a route raises itself."""
    return {status: _problem_response(status) for status in statuses}


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": TITLES.get(status, "Error"),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_REF}},
    }


def install_openapi(app: FastAPI) -> None:
    """Serve the amended document at ``/openapi.json``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            amend(build())  # FastAPI's build caches itself in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def amend(document: dict[str, Any]) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`reporunner keys create`), sent as "
            "`Authorization: Bearer <key>`.",
        }
    }
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            _amend_operation(path, operation)
    # FastAPI's validation shapes, answered as problem+json here instead.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _amend_operation(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    shared: list[int] = []
    if path.startswith("/v1/"):
        operation["security"] = [{SECURITY_SCHEME: []}]
        shared += [401, 403, 429, 503]
    if "requestBody" in operation:
        shared += [400, 413, 422]
    if any(p.get("in") in ("path", "query") for p in operation.get("parameters", [])):
        shared.append(422)  # FastAPI validates these (a path UUID, a bounded integer)
    for status in shared:
        responses.setdefault(str(status), _problem_response(status))
    for code, response in responses.items():
        if code.startswith(("4", "5")) and _is_problem(response):
            # Every error leaves as problem+json, FastAPI's 422 included.
            response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_REF}}
            response["description"] = TITLES.get(int(code), response.get("description", ""))


def _is_problem(response: dict[str, Any]) -> bool:
    """An error answer that is a problem (not, say, /readyz's own 503 body)."""
    content = response.get("content") or {}
    schema = content.get("application/json", {}).get("schema", {})
    return set(content) <= {PROBLEM_CONTENT_TYPE} or schema.get("$ref", "").endswith(
        "/HTTPValidationError"
    )
