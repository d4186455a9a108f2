"""Executions over real HTTP: sync, async through a live worker, cancel, idempotency."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from commands import WorkflowApplication, WorkflowCommands
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_execution_services, start_workers
from tests.helpers import trigger, workflow_body


@pytest.fixture(scope="module")
def live_worker(
    workflow_app: WorkflowApplication, db_target: PgTarget, app_settings: Settings
) -> Iterator[None]:
    """Two worker threads claiming executions for one test module."""
    services = create_execution_services(
        workflow_app, WorkflowCommands(workflow_app), db_target, app_settings
    )
    stop = threading.Event()
    threads = start_workers(services, app_settings, stop, concurrency=2)
    yield
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    services.close()


def _node(node_id: str, type_: str, **parameters: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "parameters": parameters}


def _workflow(client: httpx.Client, headers: dict[str, str], nodes: list[Any], **extra: Any) -> str:
    ids = [node["id"] for node in nodes]
    connections = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    body = workflow_body(nodes=nodes, connections=connections, **extra)
    response = client.post("/v1/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def _events(db_target: PgTarget, aggregate_id: str) -> list[str]:
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT topic FROM reporunner_events WHERE originator_id = %s "
            "ORDER BY originator_version",
            (aggregate_id,),
        ).fetchall()
    return [row[0].rsplit(".", 1)[-1] for row in rows]


def _status_in_log(db_target: PgTarget, execution_id: str) -> str:
    topics = _events(db_target, execution_id)
    ends = {
        "Succeeded": "succeeded",
        "Failed": "failed",
        "Canceled": "canceled",
        "Crashed": "crashed",
    }
    for topic in reversed(topics):
        if topic in ends:
            return ends[topic]
    return "running" if "Started" in topics else "queued"


def _wait_for_status(db_target: PgTarget, execution_id: str, wanted: set[str]) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = _status_in_log(db_target, execution_id)
        if status in wanted:
            return status
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} never reached {wanted}")


def test_sync_run_answers_with_the_output_and_logs_every_node(
    client: httpx.Client, owner: dict[str, str], db_target: PgTarget, record_runs: Any
) -> None:
    workflow_id = _workflow(
        client,
        owner,
        [
            trigger(),
            _node("greet", "set", fields={"greeting": "hello", "meta.n": 1}),
            _node("shout", "code", expression="item.name + '!'", into="name"),
        ],
    )
    response = client.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": {"name": "Ada"}, "mode": "sync"},
        headers=owner,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["error"] is None
    assert body["output"] == {"shout": [{"name": "Ada!", "greeting": "hello", "meta": {"n": 1}}]}
    assert body["position"] == int(response.headers["x-log-position"])
    assert _events(db_target, body["execution_id"]) == [
        "Queued",
        "Started",
        *["NodeStarted", "NodeSucceeded"] * 3,
        "Succeeded",
    ]
    # The workflow's own history shows the run.
    record_runs()
    assert _events(db_target, workflow_id)[-1] == "Executed"


def test_a_failing_node_fails_the_execution_naming_it(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow_id = _workflow(
        client, owner, [trigger(), _node("boom", "stop_and_error", message="no")]
    )
    body = client.post(
        f"/v1/workflows/{workflow_id}/executions", json={"input": {}}, headers=owner
    ).json()
    assert body["status"] == "failed" and "boom" in body["error"] and "no" in body["error"]


@pytest.mark.usefixtures("live_worker")
def test_async_run_is_queued_then_run_by_a_worker(
    client: httpx.Client, owner: dict[str, str], db_target: PgTarget
) -> None:
    workflow_id = _workflow(client, owner, [trigger(), _node("n", "noop")])
    response = client.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": [{"a": 1}, {"a": 2}], "mode": "async"},
        headers=owner,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and "output" not in body
    assert _wait_for_status(db_target, body["execution_id"], {"succeeded"}) == "succeeded"
    with psycopg.connect(db_target.conninfo()) as conn:
        left = conn.execute(
            "SELECT count(*) FROM execution_queue WHERE execution_id = %s",
            (body["execution_id"],),
        ).fetchone()
    assert left == (0,)


def test_a_retried_request_returns_the_same_execution_and_runs_it_once(
    client: httpx.Client, owner: dict[str, str], db_target: PgTarget, record_runs: Any
) -> None:
    workflow_id = _workflow(client, owner, [trigger(), _node("n", "noop")])
    key = {"Idempotency-Key": f"run-{uuid.uuid4()}"}
    request = {"input": {"x": 1}, "mode": "sync"}
    url = f"/v1/workflows/{workflow_id}/executions"
    first = client.post(url, json=request, headers={**owner, **key})
    again = client.post(url, json=request, headers={**owner, **key})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    record_runs()
    assert _events(db_target, workflow_id).count("Executed") == 1
    different = client.post(url, json={"input": {"x": 2}}, headers={**owner, **key})
    assert different.status_code == 422


def test_racing_identical_requests_make_one_execution(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    api_url: str,
    record_runs: Any,
) -> None:
    workflow_id = _workflow(client, owner, [trigger(), _node("n", "noop")])
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    answers: list[dict[str, Any]] = []

    def post() -> None:
        with httpx.Client(base_url=api_url, timeout=30) as own:
            response = own.post(
                f"/v1/workflows/{workflow_id}/executions",
                json={"input": {}, "mode": "sync"},
                headers={**owner, **key},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({answer["execution_id"] for answer in answers}) == 1
    assert _events(db_target, answers[0]["execution_id"]).count("Succeeded") == 1
    record_runs()
    assert _events(db_target, workflow_id).count("Executed") == 1


@pytest.mark.usefixtures("live_worker")
def test_cancel_stops_a_running_execution_and_a_finished_one_is_409(
    client: httpx.Client, owner: dict[str, str], db_target: PgTarget
) -> None:
    workflow_id = _workflow(
        client, owner, [trigger(), _node("nap", "wait", ms=20_000), _node("after", "noop")]
    )
    started = client.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": {}, "mode": "async"},
        headers=owner,
    ).json()
    execution_id = started["execution_id"]
    _wait_for_status(db_target, execution_id, {"running"})
    began = time.monotonic()
    canceled = client.post(f"/v1/executions/{execution_id}/cancel", headers=owner)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    again = client.post(f"/v1/executions/{execution_id}/cancel", headers=owner)
    assert again.status_code == 409 and again.json()["status_now"] == "canceled"
    # The worker noticed at once (its wait was cut short), and ran nothing after.
    time.sleep(0.5)
    topics = _events(db_target, execution_id)
    assert topics[-1] == "Canceled" and topics.count("NodeStarted") <= 2
    assert time.monotonic() - began < 10


def test_bad_requests_are_4xx_problems(
    client: httpx.Client, owner: dict[str, str], org: str, make_key: Any
) -> None:
    workflow_id = _workflow(client, owner, [trigger()])
    url = f"/v1/workflows/{workflow_id}/executions"
    assert client.post(url, json={"input": 3}, headers=owner).status_code == 422
    assert client.post(url, json={"input": [1]}, headers=owner).status_code == 422
    assert client.post(url, json={"mode": "later"}, headers=owner).status_code == 422
    assert client.post(url, content=b"{", headers=owner).status_code in (400, 422)
    missing = client.post(f"/v1/workflows/{uuid.uuid4()}/executions", json={}, headers=owner)
    assert missing.status_code == 404
    assert client.post(f"/v1/executions/{uuid.uuid4()}/cancel", headers=owner).status_code == 404
    viewer = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    assert client.post(url, json={}, headers=viewer).status_code == 403
    stranger = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    assert client.post(url, json={}, headers=stranger).status_code == 404


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("raw", "loc", "words"),
    [
        (b'{"s": "a\\u0000b"}', "input.s", "NUL"),
        (b'{"n": 18446744073709551616}', "input.n", "signed 64-bit range"),
        (b'[{"a": 1}, {"b": [1e20]}]', "input[1].b[0]", "whole number"),
        (b'{"f": 1e400}', "input.f", "not a finite number"),
        (b'{"f": NaN}', "input.f", "not a finite number"),
    ],
)
def test_input_the_log_cannot_carry_is_422_naming_where_and_runs_nothing(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    raw: bytes,
    loc: str,
    words: str,
    mode: str,
) -> None:
    workflow_id = _workflow(client, owner, [trigger()])
    body = b'{"mode": "' + mode.encode() + b'", "input": ' + raw + b"}"
    response = client.post(
        f"/v1/workflows/{workflow_id}/executions",
        content=body,
        headers={**owner, "Content-Type": "application/json", "Idempotency-Key": "k"},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["loc"] == loc and words in error["msg"]
    with psycopg.connect(db_target.conninfo()) as conn:
        executions = conn.execute(
            "SELECT count(*) FROM reporunner_events WHERE topic LIKE '%%Execution.Queued' "
            "AND (convert_from(state, 'UTF8') LIKE %s OR convert_from(state, 'UTF8') LIKE %s)",
            (f"%{workflow_id}%", f"%{uuid.UUID(workflow_id).hex}%"),
        ).fetchone()
    assert executions == (0,)


def test_deleted_workflows_cannot_run(client: httpx.Client, owner: dict[str, str]) -> None:
    workflow_id = _workflow(client, owner, [trigger()])
    deleted = client.delete(f"/v1/workflows/{workflow_id}", headers={**owner, "If-Match": '"1"'})
    assert deleted.status_code == 200
    response = client.post(f"/v1/workflows/{workflow_id}/executions", json={}, headers=owner)
    assert response.status_code == 410


class _Echo(http.server.BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        self.requests.append(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        payload = json.dumps({"echo": body, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP server, and the paths it was asked for."""
    requests: list[str] = []
    handler = type("Echo", (_Echo,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()


def test_http_request_reaches_a_listed_host_and_refuses_others_before_connecting(
    client: httpx.Client, owner: dict[str, str], echo_server: tuple[str, list[int]]
) -> None:
    base, requests = echo_server
    listed = _workflow(
        client,
        owner,
        [
            trigger(),
            _node("call", "http_request", method="POST", url=f"{base}/hook", body={"k": "v"}),
        ],
    )
    body = client.post(f"/v1/workflows/{listed}/executions", json={}, headers=owner).json()
    assert body["status"] == "succeeded", body
    (item,) = body["output"]["call"]
    assert item["status"] == 200 and item["body"] == {"echo": {"k": "v"}, "path": "/hook"}
    assert requests == ["/hook"]

    # The same server by another name is not on the list (127.0.0.1 is).
    port = base.rsplit(":", 1)[1]
    unlisted = _workflow(
        client,
        owner,
        [trigger(), _node("call", "http_request", url=f"http://localhost:{port}/other")],
    )
    body = client.post(f"/v1/workflows/{unlisted}/executions", json={}, headers=owner).json()
    assert body["status"] == "failed" and "localhost" in body["error"], body
    assert requests == ["/hook"]  # nothing reached the server
