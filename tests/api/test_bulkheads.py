"""Bulkheads (issue 11, item 5): one organisation saturating sync runs and pipelines
at once leaves another organisation's commands fast."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from tests.api.test_bounded_reads import COPIES, TAGS, serve
from tests.helpers import trigger, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")

# Three unwinds of 50 tags: 125,000 rows, a second or so of PostgreSQL's CPU.
HEAVY = [*COPIES, *({"$unwind": f"${f}"} for f in "abc"), {"$count": "n"}]


@pytest.fixture(scope="module")
def busy_url(app_settings: Settings, db_target: PgTarget) -> Iterator[str]:
    settings = app_settings.model_copy(
        update={
            "sync_run_threads": 16,
            "sync_runs_per_org": 8,
            # One heavy query at a time keeps one organisation within its share of
            # this 2-core machine (a core): the cap is the bulkhead under test.
            "pipelines_per_org": 1,
            "query_timeout_ms": 3000,
            "query_max_unwind_rows": 10**9,
        }
    )
    with serve(settings, db_target) as url:
        yield url


def test_sync_runs_and_pipelines_of_one_organisation_leave_anothers_creates_fast(
    busy_url: str, make_key: Callable[..., str]
) -> None:
    heavy = {"Authorization": f"Bearer {make_key(f'heavy-{uuid.uuid4().hex[:8]}', 'owner')}"}
    other = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    with httpx.Client(base_url=busy_url, timeout=30) as client:
        napper = client.post(
            "/v1/workflows",
            json=workflow_body(
                name="nap",
                nodes=[trigger(), {"id": "nap", "type": "wait", "parameters": {"ms": 4000}}],
                connections=[{"from": "start", "to": "nap"}],
            ),
            headers=heavy,
        )
        assert napper.status_code == 201, napper.text
        tagged = client.post(
            "/v1/workflows", json=workflow_body(name="tags", tags=TAGS), headers=heavy
        )
        assert tagged.status_code == 201, tagged.text
        # The other organisation's key is looked up once, before the clock starts.
        warm = client.post("/v1/workflows", json=workflow_body(name="warm"), headers=other)
        assert warm.status_code == 201, warm.text
        # The pipelines have their 125,000 rows to chew on before the clock starts.
        seen = client.get(
            "/v1/workflows",
            headers={**heavy, "X-Min-Position": str(tagged.json()["position"])},
        )
        assert seen.status_code == 200, seen.text
    workflow_id = napper.json()["id"]
    stop = threading.Event()
    runs: list[int] = []
    pipelines: list[int] = []

    def run_sync() -> None:
        with httpx.Client(base_url=busy_url, timeout=30) as own:
            answer = own.post(
                f"/v1/workflows/{workflow_id}/executions", json={"mode": "sync"}, headers=heavy
            )
            runs.append(answer.status_code)

    def run_pipelines() -> None:
        with httpx.Client(base_url=busy_url, timeout=30) as own:
            while not stop.is_set():
                answer = own.post(
                    "/v1/query/workflows/aggregate", json={"pipeline": HEAVY}, headers=heavy
                )
                pipelines.append(answer.status_code)
                if answer.status_code == 429:
                    stop.wait(0.05)

    threads = [threading.Thread(target=run_sync) for _ in range(10)]
    threads += [threading.Thread(target=run_pipelines) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the runs are in their waits, the pipelines in PostgreSQL
    latencies: list[float] = []
    try:
        with httpx.Client(base_url=busy_url, timeout=30) as client:
            for index in range(30):
                began = time.monotonic()
                created = client.post(
                    "/v1/workflows", json=workflow_body(name=f"meanwhile {index}"), headers=other
                )
                latencies.append(time.monotonic() - began)
                assert created.status_code == 201, created.text
                time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    p95 = sorted(latencies)[int(len(latencies) * 0.95) - 1]
    assert p95 < 0.1, latencies
    assert sorted(runs) == [200] * 8 + [429] * 2
    # Six clients against one slot: the organisation's excess pipelines were refused,
    # while the ones it was allowed ran (and finished within the timeout).
    assert 429 in pipelines and 200 in pipelines, pipelines
    assert set(pipelines) <= {200, 429}, pipelines
