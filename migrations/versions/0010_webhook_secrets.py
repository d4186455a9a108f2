"""Webhooks: which active workflow holds each route, and the hooks' token hashes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

Written in the same transaction as the events that change it (``Activated``,
``Deactivated``, ``Deleted``, an edit of an active workflow; see
``commands/handlers.py``), like ``idempotency_keys``: it is the log's
consequence, never a second opinion. The primary key makes two active
workflows holding one route impossible, however activations race.

``webhook_secrets`` keeps what a hook's auth needs, generated at activation
and shown once, never in the log: a ``header_token`` hook's token as its
SHA-256 only, an ``hmac_sha256`` hook's secret itself (checking a signature
needs it).
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhook_routes (
            org_id text NOT NULL,
            method text NOT NULL,
            path text NOT NULL,
            workflow_id uuid NOT NULL,
            node_id text NOT NULL,
            -- the node's parameters as saved, so a call needs no read of the log
            parameters jsonb NOT NULL,
            PRIMARY KEY (org_id, method, path)
        )
        """
    )
    op.execute("CREATE INDEX webhook_routes_workflow ON webhook_routes (workflow_id)")
    op.execute(
        """
        CREATE TABLE webhook_secrets (
            workflow_id uuid NOT NULL,
            node_id text NOT NULL,
            token_sha256 text,
            hmac_secret text,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (workflow_id, node_id),
            CHECK ((token_sha256 IS NULL) <> (hmac_secret IS NULL))
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE webhook_secrets")
    op.execute("DROP TABLE webhook_routes")
