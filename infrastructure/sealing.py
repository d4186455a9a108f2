"""Sealed JSON values: how an encrypted payload sits in an event, a view or an export.

A sealed value is itself a JSON value, so it passes every door the value
contract guards (the log, jsonb views, orjson, Redis) unchanged::

    {"$sealed": {"v": 1, "keys": ["<data key id>", ...], "ct": "<base64url>"}}

``ct`` is AES-256-GCM (``infrastructure/crypto.py``) of the value's orjson
bytes, under one key derived (HKDF-SHA256) from every data key listed: a day
key, plus a data subject's key when the value belongs to one. Destroying
*any* of them (retention destroys day keys, erasure a subject's) makes the
value unreadable. The associated data is the ``context`` the caller names
(organisation, execution, field), so a ciphertext copied into another
execution's field does not open there.

Opening a value whose key is gone gives ``ERASED``: readers show
``{"$erased": true}`` in its place. The key ids are the only thing a sealed
value says about itself; they name no person (see ``keyring.py``).

Pure: callers find the keys (``Keyring.find`` / ``AsyncKeyring.find``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infrastructure.crypto import KEY_BYTES, SealBroken, open_sealed, seal
from infrastructure.keyring import DataKey

SEALED: Final = "$sealed"
FORMAT_VERSION: Final = 1
# What a reader shows where a value's key was destroyed.
ERASED: Final = {"$erased": True}


def _value_key(keys: Sequence[DataKey]) -> bytes:
    """One AES key from the listed data keys, in order: any one destroyed, no key."""
    material = b"".join(key.secret for key in keys)
    info = b"reporunner sealed value\x00" + b",".join(key.key_id.encode() for key in keys)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(material)


def seal_value(value: Any, keys: Sequence[DataKey], context: str) -> dict[str, Any]:
    """``value`` (a value the contract admits) sealed under ``keys`` for ``context``."""
    if not keys:
        raise ValueError("a value is sealed under at least one data key")
    ciphertext = seal(_value_key(keys), orjson.dumps(value), context.encode())
    return {
        SEALED: {
            "v": FORMAT_VERSION,
            "keys": [key.key_id for key in keys],
            "ct": base64.urlsafe_b64encode(ciphertext).decode().rstrip("="),
        }
    }


def is_sealed(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(value.get(SEALED), dict)
        and value[SEALED].get("v") == FORMAT_VERSION
    )


def sealed_key_ids(value: Any) -> list[str]:
    """The data key ids a sealed value needs (empty for a value that is not sealed)."""
    if not is_sealed(value):
        return []
    keys = value[SEALED].get("keys")
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def open_value(sealed: Any, keys: Sequence[DataKey | None], context: str) -> Any:
    """The value ``seal_value`` sealed, given its keys in ``sealed_key_ids`` order
    (None for a destroyed one): ``ERASED`` if any is gone. ``SealBroken`` if the
    bytes were altered or belong to another context."""
    present = [key for key in keys if key is not None]
    if len(present) != len(keys) or not present:
        return dict(ERASED)
    if [key.key_id for key in present] != sealed_key_ids(sealed):
        raise SealBroken("the keys given are not the ones this value was sealed under")
    text = sealed[SEALED]["ct"]
    try:
        ciphertext = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise SealBroken("a sealed value's ciphertext is not base64") from None
    return orjson.loads(open_sealed(_value_key(present), ciphertext, context.encode()))
