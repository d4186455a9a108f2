"""Errors of the query language (filters and pipelines)."""

from __future__ import annotations


class QueryError(ValueError):
    """A filter or pipeline that cannot be compiled; the message names the problem."""
