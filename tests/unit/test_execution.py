"""The Execution aggregate, in memory: no database."""

from __future__ import annotations

import functools
import pickle
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.errors import (
    ExecutionFinished,
    ExecutionInputInvalid,
    ExecutionNotRetryable,
    InvalidExecutionTransition,
    NodeRunNotStarted,
    NodeRunStillRunning,
    Problem,
)
from domain.execution import (
    Execution,
    ExecutionCanceledEvent,
    ExecutionCrashedEvent,
    ExecutionFailedEvent,
    ExecutionNodeFailedEvent,
    ExecutionNodeStartedEvent,
    ExecutionNodeSucceededEvent,
    ExecutionQueuedEvent,
    ExecutionStartedEvent,
    ExecutionSucceededEvent,
    truncate_items,
)
from domain.meta import EventMeta

META = EventMeta(org_id="acme", actor="apikey:1", correlation_id="req-1", idempotency_key="k")
WORKER = EventMeta(org_id="acme", actor="worker:w1", correlation_id="req-1", causation_id="e-1")


def _new(**overrides: Any) -> Execution:
    arguments: dict[str, Any] = {
        "execution_id": uuid.uuid4(),
        "workflow_id": uuid.uuid4(),
        "workflow_version": 3,
        "workflow_revision": 2,
        "mode": "async",
        "input": {"x": 1},
        "meta": META,
    }
    return Execution.create(**(arguments | overrides))


def _running() -> Execution:
    execution = _new()
    execution.start(worker_id="w1", meta=WORKER)
    return execution


def _replay(events: Sequence[Any]) -> Execution:
    state = functools.reduce(lambda aggregate, e: e.mutate(aggregate), events, None)
    assert isinstance(state, Execution)
    return state


def test_create_queues_with_who_and_what() -> None:
    workflow_id = uuid.uuid4()
    execution = _new(workflow_id=workflow_id, mode="sync", input=[{"a": 1}, {"a": 2}])
    [queued] = execution.collect_events()
    assert isinstance(queued, ExecutionQueuedEvent)
    assert type(queued).__qualname__ == "Execution.Queued"
    assert queued.meta == {
        "org_id": "acme",
        "actor": "apikey:1",
        "correlation_id": "req-1",
        "causation_id": None,
        "idempotency_key": "k",
    }
    assert execution.status == "queued" and not execution.is_finished
    assert (execution.org_id, execution.created_by) == ("acme", "apikey:1")
    assert (execution.workflow_id, execution.workflow_version) == (workflow_id, 3)
    assert execution.workflow_revision == 2
    assert (execution.mode, execution.input) == ("sync", [{"a": 1}, {"a": 2}])
    assert execution.queued_at == queued.timestamp
    assert execution.started_at is None and execution.finished_at is None
    assert execution.node_runs == [] and execution.output is None and execution.error is None


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"mode": "later"}, ValueError),
        ({"workflow_version": 0}, ValueError),
        ({"workflow_revision": 0}, ValueError),
        ({"workflow_revision": 4}, ValueError),
        ({"input": "text"}, ExecutionInputInvalid),
        ({"input": [{"a": 1}, 2]}, ExecutionInputInvalid),
        ({"input": None}, ExecutionInputInvalid),
    ],
)
def test_create_refuses_bad_arguments(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        _new(**overrides)


@pytest.mark.parametrize(
    ("value", "loc", "words"),
    [
        ({"s": "a\x00b"}, "input.s", "NUL"),
        ({"n": 2**64}, "input.n", "signed 64-bit range"),
        ([{"a": 1}, {"b": [1e20]}], "input[1].b[0]", "whole number"),
        ({"f": float("nan")}, "input.f", "not a finite number"),
        ({"\ud800": 1}, 'input["\\ud800"]', "lone surrogate"),
    ],
)
def test_create_refuses_input_the_log_cannot_carry(value: Any, loc: str, words: str) -> None:
    with pytest.raises(ExecutionInputInvalid) as caught:
        _new(input=value)
    [problem] = caught.value.problems
    assert problem.loc == loc and words in problem.msg
    assert loc in str(caught.value)


def test_start_records_the_worker_and_time() -> None:
    execution = _new()
    execution.start(worker_id="w1", meta=WORKER)
    [_, started] = execution.collect_events()
    assert isinstance(started, ExecutionStartedEvent)
    assert started.worker_id == "w1" and started.meta["actor"] == "worker:w1"
    assert execution.status == "running" and execution.worker_id == "w1"
    assert execution.started_at == started.timestamp


def test_start_only_from_queued() -> None:
    execution = _running()
    with pytest.raises(InvalidExecutionTransition) as err:
        execution.start(worker_id="w2", meta=WORKER)
    assert not isinstance(err.value, ExecutionFinished)
    assert (err.value.status, err.value.action) == ("running", "start")
    assert str(err.value) == f"cannot start execution {execution.id}: it is running"


def test_node_runs_are_recorded_with_their_times() -> None:
    execution = _running()
    execution.record_node_started(node_id="start", attempt=1, meta=WORKER)
    execution.record_node_succeeded(
        node_id="start",
        attempt=1,
        outputs={"main": [{"x": 1}]},
        outputs_truncated=False,
        meta=WORKER,
    )
    execution.record_node_started(node_id="call", attempt=1, meta=WORKER)
    execution.record_node_failed(
        node_id="call", attempt=1, error="HTTP 503", will_retry=True, meta=WORKER
    )
    execution.record_node_started(node_id="call", attempt=2, meta=WORKER)
    execution.record_node_succeeded(
        node_id="call", attempt=2, outputs={"main": []}, outputs_truncated=True, meta=WORKER
    )
    events = execution.collect_events()[2:]
    assert [type(e) for e in events] == [
        ExecutionNodeStartedEvent,
        ExecutionNodeSucceededEvent,
        ExecutionNodeStartedEvent,
        ExecutionNodeFailedEvent,
        ExecutionNodeStartedEvent,
        ExecutionNodeSucceededEvent,
    ]
    start_run, failed_run, retried_run = execution.node_runs
    assert start_run == {
        "node_id": "start",
        "attempt": 1,
        "status": "succeeded",
        "started_at": events[0].timestamp,
        "finished_at": events[1].timestamp,
        "outputs": {"main": [{"x": 1}]},
        "outputs_truncated": False,
        "error": None,
        "will_retry": False,
    }
    assert (failed_run["status"], failed_run["error"], failed_run["will_retry"]) == (
        "failed",
        "HTTP 503",
        True,
    )
    assert (retried_run["attempt"], retried_run["outputs_truncated"]) == (2, True)


def test_node_events_only_while_running() -> None:
    execution = _new()
    with pytest.raises(InvalidExecutionTransition):
        execution.record_node_started(node_id="start", attempt=1, meta=WORKER)


def test_node_result_must_match_the_running_node_attempt() -> None:
    execution = _running()
    with pytest.raises(NodeRunNotStarted):
        execution.record_node_failed(
            node_id="a", attempt=1, error="x", will_retry=False, meta=WORKER
        )
    execution.record_node_started(node_id="a", attempt=1, meta=WORKER)
    with pytest.raises(NodeRunNotStarted, match="node 'b' attempt 1 is not running"):
        execution.record_node_succeeded(
            node_id="b", attempt=1, outputs={}, outputs_truncated=False, meta=WORKER
        )
    with pytest.raises(NodeRunNotStarted):
        execution.record_node_failed(
            node_id="a", attempt=2, error="x", will_retry=False, meta=WORKER
        )
    execution.record_node_succeeded(
        node_id="a", attempt=1, outputs={}, outputs_truncated=False, meta=WORKER
    )
    with pytest.raises(NodeRunNotStarted):  # already finished
        execution.record_node_succeeded(
            node_id="a", attempt=1, outputs={}, outputs_truncated=False, meta=WORKER
        )


def test_one_node_attempt_runs_at_a_time() -> None:
    execution = _running()
    execution.record_node_started(node_id="a", attempt=1, meta=WORKER)
    with pytest.raises(NodeRunStillRunning, match="node 'a' attempt 1 is still running"):
        execution.record_node_started(node_id="b", attempt=1, meta=WORKER)


def test_node_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError):
        _running().record_node_started(node_id="a", attempt=0, meta=WORKER)


def test_succeed_records_output() -> None:
    execution = _running()
    execution.succeed(output={"end": [{"x": 1}]}, output_truncated=False, meta=WORKER)
    succeeded = execution.collect_events()[-1]
    assert isinstance(succeeded, ExecutionSucceededEvent)
    assert execution.status == "succeeded" and execution.is_finished
    assert execution.output == {"end": [{"x": 1}]} and not execution.output_truncated
    assert execution.finished_at == succeeded.timestamp


def test_fail_records_the_error_and_interrupts_a_running_node() -> None:
    execution = _running()
    execution.record_node_started(node_id="w", attempt=1, meta=WORKER)
    execution.fail(error="execution timed out after 1000 ms", meta=WORKER)
    failed = execution.collect_events()[-1]
    assert isinstance(failed, ExecutionFailedEvent)
    assert execution.status == "failed"
    assert execution.error == "execution timed out after 1000 ms"
    [run] = execution.node_runs
    assert run["status"] == "interrupted" and run["finished_at"] == failed.timestamp


def test_cancel_from_queued_or_running_records_who() -> None:
    for execution in (_new(), _running()):
        execution.cancel(meta=META)
        assert isinstance(execution.collect_events()[-1], ExecutionCanceledEvent)
        assert execution.status == "canceled" and execution.canceled_by == "apikey:1"
        assert execution.finished_at is not None


def test_crash_records_the_reason() -> None:
    execution = _running()
    execution.crash(reason="lease of worker w1 expired", meta=WORKER)
    assert isinstance(execution.collect_events()[-1], ExecutionCrashedEvent)
    assert execution.status == "crashed" and execution.error == "lease of worker w1 expired"


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda e: e.succeed(output={}, output_truncated=False, meta=WORKER), id="ok"),
        pytest.param(lambda e: e.fail(error="x", meta=WORKER), id="fail"),
        pytest.param(lambda e: e.crash(reason="x", meta=WORKER), id="crash"),
    ],
)
def test_worker_outcomes_need_a_running_execution(action: Callable[[Execution], None]) -> None:
    execution = _new()
    with pytest.raises(InvalidExecutionTransition) as err:
        action(execution)
    assert err.value.status == "queued"
    assert execution.collect_events()[-1].__class__ is ExecutionQueuedEvent


FINISHERS: dict[str, Callable[[Execution], None]] = {
    "succeeded": lambda e: e.succeed(output={}, output_truncated=False, meta=WORKER),
    "failed": lambda e: e.fail(error="boom", meta=WORKER),
    "canceled": lambda e: e.cancel(meta=META),
    "crashed": lambda e: e.crash(reason="lost", meta=WORKER),
}
COMMANDS: dict[str, Callable[[Execution], None]] = {
    "start": lambda e: e.start(worker_id="w2", meta=WORKER),
    "node_started": lambda e: e.record_node_started(node_id="a", attempt=1, meta=WORKER),
    "node_succeeded": lambda e: e.record_node_succeeded(
        node_id="a", attempt=1, outputs={}, outputs_truncated=False, meta=WORKER
    ),
    "node_failed": lambda e: e.record_node_failed(
        node_id="a", attempt=1, error="x", will_retry=False, meta=WORKER
    ),
    **FINISHERS,
}


@pytest.mark.parametrize("finished_status", list(FINISHERS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_finished_executions_accept_nothing(finished_status: str, command: str) -> None:
    execution = _running()
    FINISHERS[finished_status](execution)
    version = execution.version
    with pytest.raises(ExecutionFinished) as err:
        COMMANDS[command](execution)
    assert err.value.status == finished_status
    assert execution.version == version and execution.status == finished_status


def test_cancel_of_a_finished_execution_says_so() -> None:
    execution = _running()
    execution.succeed(output={}, output_truncated=False, meta=WORKER)
    with pytest.raises(ExecutionFinished) as err:
        execution.cancel(meta=META)
    assert err.value.execution_id == execution.id
    assert str(err.value) == (
        f"cannot cancel execution {execution.id}: it already finished (succeeded)"
    )


def test_errors_survive_pickling() -> None:
    errors: list[Exception] = [
        ExecutionFinished("e-1", "failed", "cancel"),
        InvalidExecutionTransition("e-1", "queued", "fail"),
        NodeRunNotStarted("e-1", "a", 2),
        NodeRunStillRunning("e-1", "a", 1),
        ExecutionInputInvalid("item 0 is not an object"),
        ExecutionInputInvalid("input.s: bad", [Problem("input.s", "bad")]),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


@pytest.mark.parametrize("ending", ["succeeded", "failed", "canceled", "crashed"])
def test_events_replay_to_the_same_state(ending: str) -> None:
    execution = _running()
    execution.record_node_started(node_id="start", attempt=1, meta=WORKER)
    execution.record_node_succeeded(
        node_id="start",
        attempt=1,
        outputs={"main": [{"x": 1}]},
        outputs_truncated=False,
        meta=WORKER,
    )
    execution.record_node_started(node_id="call", attempt=1, meta=WORKER)
    execution.record_node_failed(
        node_id="call", attempt=1, error="HTTP 503", will_retry=True, meta=WORKER
    )
    execution.record_node_started(node_id="call", attempt=2, meta=WORKER)
    FINISHERS[ending](execution)
    replayed = _replay(execution.collect_events())
    assert vars(replayed) == vars(execution)
    assert replayed.version == execution.version == 8
    assert replayed.queued_at == execution.queued_at


def test_replay_of_a_queued_execution() -> None:
    execution = _new(input=[{"a": 1}])
    replayed = _replay(execution.collect_events())
    assert vars(replayed) == vars(execution)


# -- truncate_items ---------------------------------------------------------------


def test_truncate_keeps_everything_that_fits() -> None:
    items = [{"a": 1}, {"b": "é"}]
    assert truncate_items(items, 1_000) == (items, False)
    exact = len('[{"a":1},{"b":"é"}]'.encode())
    assert truncate_items(items, exact) == (items, False)


def test_truncate_keeps_the_longest_prefix_that_fits() -> None:
    items = [{"a": 1}, {"b": 2}, {"c": 3}]
    assert truncate_items(items, len('[{"a":1},{"b":2}]')) == ([{"a": 1}, {"b": 2}], True)
    assert truncate_items(items, len('[{"a":1},{"b":2}]') - 1) == ([{"a": 1}], True)
    assert truncate_items(items, 3) == ([], True)
    assert truncate_items([], 2) == ([], False)


def test_truncate_returns_a_new_list() -> None:
    items = [{"a": 1}]
    kept, _ = truncate_items(items, 100)
    assert kept == items and kept is not items


# -- retries ----------------------------------------------------------------------


def _failed_after_one_node(truncated: bool = False) -> Execution:
    execution = _running()
    execution.record_node_started(node_id="start", attempt=1, meta=WORKER)
    execution.record_node_succeeded(
        node_id="start",
        attempt=1,
        outputs={"main": [{"x": 1}]},
        outputs_truncated=truncated,
        meta=WORKER,
    )
    execution.record_node_started(node_id="call", attempt=1, meta=WORKER)
    execution.record_node_failed(
        node_id="call", attempt=1, error="HTTP 503", will_retry=False, meta=WORKER
    )
    execution.fail(error="node 'call' failed", meta=WORKER)
    return execution


def test_a_plain_run_is_manual_and_retries_nothing() -> None:
    execution = _new()
    assert (execution.trigger, execution.retry_of, execution.reused_nodes) == ("manual", None, [])


def test_a_retry_records_what_it_retries_and_replays() -> None:
    old = _failed_after_one_node()
    retry = _new(
        workflow_id=old.workflow_id,
        workflow_version=old.workflow_version,
        retry_of=old,
        reused_nodes=("start",),
    )
    assert (retry.trigger, retry.retry_of, retry.reused_nodes) == ("retry", old.id, ["start"])
    assert (old.attempt, retry.attempt, retry.not_before) == (1, 2, None)
    replayed = _replay(retry.collect_events())
    assert vars(replayed) == vars(retry)
    assert old.retry_outputs() == {"start": ({"main": [{"x": 1}]}, False)}


def test_a_retry_of_a_retry_may_reuse_what_that_one_reused() -> None:
    first = _failed_after_one_node()
    second = _new(
        workflow_id=first.workflow_id,
        workflow_version=first.workflow_version,
        retry_of=first,
        reused_nodes=("start",),
    )
    second.start(worker_id="w1", meta=WORKER)
    second.fail(error="again", meta=WORKER)
    assert second.retry_outputs() == {}  # "start" ran in the first run only
    third = _new(
        workflow_id=first.workflow_id,
        workflow_version=first.workflow_version,
        retry_of=second,
        reused_nodes=("start",),
    )
    assert third.reused_nodes == ["start"]
    with pytest.raises(ValueError, match="call"):
        _new(
            workflow_id=first.workflow_id,
            workflow_version=first.workflow_version,
            retry_of=second,
            reused_nodes=("call",),
        )


def test_queued_events_from_before_retries_replay_as_manual() -> None:
    [queued] = _new().collect_events()
    for name in ("trigger", "retry_of", "reused_nodes", "attempt", "not_before"):
        del queued.__dict__[name]  # as recorded by an earlier release
    replayed = _replay([queued])
    assert (replayed.trigger, replayed.retry_of, replayed.reused_nodes) == ("manual", None, [])
    assert (replayed.attempt, replayed.not_before) == (1, None)


def test_each_retry_is_the_next_attempt_and_may_wait() -> None:
    first = _failed_after_one_node()
    due = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)
    second = _new(workflow_id=first.workflow_id, retry_of=first, not_before=due)
    assert (second.attempt, second.not_before) == (2, due)
    second.start(worker_id="w1", meta=WORKER)
    second.fail(error="again", meta=WORKER)
    third = _new(workflow_id=first.workflow_id, retry_of=second)
    assert third.attempt == 3
    replayed = _replay(second.collect_events())
    assert (replayed.attempt, replayed.not_before) == (2, due)
    with pytest.raises(ValueError, match="aware"):
        _new(workflow_id=first.workflow_id, retry_of=first, not_before=due.replace(tzinfo=None))


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_only_an_execution_that_ended_without_success_can_be_retried(status: str) -> None:
    old = _new()
    if status != "queued":
        old.start(worker_id="w1", meta=WORKER)
    if status == "succeeded":
        old.succeed(output={}, output_truncated=False, meta=WORKER)
    with pytest.raises(ExecutionNotRetryable, match=status):
        _new(workflow_id=old.workflow_id, retry_of=old)


@pytest.mark.parametrize("status", ["failed", "canceled", "crashed"])
def test_failed_canceled_and_crashed_executions_can_be_retried(status: str) -> None:
    old = _running()
    {
        "failed": lambda: old.fail(error="no", meta=WORKER),
        "canceled": lambda: old.cancel(meta=META),
        "crashed": lambda: old.crash(reason="lost", meta=WORKER),
    }[status]()
    assert _new(workflow_id=old.workflow_id, retry_of=old).retry_of == old.id


def test_reused_nodes_must_have_succeeded_in_the_same_version() -> None:
    old = _failed_after_one_node()
    same = {"workflow_id": old.workflow_id, "retry_of": old}
    with pytest.raises(ValueError, match="call"):
        _new(**same, reused_nodes=("start", "call"))
    with pytest.raises(ValueError, match="same workflow version"):
        _new(**same, workflow_version=4, workflow_revision=3, reused_nodes=("start",))
    with pytest.raises(ValueError, match="same workflow version"):
        _new(reused_nodes=("start",))
