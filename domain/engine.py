"""The execution engine: runs a workflow definition over items. Pure and deterministic.

The engine does no I/O of its own. HTTP, sleeping, the clock and cancellation
come in as ports (``EnginePorts``), and progress goes out through an
``ExecutionListener`` that the caller turns into events. Given the same plan,
input, port behaviour and limits it makes the same calls in the same order and
returns an equal ``ExecutionOutcome``.

Usage: ``plan = compile_plan(definition)`` once per workflow version (it
validates parameters, compiles conditions, regexes and expressions, and sorts
the graph), then ``run(plan, execution_input, ports=..., listener=..., limits=...)``.

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
- Cancellation is checked before each node and after each retry back-off; a
  port that raises ``RunStopped`` cancels the run there and then.

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
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel

from domain.expressions import (
    CompiledExpression,
    ExpressionError,
    ExpressionTimeout,
    compile_expression,
)
from domain.nodes import (
    DEFAULT_OUTPUT,
    ERROR_OUTPUT,
    NODE_TYPES,
    SWITCH_DEFAULT_OUTPUT,
    CodeParameters,
    Condition,
    FilterParameters,
    HttpRequestParameters,
    IfParameters,
    MergeParameters,
    SetParameters,
    StopAndErrorParameters,
    SwitchParameters,
    WaitParameters,
    compile_regex,
)

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
    "PlannedNode",
    "RunStopped",
    "compile_plan",
    "run",
]

Item = dict[str, Any]
"""One unit of data flowing between nodes: a JSON object."""
Outputs = dict[str, list[Item]]
"""A node's result: items per output name, every declared output present."""

DEFAULT_MAX_EXECUTION_MS: Final = 30_000
DEFAULT_MAX_EXECUTION_BYTES: Final = 64 * 1024 * 1024


# -- ports -----------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: Any
    timeout_ms: int


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: Any
    """Parsed JSON when the response was JSON, else its text."""


class HttpFailure(Exception):
    """Raised by the HTTP port when no response arrived (DNS, connect, timeout, TLS)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class RunStopped(Exception):
    """Raised by a port when the caller has stopped the run (canceled, or found to
    duplicate a run already recorded): the engine ends it as canceled at once,
    so no further port call, and no further side effect, happens."""


def _never_cancel() -> bool:
    return False


@dataclass(frozen=True)
class EnginePorts:
    """Everything the engine needs from the outside world."""

    http: Callable[[HttpRequest], HttpResponse]
    sleep: Callable[[float], None]
    """Sleeps the given seconds (waits and retry back-off)."""
    clock: Callable[[], float]
    """Monotonic seconds, for the execution timeout."""
    should_cancel: Callable[[], bool] = _never_cancel
    """Polled between node runs; must be cheap."""


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


@dataclass(frozen=True)
class EngineLimits:
    max_wait_ms: int = 60_000
    """Cap on one ``wait`` node's pause and on one retry back-off."""
    allowed_http_hosts: frozenset[str] = frozenset()
    """Host names ``http_request`` may call (case-insensitive); empty allows none."""
    max_items: int = 10_000
    """Most items one node output may hold; more fails the node."""
    max_execution_ms: int = DEFAULT_MAX_EXECUTION_MS
    """Execution timeout unless the workflow's ``settings.timeout_ms`` sets one."""
    max_execution_bytes: int = DEFAULT_MAX_EXECUTION_BYTES
    """Memory the items one execution builds may take (see the module docstring)."""


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

Step = Callable[[list[list[Item]], "_RunContext"], Outputs]
"""A node's behaviour: items per incoming connection -> items per output."""


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
            step=_STEP_BUILDERS[raw["type"]](parameters, outputs),
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


class _NodeError(Exception):
    """A node failed; retry and on_error apply."""


class _Timeout(Exception):
    """The execution's deadline passed."""


class _Canceled(Exception):
    """The caller asked to cancel."""


class _Stopped(Exception):
    """A node failed for good and its on_error is ``stop``: the execution fails."""

    def __init__(self, node_id: str, error: str) -> None:
        super().__init__(f"node '{node_id}' failed: {error}")
        self.node_id = node_id


# How many set assignments run between two looks at the clock.
_ASSIGNMENTS_PER_CLOCK_READ: Final = 64
# A list slot, the growth of a dict by one key, and a new dict with its first
# key plus its entry in set's index of owned dicts (approximate, measured with
# tracemalloc on CPython 3.11: a path's new dict costs about 210 bytes).
_SLOT_BYTES: Final = 8
_KEY_BYTES: Final = 48
_OWNED_ENTRY_BYTES: Final = 64
_NEW_DICT_BYTES: Final = sys.getsizeof({"": None}) + _OWNED_ENTRY_BYTES


@dataclass(slots=True)
class _RunContext:
    """What steps may touch while running: the ports, the limits, the deadline,
    and the memory budget (bytes committed by finished attempts, and those
    charged so far by the running one)."""

    ports: EnginePorts
    limits: EngineLimits
    allowed_hosts: frozenset[str]
    deadline: float
    bytes_used: int = 0
    attempt_bytes: int = 0

    def seconds_left(self) -> float:
        return self.deadline - self.ports.clock()

    def out_of_time(self) -> bool:
        return self.seconds_left() <= 0

    def ensure_time_left(self) -> None:
        if self.out_of_time():
            raise _Timeout

    def sleep(self, seconds: float) -> None:
        """Sleep, but not past the deadline: time out there instead."""
        if seconds <= 0:
            return
        left = self.seconds_left()
        if seconds >= left:
            if left > 0:
                self.ports.sleep(left)
            raise _Timeout
        self.ports.sleep(seconds)

    def charge(self, nbytes: int) -> None:
        """Count memory the running attempt built; past the budget the node fails."""
        self.attempt_bytes += nbytes
        if self.bytes_used + self.attempt_bytes > self.limits.max_execution_bytes:
            raise _NodeError(
                f"the execution's items would take more than "
                f"{self.limits.max_execution_bytes} bytes of memory"
            )

    def charge_value(self, value: Any) -> None:
        """Charge a value built whole (a response body, an expression result)."""
        left = self.limits.max_execution_bytes - self.bytes_used - self.attempt_bytes
        self.charge(deep_size(value, left))

    def end_attempt(self, succeeded: bool) -> None:
        """A finished attempt keeps its charge; a failed one's items are garbage."""
        if succeeded:
            self.bytes_used += self.attempt_bytes
        self.attempt_bytes = 0


def deep_size(value: Any, limit: int) -> int:
    """``sys.getsizeof`` summed over a JSON value's objects; stops once past ``limit``.

    Iterative (no recursion limit), and bounded by ``limit`` however big the
    value is. Shared objects are counted each time they are reached, so this
    is an upper bound of what the value holds alone.
    """
    total = 0
    pending = [value]
    while pending:
        current = pending.pop()
        total += sys.getsizeof(current)
        if total > limit:
            break
        if isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return total


def run(
    plan: ExecutionPlan,
    execution_input: Any,
    *,
    ports: EnginePorts,
    listener: ExecutionListener | None = None,
    limits: EngineLimits | None = None,
) -> ExecutionOutcome:
    """Run ``plan`` over ``execution_input`` (a JSON object or a list of objects)."""
    limits = limits or EngineLimits()
    listener = listener or NullListener()
    timeout_ms = plan.timeout_ms if plan.timeout_ms is not None else limits.max_execution_ms
    context = _RunContext(
        ports=ports,
        limits=limits,
        allowed_hosts=frozenset(host.lower() for host in limits.allowed_http_hosts),
        deadline=ports.clock() + timeout_ms / 1000,
    )
    trigger_input = [[execution_input]]  # the trigger step's single "incoming connection"
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
    except _Timeout:
        return outcome(
            "failed",
            f"execution timed out after {timeout_ms} ms",
            current.id if current else None,
        )
    except (_Canceled, RunStopped):
        return outcome("canceled")
    return outcome("succeeded")


def _run_node(
    node: PlannedNode,
    inputs: list[list[Item]],
    context: _RunContext,
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
            context.charge(_SLOT_BYTES * sum(len(items) for items in outputs.values()))
        except _NodeError as exc:
            context.end_attempt(succeeded=False)
            error = str(exc)
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
        except _NodeError as exc:  # the error output itself is over the budget
            context.end_attempt(succeeded=False)
            passed_on, error = None, f"{error}; {exc}"
        runs.append(NodeRun(node.id, attempt, "failed", passed_on, error))
        listener.node_failed(node.id, error, attempt, will_retry=False)
        if passed_on is None:
            raise _Stopped(node.id, error)
        return passed_on
    raise AssertionError("max_tries is at least 1")


def _on_error_outputs(
    node: PlannedNode, inputs: list[list[Item]], error: str, context: _RunContext
) -> Outputs | None:
    """What a finally failed node passes on under its on_error policy (None: stop)."""
    if node.on_error == "stop":
        return None
    items = _concat(inputs) if not node.is_trigger else []
    outputs: Outputs = {name: [] for name in node.outputs}
    context.charge(_SLOT_BYTES * len(items))
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


def _check_item_counts(outputs: Outputs, max_items: int) -> None:
    for name, items in outputs.items():
        if len(items) > max_items:
            raise _NodeError(f"output '{name}' has {len(items)} items, at most {max_items} allowed")


def _concat(inputs: list[list[Item]]) -> list[Item]:
    """A new list, so no two nodes' outputs share a list object (items are shared)."""
    return [item for items in inputs for item in items]


# -- node behaviours -----------------------------------------------------------------
# Each builder runs once per plan and returns the node's step, with its
# parameters pre-processed (paths split, conditions compiled). Steps never
# mutate their input items: they build new dicts along the paths they change.

StepBuilder = Callable[[Any, tuple[str, ...]], Step]


def _build_trigger(_params: Any, outputs: tuple[str, ...]) -> Step:
    def trigger(inputs: list[list[Item]], _context: _RunContext) -> Outputs:
        [[execution_input]] = inputs
        return _with_empty(outputs, DEFAULT_OUTPUT, _input_items(execution_input))

    return trigger


def _input_items(execution_input: Any) -> list[Item]:
    if isinstance(execution_input, dict):
        return [execution_input]
    if isinstance(execution_input, list):
        for index, item in enumerate(execution_input):
            if not isinstance(item, dict):
                raise _NodeError(
                    f"input item {index} is {_json_type(item)}, items must be JSON objects"
                )
        return list(execution_input)
    raise _NodeError(
        f"input is {_json_type(execution_input)}, expected an object or an array of objects"
    )


def _build_passthrough(_params: Any, outputs: tuple[str, ...]) -> Step:
    def passthrough(inputs: list[list[Item]], _context: _RunContext) -> Outputs:
        return _with_empty(outputs, DEFAULT_OUTPUT, _concat(inputs))

    return passthrough


def _build_set(params: SetParameters, outputs: tuple[str, ...]) -> Step:
    assignments = [(path.split("."), value) for path, value in params.fields.items()]
    keep_others = params.keep_others

    def set_fields(inputs: list[list[Item]], context: _RunContext) -> Outputs:
        results = []
        assigned = 0
        for item in _concat(inputs):
            result: Item = dict(item) if keep_others else {}
            context.charge(sys.getsizeof(result))
            # Dicts built for this result, so later paths may change them in
            # place: each dict along any path is copied once per item, never
            # once per assignment (1,000 deep paths would copy it 1,000 times).
            # Keyed by id, holding each dict so that no id is reused meanwhile.
            owned = {id(result): result}
            for segments, value in assignments:
                assigned += 1
                if assigned % _ASSIGNMENTS_PER_CLOCK_READ == 0:
                    context.ensure_time_left()
                _assign_in_place(result, segments, value, owned, context)
            results.append(result)
        return _with_empty(outputs, DEFAULT_OUTPUT, results)

    return set_fields


def _assign_in_place(
    result: Item, segments: list[str], value: Any, owned: dict[int, Item], context: _RunContext
) -> None:
    """Put ``value`` at the path in ``result``, copying the dicts along it not yet ``owned``.

    A missing or non-object value along the path is replaced by a new object.
    Steps never mutate their input items: only ``owned`` dicts change.
    """
    target = result
    for segment in segments[:-1]:
        child = target.get(segment)
        if not isinstance(child, dict):
            child = {}
            context.charge(_NEW_DICT_BYTES)
        elif id(child) in owned:
            target = child
            continue
        else:
            child = dict(child)
            context.charge(sys.getsizeof(child) + _KEY_BYTES + _OWNED_ENTRY_BYTES)
        owned[id(child)] = child
        target[segment] = child
        target = child
    context.charge(_KEY_BYTES)
    target[segments[-1]] = value


def _build_if(params: IfParameters, outputs: tuple[str, ...]) -> Step:
    matches = _compile_conditions(params.conditions, params.combine)

    def route(inputs: list[list[Item]], _context: _RunContext) -> Outputs:
        routed: Outputs = {name: [] for name in outputs}
        for item in _concat(inputs):
            routed["true" if matches(item) else "false"].append(item)
        return routed

    return route


def _build_filter(params: FilterParameters, outputs: tuple[str, ...]) -> Step:
    matches = _compile_conditions(params.conditions, params.combine)

    def keep(inputs: list[list[Item]], _context: _RunContext) -> Outputs:
        return _with_empty(outputs, DEFAULT_OUTPUT, [i for i in _concat(inputs) if matches(i)])

    return keep


def _build_switch(params: SwitchParameters, outputs: tuple[str, ...]) -> Step:
    cases = [
        (case.name, _compile_conditions(case.conditions, case.combine)) for case in params.cases
    ]

    def route(inputs: list[list[Item]], _context: _RunContext) -> Outputs:
        routed: Outputs = {name: [] for name in outputs}
        for item in _concat(inputs):
            target = next((name for name, matches in cases if matches(item)), None)
            routed[target or SWITCH_DEFAULT_OUTPUT].append(item)
        return routed

    return route


def _build_merge(params: MergeParameters, outputs: tuple[str, ...]) -> Step:
    if params.mode == "append":
        return _build_passthrough(params, outputs)
    assert params.key is not None  # the model requires a key for combine
    key_path = params.key.split(".")

    def combine(inputs: list[list[Item]], context: _RunContext) -> Outputs:
        # Inner join on the key: keep first-input items that every other input
        # matches, merged with the first match of each (later inputs win on
        # conflicting fields). Unmatched items are dropped, as in n8n.
        first, *others = inputs
        indexes = []
        for items in others:
            index: dict[Any, Item] = {}
            for item in items:
                key = _lookup(item, key_path)
                if key is not _MISSING:
                    hashable = _hashable(key)
                    context.charge(_KEY_BYTES + sys.getsizeof(hashable))
                    index.setdefault(hashable, item)
            indexes.append(index)
        merged = []
        for item in first:
            key = _lookup(item, key_path)
            if key is _MISSING:
                continue
            matches = [index.get(_hashable(key)) for index in indexes]
            if all(match is not None for match in matches):
                result = dict(item)
                for match in matches:
                    result.update(match or {})
                context.charge(sys.getsizeof(result))
                merged.append(result)
        return _with_empty(outputs, DEFAULT_OUTPUT, merged)

    return combine


def _build_wait(params: WaitParameters, outputs: tuple[str, ...]) -> Step:
    def wait(inputs: list[list[Item]], context: _RunContext) -> Outputs:
        context.sleep(min(params.ms, context.limits.max_wait_ms) / 1000)
        return _with_empty(outputs, DEFAULT_OUTPUT, _concat(inputs))

    return wait


def _build_stop_and_error(params: StopAndErrorParameters, _outputs: tuple[str, ...]) -> Step:
    def stop(_inputs: list[list[Item]], _context: _RunContext) -> Outputs:
        raise _NodeError(params.message)

    return stop


def _build_http_request(params: HttpRequestParameters, outputs: tuple[str, ...]) -> Step:
    host = (urlsplit(params.url).hostname or "").lower()
    headers = dict(params.headers)

    def call(inputs: list[list[Item]], context: _RunContext) -> Outputs:
        # Refused before any call: the port must never see a disallowed host.
        if host not in context.allowed_hosts:
            raise _NodeError(f"host '{host}' is not allowed: it is not in the HTTP allow-list")
        results = []
        for _item in _concat(inputs):  # one request per incoming item, as in n8n
            left_ms = context.seconds_left() * 1000
            if left_ms <= 0:
                raise _Timeout
            request = HttpRequest(
                method=params.method,
                url=params.url,
                headers=headers,
                body=params.body,
                timeout_ms=max(1, min(params.timeout_ms, math.ceil(left_ms))),
            )
            try:
                response = context.ports.http(request)
            except HttpFailure as exc:
                # Cut off by the execution's deadline: the execution timed out,
                # whatever the node's retry and on_error say.
                context.ensure_time_left()
                raise _NodeError(f"{params.method} {params.url} failed: {exc.message}") from None
            context.ensure_time_left()
            if response.status >= 400:
                raise _NodeError(
                    f"{params.method} {params.url} returned HTTP status {response.status}"
                )
            result = {
                "status": response.status,
                "headers": dict(response.headers),
                "body": response.body,
            }
            context.charge_value(result)
            results.append(result)
        return _with_empty(outputs, DEFAULT_OUTPUT, results)

    return call


def _build_code(params: CodeParameters, outputs: tuple[str, ...]) -> Step:
    into = params.into.split(".")
    expression: CompiledExpression | None = None
    compile_error: str | None = None
    try:
        expression = compile_expression(params.expression)
    except ExpressionError as exc:
        compile_error = f"invalid expression: {exc}"

    def evaluate(inputs: list[list[Item]], context: _RunContext) -> Outputs:
        if expression is None:
            raise _NodeError(compile_error)
        results = []
        for index, item in enumerate(_concat(inputs)):
            context.ensure_time_left()
            try:
                # The expression watches the deadline at every step, too.
                value = expression.evaluate(item, out_of_time=context.out_of_time)
            except ExpressionTimeout:
                raise _Timeout from None
            except ExpressionError as exc:
                raise _NodeError(f"expression failed on item {index}: {exc}") from None
            context.charge_value(value)
            results.append(_assign_charged(item, into, value, context))
        return _with_empty(outputs, DEFAULT_OUTPUT, results)

    return evaluate


_STEP_BUILDERS: Final[Mapping[str, StepBuilder]] = {
    "manual_trigger": _build_trigger,
    "set": _build_set,
    "if": _build_if,
    "filter": _build_filter,
    "switch": _build_switch,
    "merge": _build_merge,
    "wait": _build_wait,
    "noop": _build_passthrough,
    "stop_and_error": _build_stop_and_error,
    "http_request": _build_http_request,
    "code": _build_code,
}
if set(_STEP_BUILDERS) != set(NODE_TYPES):  # pragma: no cover - a registry change
    raise RuntimeError("every registered node type needs an engine step")


def _with_empty(outputs: tuple[str, ...], name: str, items: list[Item]) -> Outputs:
    """All declared outputs, empty except ``name``."""
    return {output: items if output == name else [] for output in outputs}


# -- items: dotted paths -------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


def _lookup(item: Any, segments: list[str]) -> Any:
    """The value at a dotted path, or ``_MISSING``. Digit segments index arrays."""
    value = item
    for segment in segments:
        if isinstance(value, dict):
            if segment not in value:
                return _MISSING
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit():
            index = int(segment)
            if index >= len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


def _assign_charged(item: Item, segments: list[str], value: Any, context: _RunContext) -> Item:
    """``_assign``, charging the dicts it copies."""
    result = dict(item)
    context.charge(sys.getsizeof(result) + _KEY_BYTES)
    _assign_in_place(result, segments, value, {id(result): result}, context)
    return result


# -- conditions ----------------------------------------------------------------------
# Precise semantics: numbers (not booleans) compare with numbers, strings with
# strings, by value; any other pairing is simply false, never an error. A
# missing field matches nothing except `ne` (which is `not eq`) and
# `exists: false`. Equality is JSON equality: 1 == 1.0, but true != 1.

Predicate = Callable[[Item], bool]


def _compile_conditions(conditions: list[Condition], combine: str) -> Predicate:
    predicates = [_compile_condition(condition) for condition in conditions]
    if len(predicates) == 1:
        return predicates[0]
    if combine == "and":
        return lambda item: all(predicate(item) for predicate in predicates)
    return lambda item: any(predicate(item) for predicate in predicates)


def _compile_condition(condition: Condition) -> Predicate:
    path = condition.field.split(".")
    expected = condition.value
    op = condition.op

    if op == "exists":
        must_exist = expected is not False
        return lambda item: (_lookup(item, path) is not _MISSING) == must_exist
    if op == "regex":
        pattern = compile_regex(expected)

        def regex(item: Item) -> bool:
            actual = _lookup(item, path)
            return isinstance(actual, str) and pattern.search(actual) is not None

        return regex
    compare = _COMPARISONS[op]

    def test(item: Item) -> bool:
        actual = _lookup(item, path)
        if actual is _MISSING:
            return op == "ne"
        return compare(actual, expected)

    return test


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ordered(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """An ordering comparison, false unless both are numbers or both are strings."""

    def compare(actual: Any, expected: Any) -> bool:
        if _is_number(actual) and _is_number(expected):
            return test(actual, expected)
        if isinstance(actual, str) and isinstance(expected, str):
            return test(actual, expected)
        return False

    return compare


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list):
        return any(_json_equal(element, expected) for element in actual)
    return False


_COMPARISONS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda actual, expected: _json_equal(actual, expected),
    "ne": lambda actual, expected: not _json_equal(actual, expected),
    "gt": _ordered(lambda a, b: a > b),
    "gte": _ordered(lambda a, b: a >= b),
    "lt": _ordered(lambda a, b: a < b),
    "lte": _ordered(lambda a, b: a <= b),
    "contains": _contains,
}


def _json_equal(left: Any, right: Any) -> bool:
    """JSON equality: like ``==`` but booleans never equal numbers, at any depth."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    return type(left) is type(right) and bool(left == right)


def _hashable(value: Any) -> Any:
    """A hashable stand-in with the same equality as ``_json_equal`` (for merge keys)."""
    if isinstance(value, bool):
        return ("bool", value)
    if _is_number(value):
        return ("number", value)  # 1 and 1.0 hash and compare equal
    if isinstance(value, list):
        return ("array", tuple(_hashable(element) for element in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, _hashable(v)) for key, v in value.items()))
    return (type(value).__name__, value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
