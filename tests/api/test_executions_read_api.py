"""The executions read API over real HTTP, with the executions projector running live."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands import WorkflowApplication
from projections.executions import bucket_start
from read_api.executions import Period
from tests.projections.test_executions_projection import (
    BASE,
    Clock,
    drive,
    meta,
    queue,
    save,
    stamped_by,
)

pytestmark = pytest.mark.usefixtures("live_executions_projector")


@pytest.fixture
def clock() -> Iterator[Clock]:
    with stamped_by(Clock()) as clock:
        yield clock


def run(
    app: WorkflowApplication,
    org: str,
    clock: Clock,
    at: datetime,
    outcome: str = "succeeded",
    workflow_id: uuid.UUID | None = None,
    duration_ms: int = 1000,
) -> tuple[str, int]:
    """An execution queued at ``at`` and taken to ``outcome``; returns (id, position)."""
    clock.now = at
    execution = queue(org, workflow_id or uuid.uuid4())
    position = save(app, execution)
    drive(execution, outcome, clock, org, duration_ms)
    if outcome != "queued":
        position = save(app, execution)
    return str(execution.id), position


def fresh(position: int) -> dict[str, str]:
    return {"X-Min-Position": str(position)}


def test_list_pages_newest_first_without_large_fields(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
) -> None:
    outcomes = ["succeeded", "failed", "queued", "running", "canceled_queued", "crashed", "failed"]
    made = [
        run(workflow_app, org, clock, BASE + timedelta(minutes=10 * i), outcome)
        for i, outcome in enumerate(outcomes)
    ]
    headers = {**owner, **fresh(max(position for _, position in made))}
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = client.get("/v1/executions", params=params, headers=headers)
        assert response.status_code == 200, response.text
        assert int(response.headers["x-projection-position"]) >= made[-1][1]
        page = response.json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [item["id"] for item in seen] == [execution_id for execution_id, _ in reversed(made)]
    for item in seen:
        assert not {"input", "output", "node_runs"} & set(item)
        assert {"status", "workflow_id", "created_at", "node_summary", "duration_ms"} <= set(item)

    failed = client.get(
        "/v1/executions",
        params={
            "filter": json.dumps({"status": {"$in": ["failed", "crashed"]}}),
            "sort": "created_at",
        },
        headers=headers,
    ).json()
    assert [item["id"] for item in failed["items"]] == [made[1][0], made[5][0], made[6][0]]


def test_one_execution_with_its_node_runs(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
) -> None:
    execution = queue(org, uuid.uuid4(), input={"name": "Ada"})
    execution.start(worker_id="w1", meta=meta(org))
    execution.record_node_started(node_id="a", attempt=1, meta=meta(org))
    execution.record_node_succeeded(
        node_id="a",
        attempt=1,
        outputs={"main": [{"hi": "Ada"}]},
        outputs_truncated=False,
        meta=meta(org),
    )
    execution.succeed(output={"a": [{"hi": "Ada"}]}, output_truncated=False, meta=meta(org))
    position = save(workflow_app, execution)

    response = client.get(f"/v1/executions/{execution.id}", headers={**owner, **fresh(position)})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"5"'
    document = response.json()
    assert document["status"] == "succeeded" and document["input"] == {"name": "Ada"}
    assert document["output"] == {"a": [{"hi": "Ada"}]}
    assert document["node_runs"][0] | {"started_at": None, "finished_at": None} == {
        "node_id": "a",
        "attempt": 1,
        "status": "succeeded",
        "started_at": None,
        "finished_at": None,
        "outputs": {"main": [{"hi": "Ada"}]},
        "outputs_truncated": False,
        "error": None,
        "will_retry": False,
    }
    missing = client.get(f"/v1/executions/{uuid.uuid4()}", headers=owner)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/executions/not-a-uuid", headers=owner).status_code == 422


def test_a_workflows_executions(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
) -> None:
    mine, other = uuid.uuid4(), uuid.uuid4()
    made = [
        run(workflow_app, org, clock, BASE + timedelta(hours=i), outcome, workflow)
        for i, (outcome, workflow) in enumerate(
            [("succeeded", mine), ("failed", other), ("failed", mine), ("succeeded", mine)]
        )
    ]
    headers = {**owner, **fresh(made[-1][1])}
    page = client.get(f"/v1/workflows/{mine}/executions", params={"limit": 2}, headers=headers)
    assert page.status_code == 200, page.text
    assert [item["id"] for item in page.json()["items"]] == [made[3][0], made[2][0]]
    rest = client.get(
        f"/v1/workflows/{mine}/executions",
        params={"limit": 2, "cursor": page.json()["next_cursor"]},
        headers=headers,
    ).json()
    assert [item["id"] for item in rest["items"]] == [made[0][0]] and rest["next_cursor"] is None
    failed = client.get(
        f"/v1/workflows/{mine}/executions",
        params={"filter": json.dumps({"status": "failed"})},
        headers=headers,
    ).json()
    assert [item["id"] for item in failed["items"]] == [made[2][0]]
    # A workflow the views do not know has no executions (the log need not hold it).
    unknown = client.get(f"/v1/workflows/{uuid.uuid4()}/executions", headers=headers)
    assert unknown.status_code == 200 and unknown.json() == {"items": [], "next_cursor": None}
    for cursor in ("garbage", "WzEsMl0", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgIngiXQ"):  # [1,2], naive
        bad = client.get(
            f"/v1/workflows/{mine}/executions", params={"cursor": cursor}, headers=headers
        )
        assert bad.status_code == 400 and "cursor" in bad.json()["detail"], bad.text


def test_a_workflows_pages_break_ties_between_equal_times(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
) -> None:
    workflow_id = uuid.uuid4()
    made = [run(workflow_app, org, clock, BASE, "queued", workflow_id) for _ in range(5)]
    made.append(run(workflow_app, org, clock, BASE - timedelta(seconds=1), "queued", workflow_id))
    headers = {**owner, **fresh(made[-1][1])}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(
            f"/v1/workflows/{workflow_id}/executions", params=params, headers=headers
        ).json()
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [*sorted(i for i, _ in made[:5]), made[5][0]]


def test_summary_figures_series_top_failing_and_previous_period(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
) -> None:
    start = BASE + timedelta(days=1, hours=6)
    flaky, steady = uuid.uuid4(), uuid.uuid4()
    plan = [
        # (hours after start, outcome, workflow, duration ms)
        (-20, "succeeded", steady, 100),  # previous period
        (-3, "failed", flaky, 100),  # previous period
        (0.5, "succeeded", steady, 1000),
        (0.7, "failed", flaky, 2000),
        (2.2, "crashed", flaky, 3000),
        (2.4, "canceled_queued", steady, 0),
        (5.0, "queued", steady, 0),
        (23.9, "running", flaky, 0),
        (24.1, "failed", flaky, 0),  # after the period
    ]
    positions = [
        run(workflow_app, org, clock, start + timedelta(hours=h), outcome, workflow, duration)[1]
        for h, outcome, workflow, duration in plan
    ]
    headers = {**owner, **fresh(max(positions))}
    params = {"since": start.isoformat(), "until": (start + timedelta(hours=24)).isoformat()}
    response = client.get("/v1/dashboards/summary", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert int(response.headers["x-projection-position"]) >= max(positions)
    summary = response.json()

    assert summary["period"] == params
    assert summary["totals"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "canceled": 1,
        "crashed": 1,
        "all": 6,
    }
    assert summary["failure_rate"] == pytest.approx(2 / 4)
    assert summary["duration_ms"]["p50"] == pytest.approx(2000, rel=0.05)
    assert summary["duration_ms"]["p99"] == pytest.approx(3000, rel=0.05)
    assert summary["duration_ms"]["mean"] == 2000.0
    assert summary["series_granularity"] == "hour" and len(summary["series"]) == 24
    assert summary["series"][0] == {"bucket": start.isoformat(), "executions": 2, "failed": 1}
    assert summary["series"][2]["executions"] == 2 and summary["series"][2]["failed"] == 1
    assert sum(point["executions"] for point in summary["series"]) == 6
    assert summary["top_failing_workflows"] == [
        {"workflow_id": str(flaky), "failed": 2, "executions": 3, "failure_rate": 1.0}
    ]
    previous = summary["previous"]
    assert previous["period"] == {
        "since": (start - timedelta(hours=24)).isoformat(),
        "until": start.isoformat(),
    }
    assert previous["totals"]["all"] == 2 and previous["totals"]["failed"] == 1
    assert previous["failure_rate"] == pytest.approx(0.5)
    assert previous["duration_ms"]["p50"] == pytest.approx(100, rel=0.05)

    steady_only = client.get(
        "/v1/dashboards/summary", params={**params, "workflow_id": str(steady)}, headers=headers
    ).json()
    assert steady_only["totals"]["all"] == 3 and steady_only["failure_rate"] == 0.0
    assert steady_only["top_failing_workflows"] == []
    assert steady_only["previous"]["totals"]["succeeded"] == 1

    week = client.get(
        "/v1/dashboards/summary",
        params={"since": (start - timedelta(days=6)).isoformat(), "until": params["until"]},
        headers=headers,
    ).json()
    # 7 days from 06:00 touch 8 UTC days; the first and the last are partial.
    assert week["series_granularity"] == "day" and len(week["series"]) == 8
    assert week["totals"]["all"] == 8
    day = start.replace(hour=0)
    assert week["series"][-3:] == [
        {"bucket": (day - timedelta(days=1)).isoformat(), "executions": 1, "failed": 0},
        {"bucket": day.isoformat(), "executions": 6, "failed": 3},
        {"bucket": (day + timedelta(days=1)).isoformat(), "executions": 1, "failed": 0},
    ]


def test_summary_of_a_quiet_period_has_no_rates(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    response = client.get(
        "/v1/dashboards/summary",
        params={"since": "2001-01-01T00:00:00Z", "until": "2001-01-03T00:00:00+00:00"},
        headers=owner,
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["totals"]["all"] == 0 and summary["failure_rate"] is None
    assert summary["duration_ms"] == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert len(summary["series"]) == 48 and summary["top_failing_workflows"] == []
    # No hour starts within either ten-minute period: nothing is counted in them.
    tiny = client.get(
        "/v1/dashboards/summary",
        params={"since": "2001-01-01T10:20:00Z", "until": "2001-01-01T10:30:00Z"},
        headers=owner,
    ).json()
    assert tiny["totals"]["all"] == 0 and tiny["series"] == []
    assert tiny["previous"]["period"]["since"] == "2001-01-01T10:10:00+00:00"
    default = client.get("/v1/dashboards/summary", headers=owner).json()
    since = datetime.fromisoformat(default["period"]["since"])
    until = datetime.fromisoformat(default["period"]["until"])
    assert until - since == timedelta(hours=24) and until <= datetime.now(UTC)


def test_bad_periods_are_400_naming_the_parameter(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    cases = [
        ({"since": "yesterday"}, "since must be an ISO 8601 time"),
        ({"until": "2026-01-01T00:00:00"}, "until needs an offset"),
        ({"since": "2026-01-01"}, "since needs an offset"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "before until"),
        ({"since": "2024-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "400 days"),
        ({"since": "2026-01-01T00:00:00 01:00"}, "%2B"),
        ({"since": "0001-01-01T00:00:00Z"}, "since must lie between"),
        ({"until": "9999-12-31T23:59:59+00:00"}, "until must lie between"),
    ]
    for params, words in cases:
        response = client.get("/v1/dashboards/summary", params=params, headers=owner)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"], (params, response.json())
    bad_workflow = client.get("/v1/dashboards/summary", params={"workflow_id": "x"}, headers=owner)
    assert bad_workflow.status_code == 422
    assert client.get("/v1/executions", params={"filter": "{"}, headers=owner).status_code == 400
    assert client.get("/v1/executions", params={"cursor": "x"}, headers=owner).status_code == 400
    assert client.get("/v1/dashboards/summary").status_code == 401


def test_everything_is_confined_to_the_callers_organisation(
    client: httpx.Client,
    owner: dict[str, str],
    make_key: Any,
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
) -> None:
    workflow_id = uuid.uuid4()
    execution_id, position = run(workflow_app, org, clock, BASE, "failed", workflow_id)
    intruder = {
        "Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'viewer')}",
        **fresh(position),
    }
    assert client.get(f"/v1/executions/{execution_id}", headers=intruder).status_code == 404
    listed = client.get(
        "/v1/executions", params={"filter": json.dumps({"id": execution_id})}, headers=intruder
    )
    assert listed.status_code == 200 and listed.json()["items"] == []
    per_workflow = client.get(f"/v1/workflows/{workflow_id}/executions", headers=intruder)
    assert per_workflow.json()["items"] == []
    period = {"since": BASE.isoformat(), "until": (BASE + timedelta(hours=1)).isoformat()}
    for params in (period, {**period, "workflow_id": str(workflow_id)}):
        theirs = client.get("/v1/dashboards/summary", params=params, headers=intruder).json()
        assert theirs["totals"]["all"] == 0 and theirs["top_failing_workflows"] == []
    mine = client.get(
        "/v1/dashboards/summary", params=period, headers={**owner, **fresh(position)}
    ).json()
    assert mine["totals"]["failed"] == 1


def test_read_your_writes(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    clock: Clock,
    app_settings: Any,
) -> None:
    clock.now = datetime.now(UTC)
    execution = queue(org, uuid.uuid4())
    queued = save(workflow_app, execution)
    execution.start(worker_id="w", meta=meta(org))
    started = save(workflow_app, execution)
    for position, status in ((queued, None), (started, "running")):
        response = client.get(
            f"/v1/executions/{execution.id}", params={"min_position": position}, headers=owner
        )
        assert response.status_code == 200, response.text
        assert int(response.headers["x-projection-position"]) >= position
        assert status is None or response.json()["status"] == status
    summary = client.get("/v1/dashboards/summary", headers={**owner, **fresh(started)})
    assert summary.json()["totals"]["running"] == 1
    app_settings.min_position_wait_s = 0.2
    try:
        future = client.get("/v1/executions", headers={**owner, **fresh(10**12)})
    finally:
        app_settings.min_position_wait_s = 5.0
    assert future.status_code == 503
    assert future.json()["current_position"] == int(future.headers["x-projection-position"])


@given(
    since=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    length=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    coarsest=st.sampled_from(["hour", "day", "month"]),
)
def test_period_pieces_cover_exactly_the_hours_starting_in_the_period(
    since: datetime, length: timedelta, coarsest: str
) -> None:
    period = Period(since, since + length)
    covered: list[datetime] = []
    pieces = period.pieces(coarsest)
    for granularity, starts, ends in pieces:
        assert starts < ends
        assert bucket_start(starts, granularity) == starts
        assert bucket_start(ends, granularity) == ends
        at = starts
        while at < ends:
            covered.append(at)
            at += timedelta(hours=1)
    expected = []
    at = since.replace(minute=0, second=0, microsecond=0)
    while at < period.until:
        if at >= since:
            expected.append(at)
        at += timedelta(hours=1)
    assert sorted(covered) == expected
    # Bounded whatever the length: whole months, then days, then hours at the ends.
    finest = {"hour": 1, "day": 3, "month": 5}[coarsest]
    assert len(pieces) <= finest
    if coarsest == "month":
        days = sum((e - s).days for g, s, e in pieces if g == "day")
        hours = sum((e - s) // timedelta(hours=1) for g, s, e in pieces if g == "hour")
        assert days <= 2 * 30 and hours <= 2 * 23
    previous = period.previous
    assert previous.until == period.since and previous.until - previous.since == length
