"""Who did it and why: the metadata every event carries for the audit trail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventMeta:
    org_id: str
    actor: str
    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None
    # The W3C trace context of what caused the event, when tracing was on:
    # whoever applies the event later continues that trace. Events without
    # it (untraced, or older) read the same.
    traceparent: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """The JSON-native form stored inside each event (no ``traceparent`` key when none).

        Spelled out: ``dataclasses.asdict`` deep-copies recursively, and every
        event of every run pays for it.
        """
        stored: dict[str, str | None] = {
            "org_id": self.org_id,
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "idempotency_key": self.idempotency_key,
        }
        if self.traceparent is not None:
            stored["traceparent"] = self.traceparent
        return stored
