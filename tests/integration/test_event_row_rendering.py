"""The recorder's hand-rendered VALUES rows read back exactly as psycopg's ``Literal``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import ClientCursor
from psycopg.sql import SQL, Literal

from infrastructure.database import PgTarget
from infrastructure.eventstore import _event_row


@pytest.fixture(scope="module")
def curs(db_target: PgTarget) -> Iterator[ClientCursor[object]]:
    with psycopg.connect(db_target.conninfo(), autocommit=True) as conn:
        # The escape string must not depend on this setting: try the old one too.
        conn.execute("SET standard_conforming_strings = off")
        with ClientCursor(conn) as cursor:
            yield cursor


topics = st.one_of(
    st.sampled_from(["domain.workflow:Workflow.Created", "domain.execution:Execution.Started"]),
    st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
)
events = st.builds(
    StoredEvent,
    originator_id=st.uuids(),
    originator_version=st.integers(min_value=1, max_value=2**62),
    topic=topics,
    state=st.binary(max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(event=events)
def test_a_rendered_row_reads_as_the_literal_one(
    curs: ClientCursor[object], event: StoredEvent
) -> None:
    expected = SQL("SELECT {}::uuid, {}::bigint, {}::text, {}::bytea").format(
        Literal(event.originator_id),
        Literal(event.originator_version),
        Literal(event.topic),
        Literal(event.state),
    )
    curs.execute(expected)
    wanted = curs.fetchone()
    curs.execute(b"SELECT * FROM (VALUES " + _event_row(event, curs) + b") AS v")
    assert curs.fetchone() == wanted
    assert wanted == (
        event.originator_id,
        event.originator_version,
        event.topic,
        event.state,
    )


def test_a_string_id_goes_through_literal(curs: ClientCursor[object]) -> None:
    event = StoredEvent(str(uuid.uuid4()), 1, "a:B", b"{}")
    curs.execute(b"SELECT * FROM (VALUES " + _event_row(event, curs) + b") AS v")
    row = curs.fetchone()
    assert row is not None and str(row[0]) == event.originator_id
