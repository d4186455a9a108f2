"""Reading the log with orjson gives exactly the events eventsourcing's mapper gives."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from hypothesis import example, given, settings
from hypothesis import strategies as st

from commands import WorkflowApplication
from domain.execution import ExecutionQueuedEvent
from domain.workflow import WorkflowUpdatedEvent
from infrastructure.eventstore import decode_event

# In memory (eventsourcing's POPO persistence): the mapper the app builds, no I/O.
APP = WorkflowApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
MAPPER = APP.mapper
TOPICS = [get_topic(WorkflowUpdatedEvent), get_topic(ExecutionQueuedEvent)]

TEXT = st.text(max_size=8) | st.sampled_from(["_type_", "_data_", "uuid_hex", "\\", '"'])
MARKED = (
    st.uuids()
    | st.datetimes(timezones=st.just(UTC) | st.just(timezone(timedelta(hours=-5))))
    | st.decimals(allow_nan=False, allow_infinity=False)
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too: orjson would read those as floats
    | st.floats()  # NaN and infinities too, which the stdlib writes and orjson refuses
    | TEXT
    | MARKED
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
STATES = st.dictionaries(TEXT, VALUES, max_size=5).map(
    lambda fields: {"timestamp": datetime.now(UTC), **fields, "meta": {"org_id": "o"}}
)


def _outcome(decode: Any) -> tuple[Any, ...]:
    """What a decoding gives: the event's class and fields (repr: 1 and 1.0 differ, and
    NaN equals itself), or the class of the error it raises."""
    try:
        event = decode()
    except Exception as exc:
        return ("error", type(exc))
    return ("event", type(event), repr(vars(event)))


def _assert_same(state: bytes, topic: str = TOPICS[0]) -> None:
    originator_id = uuid.uuid4()
    by_mapper = _outcome(
        lambda: MAPPER.to_domain_event(StoredEvent(originator_id, 3, topic, state))
    )
    ours = _outcome(lambda: decode_event(MAPPER, originator_id, 3, topic, state))
    assert ours == by_mapper


@settings(max_examples=300)
@given(state=STATES, topic=st.sampled_from(TOPICS))
def test_decoding_equals_the_mappers(state: dict[str, Any], topic: str) -> None:
    _assert_same(MAPPER.transcoder.encode(state), topic)


@given(state=STATES)
@example(state={"timestamp": datetime(2026, 1, 1, tzinfo=UTC), "big": 2**64})
def test_decoding_equals_the_mappers_with_any_top_level_value(state: dict[str, Any]) -> None:
    # Markers nested at any depth under the top level, and the top level's own.
    _assert_same(MAPPER.transcoder.encode({"nested": state, **state}))


@pytest.mark.parametrize(
    "state",
    [
        b'{"a":"\\ud800"}',  # a lone surrogate: the stdlib reads it, orjson refuses
        b'{"a":1e400}',  # infinity for the stdlib, an error for orjson
        b'{"a":NaN}',
        b'{"a":123456789012345678901234567890}',  # past 64 bits: an int, not a float
        b'{"a":-9223372036854775809}',
        b'{"a":18446744073709551615}',
        b'{"a":{"_type_":"nobody_knows","_data_":"x"}}',  # the mapper's error
        b'{"a":{"_type_":"uuid_hex","_data_":1}}',
        b'{"a":{"_type_":"uuid_hex","_data_":"not hex"}}',
        b'{"_type_":"uuid_hex","_data_":"' + uuid.uuid4().hex.encode() + b'"}',
        b'{"a":{"_type_":"datetime_iso","_data_":"2026-01-01T00:00:00+00:00","x":1}}',
        b'{"a":[{"_type_":"uuid_hex","_data_":"' + uuid.uuid4().hex.encode() + b'"}]}',
        b'{"a":"_type_","b":{"_type_":"uuid_hex","_data_":"' + uuid.uuid4().hex.encode() + b'"}}',
        b'{"a":1,"a":2}',
        b'{"class_version":2}',
        b"[1]",
        b"not json",
        b'{"a":"\xff"}',  # not UTF-8
    ],
)
def test_decoding_equals_the_mappers_on_text_no_encoder_writes(state: bytes) -> None:
    _assert_same(state)
