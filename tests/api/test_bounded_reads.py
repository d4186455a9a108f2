"""Bounded work per read (issue 11, item 3), against real servers and PostgreSQL.

Each test makes its own documents (a workflow with 50 long tags: four
``$unwind``s of them are 6.25 million documents) and looks at
``pg_stat_activity`` to check that no query outlives its answer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from starlette.testclient import TestClient

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from projections.reference import matches
from reporunner.wiring import create_app
from tests.helpers import serving, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")

TAGS = [f"{i:02d}-" + "t" * 61 for i in range(50)]
# Four copies of the array, each unwound: 50**4 documents.
COPIES = [{"$project": {"a": "$tags", "b": "$tags", "c": "$tags", "d": "$tags"}}]
EXPLOSION = [*COPIES, *({"$unwind": f"${f}"} for f in "abcd"), {"$count": "n"}]
# How the explosion's statement starts (pg_stat_activity keeps its first 1 kB),
# and nothing else we run does.
EXPLOSION_SQL = "%row_number() OVER () AS n FROM (SELECT jsonb_set(s5.data, '{\"d\"}'%"


# The test database server is shared: each extra server here keeps few connections.
FEW_CONNECTIONS = {"db_pool_size": 2, "db_max_overflow": 2}


@contextmanager
def serve(settings: Settings, target: PgTarget) -> Iterator[str]:
    """A real uvicorn server (clients can disconnect from it) with these settings."""
    with serving(create_app(settings, target, roles=("write-api", "read-api"))) as url:
        yield url


@pytest.fixture(scope="module")
def impatient_url(app_settings: Settings, db_target: PgTarget) -> Iterator[str]:
    """Reads time out after one second; no row cap gets there first."""
    settings = app_settings.model_copy(
        update={"query_timeout_ms": 1000, "query_max_unwind_rows": 10**9, **FEW_CONNECTIONS}
    )
    with serve(settings, db_target) as url:
        yield url


@pytest.fixture(scope="module")
def patient_url(app_settings: Settings, db_target: PgTarget) -> Iterator[str]:
    """Reads may run a minute, so only cancellation can end one sooner; one pipeline
    per organisation at a time."""
    settings = app_settings.model_copy(
        update={
            "query_timeout_ms": 60_000,
            "query_max_unwind_rows": 10**9,
            "pipelines_per_org": 1,
            **FEW_CONNECTIONS,
        }
    )
    with serve(settings, db_target) as url:
        yield url


def running_explosions(target: PgTarget) -> int:
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND pid <> pg_backend_pid() AND query LIKE %s",
            (target.dbname, EXPLOSION_SQL),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def create_tagged(url: str, auth: dict[str, str], tags: list[str] = TAGS) -> int:
    """A workflow with these tags; the log position to wait for."""
    response = httpx.post(
        f"{url}/v1/workflows",
        json=workflow_body(f"wf-{uuid.uuid4().hex[:6]}", tags=tags),
        headers=auth,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["position"])


def aggregate(
    url: str, auth: dict[str, str], pipeline: list[Any], position: int = 0, timeout: float = 30
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/query/workflows/aggregate",
        json={"pipeline": pipeline},
        headers={**auth, "X-Min-Position": str(position)},
        timeout=timeout,
    )


def test_an_unwind_explosion_is_a_503_within_the_timeout_and_leaves_no_query(
    impatient_url: str, db_target: PgTarget, make_key: Callable[[str, str], str], org: str
) -> None:
    auth = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    editor = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    position = create_tagged(impatient_url, editor)
    started = time.monotonic()
    response = aggregate(impatient_url, auth, EXPLOSION, position)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/query-timeout")
    assert "REPORUNNER_QUERY_TIMEOUT_MS" in response.json()["detail"]
    assert int(response.headers["retry-after"]) > 0
    assert elapsed < 1.0 + 4  # the 1 s timeout, plus the wait and a loaded machine's slack
    assert wait_until(lambda: running_explosions(db_target) == 0, within_s=2)


def test_a_client_that_disconnects_leaves_no_query_running(
    patient_url: str, db_target: PgTarget, make_key: Callable[[str, str], str], org: str
) -> None:
    auth = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    # Four workflows: 4 x 50**4 rows, so the query surely outlives the client's
    # 2 s also on a quiet machine (one workflow's can end within them).
    position = max(create_tagged(patient_url, auth) for _ in range(4))
    gave_up = threading.Event()

    def impatient_client() -> None:
        with pytest.raises(httpx.ReadTimeout):
            aggregate(patient_url, auth, EXPLOSION, position, timeout=2)
        gave_up.set()

    client = threading.Thread(target=impatient_client)
    client.start()
    # The query really runs (so it is the disconnect that ends it, not its end).
    assert wait_until(lambda: running_explosions(db_target) == 1, within_s=10)
    client.join(timeout=30)
    assert gave_up.is_set()
    # Well before the 60 s statement timeout could end it.
    assert wait_until(lambda: running_explosions(db_target) == 0, within_s=3)


def test_the_per_organisation_pipeline_cap_is_429_and_spares_other_organisations(
    patient_url: str, db_target: PgTarget, make_key: Callable[[str, str], str]
) -> None:
    busy, other = f"org-{uuid.uuid4().hex[:12]}", f"org-{uuid.uuid4().hex[:12]}"
    busy_auth = {"Authorization": f"Bearer {make_key(busy, 'editor')}"}
    other_auth = {"Authorization": f"Bearer {make_key(other, 'viewer')}"}
    position = create_tagged(patient_url, busy_auth)
    cheap = [{"$count": "n"}]

    answered: list[Any] = []

    def impatient_client() -> None:
        try:
            answered.append(aggregate(patient_url, busy_auth, EXPLOSION, position, timeout=3))
        except httpx.ReadTimeout:
            answered.append("gave up")

    client = threading.Thread(target=impatient_client)
    client.start()
    try:
        assert wait_until(lambda: running_explosions(db_target) == 1, within_s=10)
        refused = aggregate(patient_url, busy_auth, cheap, position)
        spared = aggregate(patient_url, other_auth, cheap, position)
    finally:
        client.join(timeout=30)
    # The explosion held its slot until it answered or its client gave up.
    assert len(answered) == 1
    assert answered[0] == "gave up" or answered[0].status_code == 200, answered[0].text
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0
    assert "REPORUNNER_PIPELINES_PER_ORG" in refused.json()["detail"]
    assert (spared.status_code, spared.json()) == (200, {"results": []})
    # Once the explosion's client has gone, its slot is free again.
    assert wait_until(lambda: running_explosions(db_target) == 0, within_s=3)
    again = aggregate(patient_url, busy_auth, cheap, position)
    assert (again.status_code, again.json()) == (200, {"results": [{"n": 1}]})


def test_static_and_row_limits_are_400s_naming_them(
    db_target: PgTarget, app_settings: Settings, make_key: Callable[[str, str], str], org: str
) -> None:
    settings = app_settings.model_copy(
        update={"query_max_unwind_rows": 5000, "query_max_results": 60, **FEW_CONNECTIONS}
    )
    auth = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    with TestClient(create_app(settings, db_target, roles=("write-api", "read-api"))) as client:
        created = client.post("/v1/workflows", json=workflow_body(tags=TAGS), headers=auth)
        headers = {**auth, "X-Min-Position": str(created.json()["position"])}

        def run(pipeline: list[Any]) -> httpx.Response:
            return client.post(
                "/v1/query/workflows/aggregate", json={"pipeline": pipeline}, headers=headers
            )

        two = [*COPIES, {"$unwind": "$a"}, {"$unwind": "$b"}]  # 2,500 documents
        counted = run([*two, {"$count": "n"}])
        three = run([*two, {"$unwind": "$c"}, {"$count": "n"}])  # 125,000 documents
        five = run([{"$unwind": "$tags"}] * 5)
        too_many = run([*two, {"$limit": 61}])
        enough = run([*two, {"$limit": 60}])
    assert (counted.status_code, counted.json()) == (200, {"results": [{"n": 2500}]})
    assert three.status_code == 400
    assert three.json()["type"].endswith("/unwind-too-large")
    assert "more than 5000 documents (REPORUNNER_QUERY_MAX_UNWIND_ROWS)" in three.json()["detail"]
    assert five.status_code == 400
    assert "at most 4 $unwind stages, not 5" in five.json()["detail"]
    assert too_many.status_code == 400
    assert too_many.json()["type"].endswith("/result-too-large")
    assert "more than 60 documents (REPORUNNER_QUERY_MAX_RESULTS)" in too_many.json()["detail"]
    assert (enough.status_code, len(enough.json()["results"])) == (200, 60)


def test_long_in_lists_are_arrays_up_to_the_limit_and_400_past_it(
    api_url: str, make_key: Callable[[str, str], str], org: str
) -> None:
    auth = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    position = 0
    for i in range(12):
        position = create_tagged(api_url, auth, tags=[f"tag-{i}", f"tag-{i * 7 + 1}", str(i)])
    position = create_tagged(api_url, auth, tags=[f"tag-{n}" for n in range(20)])
    documents = httpx.get(
        f"{api_url}/v1/workflows",
        params={"limit": 100},
        headers={**auth, "X-Min-Position": str(position)},
    ).json()["items"]
    assert len(documents) == 13
    wanted = [f"tag-{n}" for n in range(0, 2000, 3)] + list(range(100)) + ["3", None]
    wanted = wanted[:1000]
    every = [f"tag-{n}" for n in range(0, 20, 2)] * 3
    for operator, values in [("$in", wanted), ("$nin", wanted), ("$all", wanted), ("$all", every)]:
        filter_ = {"tags": {operator: values}}
        response = aggregate(api_url, auth, [{"$match": filter_}, {"$project": {"id": 1}}])
        assert response.status_code == 200, response.text
        got = {doc["id"] for doc in response.json()["results"]}
        expected = {doc["id"] for doc in documents if matches(filter_, doc)}
        assert (operator, got) == (operator, expected)
        assert got or (values is wanted and operator == "$all")  # not vacuous
    huge = {"tags": {"$in": [f"tag-{n}" for n in range(20_000)]}}
    refused = aggregate(api_url, auth, [{"$match": huge}])
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert "$in may list at most 1000 values, not 20000, at 'tags'" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("pipeline", "words"),
    [
        ([{"$project": {"a": {"$literal": "\u0000"}}}], "contains a NUL"),
        ([{"$project": {"a": {"$literal": 1e308}}}], "number 1e+308 is a whole number"),
        ([{"$project": {"a": {"$literal": {"x": [10**400]}}}}], "(at x[0] inside it)"),
        ([{"$project": {"a": "\ud800"}}], "contains invalid Unicode (a lone surrogate)"),
        ([{"$match": {"name": "a\u0000b"}}], "invalid value at 'name': contains a NUL"),
        ([{"$match": {"n": {"$gte": 10**400}}}], "invalid value at 'n': an integer of 401"),
        ([{"$match": {"n": {"$not": "x"}}}], "$not needs an operator object at 'n'"),
    ],
)
def test_constants_outside_the_value_contract_are_400s_naming_the_path(
    api_url: str, make_key: Callable[[str, str], str], org: str, pipeline: Any, words: str
) -> None:
    auth = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    # A raw body: 10**400 and a lone surrogate are JSON, but orjson will not write them.
    import json

    response = httpx.post(
        f"{api_url}/v1/query/workflows/aggregate",
        content=json.dumps({"pipeline": pipeline}),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]
