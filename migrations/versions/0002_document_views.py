"""Document views (MongoDB-style collections on JSONB) and projection tracking.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# One table per collection: (_id, org_id, data, _version, _position, created, updated).
# Hot fields get expression indexes; ad-hoc filters are served by a GIN index
# where a collection takes them (versions are only ever read by workflow).
COLLECTIONS = {
    "workflows": (True, ["(data->>'name')", "((data->>'deleted')::boolean)"]),
    "workflow_versions": (False, ["((data->>'workflow_id'))"]),
}


def create_collection(table: str, gin: bool, hot_fields: list[str]) -> None:
    op.execute(
        f"""
        CREATE TABLE {table} (
            _id text PRIMARY KEY,
            org_id text NOT NULL,
            data jsonb NOT NULL,
            _version bigint NOT NULL,
            _position bigint NOT NULL,
            created timestamptz NOT NULL,
            updated timestamptz NOT NULL
        )
        """
    )
    if gin:
        op.execute(f"CREATE INDEX {table}_data_gin ON {table} USING gin (data jsonb_path_ops)")
    op.execute(f"CREATE INDEX {table}_org_updated ON {table} (org_id, updated DESC, _id)")
    for number, expression in enumerate(hot_fields):
        op.execute(f"CREATE INDEX {table}_hot_{number} ON {table} (org_id, {expression})")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projection_tracking (
            name text PRIMARY KEY,
            position bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for collection, (gin, hot_fields) in COLLECTIONS.items():
        create_collection(f"doc_{collection}", gin, hot_fields)


def downgrade() -> None:
    for collection in COLLECTIONS:
        op.execute(f"DROP TABLE doc_{collection}")
    op.execute("DROP TABLE projection_tracking")
