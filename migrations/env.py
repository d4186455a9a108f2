"""Alembic environment: online migrations only, serialised by an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from infrastructure.database import PgTarget

# Any constant works; it only has to be the same in every process.
_MIGRATION_LOCK_ID = 727_001


def run_migrations_online() -> None:
    target: PgTarget = context.config.attributes["pg_target"]
    engine = create_engine(target.sqlalchemy_url())
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()
            try:
                context.configure(connection=connection, transaction_per_migration=True)
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID}
                )
                connection.commit()
    finally:
        engine.dispose()


run_migrations_online()
