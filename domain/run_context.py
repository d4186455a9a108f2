"""What a node's step works with while it runs: ports, limits, deadline, memory budget.

Shared by the runner (``domain/engine.py``) and the node behaviours
(``domain/steps.py``); pure, like both. See ``domain/engine.py`` for the
semantics of timeouts and of the memory budget.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_EXECUTION_BYTES",
    "DEFAULT_MAX_EXECUTION_MS",
    "SLOT_BYTES",
    "DeadlinePassed",
    "EngineLimits",
    "EnginePorts",
    "HttpFailure",
    "HttpRequest",
    "HttpResponse",
    "Item",
    "NodeError",
    "Outputs",
    "RunContext",
    "RunStopped",
    "Step",
    "deep_size",
]

Item = dict[str, Any]
"""One unit of data flowing between nodes: a JSON object."""
Outputs = dict[str, list[Item]]
"""A node's result: items per output name, every declared output present."""

DEFAULT_MAX_EXECUTION_MS: Final = 30_000
DEFAULT_MAX_EXECUTION_BYTES: Final = 64 * 1024 * 1024
SLOT_BYTES: Final = 8
"""What one item in an output list costs (a pointer)."""


# -- ports -----------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: Any
    timeout_ms: int
    credential: str | None = None
    """A credential's id: the runner applies its secret just before the call."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: Any
    """Parsed JSON when the response was JSON, else its text."""


class HttpFailure(Exception):
    """Raised by the HTTP port when no response arrived (DNS, connect, timeout, TLS)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class RunStopped(Exception):
    """Raised by a port when the caller has stopped the run (canceled, or found to
    duplicate a run already recorded): the engine ends it as canceled at once,
    so no further port call, and no further side effect, happens."""


def _never_cancel() -> bool:
    return False


@dataclass(frozen=True)
class EnginePorts:
    """Everything the engine needs from the outside world."""

    http: Callable[[HttpRequest], HttpResponse]
    sleep: Callable[[float], None]
    """Sleeps the given seconds (waits and retry back-off)."""
    clock: Callable[[], float]
    """Monotonic seconds, for the execution timeout."""
    should_cancel: Callable[[], bool] = _never_cancel
    """Polled between node runs; must be cheap."""


@dataclass(frozen=True)
class EngineLimits:
    max_wait_ms: int = 60_000
    """Cap on one ``wait`` node's pause and on one retry back-off."""
    allowed_http_hosts: frozenset[str] = frozenset()
    """Host names ``http_request`` may call (case-insensitive); empty allows none."""
    max_items: int = 10_000
    """Most items one node output may hold; more fails the node."""
    max_execution_ms: int = DEFAULT_MAX_EXECUTION_MS
    """Execution timeout unless the workflow's ``settings.timeout_ms`` sets one."""
    max_execution_bytes: int = DEFAULT_MAX_EXECUTION_BYTES
    """Memory the items one execution builds may take (see the module docstring)."""


class NodeError(Exception):
    """A node failed; retry and on_error apply."""


class DeadlinePassed(Exception):
    """The execution's deadline passed."""


@dataclass(slots=True)
class RunContext:
    """What steps may touch while running: the ports, the limits, the deadline,
    and the memory budget (bytes committed by finished attempts, and those
    charged so far by the running one)."""

    ports: EnginePorts
    limits: EngineLimits
    allowed_hosts: frozenset[str]
    deadline: float
    bytes_used: int = 0
    attempt_bytes: int = 0

    def seconds_left(self) -> float:
        return self.deadline - self.ports.clock()

    def out_of_time(self) -> bool:
        return self.seconds_left() <= 0

    def ensure_time_left(self) -> None:
        if self.out_of_time():
            raise DeadlinePassed

    def sleep(self, seconds: float) -> None:
        """Sleep, but not past the deadline: time out there instead."""
        if seconds <= 0:
            return
        left = self.seconds_left()
        if seconds >= left:
            if left > 0:
                self.ports.sleep(left)
            raise DeadlinePassed
        self.ports.sleep(seconds)

    def charge(self, nbytes: int) -> None:
        """Count memory the running attempt built; past the budget the node fails."""
        self.attempt_bytes += nbytes
        if self.bytes_used + self.attempt_bytes > self.limits.max_execution_bytes:
            raise NodeError(
                f"the execution's items would take more than "
                f"{self.limits.max_execution_bytes} bytes of memory"
            )

    def charge_value(self, value: Any) -> None:
        """Charge a value built whole (a response body, an expression result)."""
        left = self.limits.max_execution_bytes - self.bytes_used - self.attempt_bytes
        self.charge(deep_size(value, left))

    def end_attempt(self, succeeded: bool) -> None:
        """A finished attempt keeps its charge; a failed one's items are garbage."""
        if succeeded:
            self.bytes_used += self.attempt_bytes
        self.attempt_bytes = 0


def deep_size(value: Any, limit: int) -> int:
    """``sys.getsizeof`` summed over a JSON value's objects; stops once past ``limit``.

    Iterative (no recursion limit), and bounded by ``limit`` however big the
    value is. Shared objects are counted each time they are reached, so this
    is an upper bound of what the value holds alone.
    """
    total = 0
    pending = [value]
    while pending:
        current = pending.pop()
        total += sys.getsizeof(current)
        if total > limit:
            break
        if isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return total


Step = Callable[[list[list[Item]], RunContext], Outputs]
"""A node's behaviour: items per incoming connection -> items per output."""
