"""How query errors look from outside."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infrastructure.problems import Problem, problem_type
from projections.errors import QueryError
from read_api.queries import BadQuery


def _bad_query(exc: Exception) -> Problem:
    return Problem(400, str(exc), type_=problem_type("bad-query"))


QUERY_PROBLEMS: dict[type[Exception], Callable[[Any], Problem]] = {
    BadQuery: _bad_query,
    QueryError: _bad_query,
}
