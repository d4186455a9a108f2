"""A workflow's automatic retries: whether an ended attempt is retried, and when.

``settings.retry`` (checked by ``domain/definition.py``)::

    {"max_attempts": 1..10, "backoff_ms": 0..3600000, "on"?: ["failed", "crashed"]}

``max_attempts`` counts every attempt, the first run included, so 3 means
at most two retries. After attempt ``n`` ends the next one may start
``backoff_ms * 2 ** (n - 1)`` ms later (doubling, as node retries do, at most
an hour). ``on`` defaults to ``["failed"]``: an execution that crashed (its
worker was lost) may have been cut off inside a node's side effect, so
retrying it is asked for explicitly. Canceled executions are never retried
automatically: someone stopped them.

Pure: the retrier (``commands/auto_retries.py``) applies it to the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from domain.definition import MAX_AUTO_RETRY_BACKOFF_MS

__all__ = ["DEFAULT_RETRY_ON", "AutoRetry"]

DEFAULT_RETRY_ON: Final = frozenset({"failed"})


@dataclass(frozen=True)
class AutoRetry:
    max_attempts: int
    backoff_ms: int
    on: frozenset[str]

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> AutoRetry | None:
        """The policy of a validated definition's settings; None: no automatic retries."""
        retry = settings.get("retry")
        if retry is None:
            return None
        return cls(
            max_attempts=retry["max_attempts"],
            backoff_ms=retry["backoff_ms"],
            on=frozenset(retry.get("on", DEFAULT_RETRY_ON)),
        )

    def delay_ms(self, status: str, attempt: int) -> int | None:
        """How long after attempt ``attempt`` ended ``status`` the next may start.

        None: no next attempt (not a status retried, or the last attempt).
        """
        if status not in self.on or attempt >= self.max_attempts:
            return None
        return min(self.backoff_ms * 2 ** (attempt - 1), MAX_AUTO_RETRY_BACKOFF_MS)

    def not_before(self, status: str, attempt: int, ended_at: datetime) -> datetime | None:
        """When the next attempt may start, from when this one ended; None: no next."""
        delay = self.delay_ms(status, attempt)
        return None if delay is None else ended_at + timedelta(milliseconds=delay)
