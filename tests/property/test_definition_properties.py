"""Properties of definition validation over generated graphs and garbage input."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.definition import validate_definition
from domain.errors import Problem, WorkflowInvalid
from domain.values import INT64_MAX, INT64_MIN

NODE_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)

# Parameters for the non-trigger node kinds, with the outputs each kind offers.
NODE_KINDS: dict[str, tuple[st.SearchStrategy[dict[str, Any]], tuple[str, ...]]] = {
    "noop": (st.just({}), ("main",)),
    "wait": (st.builds(lambda ms: {"ms": ms}, st.integers(0, 3_600_000)), ("main",)),
    "set": (
        st.builds(
            lambda fields, keep: {"fields": fields, "keep_others": keep},
            st.dictionaries(
                st.from_regex(r"[a-z]{1,5}(\.[a-z0-9_-]{1,5}){0,2}", fullmatch=True),
                st.none()
                | st.booleans()
                # Valid graphs hold what the value contract admits: 64-bit
                # integers, text without NUL or lone surrogates.
                | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
                | st.text(
                    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                    max_size=10,
                ),
                max_size=3,
            ),
            st.booleans(),
        ),
        ("main",),
    ),
    "if": (
        st.just({"conditions": [{"field": "ok", "op": "exists"}]}),
        ("true", "false"),
    ),
}


@dataclass
class Dag:
    """A valid definition plus what the properties need to know about its graph."""

    nodes: list[dict[str, Any]]
    connections: list[dict[str, Any]]
    topo: list[str]  # ids in a topological order; topo[0] is the trigger
    outputs: dict[str, tuple[str, ...]]

    def body(self) -> dict[str, Any]:
        return {
            "name": "generated",
            "description": "",
            "nodes": self.nodes,
            "connections": self.connections,
            "tags": [],
            "settings": {},
        }

    def edges(self) -> set[tuple[str, str]]:
        return {(c["from"], c["to"]) for c in self.connections}

    def reachable_from(self, start: str) -> set[str]:
        successors: dict[str, list[str]] = {}
        for source, target in self.edges():
            successors.setdefault(source, []).append(target)
        seen, pending = {start}, [start]
        while pending:
            for child in successors.get(pending.pop(), []):
                if child not in seen:
                    seen.add(child)
                    pending.append(child)
        return seen - {start}


def _connection(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    source: str,
    target: str,
    outputs: tuple[str, ...],
) -> dict[str, Any]:
    output = draw(st.sampled_from(outputs))
    # A single-output node may omit its output; a multi-output one must name it.
    if len(outputs) == 1 and draw(st.booleans()):
        return {"from": source, "to": target}
    return {"from": source, "to": target, "output": output}


@st.composite
def dags(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 25) -> Dag:
    """A random valid DAG: edges only go forward in a random topological order,
    the trigger comes first in that order, and nodes are listed in another random order."""
    topo = draw(st.lists(NODE_IDS, min_size=min_nodes, max_size=max_nodes, unique=True))
    outputs: dict[str, tuple[str, ...]] = {topo[0]: ("main",)}
    nodes = [{"id": topo[0], "type": "manual_trigger", "parameters": {}}]
    for node_id in topo[1:]:
        kind = draw(st.sampled_from(sorted(NODE_KINDS)))
        parameters, kind_outputs = NODE_KINDS[kind]
        nodes.append({"id": node_id, "type": kind, "parameters": draw(parameters)})
        outputs[node_id] = kind_outputs
    nodes = draw(st.permutations(nodes))
    count = len(topo)
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, count - 1), st.integers(0, count - 1)).filter(
                lambda pair: pair[0] < pair[1]
            ),
            max_size=3 * count if count > 1 else 0,
            unique=True,
        )
    )
    connections = [_connection(draw, topo[i], topo[j], outputs[topo[i]]) for i, j in pairs]
    return Dag(nodes=nodes, connections=connections, topo=topo, outputs=outputs)


@settings(max_examples=200, deadline=None)
@given(dags())
def test_valid_dags_are_accepted(dag: Dag) -> None:
    validate_definition(**dag.body())


@settings(max_examples=200, deadline=None)
@given(dags(min_nodes=3), st.data())
def test_a_back_edge_is_reported_as_a_real_cycle(dag: Dag, data: st.DataObject) -> None:
    # Pick u before v in topological order (u not the trigger, which may have no
    # incoming edge); make sure v is reachable from u, then close the loop v -> u.
    u_index = data.draw(st.integers(1, len(dag.topo) - 2), label="u")
    u = dag.topo[u_index]
    downstream = sorted(dag.reachable_from(u), key=dag.topo.index)
    if downstream:
        v = data.draw(st.sampled_from(downstream), label="v")
    else:
        v = data.draw(st.sampled_from(dag.topo[u_index + 1 :]), label="v")
        dag.connections.append(_connection(data.draw, u, v, dag.outputs[u]))
    dag.connections.append(_connection(data.draw, v, u, dag.outputs[v]))

    try:
        validate_definition(**dag.body())
    except WorkflowInvalid as exc:
        found = exc.problems
    else:
        raise AssertionError("a cyclic definition was accepted")

    # One back edge closes exactly one strongly connected component.
    [problem] = found
    assert problem.loc == "nodes"
    assert problem.msg.startswith("cycle: ")
    cycle = problem.msg.removeprefix("cycle: ").split(" -> ")
    assert len(cycle) >= 3
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a cycle visits each node once"
    edges = dag.edges()
    for source, target in itertools.pairwise(cycle):
        assert (source, target) in edges, f"{source} -> {target} is not an edge"
    listed = [node["id"] for node in dag.nodes]
    assert min(cycle, key=listed.index) == cycle[0], "starts at the node listed first"
    # Without the back edge the graph is acyclic, so every cycle must use it.
    assert (v, u) in set(itertools.pairwise(cycle))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    dags(max_nodes=6),
    st.sampled_from(["name", "description", "nodes", "connections", "tags", "settings"]),
    JSON,
    st.data(),
)
def test_garbage_anywhere_gives_problems_never_exceptions(
    dag: Dag, field: str, garbage: Any, data: st.DataObject
) -> None:
    body = dag.body()
    target = body[field]
    # Replace the field itself, or one element / one key inside it.
    where = data.draw(st.sampled_from(["whole", "element", "element_key"]), label="where")
    if where == "whole" or not isinstance(target, list | dict) or not target:
        body[field] = garbage
    elif isinstance(target, dict):
        target[data.draw(st.sampled_from(sorted(target)))] = garbage
    else:
        index = data.draw(st.integers(0, len(target) - 1), label="index")
        element = target[index]
        if where == "element_key" and isinstance(element, dict) and element:
            element[data.draw(st.sampled_from(sorted(element)), label="key")] = garbage
        else:
            target[index] = garbage
    try:
        validate_definition(**body)
    except WorkflowInvalid as exc:
        assert exc.problems
        assert all(isinstance(p, Problem) and p.loc and p.msg for p in exc.problems)
