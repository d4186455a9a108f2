"""Bounded work per read: queries end when their client leaves, pipelines are capped.

Every statement on the read API's connections has a ``statement_timeout``
(``REPORUNNER_QUERY_TIMEOUT_MS``, set on the engine); past it PostgreSQL
cancels the statement and the answer is 503 (see ``infrastructure.web``).
This module adds what a timeout cannot do:

* ``until_disconnected`` runs a query in a task and cancels it when the
  client disconnects: asyncpg then cancels the statement in PostgreSQL, so
  a query never runs on for nobody.
* ``infrastructure.org_slots.OrgSlots`` caps the pipelines an organisation
  runs at once, in this process: one organisation's dashboards cannot take
  every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from starlette.requests import Request

log = structlog.get_logger("reporunner.read")

T = TypeVar("T")

# How often a running query checks whether its client is still there.
DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client disconnected before its answer; nobody is left to answer."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is
    cancelled (and its statement with it) and ``ClientGone`` raised."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client gone, query cancelled", path=request.url.path)
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            # Cancelling asyncpg mid-statement sends PostgreSQL a cancel request
            # and surfaces as the statement's error (57014), not always as
            # CancelledError: whichever it is, nobody wants it any more.
            with contextlib.suppress(BaseException):
                await task
