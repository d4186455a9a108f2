"""What the write API answers, as OpenAPI response models.

The routes build their answers by hand (see ``write_api.routes``); these
models describe them in the document and are never used to serialise.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from domain.execution import ExecutionStatus


class CommandAnswer(BaseModel):
    """A workflow command's answer: its version now, and where its last event is in the log."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "0b6f0c1e-6a57-4a55-9d0e-2f1d1f0f6d4b", "version": 2, "position": 1234}
            ]
        }
    )

    id: UUID
    version: int = Field(ge=1, description="The definition's revision; the next If-Match.")
    position: int = Field(ge=0, description="Send as X-Min-Position to read your own write.")
    webhook_secrets: dict[str, str] | None = Field(
        None,
        description="The tokens or HMAC keys this activation or rotation generated, by node "
        "id: shown in this answer only.",
    )


class ExecutionAnswer(BaseModel):
    """A run's answer: with its output when it finished (200), else its id and status (202)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "execution_id": "7d0c5a1e-2b6f-4b1c-9a57-0f1d1f0f6d4b",
                    "status": "succeeded",
                    "output": {"greet": [{"name": "Ada", "greeting": "hello"}]},
                    "error": None,
                    "position": 1240,
                }
            ]
        }
    )

    execution_id: UUID
    status: ExecutionStatus
    position: int = Field(ge=0)
    output: dict[str, Any] | None = Field(
        None,
        description="Each node's output items, by node id (finished runs only); "
        '{"$erased": true} once its data subject was erased.',
    )
    error: str | dict[str, Any] | None = Field(
        None, description='Why it failed; {"$erased": true} once its data subject was erased.'
    )


class HookAccepted(BaseModel):
    """A webhook call's answer when the run is queued (``response: immediately``)."""

    execution_id: UUID
    status: ExecutionStatus
