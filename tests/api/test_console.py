"""The operator console at ``/ui`` in headless Chromium (Debian's, never a downloaded browser).

One service with every role (API, projections, worker, scheduler) on a database of
its own, as ``make run`` has it; every request to another host is aborted, so the
console works offline. Each test saves a screenshot into its tmp dir; with
``REPORUNNER_CONSOLE_SCREENSHOT=docs/console.png`` the overview test also saves the
README's.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from infrastructure.database import PgTarget
from infrastructure.settings import ROLES, Settings
from reporunner.wiring import create_app
from tests.conftest import key_maker
from tests.helpers import noop, scratch_database, serving, trigger, workflow_body

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run does)"
)
_LOCAL = {"127.0.0.1", "localhost", "::1"}
_TIMEOUT_MS = 30_000


class Console:
    """The service under test, its database, and a way to make keys of one organisation."""

    def __init__(self, url: str, target: PgTarget) -> None:
        self.url = url
        self.org = f"org-{uuid.uuid4().hex[:8]}"
        self._make_key = key_maker(target)

    def key(self, role: str = "owner") -> str:
        # Playwright's sync API holds this thread's event loop; key_maker runs one of its own.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self._make_key, self.org, role).result()


@pytest.fixture(scope="module")
def service(server_target: PgTarget, app_settings: Settings) -> Iterator[tuple[str, PgTarget]]:
    with scratch_database(server_target, "console") as target:
        # The relay's streams in this run's corner of Redis (emptied after the run),
        # under a name of this module's own: another module's log has its own streams.
        bus_prefix = f"{app_settings.redis_key_prefix}console:bus"
        settings = app_settings.model_copy(
            update={"projection_poll_s": 0.1, "bus_prefix": bus_prefix}
        )
        with serving(create_app(settings, target, roles=ROLES)) as url:
            yield url, target


@pytest.fixture
def console(service: tuple[str, PgTarget]) -> Console:
    return Console(*service)


@pytest.fixture
def browser_page(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page whose requests to anything but this machine fail; screenshot saved after."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname in _LOCAL:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 900})
            context.route("**/*", only_local)
            page = context.new_page()
            page.set_default_timeout(_TIMEOUT_MS)
            yield page
            page.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)
        finally:
            browser.close()
    assert blocked == []


def api(console: Console, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=console.url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


def sign_in(page: Any, console: Console, key: str, path: str = "/ui") -> None:
    page.goto(f"{console.url}{path}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation").wait_for()
    ready(page)


def ready(page: Any) -> None:
    page.locator("#view[data-ready='true']").wait_for()


def open_page(page: Any, name: str) -> None:
    """Follow a navigation link (no reload) and wait for the page to be drawn."""
    page.get_by_role("navigation").get_by_role("link", name=name).click()
    page.wait_for_function(f"location.pathname.startsWith('/ui/{name.lower()}')")
    ready(page)


def create_workflow(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    answer = client.post("/v1/workflows", json=workflow_body(**overrides))
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def seen(client: httpx.Client, path: str, position: int) -> httpx.Response:
    """A view read that waits (bounded) for ``position``: read your own write."""
    answer = client.get(path, headers={"X-Min-Position": str(position)})
    assert answer.status_code == 200, answer.text
    return answer


def test_sign_in_and_the_overview_equals_the_summary(browser_page: Any, console: Console) -> None:
    key = console.key("owner")
    with api(console, key) as client:
        fine = create_workflow(client, name="fine")
        failing = create_workflow(
            client,
            name="failing",
            nodes=[
                trigger(),
                {"id": "boom", "type": "stop_and_error", "parameters": {"message": "no"}},
            ],
            connections=[{"from": "start", "to": "boom"}],
        )
        position = 0
        for workflow in (fine, fine, fine, failing):
            run = client.post(f"/v1/workflows/{workflow['id']}/executions", json={"mode": "sync"})
            assert run.status_code == 200, run.text
            position = run.json()["position"]
        summary = seen(client, "/v1/dashboards/summary", position).json()
    assert summary["totals"]["succeeded"] == 3 and summary["totals"]["failed"] == 1

    page = browser_page
    sign_in(page, console, key)
    assert page.locator("h1").inner_text() == "Overview"
    assert key not in page.url
    assert page.evaluate("sessionStorage.getItem('reporunner.apiKey')") == key

    def figure(name: str) -> Any:
        import json

        return json.loads(page.locator(f"[data-figure='{name}']").get_attribute("data-value"))

    for status in ("all", "queued", "running", "succeeded", "failed", "canceled", "crashed"):
        assert figure(f"totals.{status}") == summary["totals"][status], status
    assert figure("failure_rate") == summary["failure_rate"]
    for percentile in ("p50", "p95", "p99", "mean"):
        assert figure(f"duration_ms.{percentile}") == summary["duration_ms"][percentile]
    assert page.locator("#top-failing tbody tr").count() == len(summary["top_failing_workflows"])
    assert page.locator("#top-failing tbody tr").first.inner_text().startswith(failing["id"])
    assert page.locator("svg.chart g.bar").count() == len(summary["series"])
    if target := os.environ.get("REPORUNNER_CONSOLE_SCREENSHOT"):
        page.screenshot(path=target, full_page=False)

    # Live: another run lands, and the figures follow without a reload.
    page.evaluate("window.__notReloaded = true")
    with api(console, key) as client:
        client.post(
            f"/v1/workflows/{fine['id']}/executions", json={"mode": "sync"}
        ).raise_for_status()
    page.locator(
        f"[data-figure='totals.succeeded'][data-value='{summary['totals']['succeeded'] + 1}']"
    ).wait_for()
    assert page.evaluate("window.__notReloaded") is True

    # A bad key is refused with the API's problem detail, on the sign-in form.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    problem = page.locator("#sign-in-error [role=alert]")
    assert problem.get_attribute("data-problem-status") == "401"


def test_filter_workflows_and_page_through_them(browser_page: Any, console: Console) -> None:
    key = console.key("editor")
    with api(console, key) as client:
        for i in range(12):
            answer = create_workflow(client, name=f"paged-{i:02d}", tags=["paged"])
        create_workflow(client, name="other", tags=["other"])
        seen(client, "/v1/workflows", answer["position"])

    page = browser_page
    sign_in(page, console, key, "/ui/workflows")
    page.get_by_label("Filter (Mongo-style JSON)").fill('{"tags": "paged"}')
    page.get_by_label("Sort").select_option("name")
    page.get_by_label("Per page").select_option("10")
    page.get_by_role("button", name="Apply").click()
    rows = page.locator("#workflow-list tbody tr")
    page.locator("#workflow-list [data-page-number='1']").wait_for()
    names = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert names == [f"paged-{i:02d}" for i in range(10)]

    page.get_by_role("button", name="Next page").click()
    page.locator("#workflow-list [data-page-number='2']").wait_for()
    names = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert names == ["paged-10", "paged-11"]
    assert page.get_by_role("button", name="Next page").is_disabled()
    page.get_by_role("button", name="Previous page").click()
    page.locator("#workflow-list [data-page-number='1']").wait_for()
    assert rows.first.locator("td").first.inner_text() == "paged-00"

    # A filter the API refuses shows its problem detail, not a blank table.
    page.get_by_label("Filter (Mongo-style JSON)").fill('{"tags": ')
    page.get_by_role("button", name="Apply").click()
    problem = page.locator("#workflow-list [role=alert]")
    assert problem.get_attribute("data-problem-status") == "400"
    assert "filter is not valid JSON" in problem.inner_text()


def test_graph_diff_and_revert(browser_page: Any, console: Console) -> None:
    key = console.key("owner")
    with api(console, key) as client:
        workflow = create_workflow(client, name="graph")
        updated = client.patch(
            f"/v1/workflows/{workflow['id']}",
            json={
                "description": "now with b",
                "nodes": [trigger(), noop("a"), noop("b_added")],
                "connections": [{"from": "start", "to": "a"}, {"from": "a", "to": "b_added"}],
            },
            headers={"If-Match": '"1"'},
        )
        assert updated.status_code == 200, updated.text
        seen(client, f"/v1/workflows/{workflow['id']}", updated.json()["position"])

    page = browser_page
    sign_in(page, console, key, f"/ui/workflows/{workflow['id']}")
    graph = page.locator("#workflow-graph svg")
    assert sorted(graph.locator("g.node").evaluate_all("ns => ns.map(n => n.dataset.nodeId)")) == [
        "a",
        "b_added",
        "start",
    ]
    assert graph.locator("path.edge").count() == 2

    page.get_by_label("Diff from version 1").check()
    page.get_by_label("Diff to version 2").check()
    page.get_by_role("button", name="Show diff").click()
    added = page.locator("#diff tr.diff-add")
    added.first.wait_for()
    assert "b_added" in " ".join(added.all_inner_texts())
    removed = page.locator("#diff tr.diff-del").all_inner_texts()
    assert [line.strip() for line in removed] == ['"description": "",']

    page.locator("button.revert[data-version='1']").click()
    dialog = page.locator("dialog#confirm")
    assert "Revert “graph” to version 1" in dialog.inner_text()
    dialog.get_by_role("button", name="Confirm").click()
    page.locator("#revisions tr[data-version='3']").wait_for()
    # A revert is a new version whose definition is the old one's.
    assert (
        "connections, description, nodes"
        in page.locator("#revisions tr[data-version='3']").inner_text()
    )
    assert page.locator("h1").inner_text().endswith("v3")
    assert page.locator("#workflow-graph g.node").count() == 2  # as version 1 had it

    # Time travel: version 2's graph, from the log.
    page.locator("#revisions tr[data-version='2']").get_by_role("link", name="View").click()
    page.locator("#workflow-graph[data-version='2']").wait_for()
    assert page.locator("#workflow-graph g.node").count() == 3


def test_run_and_watch_the_execution_finish_without_reloading(
    browser_page: Any, console: Console
) -> None:
    key = console.key("editor")
    with api(console, key) as client:
        workflow = create_workflow(
            client,
            name="slow",
            nodes=[trigger(), {"id": "pause", "type": "wait", "parameters": {"ms": 4000}}],
            connections=[{"from": "start", "to": "pause"}],
        )
        seen(client, f"/v1/workflows/{workflow['id']}", workflow["position"])

    page = browser_page
    sign_in(page, console, key, f"/ui/workflows/{workflow['id']}")
    page.evaluate("window.__notReloaded = true")
    page.get_by_role("button", name="Run").click()
    queued = page.locator("#workflow-actions-result a")
    queued.wait_for()
    execution_id = queued.inner_text()

    open_page(page, "Executions")
    # It follows GET /v1/stream (not polling).
    page.locator("#live", has_text="live").wait_for()
    row = page.locator(f"#execution-list tr[data-id='{execution_id}']")
    row.wait_for()
    first_seen = row.locator("[data-status]").get_attribute("data-status")
    assert first_seen in ("queued", "running")
    row.locator("[data-status='succeeded']").wait_for(timeout=60_000)
    assert page.evaluate("window.__notReloaded") is True

    # Its page: the timeline of its nodes.
    row.get_by_role("link", name=execution_id[:8]).click()
    ready(page)
    assert page.locator("h1 [data-status]").get_attribute("data-status") == "succeeded"
    assert page.locator("svg.timeline g.run").count() == 2
    assert page.locator("#node-runs tr[data-node-id='pause']").count() == 1


def test_a_viewer_sees_no_mutation_buttons(browser_page: Any, console: Console) -> None:
    owner = console.key("owner")
    with api(console, owner) as client:
        workflow = create_workflow(
            client,
            name="watched",
            nodes=[
                trigger(),
                {"id": "boom", "type": "stop_and_error", "parameters": {"message": "no"}},
            ],
            connections=[{"from": "start", "to": "boom"}],
        )
        client.patch(
            f"/v1/workflows/{workflow['id']}", json={"tags": ["x"]}, headers={"If-Match": '"1"'}
        ).raise_for_status()
        run = client.post(f"/v1/workflows/{workflow['id']}/executions", json={"mode": "sync"})
        execution_id = run.json()["execution_id"]
        seen(client, f"/v1/executions/{execution_id}", run.json()["position"])

    page = browser_page
    sign_in(page, console, console.key("viewer"), f"/ui/workflows/{workflow['id']}")
    assert page.locator("#revisions tbody tr").count() == 2
    assert page.locator("#workflow-actions button").count() == 0
    assert page.locator("button.revert").count() == 0
    assert page.get_by_role("button", name="Show diff").count() == 1  # reading is fine

    page.goto(f"{console.url}/ui/executions/{execution_id}")
    ready(page)
    assert page.locator("h1 [data-status]").get_attribute("data-status") == "failed"
    assert page.get_by_role("button", name="Retry").count() == 0

    # The audit log is not a viewer's: the API's 403, shown as its problem detail.
    open_page(page, "Audit")
    page.get_by_role("button", name="Verify the audit chain").click()
    problem = page.locator("#audit-verify [role=alert]")
    assert problem.get_attribute("data-problem-status") == "403"
    assert "may not do this" in problem.inner_text()
    open_page(page, "System")
    followers = page.locator("#followers tbody tr td:first-child").all_inner_texts()
    assert {"executions", "workflows"} <= set(followers)
