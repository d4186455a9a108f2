"""HTTP plumbing shared by the write and read APIs.

Request ids and the access log, the body-size limit, authentication, and the
single place where errors become problem+json.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import WorkflowDeleted, WorkflowInvalid
from infrastructure import metrics
from infrastructure.auth import ORGANISATION_WIDE, ApiKeyStore, Permission, Principal, Role
from infrastructure.database import is_database_unavailable
from infrastructure.org_policy import OrgPolicies, OrgPolicy
from infrastructure.problems import Problem, problem_type
from infrastructure.ratelimit import decision_headers, enforce_rate_limit

log = structlog.get_logger("reporunner.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ReadyCheck = Callable[[], Awaitable[str]]


class RequestContextMiddleware:
    """Binds a request id, enforces the body limit, turns any escaped error into
    problem+json, adds the request id and rate-limit headers to the answer, and
    writes one access-log line per request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else _new_request_id()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        received = 0
        too_large = _declared_length(headers) > self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Whatever the app answers to this error is dropped below.
                    too_large = True
                    raise RuntimeError("request body too large")
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if too_large and not response_started:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *decision_headers(scope["state"]),
                ]
            await send(message)

        async def answer(problem: Problem) -> None:
            nonlocal too_large
            too_large = False
            await problem.to_response(scope["path"])(scope, receive, send_with_id)

        try:
            if not too_large:
                await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            # The last line of defence: every error leaves as problem+json.
            if response_started:
                raise
            if not too_large:
                await answer(_unexpected_problem(exc))
        finally:
            if too_large and not response_started:
                await answer(
                    Problem(
                        413,
                        f"request body exceeds {self.max_body_bytes} bytes",
                        type_=problem_type("body-too-large"),
                    )
                )
            principal = scope["state"].get("principal")
            elapsed = time.perf_counter() - started
            record_request(scope, status, elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                org_id=principal.org_id if principal else None,
                actor=principal.actor if principal else None,
            )


_UNMATCHED = "<unmatched>"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


_RequestSeries = tuple[Any, Any]
_series: dict[tuple[str, str, int, str], _RequestSeries] = {}


def record_request(scope: Scope, status: int, elapsed_s: float) -> None:
    """Count a request under its route template (never the raw path: ids would
    make a series per workflow), and as a command or a webhook call if it is one."""
    route = scope.get("route")
    template = getattr(route, "path", None) or _UNMATCHED
    name = getattr(route, "name", None) or "unknown"
    # Every part bounded (a client may send any method name): so is the cache.
    method = scope["method"] if scope["method"] in _METHODS else "other"
    key = (template, method, status, name)
    series = _series.get(key)
    if series is None:
        series = _series.setdefault(key, _request_series(*key))
    duration, counted = series
    duration.observe(elapsed_s)
    if counted is not None:
        counted.inc()


def _request_series(template: str, method: str, status: int, name: str) -> _RequestSeries:
    """The children a request counts into. Looked up once per route, method and status
    (``labels()`` on every request cost more than the rest of the counting)."""
    duration = metrics.HTTP_REQUEST_DURATION.labels(template, method, str(status))
    counted = None
    if template.startswith("/hooks/"):
        counted = metrics.WEBHOOK_DELIVERIES.labels(metrics.webhook_outcome(status))
    elif template.startswith("/v1/") and method not in _READ_METHODS:
        # The write API's routes: one command each, named by its endpoint.
        counted = metrics.COMMANDS.labels(name, metrics.command_outcome(status))
    return duration, counted


def _new_request_id() -> str:
    # Not uuid4: its urandom syscall lets the command threads take the GIL
    # from the event loop mid-request. Request ids need uniqueness, not secrecy.
    return f"{random.getrandbits(128):032x}"


def _declared_length(headers: dict[bytes, bytes]) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0


def _validation_problem(exc: RequestValidationError) -> Problem:
    errors = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            return Problem(
                400,
                f"malformed JSON body: {ctx.get('error', 'invalid JSON')}",
                type_=problem_type("malformed-json"),
            )
        loc = ".".join(str(part) for part in error.get("loc", ()))
        errors.append({"loc": loc, "msg": error.get("msg", "invalid"), "type": error.get("type")})
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "invalid request"
    return Problem(422, detail, type_=problem_type("validation"), errors=errors)


def install_error_handlers(
    app: FastAPI, extra: dict[type[Exception], Callable[[Any], Problem]]
) -> None:
    """Map every error to problem+json, once. ``extra`` maps an API's own errors."""

    def respond(request: Request, problem: Problem) -> Response:
        return problem.to_response(instance=request.url.path)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return respond(request, _validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return respond(request, _method_not_allowed(request))
        return respond(request, Problem(exc.status_code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(WorkflowInvalid)
    async def _workflow_invalid(request: Request, exc: WorkflowInvalid) -> Response:
        errors = [{"loc": p.loc, "msg": p.msg} for p in exc.problems]
        return respond(
            request,
            Problem(422, str(exc), type_=problem_type("invalid-workflow"), errors=errors),
        )

    @app.exception_handler(WorkflowDeleted)
    async def _deleted(request: Request, exc: WorkflowDeleted) -> Response:
        return respond(
            request,
            Problem(410, f"workflow {exc.workflow_id} was deleted", type_=problem_type("deleted")),
        )

    for exc_type, to_problem in extra.items():

        async def _mapped(
            request: Request, exc: Exception, to_problem: Any = to_problem
        ) -> Response:
            return respond(request, to_problem(exc))

        app.add_exception_handler(exc_type, _mapped)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _method_not_allowed(request: Request) -> Problem:
    """405 naming every method the path takes, across all the routers that serve it.

    Starlette's own ``Allow`` names only the first route whose path matched,
    and one path may be served by several (``GET /v1/workflows`` by the read
    API, ``POST`` by the write API): ask every route about every method.
    ``OPTIONS`` is answered the same way (no CORS preflight here).
    """
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]
    allow = ", ".join(allowed)
    return Problem(
        405,
        f"{request.method} is not allowed on {request.url.path}; allowed: {allow}",
        type_=problem_type("method-not-allowed"),
        headers={"Allow": allow},
        allowed_methods=allowed,
    )


def _unexpected_problem(exc: Exception) -> Problem:
    """What an error no handler knows becomes: 503 if a dependency is down or a
    query ran out of time, else a 500 bug."""
    if _sqlstate(exc) == _STATEMENT_TIMEOUT:
        log.warning("query timed out", error=str(exc))
        return Problem(
            503,
            "the query ran longer than the read timeout (REPORUNNER_QUERY_TIMEOUT_MS) and was "
            "cancelled; narrow it (a $match first, fewer $unwind stages, a $limit) or retry later",
            type_=problem_type("query-timeout"),
            headers={"Retry-After": "5"},
        )
    if _sqlstate(exc) == _SERIALIZATION_FAILURE:
        log.warning("query cancelled by a conflict", error=str(exc))
        return Problem(
            503,
            "the query was cancelled by a conflicting change (on a read replica: replaying "
            "the primary's); retry",
            type_=problem_type("unavailable"),
            headers={"Retry-After": "1"},
        )
    if is_database_unavailable(exc):
        log.warning("dependency unavailable", error=repr(exc))
        return Problem(
            503,
            "the database is unavailable; retry shortly",
            type_=problem_type("unavailable"),
            headers={"Retry-After": "2"},
        )
    log.exception("unhandled error")
    return Problem(500, "internal error; this is a bug, please report it")


# SQLSTATEs of a statement PostgreSQL cancelled: 57014 its statement_timeout;
# 40001 a conflict (a hot standby cancels a query holding up its replay of the
# primary's changes). Retrying may pass.
_STATEMENT_TIMEOUT = "57014"
_SERIALIZATION_FAILURE = "40001"


def _sqlstate(exc: Exception) -> str | None:
    """The SQLSTATE of the driver's error SQLAlchemy wrapped, if any."""
    from sqlalchemy.exc import DBAPIError

    return getattr(exc.orig, "sqlstate", None) if isinstance(exc, DBAPIError) else None


async def authenticate(request: Request) -> Principal:
    """The caller's principal from ``Authorization: Bearer <key>``, else 401."""
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": 'Bearer realm="reporunner"'}
    if not header:
        raise Problem(
            401,
            "missing Authorization header: send 'Authorization: Bearer <api key>'",
            headers=challenge,
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401, "Authorization must use the Bearer scheme: 'Bearer <api key>'", headers=challenge
        )
    store: ApiKeyStore = request.app.state.api_keys
    principal = await store.authenticate(token.strip())
    if principal is None:
        raise Problem(401, "invalid or revoked API key", headers=challenge)
    if principal.expired(datetime.now(UTC)):
        assert principal.expires_at is not None
        raise Problem(
            401,
            f"API key {principal.key_id} expired at {principal.expires_at.isoformat()}; "
            "ask an owner of your organisation for a new one",
            type_=problem_type("key-expired"),
            headers=challenge,
        )
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(org_id=principal.org_id, actor=principal.actor)
    return principal


async def authorize(request: Request, permission: Permission) -> Principal:
    """The authenticated principal, if its role grants ``permission``, else 401/403."""
    principal = await authenticate(request)
    if principal.role != Role.PLATFORM_ADMIN:  # not a tenant: no organisation's standing
        (await org_policy(request, principal.org_id)).ensure_active()
    await enforce_rate_limit(request, principal, permission)
    if not principal.may(permission):
        if principal.project_id is not None and permission in ORGANISATION_WIDE:
            detail = (
                f"a project-scoped key may not do this (needs {permission.value} "
                "and an organisation-wide key)"
            )
        else:
            detail = f"role '{principal.role}' may not do this (needs {permission.value})"
        raise Problem(403, detail, type_=problem_type("forbidden"))
    return principal


ORG_POLICY_KEY = "org_policy"


async def org_policy(request: Request, org_id: str) -> OrgPolicy:
    """The organisation's standing and limits (cached), kept on the request for the
    limits checked after ``authorize`` (rate, sync runs, workflows, runs a day)."""
    state = request.scope.setdefault("state", {})
    policy = state.get(ORG_POLICY_KEY)
    if isinstance(policy, OrgPolicy) and policy.org_id == org_id:
        return policy
    policies: OrgPolicies | None = getattr(request.app.state, "org_policies", None)
    policy = OrgPolicy(org_id) if policies is None else await policies.get(org_id)
    state[ORG_POLICY_KEY] = policy
    return policy


def require(permission: Permission) -> Callable[[Request], Awaitable[Principal]]:
    """``authorize`` as a FastAPI dependency."""

    async def dependency(request: Request) -> Principal:
        return await authorize(request, permission)

    return dependency


DEGRADED = "degraded"
"""A check's answer starts with it when the service works, but not for everything."""
FAILING = "failing"
"""A check's answer starts with it when this process's own work is not being done
(a projection stalled, a worker that cannot claim, the relay down): 503."""


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "failing", "unavailable"]
    checks: dict[str, str] = Field(description="Each dependency's answer: ok, or why not.")


def add_health_routes(
    app: FastAPI, checks: dict[str, ReadyCheck], *, fail_when_degraded: bool = False
) -> None:
    """``/healthz``: the process is up (liveness). ``/readyz``: it can do its work.

    ``status`` is ``ready``, ``degraded`` (a check says so, e.g. dead letters:
    200, or 503 with ``fail_when_degraded``), ``failing`` (a check of this
    process's own work fails: 503) or ``unavailable`` (PostgreSQL: 503).
    """

    @app.get("/healthz", tags=["health"], summary="Liveness", response_model=Liveness)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: this process can do its work",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready: see checks"}},
    )
    async def readyz() -> Response:
        import orjson

        results = {name: await check() for name, check in checks.items()}
        degraded = any(result.startswith(DEGRADED) for result in results.values())
        failing = any(result.startswith(FAILING) for result in results.values())
        if results.get("postgres") != "ok":
            status = "unavailable"
        elif failing:
            status = FAILING
        else:
            status = DEGRADED if degraded else "ready"
        ready = status == "ready" or (status == DEGRADED and not fail_when_degraded)
        return Response(
            orjson.dumps({"status": status, "checks": results}),
            status_code=200 if ready else 503,
            media_type="application/json",
            headers={} if ready else {"Retry-After": "2"},
        )


def add_metrics_route(app: FastAPI) -> None:
    """``/metrics`` in Prometheus' text format (kept out of the OpenAPI document).

    With ``app.state.db_gauges`` (a ``metrics.DatabaseGauges``) it adds the
    gauges that live in the database, read at most every couple of seconds.
    """

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        gauges: metrics.DatabaseGauges | None = getattr(request.app.state, "db_gauges", None)
        extra = []
        if gauges is not None:
            await gauges.refresh()
            extra.append(gauges)
        return Response(metrics.exposition(*extra), media_type=metrics.CONTENT_TYPE)
