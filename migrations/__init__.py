"""Alembic migrations: they own every table, the event store's included."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from infrastructure.database import PgTarget

_HERE = Path(__file__).resolve().parent


def alembic_config(target: PgTarget) -> Config:
    config = alembic_config_without_target()
    config.attributes["pg_target"] = target
    return config


def upgrade(target: PgTarget, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; safe to call from several processes at once."""
    command.upgrade(alembic_config(target), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config_without_target()).get_current_head()
    assert head is not None
    return head


def alembic_config_without_target() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    return config


def current_revision(target: PgTarget) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(target.sqlalchemy_url())
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
