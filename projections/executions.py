"""The executions projection: one document per execution, and dashboard counters.

Both collections are kept by one projection (one tracking position), so the
counters always agree with the execution documents they count.

``executions`` documents (``_id`` = the execution id; ``created`` = when it
was queued, ``updated`` = its last event)::

    {id, workflow_id, workflow_version, workflow_revision, mode, status, input, version,
     trigger, retry_of, reused_nodes, retried_by, attempt, not_before,
     created_at, created_by, updated_at, started_at, finished_at, duration_ms,
     worker_id, error, output, output_truncated, canceled_by,
     node_runs: [{node_id, attempt, status, started_at, finished_at,
                  outputs, outputs_truncated, error, will_retry}],
     node_summary: {succeeded, failed},
     pinned, pinned_at, pinned_by, pinned_payload}   (only once it was pinned: absent
                                                      means not pinned)

An execution retention took (``Expired``) has no document: it is pruned,
and its counters stay (they count what ran, not what is kept).

``workflow_revision`` is the revision that ran (what clients call the
workflow's version); absent for executions queued before Queued recorded
it, so a rebuild gives the same documents as the live view.

``trigger`` is ``manual`` for a plain run (and for executions queued before
Queued recorded it) and ``retry`` for a retry, whose ``retry_of`` is the
execution it retries (else null) and ``reused_nodes`` the nodes whose
recorded outputs it took. The retried execution's ``retried_by`` lists its
retries' ids in log order; adding one changes that document's data and
position but not its ``version`` or ``updated`` (no event of its own).
``attempt`` counts the chain's runs (1 for a first run, and for executions
queued before attempts were counted); ``not_before`` is when a retry that
waits out its back-off may start (else null).

``execution_stats`` documents count executions: each execution is counted
once, in the bucket of its queued time, under its *current* status (a
transition moves it from the old status's counter to the new one's, so
totals by status are exact at any moment), and its duration (started ->
finished) is added when it finishes. An execution is counted in six such
documents: its hour, its day and its month (UTC), each for its
organisation's totals (``workflow_id`` null) and for its workflow::

    {workflow_id, granularity: "hour" | "day" | "month", bucket,
     executions, queued, running, succeeded, failed, canceled, crashed,
     by_trigger: {"<trigger>": n},
     duration_ms_sum, duration_count, duration_hist: {"<bucket index>": n}}

(``by_trigger`` counts executions by their trigger, when they are queued: a
trigger never changes, so the counts never move.)

``_id`` = ``org:granularity:workflow_id-or-*:bucket``; the document's
``created`` column is its bucket's start, so the summary selects counters by
an index range on it. Day and month documents exist so that a summary adds up
a bounded number of rows whatever its range: a year is ~12 months, the
partial months at its ends in days and the partial days in hours, rather
than one row per hour (or day) and workflow.

``COUNTERS_SQL`` computes the same documents in one statement from
execution rows (the documents, or rows a benchmark generates): a test holds
it equal to what the projection keeps incrementally.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from domain.execution import (
    EXECUTION_STATUSES,
    ExecutionCanceledEvent,
    ExecutionCrashedEvent,
    ExecutionExpiredEvent,
    ExecutionFailedEvent,
    ExecutionNodeFailedEvent,
    ExecutionNodeStartedEvent,
    ExecutionNodeSucceededEvent,
    ExecutionPinnedEvent,
    ExecutionQueuedEvent,
    ExecutionStartedEvent,
    ExecutionSucceededEvent,
    ExecutionUnpinnedEvent,
)
from projections.store import Document, ViewBatch, collection_table

EXECUTIONS = "executions"
STATS = "execution_stats"
GRANULARITIES: Final = ("hour", "day", "month")

# Events that change an execution's status, hence its counters.
_STATUS_EVENTS = (
    ExecutionStartedEvent,
    ExecutionSucceededEvent,
    ExecutionFailedEvent,
    ExecutionCanceledEvent,
    ExecutionCrashedEvent,
)
_FINISHING_EVENTS = {
    ExecutionSucceededEvent: "succeeded",
    ExecutionFailedEvent: "failed",
    ExecutionCanceledEvent: "canceled",
    ExecutionCrashedEvent: "crashed",
}

# -- the duration histogram ----------------------------------------------------------
#
# Log-scale buckets: index 0 holds durations under 1 ms; index i >= 1 holds
# [BASE^(i-1), BASE^i) ms. Any value estimated inside a bucket is within
# BASE - 1 = 5 % of every duration in that bucket, which bounds the error of
# percentiles read from summed histograms. The last bucket, from ~37.8 days,
# takes every longer duration too. Only non-empty buckets are stored.

DURATION_HIST_BASE: Final = 1.05
DURATION_HIST_LAST: Final = 450
_LOG_BASE = math.log(DURATION_HIST_BASE)


def duration_bucket(duration_ms: int) -> int:
    """The histogram bucket index of a duration."""
    if duration_ms < 1:
        return 0
    return min(DURATION_HIST_LAST, 1 + int(math.log(duration_ms) / _LOG_BASE))


def duration_bucket_bounds(index: int) -> tuple[float, float]:
    """``[low, high)`` in ms of a histogram bucket."""
    if index == 0:
        return 0.0, 1.0
    return DURATION_HIST_BASE ** (index - 1), DURATION_HIST_BASE**index


# -- buckets -------------------------------------------------------------------------


def bucket_start(at: datetime, granularity: str) -> datetime:
    """The UTC hour, day or month that ``at`` falls in."""
    hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if granularity == "hour":
        return hour
    day = hour.replace(hour=0)
    return day if granularity == "day" else day.replace(day=1)


def counter_id(org_id: str, granularity: str, workflow_id: str | None, bucket: datetime) -> str:
    return f"{org_id}:{granularity}:{workflow_id or '*'}:{bucket.isoformat()}"


@functools.lru_cache(maxsize=4096)  # an execution's status changes come close together
def _counter_keys(
    org_id: str, workflow_id: str, queued_at: datetime
) -> tuple[tuple[str, str, str | None, datetime], ...]:
    """(id, granularity, workflow_id or None for the org's totals, bucket) per counter."""
    keys = []
    for granularity in GRANULARITIES:
        bucket = bucket_start(queued_at, granularity)
        for scope in (None, workflow_id):
            keys.append(
                (counter_id(org_id, granularity, scope, bucket), granularity, scope, bucket)
            )
    return tuple(keys)


def _empty_counters(granularity: str, workflow_id: str | None, bucket: datetime) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "granularity": granularity,
        "bucket": bucket.isoformat(),
        "executions": 0,
        **dict.fromkeys(EXECUTION_STATUSES, 0),
        "by_trigger": {},
        "duration_ms_sum": 0,
        "duration_count": 0,
        "duration_hist": {},
    }


# -- the projection ------------------------------------------------------------------


class ExecutionsProjection:
    name: str = "executions"
    collections: tuple[str, ...] = (EXECUTIONS, STATS)
    write_once: tuple[str, ...] = ()
    topics: tuple[type, ...] = (
        ExecutionQueuedEvent,
        ExecutionStartedEvent,
        ExecutionNodeStartedEvent,
        ExecutionNodeSucceededEvent,
        ExecutionNodeFailedEvent,
        ExecutionSucceededEvent,
        ExecutionFailedEvent,
        ExecutionCanceledEvent,
        ExecutionCrashedEvent,
        ExecutionPinnedEvent,
        ExecutionUnpinnedEvent,
        ExecutionExpiredEvent,
    )

    def partition(self, originator_id: Any, state: bytes) -> str:
        """Counters are an organisation's, and a retry retries one of its own
        executions: every document changes with one organisation's events only
        (rebuilds load by this key in parallel). Read from the stored state's
        ``meta`` without decoding the event; Python's json for a state orjson
        refuses (NaN and the like, from before the value contract)."""
        try:
            parsed = orjson.loads(state)
        except orjson.JSONDecodeError:
            parsed = json.loads(state)
        return str(parsed["meta"]["org_id"])

    def prefetch(self, events: Sequence[Any], view: ViewBatch) -> None:
        # Executions queued in this batch are not stored yet: their counters
        # are known from the Queued event; the others' from their documents.
        by_id = [(str(e.originator_id), e) for e in events]
        queued_here = {i: e for i, e in by_id if isinstance(e, ExecutionQueuedEvent)}
        earlier = {i for i, _ in by_id if i not in queued_here}
        # A retry also adds itself to the document of the execution it retries.
        retried = {str(e.retry_of) for e in queued_here.values() if _retry_of(e) is not None}
        view.prefetch(EXECUTIONS, earlier | (retried - queued_here.keys()))
        counters: set[str] = set()
        for event in queued_here.values():
            keys = _counter_keys(event.meta["org_id"], str(event.workflow_id), event.timestamp)
            counters.update(key[0] for key in keys)
        changing = {i for i, e in by_id if i in earlier and isinstance(e, _STATUS_EVENTS)}
        for execution_id in changing:
            execution = view.get(EXECUTIONS, execution_id)
            if execution is not None:
                keys = _counter_keys(
                    execution.org_id, execution.data["workflow_id"], execution.created
                )
                counters.update(key[0] for key in keys)
        view.prefetch(STATS, counters)

    def apply(self, event: Any, position: int, view: ViewBatch) -> None:
        if isinstance(event, ExecutionQueuedEvent):
            execution = _queued_document(event, position)
            view.put(EXECUTIONS, execution)
            _count(view, execution, position, {"queued": 1}, trigger=execution.data["trigger"])
            if execution.data["retry_of"] is not None:
                _add_retry(view, execution.data["retry_of"], execution.id, position)
            return
        execution_id = str(event.originator_id)
        existing = view.get(EXECUTIONS, execution_id)
        if existing is None:
            raise LookupError(f"{type(event).__qualname__} for unknown execution {execution_id}")
        if isinstance(event, ExecutionExpiredEvent):
            # Retention pruned it. Its counters stay as they are: they count what
            # ran, not what is kept. A rebuild meets this event after the others
            # and prunes the document again, so it equals the live view.
            view.delete(EXECUTIONS, execution_id)
            return
        at = event.timestamp.isoformat()
        data = {**existing.data, "version": event.originator_version, "updated_at": at}
        if isinstance(event, ExecutionStartedEvent):
            data |= {"status": "running", "worker_id": event.worker_id, "started_at": at}
        elif isinstance(event, ExecutionNodeStartedEvent):
            data["node_runs"] = [*data["node_runs"], _node_run(event.node_id, event.attempt, at)]
        elif isinstance(event, ExecutionPinnedEvent | ExecutionUnpinnedEvent):
            data |= _pin_fields(event, at)
        elif isinstance(event, ExecutionNodeSucceededEvent | ExecutionNodeFailedEvent):
            data["node_runs"] = _finish_last_node_run(data["node_runs"], event, at)
            data["node_summary"] = _node_summary(data["node_runs"])
        else:
            data |= _finished_fields(event, data, at)
        updated = replace(
            existing,
            data=data,
            version=event.originator_version,
            position=position,
            updated=event.timestamp,
        )
        view.put(EXECUTIONS, updated)
        if data["status"] != existing.data["status"]:
            _count(
                view,
                updated,
                position,
                {existing.data["status"]: -1, data["status"]: 1},
                data["duration_ms"],
            )


def _retry_of(event: Any) -> Any:
    # Queued events recorded before retries existed have no retry_of.
    return getattr(event, "retry_of", None)


def _pin_fields(event: Any, at: str) -> dict[str, Any]:
    """``pinned``, who pinned it when, and ``pinned_payload``: the payload re-sealed
    under the pin key (``commands/pins.py``; null where payloads are in clear),
    what readers open once the day key is gone. All null again once unpinned."""
    if isinstance(event, ExecutionPinnedEvent):
        return {
            "pinned": True,
            "pinned_at": at,
            "pinned_by": event.meta["actor"],
            "pinned_payload": event.payload,
        }
    return {"pinned": False, "pinned_at": None, "pinned_by": None, "pinned_payload": None}


def _add_retry(view: ViewBatch, retried_id: str, retry_id: str, position: int) -> None:
    retried = view.get(EXECUTIONS, retried_id)
    if retried is None:
        # Retention pruned it between the retry's decision and its Queued event
        # (a retry of an expired execution is refused, but the retry does not
        # write to the retried stream, so the two can cross): nothing to link.
        return
    data = {**retried.data, "retried_by": [*retried.data.get("retried_by", []), retry_id]}
    view.put(EXECUTIONS, replace(retried, data=data, position=position))


def _queued_document(event: Any, position: int) -> Document:
    at = event.timestamp.isoformat()
    data: dict[str, Any] = {
        "id": str(event.originator_id),
        "workflow_id": str(event.workflow_id),
        "workflow_version": event.workflow_version,
        "mode": event.mode,
        "status": "queued",
        "input": event.input,
        "version": event.originator_version,
        "trigger": getattr(event, "trigger", "manual"),
        "retry_of": None if _retry_of(event) is None else str(event.retry_of),
        "reused_nodes": list(getattr(event, "reused_nodes", None) or []),
        "retried_by": [],
        "attempt": getattr(event, "attempt", 1),
        "not_before": _iso(getattr(event, "not_before", None)),
        "created_at": at,
        "created_by": event.meta["actor"],
        "updated_at": at,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
        "worker_id": None,
        "error": None,
        "output": None,
        "output_truncated": False,
        "canceled_by": None,
        "node_runs": [],
        "node_summary": {"succeeded": 0, "failed": 0},
    }
    revision = getattr(event, "workflow_revision", None)
    if revision is not None:
        data["workflow_revision"] = revision
    return Document(
        id=data["id"],
        org_id=event.meta["org_id"],
        data=data,
        version=event.originator_version,
        position=position,
        created=event.timestamp,
        updated=event.timestamp,
    )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _node_run(node_id: str, attempt: int, at: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "attempt": attempt,
        "status": "running",
        "started_at": at,
        "finished_at": None,
        "outputs": None,
        "outputs_truncated": False,
        "error": None,
        "will_retry": False,
    }


def _finish_last_node_run(runs: list[dict[str, Any]], event: Any, at: str) -> list[dict[str, Any]]:
    """The runs with the last one (the one running: the aggregate checked) finished."""
    if not runs:
        raise LookupError(f"{type(event).__qualname__} without a node run started")
    last = {**runs[-1], "finished_at": at}
    if isinstance(event, ExecutionNodeSucceededEvent):
        last |= {
            "status": "succeeded",
            "outputs": event.outputs,
            "outputs_truncated": event.outputs_truncated,
        }
    else:
        last |= {"status": "failed", "error": event.error, "will_retry": event.will_retry}
    return [*runs[:-1], last]


def _node_summary(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Node runs (attempts) by outcome."""
    return {
        outcome: sum(1 for run in runs if run["status"] == outcome)
        for outcome in ("succeeded", "failed")
    }


def _finished_fields(event: Any, data: dict[str, Any], at: str) -> dict[str, Any]:
    """What a finishing event sets: status, times, its own fields; a running node is cut off."""
    fields: dict[str, Any] = {
        "status": _FINISHING_EVENTS[type(event)],
        "finished_at": at,
        "duration_ms": _duration_ms(data["started_at"], event.timestamp),
    }
    if isinstance(event, ExecutionSucceededEvent):
        fields |= {"output": event.output, "output_truncated": event.output_truncated}
    elif isinstance(event, ExecutionFailedEvent):
        fields["error"] = event.error
    elif isinstance(event, ExecutionCrashedEvent):
        fields["error"] = event.reason
    else:
        fields["canceled_by"] = event.meta["actor"]
    runs = data["node_runs"]
    if runs and runs[-1]["status"] == "running":
        fields["node_runs"] = [
            *runs[:-1],
            {**runs[-1], "status": "interrupted", "finished_at": at},
        ]
    return fields


def _duration_ms(started_at: str | None, finished: datetime) -> int | None:
    """Whole milliseconds from start to finish; None if it never started (canceled
    while queued). Never negative, should two hosts' clocks disagree."""
    if started_at is None:
        return None
    elapsed = finished - datetime.fromisoformat(started_at)
    return max(0, elapsed // timedelta(milliseconds=1))


def _count(
    view: ViewBatch,
    execution: Document,
    position: int,
    moves: dict[str, int],
    duration_ms: int | None = None,
    trigger: str | None = None,
) -> None:
    """Apply status moves (status -> +1/-1), a finished run's duration, and a newly
    queued one's trigger, to its counters."""
    at = execution.updated
    for counter, granularity, workflow_id, bucket in _counter_keys(
        execution.org_id, execution.data["workflow_id"], execution.created
    ):
        existing = view.get(STATS, counter)
        data = (
            dict(existing.data)
            if existing is not None
            else _empty_counters(granularity, workflow_id, bucket)
        )
        for status, delta in moves.items():
            data[status] += delta
            data["executions"] += delta  # a move between statuses nets 0
        if trigger is not None:
            by_trigger = data.get("by_trigger", {})  # counters from before triggers: none
            data["by_trigger"] = {**by_trigger, trigger: by_trigger.get(trigger, 0) + 1}
        if duration_ms is not None:
            index = str(duration_bucket(duration_ms))
            data["duration_ms_sum"] += duration_ms
            data["duration_count"] += 1
            data["duration_hist"] = {
                **data["duration_hist"],
                index: data["duration_hist"].get(index, 0) + 1,
            }
        view.put(
            STATS,
            Document(
                id=counter,
                org_id=execution.org_id,
                data=data,
                version=existing.version + 1 if existing is not None else 1,
                position=position,
                created=bucket,
                updated=at,
            ),
        )


# -- the counters in one statement ----------------------------------------------------
#
# ``COUNTERS_SQL.format(source=...)`` selects, in the counter table's columns,
# every counter document the projection keeps for the executions ``source``
# selects, one row per execution with columns:
#
#     org_id, workflow_id (text), queued_at (timestamptz), status, trigger (text),
#     duration_ms (bigint, null unless it finished after starting),
#     counts (int: how many of its events moved a counter: Queued, Started, the finish),
#     counted_at (timestamptz: when it was last counted), position (bigint)
#
# ``EXECUTION_ROWS_SQL`` is that source over the execution documents. ``data``,
# ``_version`` and ``created`` are exactly the projection's; ``_position`` and
# ``updated`` are the latest of the counted executions' (the projection's are
# those of the last event counted, in log order).

_STATUS_COUNTS = ", ".join(
    f"count(*) FILTER (WHERE status = '{status}') AS {status}" for status in EXECUTION_STATUSES
)
_BUCKET_ISO = "to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')"
_GROUPING_SETS = (
    "GROUP BY org_id{extra}, GROUPING SETS ("
    "(workflow_id, hour), (hour), (workflow_id, day), (day), (workflow_id, month), (month))"
)
_KEY = (
    "CASE WHEN GROUPING(hour) = 0 THEN 'hour' WHEN GROUPING(day) = 0 THEN 'day' "
    "ELSE 'month' END AS granularity, "
    "CASE WHEN GROUPING(workflow_id) = 0 THEN workflow_id END AS workflow_id, "
    "CASE WHEN GROUPING(hour) = 0 THEN hour WHEN GROUPING(day) = 0 THEN day "
    "ELSE month END AS bucket"
)
_KEY_ID = (
    "org_id || ':' || granularity || ':' || coalesce(workflow_id, '*') || ':' || "
    + _BUCKET_ISO.format(column="bucket")
)

EXECUTION_ROWS_SQL: Final = f"""
SELECT org_id, data->>'workflow_id' AS workflow_id, created AS queued_at,
       data->>'status' AS status, data->>'trigger' AS trigger,
       (data->>'duration_ms')::bigint AS duration_ms,
       1 + (data->>'started_at' IS NOT NULL)::int + (data->>'finished_at' IS NOT NULL)::int
           AS counts,
       coalesce(data->>'finished_at', data->>'started_at', data->>'created_at')::timestamptz
           AS counted_at,
       _position AS position
FROM {collection_table(EXECUTIONS)}
"""

COUNTERS_SQL: Final = f"""
WITH e AS MATERIALIZED (
    SELECT org_id, workflow_id, status, trigger, duration_ms, counts, counted_at, position,
           date_trunc('hour', queued_at, 'UTC') AS hour,
           date_trunc('day', queued_at, 'UTC') AS day,
           date_trunc('month', queued_at, 'UTC') AS month,
           CASE WHEN duration_ms < 1 THEN 0 ELSE least(
               {DURATION_HIST_LAST},
               1 + floor(ln(duration_ms::float8) / ln({DURATION_HIST_BASE}::float8))::int
           ) END AS hist_index
    FROM ({{source}}) source
),
totals AS (
    SELECT *, {_KEY_ID} AS _id FROM (
        SELECT org_id, {_KEY}, count(*) AS executions,
               {_STATUS_COUNTS},
               coalesce(sum(duration_ms), 0) AS duration_ms_sum,
               count(duration_ms) AS duration_count,
               sum(counts) AS version, max(position) AS position, max(counted_at) AS updated
        FROM e {_GROUPING_SETS.format(extra="")}
    ) t
),
histograms AS (
    SELECT _id, jsonb_object_agg(hist_index::text, n) AS duration_hist FROM (
        SELECT *, {_KEY_ID} AS _id FROM (
            SELECT org_id, hist_index, {_KEY}, count(*) AS n
            FROM e WHERE duration_ms IS NOT NULL {_GROUPING_SETS.format(extra=", hist_index")}
        ) t
    ) h GROUP BY _id
),
triggers AS (
    SELECT _id, jsonb_object_agg(trigger, n) AS by_trigger FROM (
        SELECT *, {_KEY_ID} AS _id FROM (
            SELECT org_id, trigger, {_KEY}, count(*) AS n
            FROM e {_GROUPING_SETS.format(extra=", trigger")}
        ) t
    ) b GROUP BY _id
)
SELECT t._id, t.org_id,
       jsonb_build_object(
           'workflow_id', t.workflow_id, 'granularity', t.granularity,
           'bucket', {_BUCKET_ISO.format(column="t.bucket")}, 'executions', t.executions,
           {", ".join(f"'{s}', t.{s}" for s in EXECUTION_STATUSES)},
           'by_trigger', coalesce(b.by_trigger, '{{{{}}}}'),
           'duration_ms_sum', t.duration_ms_sum, 'duration_count', t.duration_count,
           'duration_hist', coalesce(h.duration_hist, '{{{{}}}}')
       ) AS data,
       t.version AS _version, t.position AS _position, t.bucket AS created, t.updated
FROM totals t LEFT JOIN histograms h USING (_id) LEFT JOIN triggers b USING (_id)
"""
