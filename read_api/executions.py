"""Query endpoints over executions: lists, one execution, and the dashboard summary.

Lists (``/v1/executions``, ``/v1/workflows/{id}/executions``) are keyset
paged like ``/v1/workflows``, newest first by default. To keep pages
small their items leave out ``input``, ``output`` and ``node_runs`` (the
runs' outputs can be large); ``node_summary`` stays, and
``GET /v1/executions/{id}`` answers the whole document.

Every endpoint reads only the caller's organisation, and waits for the
executions projection for read-your-writes (``X-Min-Position``).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Query, Request
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from domain.execution import EXECUTION_STATUSES, EXECUTION_TRIGGERS
from infrastructure.auth import Permission, Principal
from infrastructure.cache import cached_json
from infrastructure.database import single_statement
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.executions import (
    DURATION_HIST_BASE,
    EXECUTIONS,
    STATS,
    bucket_start,
    duration_bucket_bounds,
)
from projections.filters import compile_filter
from projections.store import collection_table
from read_api.bounded import until_disconnected
from read_api.params import CursorKey, decode_cursor, encode_cursor, parse_instant
from read_api.payloads import opened_execution, opened_items, payload_keys
from read_api.queries import (
    Page,
    get_document,
    list_documents,
    parse_sort,
    projection_position,
)
from read_api.routes import (
    _MIN_POSITION_DOC,
    EXECUTION_PAGE_LINKS,
    EXECUTION_VIEWS,
    PROJECTION_HEADERS,
    SORT_PATTERN,
    Cursor,
    Limit,
    MinPosition,
    _json,
    _parse_filter,
    _views_position,
    position_header,
    stale_header,
)
from read_api.schemas import ExecutionDocument, ExecutionPage, Summary
from read_api.scope import cache_scope, visible_in

router = APIRouter(prefix="/v1", tags=["executions"])

# Left out of list items: potentially large, and in the single execution's answer.
LIST_OMITS = ("input", "output", "node_runs", "pinned_payload")

Filter = Annotated[
    str | None,
    Query(
        description='Mongo-style JSON filter over execution documents, e.g. {"status": "failed"} '
        'or {"workflow_id": "…", "created_at": {"$gte": "2026-01-01T00:00:00Z"}}.'
    ),
]
Sort = Annotated[
    str | None,
    Query(
        description="Comma-separated fields, '-' for descending; default -created_at.",
        json_schema_extra={"pattern": SORT_PATTERN},  # parse_sort answers 400
    ),
]


async def _reader(request: Request) -> Principal:
    return await authorize(request, Permission.READ_WORKFLOWS)


def _list_item(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in LIST_OMITS}


async def _page(
    request: Request,
    principal: Principal,
    filter_: Any,
    sort: str | None,
    limit: int,
    cursor: str | None,
    position: int,
) -> Response:
    page = await until_disconnected(
        request,
        list_documents(
            request.app.state.read_engine,
            EXECUTIONS,
            principal.org_id,
            filter_=filter_,
            sort=parse_sort(sort, "-created_at"),
            limit=limit,
            cursor=cursor,
            project_id=principal.project_id,
        ),
    )
    items = await opened_items(
        [_list_item(item) for item in page.items], principal.org_id, payload_keys(request)
    )
    return _json({"items": items, "next_cursor": page.next_cursor}, position)


@router.get(
    "/executions",
    summary="List executions, newest first (Mongo-style filter, keyset pagination)",
    response_model=ExecutionPage,
    responses={
        200: {"headers": PROJECTION_HEADERS, "links": EXECUTION_PAGE_LINKS},
        **problems(400),
    },
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def list_executions(
    request: Request,
    filter: Filter = None,
    sort: Sort = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    min_position: MinPosition = None,
) -> Response:
    principal = await _reader(request)
    position = await _views_position(request, min_position, EXECUTION_VIEWS)
    return await _page(request, principal, _parse_filter(filter), sort, limit, cursor, position)


@router.get(
    "/executions/{execution_id}",
    summary="One execution with its node runs",
    response_model=ExecutionDocument,
    responses={200: {"headers": PROJECTION_HEADERS}, **problems(400, 404)},
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def get_execution(
    execution_id: UUID, request: Request, min_position: MinPosition = None
) -> Response:
    principal = await _reader(request)
    position = await _views_position(request, min_position, EXECUTION_VIEWS)
    document = await get_document(
        request.app.state.read_engine,
        EXECUTIONS,
        principal.org_id,
        str(execution_id),
        principal.project_id,
    )
    if document is None:
        raise Problem(
            404,
            f"execution {execution_id} not found",
            type_=problem_type("not-found"),
            headers=position_header(position),
        )
    headers = {"ETag": f'"{document["version"]}"', **stale_header(document)}
    # Opened after stale_header: it reads the stored document's own fields.
    document = await opened_execution(document, principal.org_id, payload_keys(request))
    return _json(document, position, headers)


@router.get(
    "/workflows/{workflow_id}/executions",
    summary="A workflow's executions, newest first (keyset pagination)",
    description="Newest first only (for other orders, filter /v1/executions on workflow_id). "
    "A workflow the views do not know simply has no executions listed.",
    response_model=ExecutionPage,
    responses={200: {"headers": PROJECTION_HEADERS}, **problems(400)},
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def list_workflow_executions(
    workflow_id: UUID,
    request: Request,
    filter: Filter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    min_position: MinPosition = None,
) -> Response:
    principal = await _reader(request)
    position = await _views_position(request, min_position, EXECUTION_VIEWS)
    page = await until_disconnected(
        request,
        workflow_executions_page(
            request.app.state.read_engine,
            principal.org_id,
            str(workflow_id),
            filter_=_parse_filter(filter),
            limit=limit,
            cursor=cursor,
            project_id=principal.project_id,
        ),
    )
    items = await opened_items(
        [_list_item(item) for item in page.items],
        principal.org_id,
        payload_keys(request),
    )
    return _json({"items": items, "next_cursor": page.next_cursor}, position)


async def workflow_executions_page(
    engine: AsyncEngine,
    org_id: str,
    workflow_id: str,
    *,
    filter_: Any,
    limit: int,
    cursor: str | None,
    project_id: UUID | None = None,
) -> Page:
    """One page of a workflow's executions, newest first, keyset-paginated on (created, _id).

    Its own query rather than ``list_documents`` with a workflow_id filter: a
    filter compiles to containment (``data @> ...``), which only the GIN index
    serves, so a busy workflow's first page would gather and sort all its
    executions; ``data->>'workflow_id' = ...`` walks the (org, workflow,
    created) index newest first and stops after one page.
    """
    fragment = compile_filter(filter_, param_prefix="f")
    in_scope, scope_params = visible_in(EXECUTIONS, project_id, org_id)
    where = ["org_id = :org", "data->>'workflow_id' = :workflow", in_scope, f"({fragment.sql})"]
    params: dict[str, Any] = {
        "org": org_id,
        **scope_params,
        "workflow": workflow_id,
        **fragment.params,
        "limit": limit + 1,
    }
    if cursor is not None:
        (params["c_created"],), params["c_id"] = decode_cursor(cursor, [CursorKey.INSTANT])
        # The first term bounds the index range; the second is the keyset's tie-break.
        where += ["created <= :c_created", "(created < :c_created OR _id > :c_id)"]
    query = (
        f"SELECT _id, data, created FROM {collection_table(EXECUTIONS)} "
        f"WHERE {' AND '.join(where)} ORDER BY created DESC, _id ASC LIMIT :limit"
    )
    async with single_statement(engine) as conn:
        rows = (await conn.execute(text(query), params)).all()
    next_cursor = (
        encode_cursor([rows[limit - 1].created.isoformat(), rows[limit - 1]._id])
        if len(rows) > limit
        else None
    )
    return Page(items=[row.data for row in rows[:limit]], next_cursor=next_cursor)


# -- the dashboard summary -------------------------------------------------------------

DEFAULT_PERIOD = timedelta(hours=24)
MAX_PERIOD = timedelta(days=400)
HOURLY_SERIES_UP_TO = timedelta(hours=48)
# Far enough inside datetime's range that the previous period and bucket rounding never overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
TOP_FAILING = 5
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _parse_instant(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    value = parse_instant(name, raw)
    if not EARLIEST <= value < LATEST:
        raise _bad_period(f"{name} must lie between {EARLIEST.date()} and {LATEST.date()}")
    return value.astimezone(UTC)


def _bad_period(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("bad-period"))


@dataclass(frozen=True)
class Period:
    """``[since, until)``; it covers the hour buckets that *start* within it."""

    since: datetime
    until: datetime

    @classmethod
    def parse(cls, since: str | None, until: str | None, now: datetime) -> Period:
        end = _parse_instant("until", until) or now
        start = _parse_instant("since", since) or end - DEFAULT_PERIOD
        if start >= end:
            raise _bad_period(
                f"since ({start.isoformat()}) must be before until ({end.isoformat()})"
            )
        if end - start > MAX_PERIOD:
            raise _bad_period(f"the period from since to until is over {MAX_PERIOD.days} days")
        return cls(start, end)

    @property
    def previous(self) -> Period:
        return Period(self.since - (self.until - self.since), self.since)

    @property
    def series_granularity(self) -> str:
        return "hour" if self.until - self.since <= HOURLY_SERIES_UP_TO else "day"

    def hours(self) -> tuple[datetime, datetime]:
        """``[first, end)`` of the hour buckets starting in the period."""
        return _ceil(self.since, "hour"), _ceil(self.until, "hour")

    def pieces(self, coarsest: str) -> list[tuple[str, datetime, datetime]]:
        """(granularity, from, to): ranges of counter buckets that add up to the period.

        Whole buckets of ``coarsest`` (hour, day or month) inside the period
        are read from its counters, the partial ones at either end from the
        next finer, down to hours: a year is ~12 month rows, up to ~60 day
        rows and up to 46 hour rows per scope, however many executions.
        """
        return _cover(*self.hours(), coarsest)

    def as_json(self) -> dict[str, str]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}


_FINER = {"month": "day", "day": "hour"}


def _cover(
    first: datetime, end: datetime, granularity: str
) -> list[tuple[str, datetime, datetime]]:
    """Buckets of ``granularity`` or finer that add up to the hours ``[first, end)``."""
    if first >= end:
        return []
    if granularity == "hour":
        return [("hour", first, end)]
    inner_first, inner_end = _ceil(first, granularity), bucket_start(end, granularity)
    finer = _FINER[granularity]
    if inner_first >= inner_end:
        return _cover(first, end, finer)
    return [
        (granularity, inner_first, inner_end),
        *_cover(first, inner_first, finer),
        *_cover(inner_end, end, finer),
    ]


def _ceil(at: datetime, granularity: str) -> datetime:
    """The first bucket of ``granularity`` starting at or after ``at``."""
    start = bucket_start(at, granularity)
    if start == at:
        return start
    if granularity == "hour":
        return start + HOUR
    if granularity == "day":
        return start + DAY
    return bucket_start(start + timedelta(days=32), "month")


def duration_percentile(histogram: dict[int, int], percent: float) -> float | None:
    """The ``percent``-th percentile (nearest rank) of the durations in ``histogram``.

    Estimated inside the bucket that holds it, by log-linear interpolation on
    the rank: the bucket also holds the true value, so the estimate is within
    ``DURATION_HIST_BASE - 1`` (5 %) of it; durations under 1 ms read as 0.
    """
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = percent / 100 * total
    below = 0
    for index in sorted(histogram):
        count = histogram[index]
        if below + count >= rank:
            if index == 0:
                return 0.0
            low, _ = duration_bucket_bounds(index)
            return float(low * DURATION_HIST_BASE ** ((rank - below) / count))
        below += count
    raise AssertionError("unreachable: the ranks add up to the total")


# The counter fields the summary reads, as typed columns. A month counter's
# document holds a histogram of ~100-200 buckets; stored compressed (as it
# was before migration 0022, until next written), ``data->>'x'`` would
# decompress the whole document again for every field it reads.
# ``jsonb_to_record`` decodes each document once.
_COUNTER_COLUMNS = ", ".join(
    [
        *(f"{status} bigint" for status in EXECUTION_STATUSES),
        "executions bigint",
        "duration_ms_sum bigint",
        "duration_count bigint",
        "duration_hist jsonb",
        "by_trigger jsonb",
    ]
)
_FAILURES = "sum(failed) + sum(crashed)"
# Of one workflow's counters (``r``) in the top failing part.
_FINISHED = " + ".join(f"sum(r.{s})" for s in ("succeeded", "failed", "canceled", "crashed"))

# A per-workflow counter that counts a failure (failed or crashed runs); the
# partial index doc_execution_stats_failing (migration 0013) has this predicate
# word for word. Only these can rank a workflow among the top failing ones.
FAILING_COUNTER: Final = (
    "data->>'workflow_id' IS NOT NULL "
    "AND (data->>'failed')::bigint + (data->>'crashed')::bigint > 0"
)

# Two statements, run at once on two connections (each is single-threaded in
# PostgreSQL: side by side, a year's summary takes the longer of the two, not
# their sum). {values}, {scope} (the counters of the summary's scope: the
# org's totals, or one workflow's, or a project's workflows') and {workflows}
# (the per-workflow counters of that scope) are fixed fragments of this
# module, never request text. Counters are selected by index ranges (see
# migration 0005).
#
# The figures: the counters of both periods ("current", "previous"), summed
# three ways.
_FIGURES_SQL = f"""
WITH pieces (period, granularity, starts, ends) AS (VALUES {{values}}),
counters AS (
    SELECT p.period, r.*
    FROM pieces p
    CROSS JOIN LATERAL (
        SELECT data FROM {collection_table(STATS)}
        WHERE org_id = :org AND data->>'granularity' = p.granularity AND {{scope}}
          AND created >= p.starts AND created < p.ends
    ) c
    CROSS JOIN LATERAL jsonb_to_record(c.data) AS r({_COUNTER_COLUMNS})
)
SELECT
    (SELECT coalesce(jsonb_agg(t), '[]') FROM (
        SELECT period, {", ".join(f"sum({s}) AS {s}" for s in EXECUTION_STATUSES)},
               sum(duration_ms_sum) AS duration_ms_sum,
               sum(duration_count) AS duration_count
        FROM counters GROUP BY period
    ) t) AS totals,
    (SELECT coalesce(jsonb_agg(h), '[]') FROM (
        SELECT period, jsonb_object_agg(bucket, count) AS buckets FROM (
            SELECT c.period, b.key AS bucket, sum(b.value::bigint) AS count
            FROM counters c CROSS JOIN LATERAL jsonb_each_text(c.duration_hist) b
            GROUP BY 1, 2
        ) b GROUP BY 1
    ) h) AS histograms,
    (SELECT coalesce(jsonb_agg(b), '[]') FROM (
        SELECT c.period, t.key AS trigger, sum(t.value::bigint) AS count
        FROM counters c CROSS JOIN LATERAL jsonb_each_text(c.by_trigger) t
        GROUP BY 1, 2
    ) b) AS by_trigger
"""

# The series and the top failing workflows. The series reads the pieces
# labelled "series": the current period's day (or hour) counters, since
# figures over months read month counters. The top failing workflows are
# those of the current period's pieces ("current"): ranked from the
# per-workflow counters that count a failure (migration 0013's partial
# index), then only those few workflows' counters summed for their totals.
_SERIES_AND_FAILING_SQL = f"""
WITH pieces (period, granularity, starts, ends) AS (VALUES {{values}}),
series_counters AS (
    SELECT c.created, r.executions, r.failed, r.crashed
    FROM pieces p
    CROSS JOIN LATERAL (
        SELECT created, data FROM {collection_table(STATS)}
        WHERE org_id = :org AND data->>'granularity' = p.granularity AND {{scope}}
          AND created >= p.starts AND created < p.ends
    ) c
    CROSS JOIN LATERAL jsonb_to_record(c.data)
        AS r(executions bigint, failed bigint, crashed bigint)
    WHERE p.period = 'series'
),
failing_counters AS (
    SELECT r.workflow_id, r.failed, r.crashed
    FROM pieces p
    CROSS JOIN LATERAL (
        SELECT data FROM {collection_table(STATS)}
        WHERE org_id = :org AND data->>'granularity' = p.granularity AND {{workflows}}
          AND {FAILING_COUNTER}
          AND created >= p.starts AND created < p.ends
    ) c
    CROSS JOIN LATERAL jsonb_to_record(c.data)
        AS r(workflow_id text, failed bigint, crashed bigint)
    WHERE p.period = 'current'
),
top_failing AS (
    SELECT workflow_id, {_FAILURES} AS failed
    FROM failing_counters GROUP BY 1
    ORDER BY failed DESC, workflow_id LIMIT {TOP_FAILING}
)
SELECT
    (SELECT coalesce(jsonb_agg(s), '[]') FROM (
        SELECT extract(epoch FROM date_trunc(:unit, created, 'UTC'))::bigint AS bucket,
               sum(executions) AS executions, {_FAILURES} AS failed
        FROM series_counters GROUP BY 1
    ) s) AS series,
    (SELECT coalesce(jsonb_agg(w), '[]') FROM (
        SELECT t.workflow_id, t.failed, c.executions, c.finished
        FROM top_failing t
        CROSS JOIN LATERAL (
            SELECT sum(r.executions) AS executions, {_FINISHED} AS finished
            FROM pieces p
            CROSS JOIN LATERAL (
                SELECT data FROM {collection_table(STATS)}
                WHERE org_id = :org AND data->>'granularity' = p.granularity
                  AND data->>'workflow_id' = t.workflow_id
                  AND created >= p.starts AND created < p.ends
            ) d
            CROSS JOIN LATERAL jsonb_to_record(d.data) AS r(
                executions bigint, succeeded bigint, failed bigint, canceled bigint,
                crashed bigint
            )
            WHERE p.period = 'current'
        ) c
    ) w) AS top_failing
"""


@functools.lru_cache(maxsize=512)
def _statement(template: str, values: str, scope: str, workflows: str) -> TextClause:
    """One of the summary's statements for one shape (how many pieces, which scope).

    Built once per shape: parsing the statement's text for its parameters
    was a tenth of a summary's time in Python."""
    return text(template.format(values=values, scope=scope, workflows=workflows))


def _pieces_values(
    pieces: list[tuple[str, str, datetime, datetime]], params: dict[str, Any]
) -> str:
    """The VALUES rows of ``pieces`` (period, granularity, starts, ends); adds their parameters."""
    values = []
    for i, (label, granularity, starts, ends) in enumerate(pieces):
        values.append(
            f"(CAST(:p{i} AS text), CAST(:g{i} AS text), "
            f"CAST(:s{i} AS timestamptz), CAST(:e{i} AS timestamptz))"
        )
        params |= {f"p{i}": label, f"g{i}": granularity, f"s{i}": starts, f"e{i}": ends}
    # No pieces (both periods within one hour: no bucket starts in them): one that matches none.
    return ", ".join(values) or "(NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz)"


def _failure_rate(failed: int, finished: int) -> float | None:
    return failed / finished if finished else None


def _figures(
    totals_row: dict[str, Any] | None, histogram: dict[int, int], by_trigger: dict[str, int]
) -> dict[str, Any]:
    """totals, by_trigger, failure_rate and duration_ms of one period."""
    totals: dict[str, int] = {
        status: int((totals_row or {}).get(status) or 0) for status in EXECUTION_STATUSES
    }
    totals["all"] = sum(totals.values())
    finished = totals["succeeded"] + totals["failed"] + totals["canceled"] + totals["crashed"]
    timed = int((totals_row or {}).get("duration_count") or 0)
    total_ms = int((totals_row or {}).get("duration_ms_sum") or 0)
    durations = {
        f"p{p}": None if (v := duration_percentile(histogram, p)) is None else round(v, 1)
        for p in (50, 95, 99)
    }
    durations["mean"] = round(total_ms / timed, 1) if timed else None
    return {
        "totals": totals,
        "by_trigger": dict.fromkeys(EXECUTION_TRIGGERS, 0) | by_trigger,
        "failure_rate": _failure_rate(totals["failed"] + totals["crashed"], finished),
        "duration_ms": durations,
    }


def _series(period: Period, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per hour (or day) of the period, empty ones included, oldest first.

    ``rows``: the buckets that have counters, each at its start in seconds since the epoch.
    """
    first, end = period.hours()
    step = HOUR if period.series_granularity == "hour" else DAY
    start = bucket_start(first, period.series_granularity)
    counts = {int(row["bucket"]): row for row in rows}
    start_s, step_s = int(start.timestamp()), int(step.total_seconds())
    series = []
    for i in range(-(-(end - start) // step)):
        row = counts.get(start_s + i * step_s, {})
        series.append(
            {
                "bucket": (start + i * step).isoformat(),
                "executions": int(row.get("executions") or 0),
                "failed": int(row.get("failed") or 0),
            }
        )
    return series


async def load_summary(
    engine: AsyncEngine,
    org_id: str,
    period: Period,
    workflow_id: str | None = None,
    project_id: UUID | None = None,
) -> dict[str, Any]:
    """The dashboard summary of ``period`` (and the one before it), from the counters.

    ``project_id``: a project's figures are the sum of the per-workflow
    counters of the workflows it sees (the organisation's totals hold every
    workflow's runs, so a scoped summary never reads them).
    """
    unit = period.series_granularity
    coarsest = "month" if unit == "day" else "hour"
    current = [("current", *piece) for piece in period.pieces(coarsest)]
    previous = [("previous", *piece) for piece in period.previous.pieces(coarsest)]
    series = [("series", *piece) for piece in period.pieces(unit)]
    if workflow_id is None and project_id is None:
        scope, workflows = "data->>'workflow_id' IS NULL", "data->>'workflow_id' IS NOT NULL"
        scope_params: dict[str, Any] = {}
    else:
        in_scope, scope_params = visible_in(STATS, project_id, org_id)
        if workflow_id is None:
            scope = f"data->>'workflow_id' IS NOT NULL AND {in_scope}"
        else:
            scope = f"data->>'workflow_id' = :workflow AND {in_scope}"
            scope_params = {"workflow": workflow_id, **scope_params}
        workflows = scope
    figures_params: dict[str, Any] = {"org": org_id, **scope_params}
    figures = _statement(
        _FIGURES_SQL, _pieces_values(current + previous, figures_params), scope, workflows
    )
    series_params: dict[str, Any] = {"org": org_id, "unit": unit, **scope_params}
    series_and_failing = _statement(
        _SERIES_AND_FAILING_SQL, _pieces_values(current + series, series_params), scope, workflows
    )

    async def one(statement: TextClause, values: dict[str, Any]) -> Any:
        async with single_statement(engine) as conn:
            return (await conn.execute(statement, values)).one()

    # Concurrently: both read counters of at least the position the caller read.
    row, other = await asyncio.gather(
        one(figures, figures_params), one(series_and_failing, series_params)
    )
    totals = {r["period"]: r for r in row.totals}
    histograms: dict[str, dict[int, int]] = {"current": {}, "previous": {}}
    for h in row.histograms:  # one object per period: {bucket: count}
        histograms[h["period"]] = {int(b): int(count) for b, count in h["buckets"].items()}
    by_trigger: dict[str, dict[str, int]] = {"current": {}, "previous": {}}
    for b in row.by_trigger:
        by_trigger[b["period"]][b["trigger"]] = int(b["count"])
    now = _figures(totals.get("current"), histograms["current"], by_trigger["current"])
    before = _figures(totals.get("previous"), histograms["previous"], by_trigger["previous"])
    top_failing = [
        {
            "workflow_id": w["workflow_id"],
            "failed": int(w["failed"]),
            "executions": int(w["executions"]),
            "failure_rate": _failure_rate(int(w["failed"]), int(w["finished"])),
        }
        for w in sorted(other.top_failing, key=lambda w: (-int(w["failed"]), w["workflow_id"]))
    ]
    return {
        "period": period.as_json(),
        "workflow_id": workflow_id,
        **now,
        "series_granularity": period.series_granularity,
        "series": _series(period, other.series),
        "top_failing_workflows": top_failing,
        "previous": {"period": period.previous.as_json(), **before},
    }


@router.get(
    "/dashboards/summary",
    summary="Execution figures for a period, beside the period before it",
    response_model=Summary,
    responses={200: {"headers": PROJECTION_HEADERS}, **problems(400)},
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def dashboard_summary(
    request: Request,
    since: Annotated[
        str | None,
        Query(
            description="ISO 8601 with an offset, e.g. 2026-01-30T00:00:00Z; default until - 24 h.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(
            description="ISO 8601 with an offset; default now.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    workflow_id: Annotated[UUID | None, Query(description="Only this workflow.")] = None,
    min_position: MinPosition = None,
) -> Response:
    """Counts by status, failure rate, duration percentiles, a series, the top failing
    workflows, and the same figures for the previous period of equal length.

    - An execution counts once, under its current status, in the period where
      its queued hour (UTC) *starts*: figures have hour resolution, and
      consecutive periods neither overlap nor leave gaps.
    - ``failure_rate`` = (failed + crashed) / finished (succeeded, failed,
      canceled, crashed); null when none finished. ``failed`` in ``series`` and
      in ``top_failing_workflows`` likewise counts failed + crashed runs.
    - ``duration_ms`` (started -> finished, of finished runs that started):
      p50/p95/p99 from log-scale histograms, each within ±5 % of the exact
      nearest-rank percentile (1 ms resolution); ``mean`` is exact.
    - ``series``: per hour for periods up to 48 h, else per UTC day (the first
      and last days may be partial).
    - Reads pre-aggregated counters only (two SQL statements at once), never executions.
    """
    principal = await _reader(request)
    period = Period.parse(since, until, datetime.now(UTC))
    position = await _views_position(request, min_position, EXECUTION_VIEWS)

    async def summarise() -> dict[str, Any]:
        workflow = None if workflow_id is None else str(workflow_id)
        return await load_summary(
            request.app.state.read_engine, principal.org_id, period, workflow, principal.project_id
        )

    # A default period ends "now": key on the hour buckets it covers, so a hit
    # holds exactly the figures a miss would compute.
    buckets = (period.hours(), period.previous.hours(), period.series_granularity)
    membership = await scoped_membership(request, principal.project_id)
    return await cached_json(
        request,
        cache_scope(principal.org_id, principal.project_id),
        position,
        summarise,
        buckets,
        *membership,
    )


async def scoped_membership(request: Request, project_id: UUID | None) -> tuple[int, ...]:
    """For a scoped answer's cache key: how far the workflows view (membership) is.

    A move or share changes what a project sees without moving the
    executions view: the key must change with it.
    """
    if project_id is None:
        return ()
    return (await projection_position(request.app.state.read_engine, ["workflows"]),)
