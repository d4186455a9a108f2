"""eventsourcing's own recorder test cases, run against OUR recorder on PostgreSQL.

``EventStoreRecorder`` replaces the library's write path (one script per
transaction) and ``EventStoreFactory`` its connection setup, so the
library's contract tests (``eventsourcing.tests.persistence``) must keep
passing against them: every later change to the write path is held to them.

Each case gets an empty log of its own: a fresh schema in the run's database,
migrated by our Alembic migrations (the real table, triggers and types), which
the connections reach through libpq's ``options=-c search_path=...``. The log
is append-only (no TRUNCATE), so a schema per case is the only way to start
empty, as the library's cases expect.
"""

from __future__ import annotations

import unittest
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import psycopg
import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    StoredEvent,
    TrackingRecorder,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresProcessRecorder,
    PostgresTrackingRecorder,
)
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment

import migrations
from infrastructure.database import PgTarget
from infrastructure.eventstore import (
    APPLICATION_NAME,
    EventStoreFactory,
    EventStoreRecorder,
    eventsourcing_env,
)
from infrastructure.settings import Settings


@pytest.fixture(scope="class")
def contract_database(request: pytest.FixtureRequest, db_target: PgTarget) -> None:
    request.cls.database = db_target


class _OwnLog:
    """A fresh, migrated schema per test, and our factory's recorder on it."""

    database: ClassVar[PgTarget]
    factory: EventStoreFactory

    def _open_log(self) -> Iterator[None]:
        schema = f"contract_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        target = replace(
            self.database,
            params=(*self.database.params, ("options", f"-c search_path={schema}")),
        )
        try:
            migrations.upgrade(target)
            env = eventsourcing_env(target, Settings(database_url=None, redis_url=None))
            # Named as the application is: the log's table is reporunner_events.
            self.factory = EventStoreFactory(
                Environment(APPLICATION_NAME, env | {"POSTGRES_SCHEMA": schema})
            )
            yield
            self.factory.close()
        finally:
            with psycopg.connect(self.database.conninfo(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    def setUp(self) -> None:
        self._log = self._open_log()
        next(self._log)

    def tearDown(self) -> None:
        next(self._log, None)

    def create_recorder(self) -> Any:
        recorder = self.factory.application_recorder()
        assert type(recorder) is EventStoreRecorder
        return recorder


class _AggregateView(AggregateRecorder):
    """Our recorder through the aggregate recorder's interface alone.

    The aggregate case asserts that ``insert_events`` answers None, as an
    aggregate recorder's does; an application recorder's answers the
    notification ids (which the application case asserts). Everything else
    goes to our recorder unchanged.
    """

    def __init__(self, recorder: EventStoreRecorder) -> None:
        self.recorder = recorder

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        self.recorder.insert_events(stored_events, **kwargs)

    def select_events(self, *args: Any, **kwargs: Any) -> Sequence[StoredEvent]:
        return self.recorder.select_events(*args, **kwargs)


@pytest.mark.usefixtures("contract_database")
class TestOurRecorderAsAggregateRecorder(_OwnLog, AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return _AggregateView(super().create_recorder())


@pytest.mark.usefixtures("contract_database")
class TestOurRecorderAsApplicationRecorder(
    _OwnLog, ApplicationRecorderTestCase[ApplicationRecorder]
):
    def create_recorder(self) -> ApplicationRecorder:
        recorder: ApplicationRecorder = super().create_recorder()
        return recorder


@pytest.mark.usefixtures("contract_database")
class TestOurRecorderDoesNotInterleave(_OwnLog, NonInterleavingNotificationIDsBaseCase):
    """Two racing writers: each one's events get contiguous positions (the table lock)."""

    def create_recorder(self) -> ApplicationRecorder:
        recorder: ApplicationRecorder = super().create_recorder()
        return recorder


@pytest.mark.usefixtures("contract_database")
class TestOurFactory(_OwnLog, InfrastructureFactoryTestCase[EventStoreFactory]):
    """The library's factory contract, for the factory that adds the URL's libpq parameters."""

    def setUp(self) -> None:
        super().setUp()  # our log first: the library's setUp constructs from self.env
        self.env = Environment(APPLICATION_NAME, dict(self.factory.env))
        InfrastructureFactoryTestCase.setUp(self)

    def tearDown(self) -> None:
        InfrastructureFactoryTestCase.tearDown(self)
        super().tearDown()

    def expected_factory_class(self) -> type[EventStoreFactory]:
        return EventStoreFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return PostgresAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return EventStoreRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return PostgresTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        class Subclass(PostgresTrackingRecorder):
            pass

        return Subclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return PostgresProcessRecorder

    def test_the_factory_is_what_the_environment_names(self) -> None:
        assert isinstance(InfrastructureFactory.construct(self.env), EventStoreFactory)


_NOT_OURS = (
    "Reporunner has no eventsourcing {} recorder: its followers keep their positions in "
    "projection_tracking, written in the same transaction as their views, by our own code"
)


@unittest.skip(_NOT_OURS.format("tracking"))
class TestTrackingRecorderNotUsed(TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        raise AssertionError("skipped")


@unittest.skip(_NOT_OURS.format("process"))
class TestProcessRecorderNotUsed(ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        raise AssertionError("skipped")
