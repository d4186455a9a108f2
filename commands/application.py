"""The eventsourcing Application: the event store and repository of the write side."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from eventsourcing.application import Application

from domain.timetable import Timetable
from domain.workflow import Workflow
from infrastructure.eventstore import APPLICATION_NAME, EventStoreRecorder


class WorkflowApplication(Application[UUID]):
    name = APPLICATION_NAME
    # Loading stays fast however long a workflow's history grows.
    snapshotting_intervals: ClassVar = {Workflow: 50, Timetable: 100}

    @property
    def event_store(self) -> EventStoreRecorder:
        recorder = self.recorder
        assert isinstance(recorder, EventStoreRecorder)
        return recorder
