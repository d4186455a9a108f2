"""Dead letters: events a follower of the log could not apply, and went past.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01

See ``projections/dead_letters.py`` for who writes these rows and what
``retry`` and a rebuild do with them. (``0007`` is another change of the same
issue; the integrator chains the two.)
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per (follower, event); ``resolved_at`` is set when a retry or a
    # rebuild applied the event after all. The follower moved its tracking
    # position past the event in the same transaction that wrote the row.
    op.execute(
        """
        CREATE TABLE dead_letters (
            id bigserial PRIMARY KEY,
            follower text NOT NULL,
            position bigint NOT NULL,
            originator_id uuid NOT NULL,
            originator_version bigint NOT NULL,
            topic text NOT NULL,
            org_id text,
            error text NOT NULL,
            attempts integer NOT NULL,
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now(),
            blocked_by bigint,
            resolved_at timestamptz,
            resolution text,
            UNIQUE (follower, position)
        )
        """
    )
    # What every batch of a projection asks: does an event of this batch
    # belong to an aggregate with an unresolved dead letter (it waits behind it)?
    op.execute(
        "CREATE INDEX dead_letters_open ON dead_letters (follower, originator_id) "
        "WHERE resolved_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE dead_letters")
