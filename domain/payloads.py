"""Which fields of an execution carry payloads, and the context each is sealed for.

Payloads are what a run was given and what it made: they may be personal
data, so the log, the views and exports hold them sealed
(``infrastructure/sealing.py``). The context (AES-GCM associated data) names
the organisation, the execution and the field, so a ciphertext moved into
another execution or another field does not open there::

    <org>/<execution id>/input
    <org>/<execution id>/output
    <org>/<execution id>/error                      (Failed's error)
    <org>/<execution id>/nodes/<node id>/outputs    (a node succeeds once per execution)
    <org>/<execution id>/nodes/<node id>/<attempt>/error

What stays in clear: ids, statuses, times, counts, the truncation flags, a
crash's reason and an internal error's exception name (written by the
service, never quoting data).

Pure: names only; the command layer seals, the read API opens.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

INPUT: Final = "input"
OUTPUT: Final = "output"
ERROR: Final = "error"


def payload_context(org_id: str, execution_id: UUID | str, field: str) -> str:
    return f"{org_id}/{execution_id}/{field}"


def node_outputs_field(node_id: str) -> str:
    return f"nodes/{node_id}/outputs"


def node_error_field(node_id: str, attempt: int) -> str:
    return f"nodes/{node_id}/{attempt}/error"
