"""Errors of the query language (filters and pipelines)."""

from __future__ import annotations


class QueryError(ValueError):
    """A filter or pipeline that cannot be compiled; the message names the problem.

    Messages name the operator and the path, e.g. ``unknown operator '$foo' at
    'a.b'``, ``$in needs an array at 'tags'`` or ``invalid regex at 'name': ...``;
    the read API returns them as the ``detail`` of a 400 problem.
    """
