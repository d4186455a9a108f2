"""The execution engine: runs a workflow definition over items. Pure and deterministic.

The engine does no I/O of its own. HTTP, sleeping, the clock and cancellation
come in as ports (``EnginePorts``), and progress goes out through an
``ExecutionListener`` that the caller turns into events. Given the same plan,
input, port behaviour and limits it makes the same calls in the same order and
returns an equal ``ExecutionOutcome``.

Usage: ``plan = compile_plan(definition)`` once per workflow version (it
validates parameters, compiles conditions, regexes and expressions, and sorts
the graph), then ``run(plan, execution_input, ports=..., listener=..., limits=...)``.
This module is the runner; what each node type does is in ``domain/steps.py``,
and what a step works with (ports, limits, deadline, memory budget) in
``domain/run_context.py``.

Semantics (n8n-like):

- Items are JSON objects. A trigger emits the execution input: ``[input]`` for
  an object, the elements of a list of objects.
- Nodes run once each, in topological order, ties broken by definition order.
- A node runs only if at least one item arrived on its incoming connections;
  a node nothing reached (e.g. behind the untaken branch of an ``if``) does
  not run and is not reported. A node's input is the concatenation of its
  incoming connections' items, in connection order.
- ``merge`` treats each incoming connection as one input. Topological order
  means it runs after all its predecessors; an input that got nothing is empty.
- The execution ``output`` maps each terminal node (no outgoing connections)
  that ran to all of its output items, concatenated in output order.
- Timeout: ``settings.timeout_ms`` or else ``EngineLimits.max_execution_ms``,
  checked before each node attempt and inside nodes: every few ``set``
  assignments, before each HTTP call and each code evaluation, and at every
  step of an expression. Waits and retry back-offs that would pass the
  deadline sleep until it and then time out; an HTTP call gets the time left
  as the deadline of its whole exchange, and a call cut off by it times the
  execution out.
- Memory: every node charges what it builds (new items and the dicts it
  copies, measured with ``sys.getsizeof``; response bodies and expression
  results in full) against ``EngineLimits.max_execution_bytes``, while it
  builds them, so one execution cannot grow the process by more than that
  (plus its input and, transiently, one expression's working set). Going past
  it fails the node (``on_error`` applies); a failed attempt's charge is
  given back. Items passed on unchanged cost one list slot each.
- Resuming (a retry from the failed node): ``run(..., known_outputs=...)``
  takes the given nodes' outputs as they are, without running or reporting
  them; the rest runs as usual. ``outputs_needed`` says which known outputs
  the run reads, so a caller can refuse when one of them is incomplete.
- Cancellation is checked before each node and after each retry back-off; a
  port that raises ``RunStopped`` cancels the run there and then.

Values the engine produces (expression results, HTTP responses, what ``set``
builds) must hold the value contract (``domain/values.py``): otherwise the
node fails naming the path, so no follower ever meets a value it cannot store.
Failure messages have NUL and lone surrogates escaped for the same reason.

Node failures honour the node's ``retry`` (``max_tries`` attempts in total,
``wait_ms * 2**(attempt - 1)`` between them, a retry re-runs the node for all
its items) and then its ``on_error``: ``stop`` fails the execution;
``continue`` passes the input items unchanged to the node's first output;
``continue_error_output`` sends them, each with an ``error`` field holding the
message, to the ``error`` output. Timeouts and cancellation are not node
failures: they end the execution regardless of ``on_error``.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from domain.nodes import DEFAULT_OUTPUT, ERROR_OUTPUT, NODE_TYPES
from domain.run_context import (
    DEFAULT_MAX_EXECUTION_BYTES,
    DEFAULT_MAX_EXECUTION_MS,
    SLOT_BYTES,
    DeadlinePassed,
    EngineLimits,
    EnginePorts,
    HttpFailure,
    HttpRequest,
    HttpResponse,
    Item,
    NodeError,
    Outputs,
    RunContext,
    RunStopped,
    Step,
)
from domain.steps import STEP_BUILDERS, concat

__all__ = [
    "DEFAULT_MAX_EXECUTION_BYTES",
    "DEFAULT_MAX_EXECUTION_MS",
    "EngineLimits",
    "EnginePorts",
    "ExecutionListener",
    "ExecutionOutcome",
    "ExecutionPlan",
    "HttpFailure",
    "HttpRequest",
    "HttpResponse",
    "Item",
    "NodeRun",
    "NullListener",
    "Outputs",
    "PlannedNode",
    "RunStopped",
    "compile_plan",
    "outputs_needed",
    "run",
]


class ExecutionListener(Protocol):
    """Receives progress as it happens, e.g. to record events.

    ``outputs`` and their items are shared with the engine and later nodes:
    read or copy them, never mutate them.
    """

    def node_started(self, node_id: str, attempt: int) -> None: ...

    def node_succeeded(self, node_id: str, outputs: Outputs, attempt: int) -> None: ...

    def node_failed(self, node_id: str, error: str, attempt: int, will_retry: bool) -> None: ...


class NullListener:
    """A listener that ignores everything."""

    def node_started(self, node_id: str, attempt: int) -> None:
        pass

    def node_succeeded(self, node_id: str, outputs: Outputs, attempt: int) -> None:
        pass

    def node_failed(self, node_id: str, error: str, attempt: int, will_retry: bool) -> None:
        pass


# -- outcome -----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRun:
    """One attempt of one node."""

    node_id: str
    attempt: int
    status: Literal["succeeded", "failed"]
    outputs: Outputs | None
    """What the node passed on: its results, or after a failure its ``on_error``
    outputs (None when the failure was retried or stopped the execution)."""
    error: str | None = None


@dataclass(frozen=True)
class ExecutionOutcome:
    status: Literal["succeeded", "failed", "canceled"]
    error: str | None
    """Why the execution failed, naming the node; None unless failed."""
    failed_node_id: str | None
    output: dict[str, list[Item]]
    """Items of each terminal node that ran (see the module docstring)."""
    node_runs: tuple[NodeRun, ...]
    """One record per finished attempt, in order. An attempt cut off by the
    timeout or by cancellation was reported as started but has no record."""


# -- plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    source_id: str
    output: str


@dataclass(frozen=True)
class PlannedNode:
    id: str
    type: str
    parameters: BaseModel
    outputs: tuple[str, ...]
    """Declared outputs in order, including ``error`` for continue_error_output."""
    incoming: tuple[Incoming, ...]
    """In connection order."""
    is_trigger: bool
    is_terminal: bool
    max_tries: int
    retry_wait_ms: int
    on_error: Literal["stop", "continue", "continue_error_output"]
    step: Step = field(repr=False, compare=False)


@dataclass(frozen=True)
class ExecutionPlan:
    nodes: tuple[PlannedNode, ...]
    """In execution (topological) order."""
    timeout_ms: int | None
    """From ``settings.timeout_ms``; None means the engine default."""


def compile_plan(definition: Mapping[str, Any]) -> ExecutionPlan:
    """Prepare a validated definition (``nodes``, ``connections``, ``settings``) for runs.

    Expects a definition that passed ``validate_definition``; raises
    ``pydantic.ValidationError``/``ValueError`` otherwise. Expression syntax
    errors do not raise here: the ``code`` node fails when it runs, so that
    its ``on_error`` applies.
    """
    raw_nodes: Sequence[Mapping[str, Any]] = definition["nodes"]
    connections: Sequence[Mapping[str, Any]] = definition.get("connections", [])
    settings: Mapping[str, Any] = definition.get("settings", {})

    incoming: dict[str, list[Incoming]] = {node["id"]: [] for node in raw_nodes}
    successors: dict[str, list[str]] = {node["id"]: [] for node in raw_nodes}
    for connection in connections:
        source, target = connection["from"], connection["to"]
        incoming[target].append(Incoming(source, connection.get("output", DEFAULT_OUTPUT)))
        successors[source].append(target)

    planned: dict[str, PlannedNode] = {}
    for raw in raw_nodes:
        node_type = NODE_TYPES[raw["type"]]
        parameters = node_type.parameters.model_validate(raw.get("parameters", {}))
        on_error = raw.get("on_error", "stop")
        outputs = node_type.outputs(parameters)
        if on_error == "continue_error_output":
            outputs = (*outputs, ERROR_OUTPUT)
        retry = raw.get("retry") or {}
        planned[raw["id"]] = PlannedNode(
            id=raw["id"],
            type=raw["type"],
            parameters=parameters,
            outputs=outputs,
            incoming=tuple(incoming[raw["id"]]),
            is_trigger=node_type.is_trigger,
            is_terminal=not successors[raw["id"]],
            max_tries=retry.get("max_tries", 1),
            retry_wait_ms=retry.get("wait_ms", 0),
            on_error=on_error,
            step=STEP_BUILDERS[raw["type"]](parameters, outputs),
        )
    order = _topological_order([node["id"] for node in raw_nodes], successors)
    return ExecutionPlan(
        nodes=tuple(planned[node_id] for node_id in order),
        timeout_ms=settings.get("timeout_ms"),
    )


def _topological_order(node_ids: list[str], successors: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm; among ready nodes the earliest in the definition goes first."""
    position = {node_id: index for index, node_id in enumerate(node_ids)}
    waiting_on = dict.fromkeys(node_ids, 0)
    for targets in successors.values():
        for target in targets:
            waiting_on[target] += 1
    ready = [position[node_id] for node_id, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node_id = node_ids[heapq.heappop(ready)]
        order.append(node_id)
        for target in successors[node_id]:
            waiting_on[target] -= 1
            if waiting_on[target] == 0:
                heapq.heappush(ready, position[target])
    if len(order) != len(node_ids):
        raise ValueError("definition has a cycle")
    return order


# -- run -----------------------------------------------------------------------------


class _Canceled(Exception):
    """The caller asked to cancel."""


class _Stopped(Exception):
    """A node failed for good and its on_error is ``stop``: the execution fails."""

    def __init__(self, node_id: str, error: str) -> None:
        super().__init__(f"node '{node_id}' failed: {error}")
        self.node_id = node_id


def run(
    plan: ExecutionPlan,
    execution_input: Any,
    *,
    ports: EnginePorts,
    listener: ExecutionListener | None = None,
    limits: EngineLimits | None = None,
    known_outputs: Mapping[str, Outputs] | None = None,
) -> ExecutionOutcome:
    """Run ``plan`` over ``execution_input`` (a JSON object or a list of objects).

    ``known_outputs``: outputs of nodes already computed (by the run this one
    retries); those nodes do not run, and later nodes read these outputs.
    """
    limits = limits or EngineLimits()
    listener = listener or NullListener()
    timeout_ms = plan.timeout_ms if plan.timeout_ms is not None else limits.max_execution_ms
    context = RunContext(
        ports=ports,
        limits=limits,
        allowed_hosts=frozenset(host.lower() for host in limits.allowed_http_hosts),
        deadline=ports.clock() + timeout_ms / 1000,
    )
    trigger_input = [[execution_input]]  # the trigger step's single "incoming connection"
    known = known_outputs or {}
    results: dict[str, Outputs] = {}
    runs: list[NodeRun] = []
    current: PlannedNode | None = None

    def outcome(
        status: Literal["succeeded", "failed", "canceled"],
        error: str | None = None,
        failed_node_id: str | None = None,
    ) -> ExecutionOutcome:
        output = {
            node.id: [item for name in node.outputs for item in results[node.id][name]]
            for node in plan.nodes
            if node.is_terminal and node.id in results
        }
        return ExecutionOutcome(status, error, failed_node_id, output, tuple(runs))

    try:
        for node in plan.nodes:
            current = node
            if ports.should_cancel():
                raise _Canceled
            if node.id in known:
                # Loaded from the log, not built by this run: nothing to charge.
                results[node.id] = known[node.id]
                continue
            if node.is_trigger:
                inputs = trigger_input
            else:
                # One list per incoming connection, empty when its source did
                # not run: merge needs the positions.
                inputs = [
                    results[edge.source_id].get(edge.output, [])
                    if edge.source_id in results
                    else []
                    for edge in node.incoming
                ]
                if not any(inputs):
                    continue  # nothing reached this node: it does not run
            results[node.id] = _run_node(node, inputs, context, listener, runs)
    except _Stopped as stopped:
        return outcome("failed", str(stopped), stopped.node_id)
    except DeadlinePassed:
        return outcome(
            "failed",
            f"execution timed out after {timeout_ms} ms",
            current.id if current else None,
        )
    except (_Canceled, RunStopped):
        return outcome("canceled")
    return outcome("succeeded")


def outputs_needed(plan: ExecutionPlan, known: Iterable[str]) -> set[str]:
    """Which of the ``known`` nodes' outputs a run with them reads: those feeding
    a node that runs, and those of terminal nodes (they make the output)."""
    known_ids = set(known)
    needed = {node.id for node in plan.nodes if node.id in known_ids and node.is_terminal}
    for node in plan.nodes:
        if node.id not in known_ids:
            needed.update(edge.source_id for edge in node.incoming if edge.source_id in known_ids)
    return needed


def _run_node(
    node: PlannedNode,
    inputs: list[list[Item]],
    context: RunContext,
    listener: ExecutionListener,
    runs: list[NodeRun],
) -> Outputs:
    """Run ``node`` with retries; its outputs, or what its on_error passes on.

    Raises ``_Stopped`` when it failed for good and its on_error is ``stop``.
    """
    for attempt in range(1, node.max_tries + 1):
        context.ensure_time_left()
        listener.node_started(node.id, attempt)
        try:
            outputs = node.step(inputs, context)
            _check_item_counts(outputs, context.limits.max_items)
            context.charge(SLOT_BYTES * sum(len(items) for items in outputs.values()))
        except NodeError as exc:
            context.end_attempt(succeeded=False)
            error = _storable(str(exc))
        else:
            context.end_attempt(succeeded=True)
            runs.append(NodeRun(node.id, attempt, "succeeded", outputs))
            listener.node_succeeded(node.id, outputs, attempt)
            return outputs
        will_retry = attempt < node.max_tries
        if will_retry:
            runs.append(NodeRun(node.id, attempt, "failed", None, error))
            listener.node_failed(node.id, error, attempt, will_retry=True)
            backoff_ms = min(node.retry_wait_ms * 2 ** (attempt - 1), context.limits.max_wait_ms)
            context.sleep(backoff_ms / 1000)
            if context.ports.should_cancel():
                raise _Canceled
            continue
        try:
            passed_on = _on_error_outputs(node, inputs, error, context)
        except NodeError as exc:  # the error output itself is over the budget
            context.end_attempt(succeeded=False)
            passed_on, error = None, f"{error}; {exc}"
        runs.append(NodeRun(node.id, attempt, "failed", passed_on, error))
        listener.node_failed(node.id, error, attempt, will_retry=False)
        if passed_on is None:
            raise _Stopped(node.id, error)
        return passed_on
    raise AssertionError("max_tries is at least 1")


def _on_error_outputs(
    node: PlannedNode, inputs: list[list[Item]], error: str, context: RunContext
) -> Outputs | None:
    """What a finally failed node passes on under its on_error policy (None: stop)."""
    if node.on_error == "stop":
        return None
    items = concat(inputs) if not node.is_trigger else []
    outputs: Outputs = {name: [] for name in node.outputs}
    context.charge(SLOT_BYTES * len(items))
    if node.on_error == "continue":
        outputs[node.outputs[0]] = items
    else:
        with_error = []
        for item in items:
            copied = {**item, "error": error}
            context.charge(sys.getsizeof(copied))
            with_error.append(copied)
        outputs[ERROR_OUTPUT] = with_error
    context.end_attempt(succeeded=True)
    return outputs


def _storable(message: str) -> str:
    """A message the log can hold: it may quote data (a CEL string, a server's
    words), so a NUL or a lone surrogate in it is escaped, not stored raw."""
    escaped = message.replace("\x00", "\\u0000")
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_item_counts(outputs: Outputs, max_items: int) -> None:
    for name, items in outputs.items():
        if len(items) > max_items:
            raise NodeError(f"output '{name}' has {len(items)} items, at most {max_items} allowed")
