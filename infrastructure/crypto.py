"""Envelope encryption: the master key, data keys, and sealed bytes.

The key hierarchy is two levels deep. One master key (``REPORUNNER_MASTER_KEY``
or the file ``REPORUNNER_MASTER_KEY_FILE`` names) only ever wraps data keys;
data keys (per organisation, per organisation and day, per data subject; see
``infrastructure/keyring.py``) seal the values themselves. Rotating the master
key re-wraps the data keys and touches nothing sealed under them; destroying a
data key makes everything sealed under it unreadable for good.

Everything is AES-256-GCM from ``cryptography``: a fresh 96-bit nonce per
seal, and associated data binding each ciphertext to where it belongs (a key's
id, a value's owner), so a ciphertext moved elsewhere does not open. Pure
functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
# One byte of format ahead of every sealed value, so a later format can coexist.
SEAL_FORMAT = b"\x01"


class MasterKeyError(ValueError):
    """A master key that is malformed, or that does not open the stored data keys."""


class SealBroken(ValueError):
    """Sealed bytes that do not open under the key and associated data given."""


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The 256-bit key that wraps every data key; its id is a digest, never the key."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise MasterKeyError(f"a master key is {KEY_BYTES} bytes, not {len(self.secret)}")

    @property
    def key_id(self) -> str:
        # A digest of a 256-bit random key reveals nothing useful; 16 hex digits name it.
        return hashlib.sha256(b"reporunner master key id\x00" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the key itself
        return f"MasterKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def parse(cls, text: str) -> MasterKey:
        """A key as written in the setting or its file: 64 hex digits or base64 (url-safe or not)
        of 32 bytes, surrounding whitespace ignored."""
        value = text.strip()
        if not value:
            raise MasterKeyError("the master key is empty")
        if len(value) == 2 * KEY_BYTES:
            try:
                return cls(bytes.fromhex(value))
            except ValueError:
                pass
        try:
            padded = value + "=" * (-len(value) % 4)
            decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != KEY_BYTES:
            raise MasterKeyError(
                f"the master key must be {KEY_BYTES} random bytes written as 64 hex digits "
                "or as base64 (for example the output of `reporunner keys generate`)"
            )
        return cls(decoded)

    def encoded(self) -> str:
        """The form ``parse`` reads back and ``reporunner keys generate`` prints."""
        return base64.urlsafe_b64encode(self.secret).decode().rstrip("=")


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """``plaintext`` encrypted and authenticated under ``key``, bound to ``associated``."""
    nonce = os.urandom(NONCE_BYTES)
    return SEAL_FORMAT + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext ``seal`` sealed; ``SealBroken`` for the wrong key, data or bytes."""
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != SEAL_FORMAT:
        raise SealBroken("not a sealed value")
    nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, associated)
    except InvalidTag:
        raise SealBroken("the value does not open under this key") from None


def wrap_data_key(master: MasterKey, key_id: str, data_key: bytes) -> bytes:
    return seal(master.secret, data_key, b"reporunner data key\x00" + key_id.encode())


def unwrap_data_key(master: MasterKey, key_id: str, wrapped: bytes) -> bytes:
    """The data key; ``MasterKeyError`` if this master key did not wrap it."""
    try:
        return open_sealed(master.secret, wrapped, b"reporunner data key\x00" + key_id.encode())
    except SealBroken:
        raise MasterKeyError(
            f"the master key {master.key_id} does not open data key {key_id}: "
            "this is not the key that wrapped the stored keys"
        ) from None


def fingerprint(secret: bytes) -> str:
    """A short, stable digest of a secret, safe to show and to log (12 hex digits).

    SHA-256 of a high-entropy secret: enough to tell two secrets apart, far too
    little to guess one from. Low-entropy values (a password) go through a keyed
    hash instead: see ``keyed_digest``.
    """
    return hashlib.sha256(b"reporunner fingerprint\x00" + secret).hexdigest()[:12]


def keyed_digest(key: bytes, purpose: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` under ``key``, hex: a lookup name for a value
    (a data subject's id, a low-entropy secret) that reveals nothing without the key."""
    return hmac.new(key, purpose.encode() + b"\x00" + value.encode(), hashlib.sha256).hexdigest()
