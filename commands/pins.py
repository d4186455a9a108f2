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
from commands.payloads import ExecutionPayloads
from domain.execution import Execution
from domain.meta import EventMeta
from domain.payloads import (
    ERROR,
    INPUT,
    OUTPUT,
    node_error_field,
    node_outputs_field,
    payload_context,
)
from infrastructure.keyring import KeyPurpose, Keyring
from infrastructure.sealing import is_sealed, seal_value, sealed_key_ids

log = structlog.get_logger("reporunner.pins")

_ATTEMPTS: Final = 5

# (execution, pin key scope) -> the payload re-sealed for the pin, or None.
PinSealer = Callable[[Execution, str], Any]

PIN_FIELD: Final = "pin"  # the pinned copy's sealing context: <org>/<execution id>/pin
# (read_api/pinned.py opens it under the same name)


def pinned_payload(execution: Execution, payloads: ExecutionPayloads) -> dict[str, Any]:
    """Every payload of ``execution`` in clear (erased ones as ``{"$erased": true}``)::

        {input, output, error, node_runs: [{node_id, attempt, outputs, error}]}

    (``node_runs`` in the execution's order, so a reader matches them by index.)"""

    def opened(field: str, value: Any) -> Any:
        return payloads.open(execution.org_id, execution.id, field, value)

    return {
        "input": opened(INPUT, execution.input),
        "output": opened(OUTPUT, execution.output),
        "error": opened(ERROR, execution.error) if execution.status == "failed" else None,
        "node_runs": [
            {
                "node_id": run["node_id"],
                "attempt": run["attempt"],
                "outputs": opened(node_outputs_field(run["node_id"]), run["outputs"]),
                "error": opened(node_error_field(run["node_id"], run["attempt"]), run["error"]),
            }
            for run in execution.node_runs
        ],
    }


def payload_sealer(payloads: ExecutionPayloads) -> PinSealer | None:
    """Re-seals a pinned execution's payload under its pin key plus the keys its
    input was sealed under other than the day key (the data subject's), so
    retention (day keys) cannot erase it and erasure (subject keys) still does.
    None without a keyring: payloads are in clear, a pin needs no copy."""
    keyring = payloads.keyring
    if keyring is None:
        return None

    def seal(execution: Execution, scope: str) -> Any:
        if not is_sealed(execution.input):
            return None  # recorded in clear (before sealing): the log keeps it readable
        pin_key = keyring.key_for(execution.org_id, KeyPurpose.PIN, scope)
        assert pin_key is not None, "a pin scope is new for every pin"
        # The day key comes first in a sealed value's keys (commands/payloads.py).
        others = [keyring.find(key_id) for key_id in sealed_key_ids(execution.input)[1:]]
        if any(key is None for key in others):
            return None  # its subject was erased: nothing of it may be kept
        keys = [pin_key, *(key for key in others if key is not None)]
        context = payload_context(execution.org_id, execution.id, PIN_FIELD)
        return seal_value(pinned_payload(execution, payloads), keys, context)

    return seal


@dataclass(frozen=True)
class PinResult:
    execution_id: UUID
    pinned: bool
    changed: bool  # False: it already was (or was not) pinned, nothing recorded
    position: int


class PinCommands:
    def __init__(self, executions: ExecutionCommands) -> None:
        self.executions = executions
        self.app = executions.app
        payloads = executions.runner.payloads
        self.keyring: Keyring | None = payloads.keyring
        self.sealer = payload_sealer(payloads)

    def pin(self, execution_id: UUID, ctx: CommandContext) -> PinResult:
        meta = _meta(ctx)
        for _ in range(_ATTEMPTS):
            execution = self.executions.get(execution_id, ctx.org_id)
            self.executions.in_scope(execution, ctx)  # another project's: 404
            execution.ensure_pinnable()  # 409 or 410 before any key is made
            if execution.pinned:
                return self._answer(execution, changed=False)
            scope: str | None = None
            payload: Any = None
            if self.sealer is not None:
                scope = execution.next_pin_scope
                payload = self.sealer(execution, scope)
                if payload is None:
                    scope = None  # nothing sealed: no pin key was made
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
            self.executions.in_scope(execution, ctx)  # another project's: 404
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
