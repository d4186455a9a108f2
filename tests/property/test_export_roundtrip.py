"""Our export format round-trips: export, import, export again gives the same document
(``exported``, which says where and when, aside)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from commands import WorkflowCommands
from commands.models import CommandContext, CreateWorkflow
from commands.templates import ImportWorkflow, TemplateCommands
from domain.definition import validate_definition
from domain.transfer import export_document
from tests.property.test_definition_properties import Dag, dags

TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12)
COORDINATE = st.integers(-5000, 5000) | st.floats(-5000, 5000, allow_nan=False)


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid definition with every optional part a node or workflow may carry."""
    dag: Dag = draw(dags(max_nodes=12))
    nodes = []
    for node in dag.nodes:
        extras: dict[str, Any] = {}
        if draw(st.booleans()):
            extras["name"] = draw(TEXT)
        if draw(st.booleans()):
            extras["position"] = [draw(COORDINATE), draw(COORDINATE)]
        if node["type"] != "manual_trigger" and draw(st.booleans()):
            extras["retry"] = {"max_tries": draw(st.integers(1, 10)), "wait_ms": 0}
        nodes.append(node | extras)
    body = dag.body() | {
        "name": draw(TEXT.filter(str.strip)),
        "description": draw(TEXT),
        "nodes": nodes,
        "tags": draw(st.lists(TEXT.filter(bool), max_size=3, unique=True)),
        "settings": draw(
            st.just({}) | st.builds(lambda ms: {"timeout_ms": ms}, st.integers(1, 60_000))
        ),
    }
    validate_definition(**body)
    return body


def _reimported(document: dict[str, Any]) -> dict[str, Any]:
    """What import reads of a document sent as JSON."""
    command = ImportWorkflow.model_validate_json(orjson.dumps(document))
    return command.workflow.definition()  # what the create command records


@given(definitions())
def test_the_document_reads_back_as_the_same_definition(definition: dict[str, Any]) -> None:
    document = export_document(definition, uuid.uuid4(), 1, datetime.now(UTC))
    assert _reimported(document) == definition


@settings(max_examples=30)
@given(definitions())
def test_export_import_export_through_the_log_is_exact(
    commands: WorkflowCommands, org: str, definition: dict[str, Any]
) -> None:
    ctx = CommandContext(org_id=org, actor="test", correlation_id="roundtrip")
    templates = TemplateCommands(commands)
    first = commands.create(_document(definition), ctx)
    exported = _export(commands, first.workflow_id, org)
    again = templates.import_workflow(
        ImportWorkflow.model_validate_json(orjson.dumps(exported)), ctx
    )
    second = _export(commands, again.workflow_id, org)
    assert again.workflow_id != first.workflow_id
    assert exported["workflow"] == definition
    assert _without_exported(second) == _without_exported(exported)
    assert commands.get(again.workflow_id, org).origin == {
        "kind": "import",
        "format": "reporunner.workflow",
        "format_version": 1,
    }


def _document(definition: dict[str, Any]) -> CreateWorkflow:
    """The definition as a plain create takes it, through the import model."""
    return ImportWorkflow.model_validate(
        export_document(definition, uuid.uuid4(), 1, datetime.now(UTC))
    ).workflow


def _export(commands: WorkflowCommands, workflow_id: uuid.UUID, org: str) -> dict[str, Any]:
    workflow = commands.get(workflow_id, org)
    document = export_document(
        workflow.definition(), workflow.id, workflow.revision, datetime.now(UTC)
    )
    # As the API sends it: JSON.
    return orjson.loads(orjson.dumps(document))  # type: ignore[no-any-return]


def _without_exported(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "exported"}
