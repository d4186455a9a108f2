"""How query errors look from outside."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infrastructure.problems import Problem, problem_type
from projections.errors import QueryError
from read_api.bounded import ClientGone
from read_api.queries import BadQuery


def _bad_query(exc: Exception) -> Problem:
    return Problem(400, str(exc), type_=problem_type("bad-query"))


def _client_gone(exc: Exception) -> Problem:
    # Nobody reads this answer; the status (nginx's "client closed request")
    # is for the access log.
    return Problem(499, "the client closed the request", type_=problem_type("client-gone"))


QUERY_PROBLEMS: dict[type[Exception], Callable[[Any], Problem]] = {
    BadQuery: _bad_query,
    QueryError: _bad_query,
    ClientGone: _client_gone,
}
