"""Pins: keep a finished execution past its retention window (``commands/retention.py``).

Retention destroys day keys, so a pin must keep the payload under a key
retention never destroys: ``Pinned`` carries the execution's payload
re-sealed (``infrastructure/sealing.py``) under a pin key of its own
(purpose ``pin``, scope ``<execution id>/<version at the pin>``) plus the
data subject's key when it has one, so erasing the subject still erases a
pinned payload. Unpinning records ``Unpinned`` and destroys the pin key:
the pinned copy is then unreadable like any other expired payload, and a
later pin makes a new key (a destroyed scope is never keyed again). The
re-sealing is ``PinSealer``'s; where payloads are not sealed (no master
key), the log holds them in clear and a pin carries none.

A pin or unpin of an execution that is pinned (or not) already records
nothing and answers the same; a queued or running execution is refused
(409: only what finished can be pinned); an expired one is gone (410).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError

from commands.executions import ExecutionCommands
from commands.models import CommandContext
from domain.execution import Execution
from domain.meta import EventMeta
from infrastructure.keyring import KeyPurpose, Keyring

log = structlog.get_logger("reporunner.pins")

_ATTEMPTS: Final = 5

# (execution, pin key scope) -> the payload re-sealed for the pin, or None.
PinSealer = Callable[[Execution, str], Any]


@dataclass(frozen=True)
class PinResult:
    execution_id: UUID
    pinned: bool
    changed: bool  # False: it already was (or was not) pinned, nothing recorded
    position: int


class PinCommands:
    def __init__(
        self,
        executions: ExecutionCommands,
        keyring: Keyring | None = None,
        sealer: PinSealer | None = None,
    ) -> None:
        self.executions = executions
        self.app = executions.app
        self.keyring = keyring
        self.sealer = sealer

    def pin(self, execution_id: UUID, ctx: CommandContext) -> PinResult:
        meta = _meta(ctx)
        for _ in range(_ATTEMPTS):
            execution = self.executions.get(execution_id, ctx.org_id)
            execution.ensure_pinnable()  # 409 or 410 before any key is made
            if execution.pinned:
                return self._answer(execution, changed=False)
            scope = execution.next_pin_scope if self.sealer is not None else None
            payload = (
                None if scope is None or self.sealer is None else self.sealer(execution, scope)
            )
            execution.pin(payload=payload, key_scope=scope, meta=meta)
            try:
                self.app.save(execution)
            except IntegrityError:
                continue  # it moved on (retention took it, another pin): look again
            log.info("execution pinned", execution_id=str(execution_id), org_id=ctx.org_id)
            return self._answer(execution, changed=True)
        raise RuntimeError(f"could not pin execution {execution_id}")

    def unpin(self, execution_id: UUID, ctx: CommandContext) -> PinResult:
        meta = _meta(ctx)
        for _ in range(_ATTEMPTS):
            execution = self.executions.get(execution_id, ctx.org_id)
            scope = execution.pin_scope
            if not execution.unpin(meta=meta):
                return self._answer(execution, changed=False)
            try:
                self.app.save(execution)
            except IntegrityError:
                continue
            if scope is not None and self.keyring is not None:
                # After the save: were the destroy first and the save lost, a
                # pinned execution's payload would be gone.
                self.keyring.destroy(ctx.org_id, KeyPurpose.PIN, scope, actor=ctx.actor)
            log.info("execution unpinned", execution_id=str(execution_id), org_id=ctx.org_id)
            return self._answer(execution, changed=True)
        raise RuntimeError(f"could not unpin execution {execution_id}")

    def _answer(self, execution: Execution, *, changed: bool) -> PinResult:
        return PinResult(
            execution_id=execution.id,
            pinned=execution.pinned,
            changed=changed,
            position=self.app.event_store.position_of(execution.id, execution.version),
        )


def _meta(ctx: CommandContext) -> EventMeta:
    return EventMeta(
        org_id=ctx.org_id,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id,
        traceparent=ctx.traceparent,
    )
