"""Hook HMAC secrets, sealed under the organisation's key in ``webhook_secrets``.

An ``hmac_sha256`` hook's secret must be kept itself (checking a signature
needs it), so it is kept sealed (``infrastructure/sealing.py``) in
``hmac_sealed``, bound to its workflow and node, like a credential's secret.
Rows written before migration 0015 hold it in clear (``hmac_secret``); a
migration has no master key, so every process seals those at start
(``seal_clear_secrets``, after the master key's check), and reading copes
with either form meanwhile. A ``header_token`` hook keeps only its token's
SHA-256, as before.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
import structlog

from infrastructure.keyring import ConnectionSource, Keyring
from infrastructure.sealing import open_value, seal_value, sealed_key_ids

log = structlog.get_logger("reporunner.webhooks")

SWEEP_BATCH = 500


def secret_context(org_id: str, workflow_id: UUID | str, node_id: str) -> str:
    return f"webhook/{org_id}/{workflow_id}/{node_id}"


def seal_secret(
    keyring: Keyring, org_id: str, workflow_id: UUID | str, node_id: str, secret: str
) -> str:
    """The sealed secret as jsonb text, for ``webhook_secrets.hmac_sealed``."""
    key = keyring.org_key(org_id)
    sealed = seal_value(secret, [key], secret_context(org_id, workflow_id, node_id))
    return orjson.dumps(sealed).decode()


def open_secret(
    keyring: Keyring, org_id: str, workflow_id: UUID | str, node_id: str, sealed_text: str
) -> str | None:
    """The secret ``seal_secret`` sealed; None if its key is gone."""
    sealed: Any = orjson.loads(sealed_text)
    keys = [keyring.find(key_id) for key_id in sealed_key_ids(sealed)]
    secret = open_value(sealed, keys, secret_context(org_id, workflow_id, node_id))
    return secret if isinstance(secret, str) else None


def seal_clear_secrets(keyring: Keyring, connect: ConnectionSource) -> int:
    """Seal every hook secret still in clear (rows from before 0015); how many.

    In batches, each its own transaction; ``SKIP LOCKED`` lets several
    processes starting at once share the work instead of waiting.
    """
    sealed = 0
    while True:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT s.workflow_id, s.node_id, s.hmac_secret, r.org_id "
                "FROM webhook_secrets s JOIN webhook_routes r "
                "ON r.workflow_id = s.workflow_id AND r.node_id = s.node_id "
                "WHERE s.hmac_secret IS NOT NULL LIMIT %s FOR UPDATE OF s SKIP LOCKED",
                (SWEEP_BATCH,),
            )
            rows = cur.fetchall()
            for row in rows:
                text = seal_secret(
                    keyring, row["org_id"], row["workflow_id"], row["node_id"], row["hmac_secret"]
                )
                cur.execute(
                    "UPDATE webhook_secrets SET hmac_sealed = %s::jsonb, hmac_secret = NULL "
                    "WHERE workflow_id = %s AND node_id = %s",
                    (text, row["workflow_id"], row["node_id"]),
                )
            conn.commit()
        sealed += len(rows)
        if len(rows) < SWEEP_BATCH:
            break
    if sealed:
        log.info("sealed hook secrets kept in clear before 0015", count=sealed)
    return sealed
