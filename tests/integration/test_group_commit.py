"""Group commit under contention: 100 writers, random conflicts, a tailing reader.

Two recorders stand for two processes (each groups its own threads' saves;
the table lock orders the groups). Writers save 1-3 events at a time on a
few shared aggregates, at the version after the head they last read, so
they race and many lose on the log's unique key; some send an idempotency
key from a small shared pool, so some lose on that instead. Meanwhile a
reader tails the log by notification id, polling, as the followers do.

What must hold, whatever the schedule (seeded, so a failure replays):
- the reader never skips an event: what it saw, page after page, is the
  whole final log in order (nothing ever appeared below its cursor later);
- every acknowledged save's events are in the log once each, at the
  positions the save answered, and its idempotency record is there;
- every refused save left nothing: no event, no idempotency record.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.utils import Environment

from infrastructure.database import PgTarget
from infrastructure.eventstore import (
    APPLICATION_NAME,
    EVENTS_TABLE,
    EventStoreFactory,
    EventStoreRecorder,
    IdempotencyRecord,
    eventsourcing_env,
)
from infrastructure.settings import Settings
from tests.helpers import scratch_database

WRITERS = 100
SAVES_PER_WRITER = 5
SHARED_AGGREGATES = 8
SHARED_KEYS = 40
TOPIC = "tests.group_commit:Happened"


@dataclass
class Outcome:
    events: list[StoredEvent]
    key: IdempotencyRecord | None
    positions: list[int] | None = None  # None: refused


@dataclass
class Tail:
    seen: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def two_recorders(server_target: PgTarget) -> Iterator[tuple[PgTarget, list[EventStoreRecorder]]]:
    with scratch_database(server_target, "groupcommit") as target:
        # Small pools: 100 threads share 16 connections, as a busy process would.
        settings = Settings(database_url=None, redis_url=None, db_pool_size=4, db_max_overflow=4)
        env = eventsourcing_env(target, settings)
        factories = [EventStoreFactory(Environment(APPLICATION_NAME, env)) for _ in range(2)]
        recorders = [f.application_recorder() for f in factories]
        assert all(type(r) is EventStoreRecorder for r in recorders)
        yield target, recorders  # type: ignore[misc]
        for f in factories:
            f.close()


def _head(recorder: EventStoreRecorder, aggregate: UUID) -> int:
    last = recorder.select_events(aggregate, desc=True, limit=1)
    return last[0].originator_version if last else 0


def _writer(
    seed: int,
    recorder: EventStoreRecorder,
    shared: list[UUID],
    outcomes: list[Outcome],
    start: threading.Event,
) -> None:
    rng = random.Random(seed)
    start.wait(timeout=30)
    for _ in range(SAVES_PER_WRITER):
        aggregate = rng.choice(shared) if rng.random() < 0.7 else uuid.uuid4()
        version = _head(recorder, aggregate) + 1
        events = [
            StoredEvent(aggregate, version + i, TOPIC, uuid.uuid4().bytes)
            for i in range(rng.randint(1, 3))
        ]
        key = None
        if rng.random() < 0.3:
            key = IdempotencyRecord(
                org_id="org",
                key=f"key-{rng.randrange(SHARED_KEYS)}",
                request_hash=uuid.uuid4().hex,
                aggregate_id=aggregate,
                aggregate_version=events[-1].originator_version,
                status_code=200,
            )
        outcome = Outcome(events, key)
        try:
            answered = recorder.insert_events(events, idempotency=key)
        except IntegrityError:
            pass
        else:
            assert answered is not None
            outcome.positions = list(answered)
        outcomes.append(outcome)


def _tail(recorder: EventStoreRecorder, tail: Tail) -> None:
    """Follow the log by notification id, as a follower does, until told to stop and caught up."""
    cursor = 0
    while True:
        stopping = tail.stop.is_set()  # read before the page: a last page after the writers
        page = recorder.select_notifications(start=cursor + 1, limit=50)
        for notification in page:
            assert notification.id > cursor
            cursor = notification.id
            tail.seen.append(notification.id)
        if stopping and not page:
            return


@pytest.mark.parametrize("seed", [14, 2026])
def test_writers_race_while_a_reader_tails(
    two_recorders: tuple[PgTarget, list[EventStoreRecorder]], seed: int
) -> None:
    target, recorders = two_recorders
    shared = [uuid.uuid4() for _ in range(SHARED_AGGREGATES)]
    outcomes: list[Outcome] = []
    start = threading.Event()
    writers = [
        threading.Thread(
            target=_writer,
            args=(seed * 1000 + n, recorders[n % 2], shared, outcomes, start),
        )
        for n in range(WRITERS)
    ]
    tail = Tail()
    reader = threading.Thread(target=_tail, args=(recorders[0], tail))
    reader.start()
    for w in writers:
        w.start()
    start.set()
    for w in writers:
        w.join()
    tail.stop.set()
    reader.join()

    assert len(outcomes) == WRITERS * SAVES_PER_WRITER
    acknowledged = [o for o in outcomes if o.positions is not None]
    refused = [o for o in outcomes if o.positions is None]
    assert acknowledged and refused  # the schedule did race

    with psycopg.connect(target.conninfo()) as conn:
        log = conn.execute(
            f"SELECT notification_id, state, xmin::text FROM {EVENTS_TABLE} "
            "ORDER BY notification_id"
        ).fetchall()
        keys = dict(conn.execute("SELECT key, request_hash FROM idempotency_keys").fetchall())

    # The reader saw the whole log, in order: it never passed a gap that filled later.
    assert tail.seen == [row[0] for row in log]

    position_of = {bytes(state): position for position, state, _ in log}
    assert len(position_of) == len(log)  # every state is unique: no event twice
    for outcome in acknowledged:
        assert outcome.positions == sorted(position_of[e.state] for e in outcome.events)
        if outcome.key is not None:
            assert keys[outcome.key.key] == outcome.key.request_hash
    for outcome in refused:
        assert not any(e.state in position_of for e in outcome.events)
        if outcome.key is not None:
            assert keys.get(outcome.key.key) != outcome.key.request_hash
    # Nothing in the log that no writer was told was saved.
    assert sum(len(o.events) for o in acknowledged) == len(log)
    assert len(keys) == sum(1 for o in acknowledged if o.key is not None)

    # Saves did share transactions (a group's rows share xmin): grouping was exercised.
    transaction_at = {position: xmin for position, _, xmin in log}
    saves_per_transaction = Counter(
        transaction_at[o.positions[0]] for o in acknowledged if o.positions
    )
    assert max(saves_per_transaction.values()) > 1
