"""Retries over real HTTP: from the start or the failed node, original or current revision."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from infrastructure.database import PgTarget
from tests.api.test_executions import _events, _wait_for_status, live_worker
from tests.helpers import trigger, workflow_body

__all__ = ["live_worker"]  # a fixture, imported for the async test

pytestmark = pytest.mark.usefixtures("live_executions_projector")


class _Flaky(http.server.BaseHTTPRequestHandler):
    """``/flaky`` answers 503 while ``state["failing"]``; every other path 200."""

    state: dict[str, Any]

    def do_POST(self) -> None:
        self.state["paths"].append(self.path)
        failing = self.path == "/flaky" and self.state["failing"]
        payload = json.dumps({"path": self.path}).encode()
        self.send_response(503 if failing else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"failing": True, "paths": []}
    handler = type("Flaky", (_Flaky,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def _call(node_id: str, url: str) -> dict[str, Any]:
    return {"id": node_id, "type": "http_request", "parameters": {"method": "POST", "url": url}}


def _node(node_id: str, type_: str, **parameters: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "parameters": parameters}


def _workflow(client: httpx.Client, headers: dict[str, str], nodes: list[Any]) -> str:
    ids = [node["id"] for node in nodes]
    connections = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    body = workflow_body(nodes=nodes, connections=connections)
    response = client.post("/v1/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def _failing_workflow(client: httpx.Client, headers: dict[str, str]) -> str:
    return _workflow(client, headers, [trigger(), _node("boom", "stop_and_error", message="x")])


def _run(client: httpx.Client, headers: dict[str, str], workflow_id: str, **body: Any) -> Any:
    response = client.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": {"n": 1}, "mode": "sync", **body},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _retry(
    client: httpx.Client, headers: dict[str, str], execution_id: str, **body: Any
) -> httpx.Response:
    return client.post(f"/v1/executions/{execution_id}/retry", json=body, headers=headers)


def _document(
    client: httpx.Client, headers: dict[str, str], execution_id: str, position: int
) -> Any:
    response = client.get(
        f"/v1/executions/{execution_id}",
        headers={**headers, "X-Min-Position": str(position)},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_retry_from_the_start_runs_every_node_again_and_is_linked_both_ways(
    client: httpx.Client, owner: dict[str, str], flaky: tuple[str, dict[str, Any]]
) -> None:
    base, state = flaky
    workflow_id = _workflow(
        client, owner, [trigger(), _call("first", f"{base}/ok"), _call("second", f"{base}/flaky")]
    )
    failed = _run(client, owner, workflow_id)
    assert failed["status"] == "failed" and "second" in failed["error"]
    state["failing"] = False
    response = _retry(client, owner, failed["execution_id"], mode="sync")
    assert response.status_code == 200, response.text
    retried = response.json()
    assert retried["status"] == "succeeded" and retried["execution_id"] != failed["execution_id"]
    assert state["paths"] == ["/ok", "/flaky", "/ok", "/flaky"]

    document = _document(client, owner, retried["execution_id"], retried["position"])
    assert (document["trigger"], document["retry_of"]) == ("retry", failed["execution_id"])
    assert document["reused_nodes"] == [] and document["input"] == {"n": 1}
    assert document["workflow_revision"] == 1
    original = _document(client, owner, failed["execution_id"], retried["position"])
    assert original["trigger"] == "manual" and original["retried_by"] == [retried["execution_id"]]


def test_retry_from_the_failed_node_reuses_what_succeeded_and_runs_the_rest(
    client: httpx.Client,
    owner: dict[str, str],
    flaky: tuple[str, dict[str, Any]],
    db_target: PgTarget,
) -> None:
    base, state = flaky
    workflow_id = _workflow(
        client,
        owner,
        [
            trigger(),
            _call("first", f"{base}/ok"),
            _call("second", f"{base}/flaky"),
            _node("last", "set", fields={"done": True}),
        ],
    )
    failed = _run(client, owner, workflow_id)
    assert failed["status"] == "failed"
    state["failing"] = False
    response = _retry(client, owner, failed["execution_id"], mode="sync", **{"from": "failed_node"})
    assert response.status_code == 200, response.text
    retried = response.json()
    assert retried["status"] == "succeeded"
    assert retried["output"]["last"][0]["done"] is True
    # "first" made its call once, in the original run; only the rest ran again.
    assert state["paths"] == ["/ok", "/flaky", "/flaky"]
    assert _events(db_target, retried["execution_id"]) == [
        "Queued",
        "Started",
        *["NodeStarted", "NodeSucceeded"] * 2,
        "Succeeded",
    ]
    document = _document(client, owner, retried["execution_id"], retried["position"])
    assert document["reused_nodes"] == ["start", "first"]
    assert [run["node_id"] for run in document["node_runs"]] == ["second", "last"]
    assert (document["attempt"], document["not_before"]) == (2, None)


def test_a_retry_from_the_failed_node_of_such_a_retry_still_reuses_the_first_runs_outputs(
    client: httpx.Client, owner: dict[str, str], flaky: tuple[str, dict[str, Any]]
) -> None:
    base, state = flaky
    workflow_id = _workflow(
        client, owner, [trigger(), _call("first", f"{base}/ok"), _call("second", f"{base}/flaky")]
    )
    failed = _run(client, owner, workflow_id)
    from_failed = {"from": "failed_node", "revision": "original", "mode": "sync"}
    again = _retry(client, owner, failed["execution_id"], **from_failed).json()
    assert again["status"] == "failed"
    state["failing"] = False
    # "first" ran in the first run only: the second reused it, and so does the third.
    third = _retry(client, owner, again["execution_id"], **from_failed)
    assert third.status_code == 200, third.text
    assert third.json()["status"] == "succeeded"
    assert state["paths"] == ["/ok", "/flaky", "/flaky", "/flaky"]
    document = _document(client, owner, third.json()["execution_id"], third.json()["position"])
    assert document["reused_nodes"] == ["start", "first"] and document["attempt"] == 3
    assert document["retry_of"] == again["execution_id"]
    assert [run["node_id"] for run in document["node_runs"]] == ["second"]


def test_retry_at_the_original_or_the_current_revision(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow_id = _failing_workflow(client, owner)
    failed = _run(client, owner, workflow_id)
    fixed = client.patch(
        f"/v1/workflows/{workflow_id}",
        json={"nodes": [trigger(), _node("boom", "noop")]},
        headers={**owner, "If-Match": '"1"'},
    )
    assert fixed.status_code == 200, fixed.text
    original = _retry(client, owner, failed["execution_id"], mode="sync")
    assert original.status_code == 200 and original.json()["status"] == "failed"
    current = _retry(client, owner, failed["execution_id"], mode="sync", revision="current")
    assert current.status_code == 200, current.text
    assert current.json()["status"] == "succeeded"
    document = _document(client, owner, current.json()["execution_id"], current.json()["position"])
    assert document["workflow_revision"] == 2 and document["trigger"] == "retry"
    assert document["attempt"] == 2
    # A retry of a retry: the chain is visible in the list filters.
    chained = _retry(client, owner, original.json()["execution_id"], mode="sync")
    assert chained.status_code == 200
    position = chained.json()["position"]
    fresh = {**owner, "X-Min-Position": str(position)}
    by_retry_of = client.get(
        "/v1/executions",
        params={"filter": json.dumps({"retry_of": failed["execution_id"]})},
        headers=fresh,
    ).json()["items"]
    assert {item["id"] for item in by_retry_of} == {
        original.json()["execution_id"],
        current.json()["execution_id"],
    }
    retries = client.get(
        "/v1/executions",
        params={"filter": json.dumps({"trigger": "retry", "workflow_id": workflow_id})},
        headers=fresh,
    ).json()["items"]
    assert len(retries) == 3
    manual = client.get(
        "/v1/executions",
        params={"filter": json.dumps({"trigger": "manual", "workflow_id": workflow_id})},
        headers=fresh,
    ).json()["items"]
    assert [item["id"] for item in manual] == [failed["execution_id"]]


def test_refused_retries_are_problems_naming_why(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    make_key: Any,
    db_target: PgTarget,
) -> None:
    ok_id = _workflow(client, owner, [trigger(), _node("n", "noop")])
    succeeded = _run(client, owner, ok_id)["execution_id"]
    response = _retry(client, owner, succeeded)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status_now"] == "succeeded" and "succeeded" in response.json()["detail"]

    workflow_id = _failing_workflow(client, owner)
    failed = _run(client, owner, workflow_id)["execution_id"]
    both = _retry(client, owner, failed, **{"from": "failed_node", "revision": "current"})
    assert both.status_code == 422 and "original" in both.text
    assert _retry(client, owner, failed, **{"from": "middle"}).status_code == 422
    assert _retry(client, owner, failed, extra=1).status_code == 422
    assert _retry(client, owner, str(uuid.uuid4())).status_code == 404
    viewer = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    assert _retry(client, viewer, failed).status_code == 403
    stranger = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    assert _retry(client, stranger, failed).status_code == 404

    assert _retry(client, owner, failed, mode="sync").status_code == 200  # the one accepted

    deleted = client.delete(f"/v1/workflows/{workflow_id}", headers={**owner, "If-Match": '"1"'})
    assert deleted.status_code == 200
    for revision in ("original", "current"):
        assert _retry(client, owner, failed, revision=revision).status_code == 410
    # None of the refusals recorded anything: one retry of it is in the log.
    with psycopg.connect(db_target.conninfo()) as conn:
        queued = conn.execute(
            "SELECT count(*) FROM reporunner_events WHERE topic LIKE '%%Execution.Queued' "
            "AND (convert_from(state, 'UTF8') LIKE %s OR convert_from(state, 'UTF8') LIKE %s)",
            (f"%{failed}%", f"%{uuid.UUID(failed).hex}%"),
        ).fetchone()
    assert queued == (1,)


def test_from_the_failed_node_is_refused_when_a_needed_output_was_truncated(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow_id = _failing_workflow(client, owner)
    # ~100 kB of items: more than the log keeps of one node's output (64 kB).
    failed = _run(client, owner, workflow_id, input=[{"s": "x" * 1000}] * 100)
    assert failed["status"] == "failed"
    response = _retry(client, owner, failed["execution_id"], **{"from": "failed_node"})
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["truncated_nodes"] == ["start"] and '"from": "start"' in problem["detail"]
    assert _retry(client, owner, failed["execution_id"]).status_code == 202


def test_a_keyed_retry_answers_once_and_a_different_one_is_422(
    client: httpx.Client, owner: dict[str, str], db_target: PgTarget
) -> None:
    workflow_id = _failing_workflow(client, owner)
    failed = _run(client, owner, workflow_id)["execution_id"]
    keyed = {**owner, "Idempotency-Key": f"retry-{uuid.uuid4()}"}
    first = _retry(client, keyed, failed, mode="sync")
    again = _retry(client, keyed, failed, mode="sync")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert _events(db_target, first.json()["execution_id"]).count("Queued") == 1
    assert _retry(client, keyed, failed, revision="current").status_code == 422


@pytest.mark.usefixtures("live_worker")
def test_an_async_retry_is_queued_for_a_worker(
    client: httpx.Client,
    owner: dict[str, str],
    flaky: tuple[str, dict[str, Any]],
    db_target: PgTarget,
) -> None:
    base, state = flaky
    workflow_id = _workflow(client, owner, [trigger(), _call("call", f"{base}/flaky")])
    failed = _run(client, owner, workflow_id)["execution_id"]
    state["failing"] = False
    # No body at all: every default (from the start, original revision, async).
    response = client.post(f"/v1/executions/{failed}/retry", headers=owner)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and response.headers["location"].endswith(
        body["execution_id"]
    )
    assert _wait_for_status(db_target, body["execution_id"], {"succeeded"}) == "succeeded"
