"""RFC 9457 problem details: the one outward form of every error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import Response

from infrastructure.json_codec import dumps_answer

PROBLEM_CONTENT_TYPE = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raise to answer with a problem+json response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_ or f"https://reporunner.dev/problems/{status}"
        self.title = title or TITLES.get(status, "Error")
        self.headers = dict(headers or {})
        self.extra = extra

    def to_response(self, instance: str | None = None) -> Response:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return Response(
            # A detail may quote the client's input, lone surrogates and all.
            content=dumps_answer(body, default=str),
            status_code=self.status,
            media_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


def problem_type(slug: str) -> str:
    return f"https://reporunner.dev/problems/{slug}"


def said_as(status: int, slug: str) -> Callable[[Exception], Problem]:
    """How an error whose message says everything looks from outside: ``status``,
    the message as detail, the problem type ``slug``."""
    return lambda exc: Problem(status, str(exc), type_=problem_type(slug))
