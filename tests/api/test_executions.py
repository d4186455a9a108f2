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
from reporunner.wiring import create_app, create_execution_services, start_workers
from tests.helpers import serving, trigger, workflow_body


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


# -- budgets, side effects and bulkheads (issue 11, items 4-6) -------------------------


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a 100-byte body, one byte every half second."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "100")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client cut the exchange: what we want
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def trickle_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    ("node_timeout_ms", "settings", "error"),
    [
        (1000, {}, "took longer than"),
        (10_000, {"timeout_ms": 1000}, "execution timed out after 1000 ms"),
    ],
    ids=["node timeout", "execution timeout"],
)
def test_a_trickling_server_cannot_keep_a_run_past_its_timeout(
    client: httpx.Client,
    owner: dict[str, str],
    trickle_server: str,
    node_timeout_ms: int,
    settings: dict[str, Any],
    error: str,
) -> None:
    workflow_id = _workflow(
        client,
        owner,
        [
            trigger(),
            _node("call", "http_request", url=f"{trickle_server}/", timeout_ms=node_timeout_ms),
        ],
        settings=settings,
    )
    began = time.monotonic()
    response = client.post(
        f"/v1/workflows/{workflow_id}/executions", json={"mode": "sync"}, headers=owner
    )
    elapsed = time.monotonic() - began
    body = response.json()
    assert response.status_code == 200 and body["status"] == "failed", body
    assert error in body["error"]
    assert elapsed < 1.2, elapsed


class _SlowCounter(http.server.BaseHTTPRequestHandler):
    """Counts POSTs, answering each after a pause (so racing runs overlap)."""

    posts: list[str]

    def do_POST(self) -> None:
        self.posts.append(self.path)
        time.sleep(0.3)
        payload = b'{"done": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def roomy_api_url(db_target: PgTarget, app_settings: Settings) -> Iterator[str]:
    """The service with room for 8 sync runs per organisation (the default is 4)."""
    settings = app_settings.model_copy(update={"sync_run_threads": 16, "sync_runs_per_org": 8})
    with serving(create_app(settings, db_target, roles=("write-api", "read-api"))) as url:
        yield url


def test_racing_keyed_sync_runs_make_one_call_and_give_one_answer(
    owner: dict[str, str], roomy_api_url: str
) -> None:
    api_url = roomy_api_url
    posts: list[str] = []
    handler = type("Counter", (_SlowCounter,), {"posts": posts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/charge"
        with httpx.Client(base_url=api_url, timeout=30) as client:
            workflow_id = _workflow(
                client, owner, [trigger(), _node("call", "http_request", method="POST", url=url)]
            )
        key = {"Idempotency-Key": f"charge-{uuid.uuid4()}"}
        answers: list[httpx.Response] = []
        barrier = threading.Barrier(8)

        def post() -> None:
            with httpx.Client(base_url=api_url, timeout=30) as own:
                barrier.wait()
                answers.append(
                    own.post(
                        f"/v1/workflows/{workflow_id}/executions",
                        json={"input": {"amount": 5}, "mode": "sync"},
                        headers={**owner, **key},
                    )
                )

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.shutdown()
    assert posts == ["/charge"]
    finished = [answer.json() for answer in answers if answer.status_code == 200]
    conflicts = [answer.json() for answer in answers if answer.status_code == 409]
    assert len(finished) + len(conflicts) == 8, [a.text for a in answers]
    assert finished, "at least the run that made the call answers with its result"
    assert all(body == finished[0] for body in finished)
    assert finished[0]["status"] == "succeeded"
    ids = {body["execution_id"] for body in finished + conflicts}
    assert len(ids) == 1


def test_one_organisations_sync_runs_leave_the_others_commands_fast(
    owner: dict[str, str], make_key: Any, roomy_api_url: str
) -> None:
    other = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    with httpx.Client(base_url=roomy_api_url, timeout=30) as client:
        workflow_id = _workflow(client, owner, [trigger(), _node("nap", "wait", ms=3000)])
    answers: list[httpx.Response] = []

    def run_sync() -> None:
        with httpx.Client(base_url=roomy_api_url, timeout=30) as own:
            answers.append(
                own.post(
                    f"/v1/workflows/{workflow_id}/executions", json={"mode": "sync"}, headers=owner
                )
            )

    # Ten at once: eight fill this organisation's share (more than the eight
    # command threads, which they once shared), two are refused.
    runs = [threading.Thread(target=run_sync) for _ in range(10)]
    for thread in runs:
        thread.start()
    time.sleep(0.5)  # they are all in their waits by now
    latencies = []
    with httpx.Client(base_url=roomy_api_url, timeout=30) as client:
        for index in range(20):
            began = time.monotonic()
            created = client.post(
                "/v1/workflows", json=workflow_body(name=f"meanwhile {index}"), headers=other
            )
            latencies.append(time.monotonic() - began)
            assert created.status_code == 201, created.text
    still_running = sum(thread.is_alive() for thread in runs)
    for thread in runs:
        thread.join()
    assert still_running >= 8, "the creates were measured while the sync runs held their threads"
    p95 = sorted(latencies)[int(len(latencies) * 0.95) - 1]
    assert p95 < 0.1, latencies
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 8 + [429] * 2
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert "sync runs" in refused.json()["detail"]
