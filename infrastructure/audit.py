"""Tamper evidence for the log: the hash chain, its signatures, and signed exports.

Everything here is pure (bytes in, bytes out), so the exact formats below are
unit-tested on their own; ``projections/audit_chain.py`` applies them to the
database.

The chain
---------
Every stored event, in log order, extends the chain::

    link(0) = 32 zero bytes                                  (genesis)
    link(n) = SHA-256(link(n-1) || canonical(event n))

``canonical(event)`` covers every stored column of ``reporunner_events``, so
altering any of them changes the link::

    int64 big-endian   notification_id      (the log position)
    16 bytes           originator_id        (the UUID's raw bytes)
    int64 big-endian   originator_version
    int64 big-endian   length of topic      (-1 for NULL)
    bytes              topic, UTF-8
    int64 big-endian   length of state      (-1 for NULL)
    bytes              state                (as stored: eventsourcing's JSON)

Fixed-width fields and length prefixes make the encoding injective: two
different rows never share canonical bytes, so no shifting of bytes between
topic and state (or between events) keeps a link.

Signatures
----------
HMAC-SHA256 keyed by ``REPORUNNER_AUDIT_KEY`` over a domain-separated
message (so a checkpoint's signature can never pass for a head's)::

    b"reporunner.audit.checkpoint.v1\\0" | b"reporunner.audit.head.v1\\0"
    || int64 BE position || int64 BE count || link (32 bytes)

Exports
-------
One JSON object per line, keys sorted, no spaces, UTF-8. Each event line ends
with a ``seal``, the last key::

    seal(0) = 32 zero bytes
    seal(n) = SHA-256(seal(n-1) || line n without its seal)
    where "line n without its seal" is the canonical JSON of the event fields

so an edited byte fails exactly at its line, and moved lines fail where the
order first breaks. The last line is ``{"hmac": ..., "manifest": {...}}``;
the HMAC covers the canonical manifest and the SHA-256 of every event line's
bytes (seals and newlines included), so nothing before it can change, and the
manifest itself cannot, without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

LINK_SIZE = 32
GENESIS_LINK = bytes(LINK_SIZE)
EXPORT_FORMAT = "reporunner-audit-export/1"

_EVENT_HEAD = struct.Struct(">q16sqq")  # position, originator id, version, topic length
_LENGTH = struct.Struct(">q")
_POSITION_COUNT = struct.Struct(">qq")
_CHECKPOINT_DOMAIN = b"reporunner.audit.checkpoint.v1\0"
_HEAD_DOMAIN = b"reporunner.audit.head.v1\0"
_EXPORT_DOMAIN = b"reporunner.audit.export.v1\0"


# -- the chain ------------------------------------------------------------------------


def canonical_event_bytes(
    position: int,
    originator_id: bytes,
    version: int,
    topic: bytes | None,
    state: bytes | None,
) -> bytes:
    """The bytes of one stored event that its link commits to (see the module doc)."""
    if len(originator_id) != 16:
        # struct would pad or cut it silently; an id is a UUID's 16 bytes.
        raise ValueError(f"originator_id must be 16 bytes, not {len(originator_id)}")
    return b"".join(
        (
            _EVENT_HEAD.pack(position, originator_id, version, -1 if topic is None else len(topic)),
            topic or b"",
            _LENGTH.pack(-1 if state is None else len(state)),
            state or b"",
        )
    )


def next_link(previous: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(previous + canonical).digest()


# -- signatures -----------------------------------------------------------------------


def key_bytes(key: str | bytes | None) -> bytes | None:
    """The HMAC key, or None when none is configured (an empty setting counts as none)."""
    if not key:
        return None
    return key if isinstance(key, bytes) else key.encode()


def checkpoint_message(position: int, count: int, link: bytes) -> bytes:
    return _CHECKPOINT_DOMAIN + _POSITION_COUNT.pack(position, count) + link


def head_message(position: int, count: int, link: bytes) -> bytes:
    return _HEAD_DOMAIN + _POSITION_COUNT.pack(position, count) + link


def sign(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def signature_ok(key: bytes, message: bytes, signature: bytes | None) -> bool:
    return signature is not None and hmac.compare_digest(sign(key, message), signature)


# -- export lines ---------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8. The stdlib encoder: it keeps big integers exact."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_state(state: bytes) -> Any:
    """A stored state's JSON; None if it is not JSON (eventsourcing writes no such state).

    The stdlib decoder: orjson would turn integers beyond 64 bits into floats.
    """
    try:
        return json.loads(state)
    except ValueError:
        return None


def event_org(state: Any) -> str | None:
    """The organisation of an event: its ``meta.org_id``."""
    meta = state.get("meta") if isinstance(state, dict) else None
    org_id = meta.get("org_id") if isinstance(meta, dict) else None
    return org_id if isinstance(org_id, str) else None


def event_timestamp(state: Any) -> str | None:
    """The event's ISO timestamp, out of eventsourcing's ``{"_type_", "_data_"}`` wrapper."""
    timestamp = state.get("timestamp") if isinstance(state, dict) else None
    if isinstance(timestamp, dict):
        timestamp = timestamp.get("_data_")
    return timestamp if isinstance(timestamp, str) else None


def export_fields(
    position: int,
    aggregate_id: UUID,
    version: int,
    topic: str,
    state: Any,
    link: bytes,
) -> dict[str, Any]:
    """An event line's fields; ``state`` is the decoded stored JSON, kept whole as ``data``."""
    meta = state.get("meta") if isinstance(state, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return {
        "position": position,
        "aggregate_id": str(aggregate_id),
        "version": version,
        # domain.workflow:Workflow.Created -> Workflow.Created
        "type": topic.rpartition(":")[2],
        "topic": topic,
        "timestamp": event_timestamp(state),
        "actor": meta.get("actor"),
        "correlation_id": meta.get("correlation_id"),
        "org_id": event_org(state),
        "data": state,
        "link": link.hex(),
    }


_SEAL_PREFIX = b',"seal":"'
_SEAL_SUFFIX = b'"}\n'
_SEALED_TAIL = len(_SEAL_PREFIX) + 2 * LINK_SIZE + len(_SEAL_SUFFIX)


def seal_line(fields: dict[str, Any], previous_seal: bytes) -> tuple[bytes, bytes]:
    """An event line (newline included) and its seal."""
    body = canonical_json(fields)
    seal = hashlib.sha256(previous_seal + body).digest()
    return body[:-1] + _SEAL_PREFIX + seal.hex().encode() + _SEAL_SUFFIX, seal


def open_line(line: bytes) -> tuple[bytes, bytes]:
    """An event line's canonical body and the seal it claims (as hex text).

    ``ValueError`` if it is not shaped like one (e.g. cut short).
    """
    if (
        len(line) <= _SEALED_TAIL
        or not line.startswith(b"{")
        or not line.endswith(_SEAL_SUFFIX)
        or line[-_SEALED_TAIL : -_SEALED_TAIL + len(_SEAL_PREFIX)] != _SEAL_PREFIX
    ):
        raise ValueError("not a sealed event line")
    return line[:-_SEALED_TAIL] + b"}", line[-_SEALED_TAIL + len(_SEAL_PREFIX) : -3]


def manifest_hmac(key: bytes, manifest: dict[str, Any], lines_digest: bytes) -> bytes:
    return sign(key, _EXPORT_DOMAIN + canonical_json(manifest) + lines_digest)


def manifest_line(manifest: dict[str, Any], signature: bytes | None) -> bytes:
    return canonical_json({"manifest": manifest, "hmac": signature and signature.hex()}) + b"\n"


class ExportWriter:
    """Writes event lines and the closing manifest to a binary stream."""

    def __init__(self, out: BinaryIO, key: bytes | None) -> None:
        self._out = out
        self._key = key
        self._seal = GENESIS_LINK
        self._lines = hashlib.sha256()
        self.count = 0
        self.bytes_written = 0
        self.first_position: int | None = None
        self.last_position: int | None = None
        self.last_link: str | None = None

    def write_event(self, fields: dict[str, Any]) -> None:
        line, self._seal = seal_line(fields, self._seal)
        self._lines.update(line)
        self._out.write(line)
        self.bytes_written += len(line)
        self.count += 1
        if self.first_position is None:
            self.first_position = fields["position"]
        self.last_position = fields["position"]
        self.last_link = fields["link"]

    def finish(self, **about: Any) -> dict[str, Any]:
        """Write the manifest (``about``: org_id, since, until, ...); return it."""
        manifest = {
            "format": EXPORT_FORMAT,
            "count": self.count,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "chain_head": self.last_link,
            "lines_sha256": self._lines.hexdigest(),
            **about,
        }
        digest = self._lines.digest()
        signature = manifest_hmac(self._key, manifest, digest) if self._key else None
        line = manifest_line(manifest, signature)
        self._out.write(line)
        self.bytes_written += len(line)
        return manifest


# -- verifying an export --------------------------------------------------------------


@dataclass(frozen=True)
class ExportCheck:
    """The outcome of ``verify_export``: ``line`` is 1-based, the first bad one."""

    ok: bool
    signed: bool
    count: int
    org_id: str | None = None
    line: int | None = None
    reason: str | None = None
    warning: str | None = None


class _ExportFailure(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def verify_export(path: str | Path, key: str | bytes | None) -> ExportCheck:
    """Check an export offline, with only the file and the key; constant memory."""
    with open(path, "rb") as lines:
        return verify_export_lines(lines, key)


def verify_export_lines(lines: Iterable[bytes], key: str | bytes | None) -> ExportCheck:
    """``verify_export`` over the file's lines (newlines included)."""
    secret = key_bytes(key)
    events = _EventLines()
    number = 0
    try:
        remaining = iter(lines)
        manifest: dict[str, Any] | None = None
        signature = ""
        for number, line in enumerate(remaining, start=1):
            if line.startswith(b'{"hmac":'):
                manifest, signature = _check_manifest(line, number, secret)
                break
            events.check(line, number)
        if manifest is None:
            raise _ExportFailure(number + 1, "no manifest line: the file is truncated")
        for extra in remaining:
            raise _ExportFailure(number + 1, f"content after the manifest: {extra[:40]!r}")
        events.check_manifest(manifest, number)
        if secret is not None:
            if not signature:
                raise _ExportFailure(number, "the export is unsigned, but a key was given")
            expected = manifest_hmac(secret, manifest, events.lines_digest.digest()).hex()
            if not hmac.compare_digest(expected, signature):
                raise _ExportFailure(
                    number,
                    "the manifest's signature does not match (wrong key, or the file was altered)",
                )
    except _ExportFailure as failure:
        return ExportCheck(
            ok=False,
            signed=secret is not None,
            count=events.count,
            org_id=events.org_id,
            line=failure.line,
            reason=failure.reason,
        )
    warning = None
    if secret is None:
        warning = (
            "no key: the signature was not checked, so the whole file could have been "
            "rewritten consistently; only accidental damage is ruled out"
        )
    return ExportCheck(
        ok=True,
        signed=secret is not None,
        count=events.count,
        org_id=manifest.get("org_id"),
        warning=warning,
    )


class _EventLines:
    """What the event lines say, checked line by line, to compare with the manifest."""

    def __init__(self) -> None:
        self.seal = GENESIS_LINK
        self.lines_digest = hashlib.sha256()
        self.count = 0
        self.org_id: str | None = None
        self.first_position: int | None = None
        self.last_position: int | None = None
        self.last_link: str | None = None
        self.earliest: tuple[datetime, int] | None = None  # (timestamp, line number)
        self.latest: tuple[datetime, int] | None = None

    def check(self, line: bytes, number: int) -> None:
        try:
            body, claimed = open_line(line)
        except ValueError:
            raise _ExportFailure(
                number, "malformed line (cut short, or not an event line)"
            ) from None
        self.seal = hashlib.sha256(self.seal + body).digest()
        if claimed != self.seal.hex().encode():
            raise _ExportFailure(
                number, "the line was altered, moved or removed (its seal does not match)"
            )
        self.lines_digest.update(line)
        fields = _event_fields(body, number)
        position = fields["position"]
        if self.last_position is not None and position <= self.last_position:
            raise _ExportFailure(number, f"position {position} is out of order")
        if self.org_id is None:
            self.org_id = fields["org_id"]
        elif fields["org_id"] != self.org_id:
            raise _ExportFailure(number, f"an event of another organisation: {fields['org_id']}")
        if self.first_position is None:
            self.first_position = position
        self.last_position, self.last_link = position, fields["link"]
        if fields["timestamp"] is not None:
            timestamp = _instant(fields["timestamp"], number)
            if self.earliest is None or timestamp < self.earliest[0]:
                self.earliest = (timestamp, number)
            if self.latest is None or timestamp > self.latest[0]:
                self.latest = (timestamp, number)
        self.count += 1

    def check_manifest(self, manifest: dict[str, Any], number: int) -> None:
        expected = {
            "count": self.count,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "chain_head": self.last_link,
            "lines_sha256": self.lines_digest.hexdigest(),
        }
        for name, value in expected.items():
            if manifest.get(name) != value:
                raise _ExportFailure(
                    number, f"manifest {name} is {manifest.get(name)!r}, the lines say {value!r}"
                )
        if self.count and manifest.get("org_id") != self.org_id:
            raise _ExportFailure(number, f"manifest org_id is not the events' ({self.org_id})")
        since, until = manifest.get("since"), manifest.get("until")
        if (
            since is not None
            and self.earliest is not None
            and self.earliest[0] < _instant(since, number)
        ):
            raise _ExportFailure(self.earliest[1], f"event before the manifest's since {since}")
        if (
            until is not None
            and self.latest is not None
            and self.latest[0] >= _instant(until, number)
        ):
            raise _ExportFailure(self.latest[1], f"event at or after the manifest's until {until}")


def _check_manifest(line: bytes, number: int, key: bytes | None) -> tuple[dict[str, Any], str]:
    """The manifest and its signature (hex, "" if unsigned); it must be in canonical form."""
    try:
        parsed = json.loads(line)
    except ValueError:
        raise _ExportFailure(number, "the manifest line is not JSON") from None
    if (
        not isinstance(parsed, dict)
        or set(parsed) != {"hmac", "manifest"}
        or not isinstance(parsed["manifest"], dict)
        or not (parsed["hmac"] is None or isinstance(parsed["hmac"], str))
        # Byte for byte: a rewrite that means the same JSON is an edit too.
        or canonical_json(parsed) + b"\n" != line
    ):
        raise _ExportFailure(number, "the manifest line is malformed")
    manifest: dict[str, Any] = parsed["manifest"]
    if manifest.get("format") != EXPORT_FORMAT:
        raise _ExportFailure(number, f"unknown export format {manifest.get('format')!r}")
    return manifest, parsed["hmac"] or ""


_EVENT_KEYS = frozenset(
    {
        "position",
        "aggregate_id",
        "version",
        "type",
        "topic",
        "timestamp",
        "actor",
        "correlation_id",
        "org_id",
        "data",
        "link",
    }
)


def _event_fields(body: bytes, number: int) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except ValueError:
        raise _ExportFailure(number, "the event line is not JSON") from None
    if (
        not isinstance(fields, dict)
        or set(fields) != _EVENT_KEYS
        or not isinstance(fields["position"], int)
        or not isinstance(fields["org_id"], str)
    ):
        raise _ExportFailure(number, "the event line lacks or adds fields")
    return fields


def _instant(raw: Any, number: int) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value.tzinfo is None:
        raise _ExportFailure(number, f"not an ISO 8601 time with an offset: {raw!r}")
    return value
