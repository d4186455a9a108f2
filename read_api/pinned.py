"""Reading a pinned execution whose day key retention destroyed.

A pin keeps a copy of the execution's payloads sealed under its pin key
(plus the data subject's key): ``pinned_payload`` in the document
(``commands/pins.py``). Where the document's own payload fields read as
erased because their day key is gone, the opened pinned copy stands in for
them. Unpinning destroys the pin key: the copy then reads as erased too.
"""

from __future__ import annotations

from typing import Any

from domain.payloads import payload_context
from infrastructure.keyring import AsyncKeyring
from infrastructure.sealing import ERASED, is_sealed, open_value, sealed_key_ids

PIN_FIELD = "pin"  # as commands/pins.py seals it


async def open_pinned(org_id: str, data: dict[str, Any], keyring: AsyncKeyring) -> Any:
    """The pinned copy in clear; None if it has none; ``ERASED`` if a key is gone."""
    sealed = data.get("pinned_payload")
    if not is_sealed(sealed):
        return None
    keys = [await keyring.find(key_id) for key_id in sealed_key_ids(sealed)]
    return open_value(sealed, keys, payload_context(org_id, data["id"], PIN_FIELD))


def overlay_pinned(data: dict[str, Any], pinned: Any) -> dict[str, Any]:
    """``data`` (a document with its payloads opened) with every erased payload
    field taken from the opened pinned copy, when there is one."""
    if not isinstance(pinned, dict) or pinned == ERASED:
        return data
    out = dict(data)
    for field in ("input", "output", "error"):
        if out.get(field) == ERASED and field in pinned:
            out[field] = pinned[field]
    runs = pinned.get("node_runs") or []
    if "node_runs" in out:
        merged = []
        for index, run in enumerate(out["node_runs"]):
            copy = runs[index] if index < len(runs) else {}
            run = dict(run)
            for field in ("outputs", "error"):
                if run.get(field) == ERASED and field in copy:
                    run[field] = copy[field]
            merged.append(run)
        out["node_runs"] = merged
    return out
