"""The console's first-render time of each page, with big views behind it.

Seeds one organisation's views in SQL (``generate_series``, a fixed seed):
WORKFLOWS workflow documents and EXECUTIONS execution documents (a skewed
spread over the workflows, the usual mix of outcomes, over the last 30 days),
and the dashboard counters built from those executions by
``projections.executions.COUNTERS_SQL`` (the statement a test holds equal to
what the projection keeps). No log is written for them: the pages read views.
One real workflow (created, updated, run) gives the workflow and execution
pages a history from the log.

Then ``reporunner serve`` (write-api, read-api, projections) and Debian's
headless Chromium (Playwright, never a downloaded browser): for each page, a
full load of its URL (shell, script, API calls, drawing) until the page says it
is drawn; p50/p95/max over ROUNDS loads, after a warm-up.

    python bench/console.py [--workflows 100000] [--executions 1000000] [--rounds 20]
                            [--screenshot docs/console.png]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench._common import create_key, percentile, running_server, scratch_database
from infrastructure.database import PgTarget

ORG = "bench-console"

_WORKFLOWS_SQL = """
INSERT INTO doc_workflows (_id, org_id, data, _version, _position, created, updated)
SELECT id, %(org)s, jsonb_build_object(
         'id', id, 'name', 'workflow ' || lpad(i::text, 6, '0'), 'description', '',
         'nodes', jsonb_build_array(
             jsonb_build_object('id', 'start', 'type', 'manual_trigger', 'parameters', '{}'::jsonb),
             jsonb_build_object('id', 'a', 'type', 'noop', 'parameters', '{}'::jsonb)),
         'connections', jsonb_build_array(jsonb_build_object('from', 'start', 'to', 'a')),
         'tags', jsonb_build_array('team-' || mod(i, 40)), 'settings', '{}'::jsonb,
         'version', 1, 'deleted', false, 'runs', 0, 'active', false, 'active_since', null,
         'last_execution', null,
         'created_at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
         'created_by', 'apikey:bench',
         'updated_at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
         'updated_by', 'apikey:bench'),
       1, i, at, at
FROM (SELECT i, md5('console-wf' || i)::uuid::text AS id,
             now() - interval '30 days' * (1 - i::float8 / %(workflows)s) AS at
      FROM generate_series(1, %(workflows)s) i) w
"""

_EXECUTIONS_SQL = """
INSERT INTO doc_executions (_id, org_id, data, _version, _position, created, updated)
SELECT id, %(org)s, jsonb_build_object(
         'id', id, 'workflow_id', workflow_id, 'workflow_version', 1, 'workflow_revision', 1,
         'mode', 'async', 'status', status, 'input', '{}'::jsonb, 'version', 3,
         'trigger', trigger, 'retry_of', null, 'reused_nodes', '[]'::jsonb,
         'retried_by', '[]'::jsonb, 'attempt', 1, 'not_before', null,
         'created_at', to_char(queued AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
         'created_by', 'apikey:bench',
         'updated_at', to_char(ended AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
         'started_at', to_char(queued AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
         'finished_at', to_char(ended AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
         'duration_ms', duration_ms, 'worker_id', 'worker-1',
         'error', CASE WHEN status = 'failed' THEN 'node a: HTTP 502' END,
         'output', '{}'::jsonb, 'output_truncated', false, 'canceled_by', null,
         'node_runs', '[]'::jsonb,
         'node_summary', jsonb_build_object('succeeded', 2, 'failed', 0)),
       3, %(workflows)s + i, queued, ended
FROM (
    SELECT i, md5('console-ex' || i)::uuid::text AS id,
           md5('console-wf' || (1 + floor(%(workflows)s * power(u_workflow, 3)))::int)::uuid::text
               AS workflow_id,
           CASE WHEN u_outcome < 0.86 THEN 'succeeded' WHEN u_outcome < 0.96 THEN 'failed'
                WHEN u_outcome < 0.98 THEN 'canceled' ELSE 'crashed' END AS status,
           CASE WHEN u_trigger < 0.70 THEN 'manual' WHEN u_trigger < 0.90 THEN 'schedule'
                WHEN u_trigger < 0.98 THEN 'webhook' ELSE 'retry' END AS trigger,
           queued, queued + duration_ms * interval '1 millisecond' AS ended, duration_ms
    FROM (
        SELECT i, u_workflow, u_outcome, u_trigger,
               now() - interval '30 days' * (1 - i::float8 / %(executions)s) AS queued,
               round(exp(6.7 + 1.5 * sqrt(-2 * ln(1 - u_d1)) * cos(2 * pi() * u_d2)))::bigint
                   AS duration_ms
        FROM (SELECT i, random() AS u_workflow, random() AS u_outcome, random() AS u_trigger,
                     random() AS u_d1, random() AS u_d2
              FROM generate_series(1, %(executions)s) i) r
    ) d
) e
"""

# COUNTERS_SQL's source columns, from the execution documents just seeded.
_COUNTER_SOURCE = """
SELECT org_id, data->>'workflow_id' AS workflow_id, created AS queued_at,
       data->>'status' AS status, data->>'trigger' AS trigger,
       (data->>'duration_ms')::bigint AS duration_ms, 3 AS counts, created AS counted_at,
       _position AS position
FROM doc_executions WHERE org_id = %(org)s
"""

PAGES = (
    ("overview", "/ui/overview"),
    ("workflows", "/ui/workflows"),
    ("workflows, filtered", '/ui/workflows?filter={"tags":"team-7"}&sort=name'),
    ("workflow", "/ui/workflows/{workflow}"),
    ("executions", "/ui/executions"),
    ("executions, failed", "/ui/executions?status=failed"),
    ("execution", "/ui/executions/{execution}"),
    ("audit", "/ui/audit"),
    ("system", "/ui/system"),
)


def seed(target: PgTarget, workflows: int, executions: int) -> None:
    import psycopg

    from projections.executions import COUNTERS_SQL

    started = time.perf_counter()
    params = {"org": ORG, "workflows": workflows, "executions": executions}
    tables = ("doc_workflows", "doc_executions", "doc_execution_stats")
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        # Secondary indexes are dropped for the load and built again after it (as a
        # projection rebuild does): much faster than keeping them up row by row.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
            "AND indexname NOT LIKE '%%_pkey'",
            (list(tables),),
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("SET work_mem = '512MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SELECT setseed(0.16)")
        conn.execute(_WORKFLOWS_SQL, params)
        conn.execute(_EXECUTIONS_SQL, params)
        conn.execute(
            "INSERT INTO doc_execution_stats (_id, org_id, data, _version, _position, created, "
            f"updated) SELECT * FROM ({COUNTERS_SQL.format(source=_COUNTER_SOURCE)}) c",
            params,
        )
        for _, statement in indexes:
            conn.execute(statement)
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")
    print(
        f"seeded {workflows:,} workflows and {executions:,} executions (and their counters) "
        f"in {time.perf_counter() - started:.0f} s"
    )


def real_workflow(base: str, key: str) -> tuple[str, str]:
    """A workflow with a history in the log and a finished execution: (its id, the run's)."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        body = {
            "name": "real",
            "description": "",
            "nodes": [{"id": "start", "type": "manual_trigger", "parameters": {}}],
            "connections": [],
            "tags": [],
            "settings": {},
        }
        created = client.post("/v1/workflows", json=body).raise_for_status().json()
        nodes = [*body["nodes"], {"id": "a", "type": "noop", "parameters": {}}]
        client.patch(
            f"/v1/workflows/{created['id']}",
            json={"nodes": nodes, "connections": [{"from": "start", "to": "a"}]},
            headers={"If-Match": '"1"'},
        ).raise_for_status()
        run = client.post(f"/v1/workflows/{created['id']}/executions", json={"mode": "sync"})
        answer = run.raise_for_status().json()
        client.get(
            f"/v1/executions/{answer['execution_id']}",
            headers={"X-Min-Position": str(answer["position"])},
        ).raise_for_status()
        return created["id"], answer["execution_id"]


def measure(
    base: str, key: str, workflow: str, execution: str, rounds: int, screenshot: str | None
) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium binary: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"{base}/ui")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.locator("#nav:not([hidden])").wait_for()
        print(f"first render (full load of the URL until drawn), {rounds} loads each:")
        for name, path in PAGES:
            url = base + path.replace("{workflow}", workflow).replace("{execution}", execution)
            timings = []
            for round_ in range(rounds + 3):  # the first 3 warm up
                begun = time.perf_counter()
                page.goto(url)
                page.locator("#view[data-ready='true']").wait_for(timeout=60_000)
                if round_ >= 3:
                    timings.append(time.perf_counter() - begun)
            alerts = page.locator("#view [role=alert]")
            problem = alerts.first.inner_text().replace("\n", " ")[:200] if alerts.count() else ""
            if screenshot and name == "overview":
                page.screenshot(path=screenshot)
            timings.sort()
            print(
                f"  {name:<22} p50 {percentile(timings, 50) * 1000:6.0f} ms   "
                f"p95 {percentile(timings, 95) * 1000:6.0f} ms   "
                f"max {timings[-1] * 1000:6.0f} ms"
                + (f"   shows a problem: {problem}" if problem else "")
            )
        browser.close()


# The API answers the pages wait for, timed alone: what of a page's time is the API's.
API_CALLS = (
    ("summary (overview)", "/v1/dashboards/summary"),
    ("workflows, first page", "/v1/workflows?limit=25"),
    ("workflow", "/v1/workflows/{workflow}"),
    ("workflow's versions", "/v1/workflows/{workflow}/versions?limit=500"),
    ("workflow's executions", "/v1/workflows/{workflow}/executions?limit=10"),
    ("executions, first page", "/v1/executions?limit=25"),
    ("execution", "/v1/executions/{execution}"),
    ("system", "/ui/api/system"),
)


def measure_api(base: str, key: str, workflow: str, execution: str, rounds: int) -> None:
    print(f"the API answers behind them, {rounds} requests each:")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for name, path in API_CALLS:
            url = path.replace("{workflow}", workflow).replace("{execution}", execution)
            timings = []
            statuses = set()
            for round_ in range(rounds + 3):
                begun = time.perf_counter()
                statuses.add(client.get(url).status_code)
                if round_ >= 3:
                    timings.append(time.perf_counter() - begun)
            timings.sort()
            print(
                f"  {name:<24} p50 {percentile(timings, 50) * 1000:6.0f} ms   "
                f"p95 {percentile(timings, 95) * 1000:6.0f} ms   statuses {sorted(statuses)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--screenshot", help="also save the overview's picture here (PNG)")
    args = parser.parse_args()
    with scratch_database() as target:
        seed(target, args.workflows, args.executions)
        key = create_key(target, ORG, "owner")
        roles = {"REPORUNNER_ROLES": "write-api,read-api,projections"}
        with running_server(target, extra_env=roles) as base:
            workflow, execution = real_workflow(base, key)
            measure(base, key, workflow, execution, args.rounds, args.screenshot)
            measure_api(base, key, workflow, execution, args.rounds)


if __name__ == "__main__":
    main()
