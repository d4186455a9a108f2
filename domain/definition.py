"""Workflow definition validation: every rule a stored definition must satisfy.

Pure and deterministic: no I/O, and the same input always yields the same
problems in the same order. Input is parsed JSON that may still be malformed,
so every value is type-checked before use; a wrong type becomes a ``Problem``,
never a ``TypeError``. All problems are collected and raised together so an
author can fix a definition in one round trip.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from domain.credentials import SECRET_LOOKING_HEADERS
from domain.data_subjects import check_data_subject_path
from domain.errors import Problem, WorkflowInvalid
from domain.nodes import (
    DEFAULT_OUTPUT,
    ERROR_OUTPUT,
    NODE_TYPES,
    TRIGGER_TYPES,
    HttpRequestParameters,
)
from domain.values import check_value

__all__ = [
    "AUTO_RETRY_KEYS",
    "AUTO_RETRY_ON",
    "CONNECTION_KEYS",
    "MAX_AUTO_RETRY_ATTEMPTS",
    "MAX_AUTO_RETRY_BACKOFF_MS",
    "MAX_CONNECTIONS",
    "MAX_DEFINITION_BYTES",
    "MAX_DESCRIPTION_CHARS",
    "MAX_NAME_CHARS",
    "MAX_NODES",
    "MAX_NODE_NAME_CHARS",
    "MAX_RETENTION_DAYS",
    "MAX_RETRY_TRIES",
    "MAX_RETRY_WAIT_MS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_WORKFLOW_TIMEOUT_MS",
    "NODE_KEYS",
    "ON_ERROR_MODES",
    "RETRY_KEYS",
    "SETTINGS_KEYS",
    "TRIGGER_TYPES",
    "canonical_definition_size",
    "validate_definition",
]

MAX_NAME_CHARS: Final = 200
MAX_DESCRIPTION_CHARS: Final = 10_000
MAX_NODES: Final = 500
MAX_CONNECTIONS: Final = 2_000
MAX_DEFINITION_BYTES: Final = 256 * 1024
MAX_TAGS: Final = 50
MAX_TAG_CHARS: Final = 64
MAX_NODE_NAME_CHARS: Final = 200
MAX_RETRY_TRIES: Final = 10
MAX_RETRY_WAIT_MS: Final = 600_000
MAX_WORKFLOW_TIMEOUT_MS: Final = 3_600_000
MAX_AUTO_RETRY_ATTEMPTS: Final = 10
MAX_AUTO_RETRY_BACKOFF_MS: Final = 3_600_000
MAX_RETENTION_DAYS: Final = 36_500  # a century: "for ever" is 0

NODE_KEYS: Final = frozenset({"id", "type", "name", "parameters", "position", "retry", "on_error"})
CONNECTION_KEYS: Final = frozenset({"from", "to", "output"})
RETRY_KEYS: Final = frozenset({"max_tries", "wait_ms"})
SETTINGS_KEYS: Final = frozenset({"timeout_ms", "retry", "data_subject", "retention_days"})
AUTO_RETRY_KEYS: Final = frozenset({"max_attempts", "backoff_ms", "on"})
AUTO_RETRY_ON: Final = ("failed", "crashed")
ON_ERROR_MODES: Final = ("stop", "continue", "continue_error_output")

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KNOWN_TYPES = ", ".join(sorted(NODE_TYPES))


def canonical_definition_size(
    *,
    name: Any,
    description: Any,
    nodes: Any,
    connections: Any,
    tags: Any,
    settings: Any,
) -> int:
    """UTF-8 size in bytes of the definition's canonical (compact, key-sorted) JSON.

    This is the number the size limit applies to, independent of how the client
    formatted its request. Raises ``TypeError``/``ValueError`` (including
    ``UnicodeEncodeError``) if the definition is not representable as JSON.
    """
    document = {
        "name": name,
        "description": description,
        "nodes": nodes,
        "connections": connections,
        "tags": tags,
        "settings": settings,
    }
    text = json.dumps(
        document, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )
    return len(text.encode("utf-8"))


def validate_definition(
    *,
    name: str,
    description: str,
    nodes: list[dict[str, Any]],
    connections: list[dict[str, Any]],
    tags: list[str],
    settings: dict[str, Any],
) -> None:
    """Check a complete workflow definition; raise ``WorkflowInvalid`` listing every problem.

    The annotations describe valid input; any value is accepted at run time
    and a wrong type is reported as a problem.
    """
    definition = {
        "name": name,
        "description": description,
        "nodes": nodes,
        "connections": connections,
        "tags": tags,
        "settings": settings,
    }
    check = _Checker()
    check.name(name)
    check.description(description)
    check.tags(tags)
    check.settings(settings)
    fits = check.storable(definition)
    node_list = check.collection("nodes", nodes, MAX_NODES)
    connection_list = check.collection("connections", connections, MAX_CONNECTIONS)
    # Past the size limit only the cheap top-level checks run: the work done on
    # an oversized document must stay bounded. With a value the log cannot
    # carry they wait too: those are named first, the graph in the next round.
    # Without a node array every connection would merely repeat "unknown
    # node", so the graph checks wait.
    if fits and node_list is not None:
        graph = check.nodes(node_list)
        check.connections(connection_list or [], graph)
        check.cycles(graph)
    if check.problems:
        raise WorkflowInvalid(check.problems)


@dataclass
class _Node:
    """What connection and graph checks need to know about one (first-seen) node id."""

    index: int
    type_name: str | None
    # None when the type or parameters are invalid: outputs are then unknown
    # and connection outputs are not checked, to avoid cascading problems.
    outputs: tuple[str, ...] | None
    error_output: bool

    @property
    def is_trigger(self) -> bool:
        return self.type_name in TRIGGER_TYPES


@dataclass
class _Graph:
    nodes: dict[str, _Node]
    # Successors in connection order, without duplicates or self-loops.
    successors: dict[str, dict[str, None]]


class _Checker:
    """Accumulates problems; one method per part of the definition."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, loc: str, msg: str) -> None:
        self.problems.append(Problem(loc, msg))

    # -- top level -------------------------------------------------------

    def name(self, name: object) -> None:
        if not isinstance(name, str):
            self.add("name", f"must be a string, got {_json_type(name)}")
        elif not name.strip():
            self.add("name", "must not be empty or only whitespace")
        elif len(name) > MAX_NAME_CHARS:
            self.add("name", f"is {len(name)} characters, at most {MAX_NAME_CHARS} allowed")

    def description(self, description: object) -> None:
        if not isinstance(description, str):
            self.add("description", f"must be a string, got {_json_type(description)}")
        elif len(description) > MAX_DESCRIPTION_CHARS:
            self.add(
                "description",
                f"is {len(description)} characters, at most {MAX_DESCRIPTION_CHARS} allowed",
            )

    def tags(self, tags: object) -> None:
        if not isinstance(tags, list):
            self.add("tags", f"must be an array of strings, got {_json_type(tags)}")
            return
        if len(tags) > MAX_TAGS:
            self.add("tags", f"too many tags: {len(tags)} (at most {MAX_TAGS})")
        first_index: dict[str, int] = {}
        for index, tag in enumerate(tags):
            loc = f"tags[{index}]"
            if not isinstance(tag, str):
                self.add(loc, f"must be a string, got {_json_type(tag)}")
            elif not tag:
                self.add(loc, "must not be empty")
            elif len(tag) > MAX_TAG_CHARS:
                self.add(loc, f"tag is {len(tag)} characters, at most {MAX_TAG_CHARS} allowed")
            elif tag in first_index:
                self.add(loc, f"duplicate tag '{tag}' (also tags[{first_index[tag]}])")
            else:
                first_index[tag] = index

    def settings(self, settings: object) -> None:
        if not isinstance(settings, dict):
            self.add("settings", f"must be an object, got {_json_type(settings)}")
            return
        self.unknown_keys("settings", settings, SETTINGS_KEYS, "setting")
        if "timeout_ms" in settings:
            self.integer("settings.timeout_ms", settings["timeout_ms"], 1, MAX_WORKFLOW_TIMEOUT_MS)
        if "retry" in settings:
            self.auto_retry("settings.retry", settings["retry"])
        if "retention_days" in settings:
            # 0 keeps this workflow's executions for ever, whatever the global setting.
            self.integer(
                "settings.retention_days", settings["retention_days"], 0, MAX_RETENTION_DAYS
            )
        if "data_subject" in settings:
            wrong = check_data_subject_path(settings["data_subject"])
            if wrong is not None:
                self.add("settings.data_subject", wrong)

    def auto_retry(self, loc: str, retry: object) -> None:
        """``settings.retry``: the execution's automatic retries (``domain/auto_retry.py``)."""
        if not isinstance(retry, dict):
            self.add(
                loc, f"must be an object {{max_attempts, backoff_ms, on}}, got {_json_type(retry)}"
            )
            return
        self.unknown_keys(loc, retry, AUTO_RETRY_KEYS, "retry setting")
        for key, low, high in (
            ("max_attempts", 1, MAX_AUTO_RETRY_ATTEMPTS),
            ("backoff_ms", 0, MAX_AUTO_RETRY_BACKOFF_MS),
        ):
            if key in retry:
                self.integer(f"{loc}.{key}", retry[key], low, high)
            else:
                self.add(f"{loc}.{key}", f"missing required key '{key}'")
        if "on" not in retry:
            return
        on = retry["on"]
        allowed = ", ".join(repr(status) for status in AUTO_RETRY_ON)
        if not isinstance(on, list) or not on:
            self.add(f"{loc}.on", f"must be a non-empty array of {allowed}, got {_show_list(on)}")
            return
        first_index: dict[str, int] = {}
        for index, status in enumerate(on):
            item = f"{loc}.on[{index}]"
            if not (isinstance(status, str) and status in AUTO_RETRY_ON):
                self.add(item, f"must be one of {allowed}, got {_show(status)}")
            elif status in first_index:
                self.add(item, f"duplicate '{status}' (also {loc}.on[{first_index[status]}])")
            else:
                first_index[status] = index

    def storable(self, definition: dict[str, Any]) -> bool:
        """Check the canonical size, then the value contract; False if either fails.

        Size first: encoding runs at C speed, so an oversized definition is
        refused without walking it. A value JSON cannot encode at all (NaN,
        a lone surrogate) makes the size unknown; the contract then names it.
        """
        try:
            size: int | None = canonical_definition_size(**definition)
        except (TypeError, ValueError, RecursionError):
            size = None
        if size is not None and size > MAX_DEFINITION_BYTES:
            self.add(
                "definition",
                f"is {size} bytes as canonical JSON, at most {MAX_DEFINITION_BYTES} "
                f"({MAX_DEFINITION_BYTES // 1024} KiB) allowed",
            )
            return False
        problems = check_value(definition)
        for problem in problems:
            self.add(problem.loc, problem.msg)
        return not problems

    def collection(self, loc: str, value: object, limit: int) -> list[Any] | None:
        """The array at ``loc``, or None (with a problem) if it is not one."""
        if not isinstance(value, list):
            self.add(loc, f"must be an array of objects, got {_json_type(value)}")
            return None
        if len(value) > limit:
            self.add(loc, f"too many {loc}: {len(value)} (at most {limit})")
        return value

    # -- nodes -----------------------------------------------------------

    def nodes(self, nodes: list[Any]) -> _Graph:
        graph = _Graph(nodes={}, successors={})
        has_trigger = False
        for index, node in enumerate(nodes):
            loc = f"nodes[{index}]"
            if not isinstance(node, dict):
                self.add(loc, f"must be an object, got {_json_type(node)}")
                continue
            self.unknown_keys(loc, node, NODE_KEYS, "node key")
            node_id = self.node_id(loc, node, graph)
            type_name = self.node_type(loc, node)
            has_trigger = has_trigger or type_name in TRIGGER_TYPES
            outputs = self.parameters(loc, node, type_name)
            self.node_extras(loc, node)
            if node_id is not None:
                graph.nodes[node_id] = _Node(
                    index=index,
                    type_name=type_name,
                    outputs=outputs,
                    error_output=node.get("on_error") == "continue_error_output",
                )
                graph.successors[node_id] = {}
        if not has_trigger:
            self.add(
                "nodes",
                "no trigger node: a workflow needs at least one of "
                + ", ".join(f"'{name}'" for name in sorted(TRIGGER_TYPES)),
            )
        return graph

    def node_id(self, loc: str, node: dict[Any, Any], graph: _Graph) -> str | None:
        """The node's id if valid and first of its kind (later duplicates are reported)."""
        if "id" not in node:
            self.add(f"{loc}.id", "missing required key 'id'")
            return None
        node_id = node["id"]
        if not isinstance(node_id, str):
            self.add(f"{loc}.id", f"must be a string, got {_json_type(node_id)}")
            return None
        if not _NODE_ID.fullmatch(node_id):
            self.add(
                f"{loc}.id",
                f"invalid node id '{node_id}': use 1 to 64 letters, digits, '_' or '-'",
            )
            return None
        if node_id in graph.nodes:
            first = graph.nodes[node_id].index
            self.add(f"{loc}.id", f"duplicate node id '{node_id}' (also nodes[{first}])")
            return None
        return node_id

    def node_type(self, loc: str, node: dict[Any, Any]) -> str | None:
        """The node's type if it is a registered one."""
        if "type" not in node:
            self.add(f"{loc}.type", f"missing required key 'type' (one of: {_KNOWN_TYPES})")
            return None
        type_name = node["type"]
        if not isinstance(type_name, str):
            self.add(f"{loc}.type", f"must be a string, got {_json_type(type_name)}")
            return None
        if type_name not in NODE_TYPES:
            self.add(f"{loc}.type", f"unknown node type '{type_name}' (known: {_KNOWN_TYPES})")
            return None
        return type_name

    def parameters(
        self, loc: str, node: dict[Any, Any], type_name: str | None
    ) -> tuple[str, ...] | None:
        """Validate the parameters; return the node's outputs when they are known."""
        loc = f"{loc}.parameters"
        if "parameters" not in node:
            self.add(loc, "missing required key 'parameters' (use {} for none)")
            return None
        parameters = node["parameters"]
        if not isinstance(parameters, dict):
            self.add(loc, f"must be an object, got {_json_type(parameters)}")
            return None
        if type_name is None:
            return None
        node_type = NODE_TYPES[type_name]
        try:
            model = node_type.parameters.model_validate(parameters)
        except ValidationError as exc:
            self.problems.extend(_pydantic_problems(loc, exc))
            return None
        if isinstance(model, HttpRequestParameters):
            self.inline_secrets(loc, model)
        return node_type.outputs(model)

    def inline_secrets(self, loc: str, params: HttpRequestParameters) -> None:
        """A secret-looking header written into the definition would sit in the log
        for ever: refuse it and point to credentials."""
        for name in params.headers:
            if name.lower() in SECRET_LOOKING_HEADERS:
                self.add(
                    f"{loc}.headers.{name}",
                    f"'{name}' carries a secret: keep it in a credential "
                    "(POST /v1/credentials) and name its id in the node's 'credential'",
                )

    def node_extras(self, loc: str, node: dict[Any, Any]) -> None:
        """The optional keys: name, position, retry, on_error."""
        if "name" in node:
            name = node["name"]
            if not isinstance(name, str):
                self.add(f"{loc}.name", f"must be a string, got {_json_type(name)}")
            elif len(name) > MAX_NODE_NAME_CHARS:
                self.add(
                    f"{loc}.name",
                    f"is {len(name)} characters, at most {MAX_NODE_NAME_CHARS} allowed",
                )
        if "position" in node:
            position = node["position"]
            if not (
                isinstance(position, list)
                and len(position) == 2
                and all(_is_number(c) and math.isfinite(c) for c in position)
            ):
                self.add(f"{loc}.position", "must be an array of two finite numbers [x, y]")
        if "retry" in node:
            self.retry(f"{loc}.retry", node["retry"])
        if "on_error" in node:
            on_error = node["on_error"]
            if not (isinstance(on_error, str) and on_error in ON_ERROR_MODES):
                self.add(
                    f"{loc}.on_error",
                    f"must be one of {', '.join(repr(m) for m in ON_ERROR_MODES)}, "
                    f"got {_show(on_error)}",
                )

    def retry(self, loc: str, retry: object) -> None:
        if not isinstance(retry, dict):
            self.add(loc, f"must be an object {{max_tries, wait_ms}}, got {_json_type(retry)}")
            return
        self.unknown_keys(loc, retry, RETRY_KEYS, "retry key")
        for key, low, high in (
            ("max_tries", 1, MAX_RETRY_TRIES),
            ("wait_ms", 0, MAX_RETRY_WAIT_MS),
        ):
            if key in retry:
                self.integer(f"{loc}.{key}", retry[key], low, high)
            else:
                self.add(f"{loc}.{key}", f"missing required key '{key}'")

    # -- connections -----------------------------------------------------

    def connections(self, connections: list[Any], graph: _Graph) -> None:
        first_index: dict[tuple[str, str, str], int] = {}
        for index, connection in enumerate(connections):
            loc = f"connections[{index}]"
            if not isinstance(connection, dict):
                self.add(loc, f"must be an object, got {_json_type(connection)}")
                continue
            self.unknown_keys(loc, connection, CONNECTION_KEYS, "connection key")
            source = self.endpoint(loc, connection, "from", graph)
            target = self.endpoint(loc, connection, "to", graph)
            output = self.output(loc, connection, source, graph)
            if source is None or target is None:
                continue
            if source == target:
                self.add(f"{loc}.to", f"self-loop: node '{source}' connects to itself")
                continue
            if graph.nodes[target].is_trigger:
                self.add(
                    f"{loc}.to",
                    f"trigger node '{target}' ({graph.nodes[target].type_name}) "
                    "cannot have incoming connections",
                )
            graph.successors[source][target] = None
            key = (source, output, target)
            if key in first_index:
                self.add(
                    loc,
                    f"duplicate connection from '{source}' (output '{output}') to '{target}' "
                    f"(also connections[{first_index[key]}])",
                )
            else:
                first_index[key] = index

    def endpoint(self, loc: str, connection: dict[Any, Any], end: str, graph: _Graph) -> str | None:
        """The id at ``from``/``to`` if it names an existing node."""
        if end not in connection:
            self.add(f"{loc}.{end}", f"missing required key '{end}'")
            return None
        node_id = connection[end]
        if not isinstance(node_id, str):
            self.add(f"{loc}.{end}", f"must be a node id string, got {_json_type(node_id)}")
            return None
        if node_id not in graph.nodes:
            self.add(f"{loc}.{end}", f"unknown node '{node_id}'")
            return None
        return node_id

    def output(
        self, loc: str, connection: dict[Any, Any], source: str | None, graph: _Graph
    ) -> str:
        """The connection's output name, resolving an omitted one where unambiguous."""
        given: str | None = None  # None: the key is absent
        if "output" in connection:
            raw = connection["output"]
            if not isinstance(raw, str):
                self.add(f"{loc}.output", f"must be a string, got {_json_type(raw)}")
                return DEFAULT_OUTPUT
            given = raw
        node = graph.nodes.get(source) if source is not None else None
        if node is None or node.outputs is None:
            return DEFAULT_OUTPUT if given is None else given
        valid = node.outputs + ((ERROR_OUTPUT,) if node.error_output else ())
        valid_text = ", ".join(f"'{name}'" for name in valid)
        if given is None:
            if len(node.outputs) == 1:
                return node.outputs[0]
            self.add(
                f"{loc}.output",
                f"missing output: node '{source}' ({node.type_name}) has several outputs, "
                f"name one of {valid_text}",
            )
            return DEFAULT_OUTPUT
        if given not in valid:
            self.add(
                f"{loc}.output",
                f"node '{source}' ({node.type_name}) has no output '{given}' (valid: {valid_text})",
            )
        return given

    # -- graph -----------------------------------------------------------

    def cycles(self, graph: _Graph) -> None:
        """One problem per cycle-bearing component, in order of first node."""
        position = {node_id: node.index for node_id, node in graph.nodes.items()}
        starts = []
        for component in _strongly_connected(graph.successors):
            if len(component) > 1:
                starts.append((min(component, key=position.__getitem__), frozenset(component)))
        for start, members in sorted(starts, key=lambda item: position[item[0]]):
            cycle = _cycle_through(start, members, graph.successors)
            self.add("nodes", "cycle: " + " -> ".join(cycle))

    # -- helpers ---------------------------------------------------------

    def unknown_keys(
        self, loc: str, value: Mapping[Any, Any], allowed: frozenset[str], what: str
    ) -> None:
        allowed_text = ", ".join(sorted(allowed))
        for key in value:
            if key not in allowed:
                self.add(
                    loc + _loc_segment(str(key)),
                    f"unknown {what} '{key}' (allowed: {allowed_text})",
                )

    def integer(self, loc: str, value: object, low: int, high: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.add(loc, f"must be an integer, got {_json_type(value)}")
        elif not low <= value <= high:
            self.add(loc, f"must be between {low} and {high}, got {value}")


def _strongly_connected(successors: dict[str, dict[str, None]]) -> Iterable[list[str]]:
    """Tarjan's algorithm, iterative so that long chains cannot hit the recursion limit."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in successors:
        if root in index_of:
            continue
        index_of[root] = low[root] = len(index_of)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors[root]))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index_of:
                    index_of[child] = low[child] = len(index_of)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index_of[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                yield component


def _cycle_through(
    start: str, members: frozenset[str], successors: dict[str, dict[str, None]]
) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside its component (BFS)."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in successors[node]:
            if child == start:
                path = [node]
                while (previous := parent[path[-1]]) is not None:
                    path.append(previous)
                return [*reversed(path), start]
            if child in members and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def _pydantic_problems(prefix: str, exc: ValidationError) -> Iterable[Problem]:
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = list(error["loc"])
        msg = error["msg"]
        if loc and loc[-1] == "[key]":
            # pydantic marks an invalid mapping key by appending "[key]" to its loc.
            loc.pop()
            msg = f"invalid key: {msg}"
        yield Problem(prefix + "".join(_loc_segment(part) for part in loc), msg)


def _loc_segment(part: str | int) -> str:
    """``.name`` for identifiers, ``[3]`` for indexes, ``["odd key"]`` otherwise."""
    if isinstance(part, int):
        return f"[{part}]"
    if _IDENTIFIER.fullmatch(part):
        return f".{part}"
    return f"[{json.dumps(part, ensure_ascii=False)}]"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else _json_type(value)


def _show_list(value: object) -> str:
    return "an empty array" if value == [] else _json_type(value)
