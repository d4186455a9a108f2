"""The domain: workflows as event-sourced aggregates. Pure Python, no I/O."""

from domain.definition import validate_definition
from domain.errors import DomainError, Problem, WorkflowDeleted, WorkflowInvalid
from domain.meta import EventMeta
from domain.nodes import NODE_TYPES, NodeType
from domain.workflow import Workflow

__all__ = [
    "NODE_TYPES",
    "DomainError",
    "EventMeta",
    "NodeType",
    "Problem",
    "Workflow",
    "WorkflowDeleted",
    "WorkflowInvalid",
    "validate_definition",
]
