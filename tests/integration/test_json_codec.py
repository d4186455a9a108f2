"""Reading jsonb back through the read API's engine, and encoding answers: never a failure."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from infrastructure.database import PgTarget, create_engine
from infrastructure.json_codec import dumps_answer, jsonb_loads


def _read_back(target: PgTarget, literal: str) -> Any:
    """A jsonb literal as the read API's engine (asyncpg via SQLAlchemy) decodes it."""

    async def select() -> Any:
        engine = create_engine(target, pool_size=1)
        try:
            async with engine.connect() as conn:
                return (
                    await conn.execute(text("SELECT CAST(:v AS jsonb)"), {"v": literal})
                ).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(select())


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("1e20", 1e20),  # jsonb prints it as 100000000000000000000
        ("1e308", 1e308),
        ("18446744073709551615", 2**64 - 1),  # u64: orjson keeps it an int
        ("18446744073709551616", float(2**64)),
        ("-9223372036854775809", -float(2**63)),
        ("1e-320", 1e-320),
        ("-0.0", 0.0),
        ("1e400", math.inf),  # past a double: orjson answers null
        ("1" + "0" * 5000, math.inf),
    ],
)
def test_every_number_jsonb_holds_reads_back_as_one_orjson_encodes(
    db_target: PgTarget, literal: str, expected: Any
) -> None:
    value = _read_back(db_target, f'{{"n": [{literal}]}}')
    assert value == {"n": [expected]}
    assert type(value["n"][0]) is type(expected)
    orjson.dumps(value)


def test_jsonb_loads_decodes_like_orjson_until_orjson_gives_up() -> None:
    assert jsonb_loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert jsonb_loads("123456789012345678901234") == 1.2345678901234568e23
    assert jsonb_loads("[" + "9" * 400 + ", -" + "9" * 400 + "]") == [math.inf, -math.inf]


def test_dumps_answer_carries_what_orjson_refuses() -> None:
    assert dumps_answer({"a": 1}) == b'{"a":1}'
    value = {"big": 2**64, "huge": 10**400, "neg": -(10**400), "\ud800k": ["x\udc00"]}
    assert orjson.loads(dumps_answer(value)) == {
        "big": float(2**64),
        "huge": None,  # infinite: orjson writes null
        "neg": None,
        "\ufffdk": ["x\ufffd"],
    }
