"""What the value contract admits, PostgreSQL's jsonb stores and gives back unchanged."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.values import check_value
from infrastructure.database import PgTarget

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.sampled_from([2**63 - 1, -(2**63), 1e-320, -0.0, 9.2e18, 1e15, 0.1, 1.5e-7])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(values)
def test_admitted_values_survive_jsonb(db_target: PgTarget, value: Any) -> None:
    if check_value(value):
        return
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT (%s::text::jsonb)::text", (orjson.dumps(value).decode(),)
        ).fetchone()
    assert row is not None
    back = orjson.loads(row[0])
    assert check_value(back) == []
    assert _numerically_same(back, value)


def _numerically_same(left: Any, right: Any) -> bool:
    """JSON has one number type: jsonb may print the float 1e15 as the numeral
    1000000000000000, the same decimal number the float's JSON text names."""
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(
            _numerically_same(left[k], right[k]) for k in left
        )
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_numerically_same, left, right))
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, int | float) and isinstance(right, int | float):
        if isinstance(left, float) or isinstance(right, float):
            return float(left) == float(right)
        return left == right
    return type(left) is type(right) and left == right
