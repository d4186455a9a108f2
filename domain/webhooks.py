"""Webhook triggers: who may call a hook, and which deliveries are the same one.

Pure: the HTTP adapter passes the raw body, the headers and the clock; this
module decides. Secrets never enter the log: a header token is kept only as
its SHA-256 hash, an HMAC secret outside the log (the adapter's secret
store), and both are compared in constant time.

- ``auth`` ``none``: anyone who knows the URL.
- ``auth`` ``header_token``: the header (default ``X-Webhook-Token``) holds
  the token the service generated at activation.
- ``auth`` ``hmac_sha256``: the signature header holds
  ``sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>`` and the
  timestamp header the Unix time it was signed at; a delivery signed more
  than ``tolerance_s`` away from now is refused, so a captured request
  cannot be replayed later.
- ``dedupe``: the delivery's identity is the ``Idempotency-Key`` header, or
  the value at a JSON path in the body (``$.event.id``); two deliveries with
  the same identity are one, whatever their bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

AuthKind = Literal["none", "header_token", "hmac_sha256"]
ResponseMode = Literal["immediately", "when_finished", "no_content"]

METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_TOKEN_HEADER: Final = "x-webhook-token"
DEFAULT_SIGNATURE_HEADER: Final = "x-webhook-signature"
DEFAULT_TIMESTAMP_HEADER: Final = "x-webhook-timestamp"
DEFAULT_TOLERANCE_S: Final = 300
MAX_DEDUPE_KEY_CHARS: Final = 255

# Headers a run never sees: credentials of the caller or of the hook itself.
SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", DEFAULT_TOKEN_HEADER}
)

_PATH = re.compile(r"[A-Za-z0-9_-]{1,64}(?:/[A-Za-z0-9_-]{1,64}){0,7}")
_JSON_PATH = re.compile(r"\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d{1,6}\])+)")
_JSON_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d{1,6})\]")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


class WebhookRefused(Exception):
    """A delivery the hook must not run; ``reason`` says why, in words a caller can act on."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def check_hook_path(path: object) -> str | None:
    """The problem with a hook path, or None: 1-8 segments of ``[A-Za-z0-9_-]``."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        return "must be 1-8 segments of letters, digits, '_' or '-' separated by '/'"
    return None


def check_header_name(name: object) -> str | None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        return "must be a header name of letters, digits and '-'"
    return None


class WebhookBodyInvalid(Exception):
    """A delivery's body cannot be read as what its content type says."""


def parse_body(raw: bytes, content_type: str | None) -> Any:
    """A delivery's body as the run sees it: JSON, a form (an object), or text; None if empty.

    The value contract is the caller's to check: the run's input checks it.
    """
    if not raw:
        return None
    media_type = (content_type or "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookBodyInvalid("the body is not UTF-8 text") from None
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise WebhookBodyInvalid(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            # Deeper than the parser's stack; the value contract allows far less anyway.
            raise WebhookBodyInvalid("the body's JSON is nested too deeply") from None
    if media_type == "application/x-www-form-urlencoded":
        form: dict[str, Any] = {}
        for name, value in parse_qsl(text, keep_blank_values=True):
            if name in form:  # a repeated field becomes a list, in order
                first = form[name]
                form[name] = [*first, value] if isinstance(first, list) else [first, value]
            else:
                form[name] = value
        return form
    return text


def webhook_item(
    body: Any,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    *,
    secret_headers: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The trigger's item for one delivery: its body, headers minus secrets, and query.

    ``secret_headers`` adds the hook's own auth headers (lower-case) to ``SECRET_HEADERS``.
    """
    hidden = SECRET_HEADERS | secret_headers
    return {
        "body": body,
        "headers": {
            name.lower(): value for name, value in headers.items() if name.lower() not in hidden
        },
        "query": dict(query),
    }


def hash_token(token: str) -> str:
    """What is stored for a header token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token(presented: str | None, stored_hash: str) -> None:
    """Raise ``WebhookRefused`` unless ``presented`` hashes to ``stored_hash``."""
    if not presented:
        raise WebhookRefused("the webhook token header is missing")
    if not hmac.compare_digest(hash_token(presented), stored_hash):
        raise WebhookRefused("the webhook token is wrong")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body signed at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def check_signature(
    secret: bytes,
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Raise ``WebhookRefused`` unless the body is signed with ``secret`` recently enough."""
    if not signature:
        raise WebhookRefused("the webhook signature header is missing")
    if not timestamp:
        raise WebhookRefused("the webhook timestamp header is missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise WebhookRefused("the webhook timestamp must be Unix seconds")
    signed_at = int(timestamp)
    if abs(now - signed_at) > tolerance_s:
        raise WebhookRefused(
            f"the webhook timestamp is more than {tolerance_s} s from the server's clock"
        )
    if not hmac.compare_digest(sign(secret, signed_at, body), signature.strip()):
        raise WebhookRefused("the webhook signature does not match the body")


@dataclass(frozen=True)
class Dedupe:
    """Where a delivery's identity comes from: a header, or a JSON path into the body."""

    source: Literal["header", "body"]
    path: str = "$"
    header: str = "idempotency-key"

    def __post_init__(self) -> None:
        if self.source == "body" and not _JSON_PATH.fullmatch(self.path):
            raise ValueError("dedupe path must look like $.event.id or $.items[0].id")

    def key(self, headers: Mapping[str, str], body: Any) -> str | None:
        """The delivery's identity, or None when it has none (then every delivery runs)."""
        if self.source == "header":
            value = headers.get(self.header)
        else:
            found = json_path(body, self.path)
            value = found if isinstance(found, str) else _scalar_text(found)
        if value is None or value == "":
            return None
        if len(value) > MAX_DEDUPE_KEY_CHARS or not value.isprintable():
            raise WebhookRefused(
                f"the dedupe key must be 1-{MAX_DEDUPE_KEY_CHARS} printable characters"
            )
        return value


def json_path(document: Any, path: str) -> Any:
    """The value at ``$.a.b[0]`` in ``document``, or None where the path leads nowhere."""
    match = _JSON_PATH.fullmatch(path)
    if not match:
        raise ValueError(f"not a supported JSON path: {path!r}")
    value = document
    for step in _JSON_PATH_STEP.finditer(match.group(1)):
        key, index = step.group(1), step.group(2)
        if key is not None:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        else:
            position = int(index)
            if not isinstance(value, list) or position >= len(value):
                return None
            value = value[position]
    return value


def _scalar_text(value: Any) -> str | None:
    """Numbers and booleans identify a delivery as their JSON text; containers do not."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return None
