"""Node behaviours: what each node type does to the items that reach it.

Each builder runs once per plan and returns the node's step, with its
parameters pre-processed (paths split, conditions compiled). Steps never
mutate their input items: they build new dicts along the paths they change.
Steps charge what they build to the run's memory budget and look at its
deadline while they work (``domain/run_context.py``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from domain.expressions import (
    CompiledExpression,
    ExpressionError,
    ExpressionTimeout,
    compile_expression,
)
from domain.nodes import (
    DEFAULT_OUTPUT,
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
from domain.run_context import (
    DeadlinePassed,
    HttpFailure,
    HttpRequest,
    Item,
    NodeError,
    Outputs,
    RunContext,
    Step,
)
from domain.values import MAX_DEPTH, ValueProblem, check_value

__all__ = ["STEP_BUILDERS", "concat", "json_type"]

# How many set assignments run between two looks at the clock.
_ASSIGNMENTS_PER_CLOCK_READ: Final = 64
# The growth of a dict by one key, and a new dict with its first
# key plus its entry in set's index of owned dicts (approximate, measured with
# tracemalloc on CPython 3.11: a path's new dict costs about 210 bytes).
_KEY_BYTES: Final = 48
_OWNED_ENTRY_BYTES: Final = 64
_NEW_DICT_BYTES: Final = sys.getsizeof({"": None}) + _OWNED_ENTRY_BYTES


def concat(inputs: list[list[Item]]) -> list[Item]:
    """A new list, so no two nodes' outputs share a list object (items are shared)."""
    return [item for items in inputs for item in items]


# -- node behaviours -----------------------------------------------------------------

StepBuilder = Callable[[Any, tuple[str, ...]], Step]


def _build_trigger(_params: Any, outputs: tuple[str, ...]) -> Step:
    def trigger(inputs: list[list[Item]], _context: RunContext) -> Outputs:
        [[execution_input]] = inputs
        return _with_empty(outputs, DEFAULT_OUTPUT, _input_items(execution_input))

    return trigger


def _input_items(execution_input: Any) -> list[Item]:
    if isinstance(execution_input, dict):
        return [execution_input]
    if isinstance(execution_input, list):
        for index, item in enumerate(execution_input):
            if not isinstance(item, dict):
                raise NodeError(
                    f"input item {index} is {json_type(item)}, items must be JSON objects"
                )
        return list(execution_input)
    raise NodeError(
        f"input is {json_type(execution_input)}, expected an object or an array of objects"
    )


def _build_passthrough(_params: Any, outputs: tuple[str, ...]) -> Step:
    def passthrough(inputs: list[list[Item]], _context: RunContext) -> Outputs:
        return _with_empty(outputs, DEFAULT_OUTPUT, concat(inputs))

    return passthrough


def _build_set(params: SetParameters, outputs: tuple[str, ...]) -> Step:
    assignments = [(path.split("."), value) for path, value in params.fields.items()]
    keep_others = params.keep_others
    # A path deeper than the value contract allows would build an item no
    # follower can store: the node fails when it runs (so on_error applies).
    too_deep = next(
        (problem for segments, value in assignments for problem in _placed(value, segments)),
        None,
    )
    computed: list[tuple[str, list[str], CompiledExpression]] = []
    compile_error: str | None = None
    for path, source in params.expressions.items():
        try:
            computed.append((path, path.split("."), compile_expression(source)))
        except ExpressionError as exc:
            compile_error = compile_error or f"invalid expression for '{path}': {exc}"

    def set_fields(inputs: list[list[Item]], context: RunContext) -> Outputs:
        if too_deep is not None:
            raise NodeError(f"field {too_deep}")
        if compile_error is not None:
            raise NodeError(compile_error)
        results = []
        assigned = 0
        for index, item in enumerate(concat(inputs)):
            values = _computed_values(computed, item, index, context)
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
            for segments, value in values:
                _assign_in_place(result, segments, value, owned, context)
            results.append(result)
        return _with_empty(outputs, DEFAULT_OUTPUT, results)

    return set_fields


def _computed_values(
    computed: list[tuple[str, list[str], CompiledExpression]],
    item: Item,
    index: int,
    context: RunContext,
) -> list[tuple[list[str], Any]]:
    """Each of set's expressions evaluated on the arriving ``item``, ready to assign."""
    values = []
    for path, segments, expression in computed:
        context.ensure_time_left()
        try:
            value = expression.evaluate(item, out_of_time=context.out_of_time)
        except ExpressionTimeout:
            raise DeadlinePassed from None
        except ExpressionError as exc:
            raise NodeError(f"expression for '{path}' failed on item {index}: {exc}") from None
        problems = _placed(value, segments)
        if problems:
            raise NodeError(
                f"expression for '{path}' on item {index} cannot be stored: {problems[0]}"
            )
        context.charge_value(value)
        values.append((segments, value))
    return values


def _assign_in_place(
    result: Item, segments: list[str], value: Any, owned: dict[int, Item], context: RunContext
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

    def route(inputs: list[list[Item]], _context: RunContext) -> Outputs:
        routed: Outputs = {name: [] for name in outputs}
        for item in concat(inputs):
            routed["true" if matches(item) else "false"].append(item)
        return routed

    return route


def _build_filter(params: FilterParameters, outputs: tuple[str, ...]) -> Step:
    matches = _compile_conditions(params.conditions, params.combine)

    def keep(inputs: list[list[Item]], _context: RunContext) -> Outputs:
        return _with_empty(outputs, DEFAULT_OUTPUT, [i for i in concat(inputs) if matches(i)])

    return keep


def _build_switch(params: SwitchParameters, outputs: tuple[str, ...]) -> Step:
    cases = [
        (case.name, _compile_conditions(case.conditions, case.combine)) for case in params.cases
    ]

    def route(inputs: list[list[Item]], _context: RunContext) -> Outputs:
        routed: Outputs = {name: [] for name in outputs}
        for item in concat(inputs):
            target = next((name for name, matches in cases if matches(item)), None)
            routed[target or SWITCH_DEFAULT_OUTPUT].append(item)
        return routed

    return route


def _build_merge(params: MergeParameters, outputs: tuple[str, ...]) -> Step:
    if params.mode == "append":
        return _build_passthrough(params, outputs)
    assert params.key is not None  # the model requires a key for combine
    key_path = params.key.split(".")

    def combine(inputs: list[list[Item]], context: RunContext) -> Outputs:
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
    def wait(inputs: list[list[Item]], context: RunContext) -> Outputs:
        context.sleep(min(params.ms, context.limits.max_wait_ms) / 1000)
        return _with_empty(outputs, DEFAULT_OUTPUT, concat(inputs))

    return wait


def _build_stop_and_error(params: StopAndErrorParameters, _outputs: tuple[str, ...]) -> Step:
    def stop(_inputs: list[list[Item]], _context: RunContext) -> Outputs:
        raise NodeError(params.message)

    return stop


def _build_http_request(params: HttpRequestParameters, outputs: tuple[str, ...]) -> Step:
    host = (urlsplit(params.url).hostname or "").lower()
    headers = dict(params.headers)

    def call(inputs: list[list[Item]], context: RunContext) -> Outputs:
        # Refused before any call: the port must never see a disallowed host.
        if host not in context.allowed_hosts:
            raise NodeError(f"host '{host}' is not allowed: it is not in the HTTP allow-list")
        results = []
        for _item in concat(inputs):  # one request per incoming item, as in n8n
            left_ms = context.seconds_left() * 1000
            if left_ms <= 0:
                raise DeadlinePassed
            request = HttpRequest(
                method=params.method,
                url=params.url,
                headers=headers,
                body=params.body,
                timeout_ms=max(1, min(params.timeout_ms, math.ceil(left_ms))),
                credential=params.credential,
            )
            try:
                response = context.ports.http(request)
            except HttpFailure as exc:
                # Cut off by the execution's deadline: the execution timed out,
                # whatever the node's retry and on_error say.
                context.ensure_time_left()
                raise NodeError(f"{params.method} {params.url} failed: {exc.message}") from None
            context.ensure_time_left()
            if response.status >= 400:
                raise NodeError(
                    f"{params.method} {params.url} returned HTTP status {response.status}"
                )
            result = {
                "status": response.status,
                "headers": dict(response.headers),
                "body": response.body,
            }
            # What a server sends is refused, never stored raw, when the log
            # could not carry it (an integer past 64 bits, NaN, a NUL, too deep).
            problems = check_value(result)
            if problems:
                raise NodeError(
                    f"{params.method} {params.url} answered with a value that cannot be "
                    f"stored: {problems[0]}"
                )
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

    def evaluate(inputs: list[list[Item]], context: RunContext) -> Outputs:
        if expression is None:
            raise NodeError(compile_error)
        results = []
        for index, item in enumerate(concat(inputs)):
            context.ensure_time_left()
            try:
                # The expression watches the deadline at every step, too.
                value = expression.evaluate(item, out_of_time=context.out_of_time)
            except ExpressionTimeout:
                raise DeadlinePassed from None
            except ExpressionError as exc:
                raise NodeError(f"expression failed on item {index}: {exc}") from None
            problems = _placed(value, into)
            if problems:
                raise NodeError(
                    f"expression result on item {index} cannot be stored: {problems[0]}"
                )
            context.charge_value(value)
            results.append(_assign_charged(item, into, value, context))
        return _with_empty(outputs, DEFAULT_OUTPUT, results)

    return evaluate


STEP_BUILDERS: Final[Mapping[str, StepBuilder]] = {
    "manual_trigger": _build_trigger,
    # The hook route builds the request's item (``domain.webhooks.webhook_item``)
    # and passes it as the run's input, so the step is the same.
    "webhook_trigger": _build_trigger,
    # The scheduler passes the instant it fires ({"scheduled_at", "node_id"}) as the input.
    "schedule_trigger": _build_trigger,
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
if set(STEP_BUILDERS) != set(NODE_TYPES):  # pragma: no cover - a registry change
    raise RuntimeError("every registered node type needs an engine step")


def _with_empty(outputs: tuple[str, ...], name: str, items: list[Item]) -> Outputs:
    """All declared outputs, empty except ``name``."""
    return {output: items if output == name else [] for output in outputs}


# -- items: dotted paths -------------------------------------------------------------


def _placed(value: Any, segments: list[str]) -> list[ValueProblem]:
    """Where ``value`` at the path breaks the value contract (it sits under
    ``len(segments)`` objects of the item), empty if nowhere."""
    path = tuple(segments)
    too_deep = f"is nested deeper than {MAX_DEPTH} levels in the item"
    if len(segments) > MAX_DEPTH:
        return [ValueProblem(path, too_deep)]
    return [
        # Checked from the path down, so the depth it names is relative to it.
        ValueProblem(problem.path, too_deep) if "nested deeper" in problem.msg else problem
        for problem in check_value(value, path, max_depth=MAX_DEPTH - len(segments))
    ]


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


def _assign_charged(item: Item, segments: list[str], value: Any, context: RunContext) -> Item:
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


def json_type(value: Any) -> str:
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
