"""An n8n workflow export -> our workflow definition, or the reasons it cannot be one.

The steps: check the document is an n8n export; drop sticky notes; refuse a
loop (n8n allows them, our workflows are DAGs) naming its nodes in order;
map every node (``nodes.py``), collecting every node that cannot be mapped
so one answer lists them all; turn ``connections`` (n8n output index ->
target node and input index) into ours, ordered by the target's input index
(a merge joins its inputs in that order). With ``partial``, an unmappable
node becomes a placeholder the user must replace (see ``_placeholder``).

Pure: no I/O. The definition it returns still goes through
``validate_definition`` when the workflow is created.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from commands.n8n_import.nodes import (
    CODE_REASON,
    CODE_TYPES,
    MAPPERS,
    STICKY_NOTE,
    MapContext,
    Mapped,
    Unmappable,
    is_trigger_type,
)
from domain.definition import MAX_NODES, MAX_TAG_CHARS, MAX_TAGS, MAX_WORKFLOW_TIMEOUT_MS
from domain.nodes import ERROR_OUTPUT

__all__ = [
    "MAX_EXPORT_BYTES",
    "ExportInvalid",
    "ImportRefused",
    "LoopRefused",
    "Translation",
    "UnsupportedNode",
    "translate_export",
]

MAX_EXPORT_BYTES: Final = 1024 * 1024
"""An n8n export larger than this is refused before it is parsed."""

_ID_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]+")
_PLACEHOLDER_TEXT: Final = (
    "Placeholder for n8n node '{name}' ({type}@{version}), which was not imported: {reason}. "
    "Replace this node."
)


class ExportInvalid(Exception):
    """The document is not an n8n workflow export; ``problems`` say where."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['loc']}: {p['msg']}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class UnsupportedNode:
    name: str
    type: str
    version: float | int
    reason: str
    id: str | None = None  # the placeholder's id, in partial mode
    dropped_connections: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "version": self.version,
            "reason": self.reason,
        }
        if self.id is not None:
            answer["id"] = self.id
            answer["dropped_connections"] = list(self.dropped_connections)
        return answer


class ImportRefused(Exception):
    """Nodes that cannot be mapped (every one of them); nothing is created."""

    def __init__(self, nodes: list[UnsupportedNode]) -> None:
        super().__init__(
            f"{len(nodes)} n8n node(s) cannot be imported: "
            + "; ".join(
                f"'{node.name}' ({node.type}@{node.version}) {node.reason}" for node in nodes
            )
        )
        self.nodes = nodes


class LoopRefused(Exception):
    """The export loops; ``cycle`` names its nodes in order, the first again at the end."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(
            "the n8n workflow loops: "
            + " -> ".join(f"'{name}'" for name in cycle)
            + "; Reporunner workflows cannot loop (they are acyclic)"
        )
        self.cycle = cycle


@dataclass
class Translation:
    """Our definition (the fields of ``CreateWorkflow``) and what the import changed."""

    definition: dict[str, Any]
    placeholders: list[UnsupportedNode] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # sticky notes


@dataclass
class _Node:
    raw: dict[str, Any]
    name: str
    type: str
    version: float | int
    id: str
    mapped: Mapped | None = None
    unsupported: str | None = None


def translate_export(document: Any, *, partial: bool = False) -> Translation:
    """Translate a parsed n8n export.

    Raises ``ExportInvalid``, ``LoopRefused`` or ``ImportRefused``.
    """
    nodes_raw, connections_raw = _shape(document)
    settings_raw = document.get("settings") if isinstance(document.get("settings"), dict) else {}
    timezone = settings_raw.get("timezone")
    context = MapContext(timezone=timezone if isinstance(timezone, str) and timezone else "UTC")

    dropped = [node["name"] for node in nodes_raw if node["type"] == STICKY_NOTE]
    nodes = _identify([node for node in nodes_raw if node["type"] != STICKY_NOTE])
    by_name = {node.name: node for node in nodes}
    edges = _edges(connections_raw, by_name)
    cycle = _find_cycle([node.name for node in nodes], edges)
    if cycle:
        raise LoopRefused(cycle)

    for node in nodes:
        _map(node, context)
    unsupported = [node for node in nodes if node.unsupported is not None]
    if unsupported and not partial:
        raise ImportRefused(
            [
                UnsupportedNode(node.name, node.type, node.version, node.unsupported or "")
                for node in unsupported
            ]
        )

    translation = Translation(definition={}, dropped=dropped)
    our_nodes = []
    for node in nodes:
        if node.mapped is None:
            node.mapped = _placeholder(node)
        our_nodes.append(_our_node(node))
        translation.notes.extend({"node": node.name, "note": note} for note in node.mapped.notes)

    connections, dropped_edges = _connections(edges, by_name)
    for node in unsupported:
        translation.placeholders.append(
            UnsupportedNode(
                node.name,
                node.type,
                node.version,
                node.unsupported or "",
                id=node.id,
                dropped_connections=tuple(dropped_edges.get(node.name, [])),
            )
        )
    for name, lost in dropped_edges.items():
        if by_name[name].unsupported is None:
            translation.notes.extend(
                {"node": name, "note": f"connection dropped: {edge}"} for edge in lost
            )
    if settings_raw.get("executionOrder") not in (None, "v1"):
        translation.notes.append(
            {
                "node": "",
                "note": "n8n's legacy execution order is not kept: nodes run in topological order",
            }
        )
    translation.definition = {
        "name": _workflow_name(document.get("name")),
        "description": "Imported from n8n",
        "nodes": our_nodes,
        "connections": connections,
        "tags": _tags(document.get("tags")),
        "settings": _settings(settings_raw),
    }
    return translation


# -- the document ------------------------------------------------------------------


def _shape(document: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    problems: list[dict[str, str]] = []
    if isinstance(document, list):
        raise ExportInvalid(
            [
                {
                    "loc": "body",
                    "msg": f"holds {len(document)} workflows; import one n8n workflow at a time",
                }
            ]
        )
    if not isinstance(document, dict):
        raise ExportInvalid(
            [{"loc": "body", "msg": "must be an n8n workflow export (a JSON object)"}]
        )
    nodes = document.get("nodes")
    connections = document.get("connections", {})
    if not isinstance(nodes, list):
        problems.append({"loc": "nodes", "msg": "must be the export's array of nodes"})
    if not isinstance(connections, dict):
        problems.append({"loc": "connections", "msg": "must be an object (node name -> outputs)"})
    if "name" in document and not isinstance(document["name"], str):
        problems.append({"loc": "name", "msg": "must be a string"})
    if "settings" in document and not isinstance(document["settings"], dict):
        problems.append({"loc": "settings", "msg": "must be an object"})
    if problems:
        raise ExportInvalid(problems)
    assert isinstance(nodes, list)
    if len(nodes) > MAX_NODES:
        raise ExportInvalid(
            [{"loc": "nodes", "msg": f"has {len(nodes)} nodes, at most {MAX_NODES} allowed"}]
        )
    names: set[str] = set()
    for index, node in enumerate(nodes):
        loc = f"nodes[{index}]"
        if not isinstance(node, dict):
            problems.append({"loc": loc, "msg": "must be an object"})
            continue
        for key in ("name", "type"):
            if not isinstance(node.get(key), str) or not node[key]:
                problems.append({"loc": f"{loc}.{key}", "msg": "must be a non-empty string"})
        version = node.get("typeVersion", 1)
        if (
            isinstance(version, bool)
            or not isinstance(version, int | float)
            or not math.isfinite(version)
        ):
            problems.append({"loc": f"{loc}.typeVersion", "msg": "must be a number"})
        if "parameters" in node and not isinstance(node["parameters"], dict):
            problems.append({"loc": f"{loc}.parameters", "msg": "must be an object"})
        if "disabled" in node and not isinstance(node["disabled"], bool):
            problems.append({"loc": f"{loc}.disabled", "msg": "must be true or false"})
        if "position" in node and not _is_position(node["position"]):
            problems.append({"loc": f"{loc}.position", "msg": "must be [x, y], two numbers"})
        name = node.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append({"loc": f"{loc}.name", "msg": f"duplicate node name '{name}'"})
            names.add(name)
    if problems:
        raise ExportInvalid(problems)
    return nodes, connections


def _is_position(position: Any) -> bool:
    return (
        isinstance(position, list)
        and len(position) == 2
        and all(
            isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c)
            for c in position
        )
    )


def _identify(raw_nodes: list[dict[str, Any]]) -> list[_Node]:
    """Our ids from n8n's names (n8n's own ids are UUIDs, often missing or too long)."""
    taken: set[str] = set()
    nodes = []
    for raw in raw_nodes:
        base = _ID_CHARS.sub("-", raw["name"]).strip("-").lower()[:56] or "node"
        node_id, suffix = base, 2
        while node_id in taken:
            node_id, suffix = f"{base}-{suffix}", suffix + 1
        taken.add(node_id)
        version = raw.get("typeVersion", 1)
        nodes.append(_Node(raw, raw["name"], raw["type"], version, node_id))
    return nodes


# (source name, n8n output index, target name, target input index)
_Edge = tuple[str, int, str, int]


def _edges(connections: Mapping[str, Any], by_name: Mapping[str, _Node]) -> list[_Edge]:
    """The ``main`` connections between kept nodes, in the export's order."""
    edges: list[_Edge] = []
    problems: list[dict[str, str]] = []
    for source, by_type in connections.items():
        if source not in by_name and isinstance(by_type, dict):
            continue  # a sticky note's or a deleted node's leftovers
        if not isinstance(by_type, dict):
            problems.append({"loc": f"connections.{source}", "msg": "must be an object"})
            continue
        outputs = by_type.get("main") or []
        if not isinstance(outputs, list):
            problems.append({"loc": f"connections.{source}.main", "msg": "must be an array"})
            continue
        for index, targets in enumerate(outputs):
            if not isinstance(targets, list | None):
                problems.append(
                    {"loc": f"connections.{source}.main[{index}]", "msg": "must be an array"}
                )
                continue
            for target in targets or []:
                if not isinstance(target, dict) or not isinstance(target.get("node"), str):
                    problems.append(
                        {
                            "loc": f"connections.{source}.main[{index}]",
                            "msg": "must hold {node, type, index}",
                        }
                    )
                    continue
                if target["node"] not in by_name or source not in by_name:
                    continue
                input_index = target.get("index", 0)
                edges.append(
                    (
                        source,
                        index,
                        target["node"],
                        input_index if isinstance(input_index, int) else 0,
                    )
                )
    if problems:
        raise ExportInvalid(problems)
    return edges


def _find_cycle(names: list[str], edges: list[_Edge]) -> list[str] | None:
    """The first loop met by a depth-first walk in node order, as names (first one repeated)."""
    # Successors in connection order, without duplicates (a dict keeps order).
    successors: dict[str, dict[str, None]] = {name: {} for name in names}
    for source, _, target, _ in edges:
        successors[source][target] = None
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in names:
        if root in state:
            continue
        path = [root]
        state[root] = 1
        work = [iter(successors[root])]
        while work:
            child = next(work[-1], None)
            if child is None:
                state[path.pop()] = 2
                work.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                work.append(iter(successors[child]))
    return None


# -- nodes -------------------------------------------------------------------------


def _map(node: _Node, context: MapContext) -> None:
    if node.type in CODE_TYPES:
        node.unsupported = CODE_REASON
        return
    supported = MAPPERS.get(node.type)
    if supported is None:
        builtin = node.type.startswith("n8n-nodes-base.")
        node.unsupported = (
            "has no Reporunner equivalent (a built-in n8n node the importer does not map)"
            if builtin
            else "is not a built-in n8n node (a community or LangChain node), which "
            "Reporunner cannot run"
        )
        return
    if node.version > supported.max_version or node.version < 1:
        node.unsupported = (
            f"version {node.version} is not one the importer reads (1 to {supported.max_version:g})"
        )
        return
    if node.raw.get("disabled") is True:
        # n8n passes items straight through a disabled node (to its first output).
        node.mapped = Mapped(
            "manual_trigger" if is_trigger_type(node.type) else "noop",
            {},
            notes=["disabled in n8n: imported as a pass-through (a trigger only runs when asked)"],
        )
        return
    try:
        node.mapped = supported.mapper(node.raw, node.version, context)
    except Unmappable as exc:
        node.unsupported = str(exc)
        return
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError):
        # A parameter of an unexpected JSON type deep inside (an object where
        # n8n writes a list, say): the node is not in the shape n8n writes.
        node.unsupported = (
            f"its parameters are not in the shape n8n's {node.type}@{node.version} writes"
        )
        return
    _error_handling(node)


def _error_handling(node: _Node) -> None:
    """n8n's onError/continueOnFail and retry settings as our on_error and retry."""
    assert node.mapped is not None
    on_error = node.raw.get("onError")
    if on_error is None and node.raw.get("continueOnFail") is True:
        on_error = "continueRegularOutput"
    if on_error == "continueErrorOutput":
        # n8n's error output comes after the node's regular outputs.
        node.mapped.outputs[max(node.mapped.outputs, default=-1) + 1] = [ERROR_OUTPUT]
        node.mapped.on_error = "continue_error_output"
    elif on_error == "continueRegularOutput":
        node.mapped.on_error = "continue"
    if node.raw.get("retryOnFail") is True:
        tries = node.raw.get("maxTries", 3)
        wait = node.raw.get("waitBetweenTries", 1000)
        node.mapped.retry = {
            "max_tries": min(max(int(tries), 1), 10) if isinstance(tries, int | float) else 3,
            "wait_ms": min(max(int(wait), 0), 600_000) if isinstance(wait, int | float) else 1000,
        }
    for key, note in (
        ("alwaysOutputData", "'always output data' is not kept"),
        ("executeOnce", "'execute once' is not kept: the node runs for every item"),
    ):
        if node.raw.get(key) is True:
            node.mapped.notes.append(note)


def _placeholder(node: _Node) -> Mapped:
    """What stands in for a node that could not be mapped.

    A non-trigger becomes a ``stop_and_error`` whose message says what it
    replaces and why: a run that reaches it fails there, so an unreplaced
    placeholder can never silently pass wrong data on. A trigger becomes a
    ``manual_trigger`` (it fires only when asked). Either has one output, so
    the n8n node's connections from its other outputs are dropped and listed.
    """
    if is_trigger_type(node.type):
        return Mapped("manual_trigger", {})
    message = _PLACEHOLDER_TEXT.format(
        name=node.name, type=node.type, version=node.version, reason=node.unsupported
    )
    return Mapped("stop_and_error", {"message": message[:1000]})


def _our_node(node: _Node) -> dict[str, Any]:
    assert node.mapped is not None
    ours: dict[str, Any] = {
        "id": node.id,
        "type": node.mapped.type,
        "name": node.name[:200],
        "parameters": node.mapped.parameters,
    }
    if "position" in node.raw:  # checked by _shape
        ours["position"] = node.raw["position"]
    if node.mapped.on_error is not None:
        ours["on_error"] = node.mapped.on_error
    if node.mapped.retry is not None:
        ours["retry"] = node.mapped.retry
    return ours


def _connections(
    edges: list[_Edge], by_name: Mapping[str, _Node]
) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """Our connections, and per source the n8n connections that have no output here."""
    ordered: list[tuple[int, int, dict[str, str]]] = []
    seen: set[tuple[str, str, str]] = set()
    dropped: dict[str, list[str]] = {}
    for sequence, (source, index, target, input_index) in enumerate(edges):
        node = by_name[source]
        assert node.mapped is not None
        outputs = node.mapped.outputs.get(index)
        if outputs is None:
            dropped.setdefault(source, []).append(f"output {index} -> '{target}'")
            continue
        for output in outputs:
            key = (node.id, output, by_name[target].id)
            if key in seen:
                continue
            seen.add(key)
            ordered.append(
                (
                    input_index,
                    sequence,
                    {"from": node.id, "to": by_name[target].id, "output": output},
                )
            )
    # A merge joins its inputs in connection order: n8n's input index decides it.
    ordered.sort(key=lambda entry: (entry[0], entry[1]))
    return [connection for _, _, connection in ordered], dropped


# -- the workflow around the nodes -------------------------------------------------


def _workflow_name(name: Any) -> str:
    if isinstance(name, str) and name.strip():
        return name.strip()[:200]
    return "Imported from n8n"


def _tags(tags: Any) -> list[str]:
    """n8n exports tags as ``[{"name": ...}]`` (or plain strings)."""
    names: list[str] = []
    for tag in tags if isinstance(tags, list) else []:
        name = tag.get("name") if isinstance(tag, dict) else tag
        if isinstance(name, str) and name.strip():
            name = name.strip()[:MAX_TAG_CHARS]
            if name not in names:
                names.append(name)
    return names[:MAX_TAGS]


def _settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """n8n's ``executionTimeout`` (seconds, -1 for none) is our ``timeout_ms``."""
    timeout = settings.get("executionTimeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        return {"timeout_ms": int(min(timeout * 1000, MAX_WORKFLOW_TIMEOUT_MS))}
    return {}
