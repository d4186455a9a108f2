"""``single_statement``: a read runs in autocommit, with no transaction around it."""

from __future__ import annotations

from sqlalchemy import text

from infrastructure.database import PgTarget, create_engine, single_statement


async def test_each_statement_is_its_own_transaction_and_the_pool_gets_back_a_plain_connection(
    db_target: PgTarget,
) -> None:
    engine = create_engine(db_target, pool_size=1, max_overflow=0)
    try:
        async with single_statement(engine) as conn:
            first = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
            second = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
        # No BEGIN around them: each statement was a transaction of its own.
        assert second != first
        async with engine.connect() as conn:  # the same pooled connection, transactional again
            first = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
            second = (await conn.execute(text("SELECT txid_current()"))).scalar_one()
        assert second == first
    finally:
        await engine.dispose()
