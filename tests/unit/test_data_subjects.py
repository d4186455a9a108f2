"""Data subjects: the path a workflow names them by, and the record of their erasure."""

from __future__ import annotations

from typing import Any

import pytest

from domain.data_subjects import (
    DataSubject,
    check_data_subject_path,
    data_subject_id,
    data_subject_of,
)
from domain.definition import validate_definition
from domain.errors import WorkflowInvalid
from domain.meta import EventMeta

META = EventMeta(org_id="acme", actor="apikey:k", correlation_id="req-1")


@pytest.mark.parametrize("path", ["$.customer.id", "$[0].email", "$.a.b[2].c"])
def test_a_json_path_into_the_input_names_the_subject(path: str) -> None:
    assert check_data_subject_path(path) is None


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("customer.id", "not a supported JSON path"),
        ("$", "not a supported JSON path"),
        (3, "JSON path string"),
        ("$..id", "not a supported JSON path"),
    ],
)
def test_anything_else_is_refused_saying_why(path: Any, says: str) -> None:
    wrong = check_data_subject_path(path)
    assert wrong is not None and says in wrong


@pytest.mark.parametrize(
    ("item", "subject"),
    [
        ({"customer": {"id": "c-1"}}, "c-1"),
        ({"customer": {"id": 42}}, "42"),
        ({"customer": {"id": True}}, "true"),
        ({"customer": {"id": ""}}, None),
        ({"customer": {"id": {"nested": 1}}}, None),
        ({"customer": {}}, None),
        ({"customer": {"id": "x" * 256}}, None),
    ],
)
def test_the_subject_is_the_scalar_the_path_finds(item: Any, subject: str | None) -> None:
    assert data_subject_of({"data_subject": "$.customer.id"}, item) == subject


def test_a_workflow_without_the_setting_names_no_subject() -> None:
    assert data_subject_of({}, {"customer": {"id": "c-1"}}) is None


def test_the_definition_check_points_at_the_setting() -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        validate_definition(
            name="wf",
            description="",
            nodes=[{"id": "start", "type": "manual_trigger", "parameters": {}}],
            connections=[],
            tags=[],
            settings={"data_subject": "customer.id"},
        )
    assert [problem.loc for problem in caught.value.problems] == ["settings.data_subject"]


def test_an_erasure_is_recorded_once_and_names_only_the_scope() -> None:
    subject = DataSubject.erase_new(org_id="acme", scope="d1g3st", key_id="k-1", meta=META)
    assert subject.id == data_subject_id("acme", "d1g3st") and subject.is_erased
    erased = subject.collect_events()[-1]
    assert type(erased).__name__ == "Erased"
    assert erased.scope == "d1g3st" and erased.key_id == "k-1"  # type: ignore[attr-defined]
    assert subject.erase(key_id="k-1", meta=META) is False
    assert subject.collect_events() == []
    assert data_subject_id("acme", "d1g3st") != data_subject_id("other", "d1g3st")
