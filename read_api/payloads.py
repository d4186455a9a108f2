"""Execution documents in clear for authorised readers.

The executions view holds payloads as the log does, sealed
(``commands/payloads.py``): erasure, which destroys a key, then leaves no
plaintext in any view, and a rebuilt view equals the live one. This module
opens them on the way out: each key at most once per answer (through
``AsyncKeyring``'s short cache), and a payload whose key was destroyed reads
``{"$erased": true}``. Without a master key (``app.state.payload_keys`` None)
documents go out as stored.

What does not see plaintext: Mongo-style filters, sorts and aggregation
pipelines over payload fields (``input.customer.email``, ``output...``) run
in PostgreSQL over the sealed form, so they match nothing there; filter on
the clear fields (status, workflow, times, trigger, ids) instead.
"""

from __future__ import annotations

from typing import Any

from domain.payloads import (
    ERROR,
    INPUT,
    OUTPUT,
    node_error_field,
    node_outputs_field,
    payload_context,
)
from infrastructure.keyring import AsyncKeyring, DataKey
from infrastructure.sealing import is_sealed, open_value, sealed_key_ids
from read_api.pinned import open_pinned, overlay_pinned

__all__ = ["opened_execution", "opened_items", "payload_keys"]


def _sealed_fields(document: dict[str, Any]) -> list[tuple[str, Any]]:
    fields = [(INPUT, document.get(INPUT)), (OUTPUT, document.get(OUTPUT))]
    fields.append((ERROR, document.get(ERROR)))
    return fields


async def _keys(keyring: AsyncKeyring, values: list[Any]) -> dict[str, DataKey | None]:
    found: dict[str, DataKey | None] = {}
    for value in values:
        for key_id in sealed_key_ids(value):
            if key_id not in found:
                found[key_id] = await keyring.find(key_id)
    return found


def _open(value: Any, keys: dict[str, DataKey | None], org_id: str, eid: str, field: str) -> Any:
    if not is_sealed(value):
        return value
    return open_value(
        value,
        [keys[key_id] for key_id in sealed_key_ids(value)],
        payload_context(org_id, eid, field),
    )


async def opened_execution(
    document: dict[str, Any], org_id: str, keyring: AsyncKeyring | None
) -> dict[str, Any]:
    """A whole execution document with its payloads in clear (or erased)."""
    if keyring is None:
        return document
    runs: list[dict[str, Any]] = document.get("node_runs") or []
    values = [value for _, value in _sealed_fields(document)]
    values += [run.get("outputs") for run in runs] + [run.get("error") for run in runs]
    keys = await _keys(keyring, values)
    eid = str(document["id"])
    opened = dict(document)
    for field, value in _sealed_fields(document):
        if field in document:
            opened[field] = _open(value, keys, org_id, eid, field)
    opened["node_runs"] = [
        {
            **run,
            "outputs": _open(
                run.get("outputs"), keys, org_id, eid, node_outputs_field(run["node_id"])
            ),
            "error": _open(
                run.get("error"),
                keys,
                org_id,
                eid,
                node_error_field(run["node_id"], run["attempt"]),
            ),
        }
        for run in runs
    ]
    # A pinned execution's own payloads are erased once retention destroys their
    # day key; its pinned copy (under the pin key) stands in for them.
    pinned = await open_pinned(org_id, document, keyring)
    opened.pop("pinned_payload", None)
    return overlay_pinned(opened, pinned)


async def opened_items(
    items: list[dict[str, Any]], org_id: str, keyring: AsyncKeyring | None
) -> list[dict[str, Any]]:
    """List items (no input, output or node runs) with their ``error`` in clear."""
    if keyring is None:
        return items
    keys = await _keys(keyring, [item.get(ERROR) for item in items])
    return [
        {**item, ERROR: _open(item.get(ERROR), keys, org_id, str(item["id"]), ERROR)}
        if is_sealed(item.get(ERROR))
        else item
        for item in items
    ]


def payload_keys(request: Any) -> AsyncKeyring | None:
    """This app's keyring for payloads (None: no master key, payloads stored in clear)."""
    return getattr(request.app.state, "payload_keys", None)
