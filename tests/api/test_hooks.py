"""``/hooks/{org}/{path}`` over real HTTP: lookup, auth, the trigger item, body rules."""

from __future__ import annotations

import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from commands import WorkflowApplication
from domain.execution import Execution
from domain.webhooks import sign
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from tests.helpers import noop, webhook, webhook_body


def _hooked(
    client: httpx.Client,
    headers: dict[str, str],
    path: str,
    *,
    auth: dict[str, Any] | None = None,
    response: str = "immediately",
    method: str = "POST",
    activate: bool = True,
) -> tuple[str, dict[str, Any]]:
    body = webhook_body(path=path, method=method)
    body["nodes"][0]["parameters"] |= {"auth": auth or {"type": "none"}, "response": response}
    created = client.post("/v1/workflows", json=body, headers=headers)
    assert created.status_code == 201, created.text
    workflow_id = str(created.json()["id"])
    answer: dict[str, Any] = {}
    if activate:
        activated = client.post(
            f"/v1/workflows/{workflow_id}/activate", headers={**headers, "If-Match": '"1"'}
        )
        assert activated.status_code == 200, activated.text
        answer = activated.json()
    return workflow_id, answer


def _execution(app: WorkflowApplication, response: httpx.Response) -> Execution:
    execution = app.repository.get(uuid.UUID(response.json()["execution_id"]))
    assert isinstance(execution, Execution)
    return execution


def _head(app: WorkflowApplication) -> int:
    return app.recorder.max_notification_id() or 0


def _problem(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    for word in words:
        assert word in response.json()["detail"], (word, response.json()["detail"])


def test_a_call_starts_a_run_of_the_current_revision_with_the_request_as_its_item(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    workflow_id, _ = _hooked(client, owner, "orders/created")
    edited = webhook_body(path="orders/created")["nodes"] + [noop("b")]
    patched = client.patch(
        f"/v1/workflows/{workflow_id}",
        json={
            "nodes": edited,
            "connections": [{"from": "hook", "to": "a"}, {"from": "a", "to": "b"}],
        },
        headers={**owner, "If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text

    called = client.post(
        f"/hooks/{org}/orders/created?source=shop&page=2",
        json={"order": {"id": 7}},
        headers={"Authorization": "Bearer not-for-the-run", "Cookie": "s=1", "X-Shop": "acme"},
    )
    assert called.status_code == 202, called.text
    assert called.json()["status"] == "queued"
    assert called.headers["location"] == f"/v1/executions/{called.json()['execution_id']}"
    execution = _execution(workflow_app, called)
    assert str(execution.workflow_id) == workflow_id and execution.workflow_revision == 2
    assert execution.created_by == "webhook:hook" and execution.mode == "async"
    assert execution.trigger == "webhook" and execution.retry_of is None
    item = execution.input
    assert item["body"] == {"order": {"id": 7}}
    assert item["query"] == {"source": "shop", "page": "2"}
    assert item["headers"]["x-shop"] == "acme"
    assert "authorization" not in item["headers"] and "cookie" not in item["headers"]


def test_unknown_inactive_and_deactivated_hooks_are_404_and_start_nothing(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    workflow_id, _ = _hooked(client, owner, "hooks/sleepy", activate=False)
    before = _head(workflow_app)
    _problem(client.post(f"/hooks/{org}/hooks/sleepy", json={}), 404, "no active webhook")
    _problem(client.post(f"/hooks/{org}/no/such/hook", json={}), 404)
    _problem(client.post(f"/hooks/{org}/bad..path", json={}), 404)
    _problem(client.post("/hooks/another-org/hooks/sleepy", json={}), 404)
    url = f"/v1/workflows/{workflow_id}"
    assert client.post(f"{url}/activate", headers={**owner, "If-Match": '"1"'}).status_code == 200
    _problem(client.put(f"/hooks/{org}/hooks/sleepy", json={}), 404)  # POST only
    assert client.post(f"/hooks/{org}/hooks/sleepy", json={}).status_code == 202
    assert client.post(f"{url}/deactivate", headers={**owner, "If-Match": '"1"'}).status_code == 200
    head = _head(workflow_app)
    _problem(client.post(f"/hooks/{org}/hooks/sleepy", json={}), 404)
    assert _head(workflow_app) == head
    assert head == before + 3  # Activated, one run's Created, Deactivated


def test_a_header_token_is_shown_once_kept_hashed_and_checked(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
) -> None:
    workflow_id, answer = _hooked(client, owner, "secure/in", auth={"type": "header_token"})
    token = answer["webhook_secrets"]["hook"]
    assert len(token) >= 40
    url = f"/hooks/{org}/secure/in"

    before = _head(workflow_app)
    _problem(client.post(url, json={"a": 1}), 401, "missing")
    _problem(
        client.post(url, json={"a": 1}, headers={"X-Webhook-Token": token + "x"}), 401, "wrong"
    )
    assert _head(workflow_app) == before  # a refused call starts nothing

    called = client.post(url, json={"a": 1}, headers={"X-Webhook-Token": token})
    assert called.status_code == 202, called.text
    assert "x-webhook-token" not in _execution(workflow_app, called).input["headers"]

    # The log never holds the token; the service keeps only its SHA-256.
    for event in workflow_app.events.get(uuid.UUID(workflow_id)):
        assert token not in repr(event.__dict__)
    with psycopg.connect(db_target.conninfo()) as conn:
        [(stored,)] = conn.execute(
            "SELECT token_sha256 FROM webhook_secrets WHERE workflow_id = %s", (workflow_id,)
        ).fetchall()
    assert stored == hashlib.sha256(token.encode()).hexdigest()

    # Activating again shows nothing: the token was shown once.
    again = client.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert again.status_code == 200 and "webhook_secrets" not in again.json()
    # Deactivating drops the token; the next activation makes a new one.
    url_wf = f"/v1/workflows/{workflow_id}"
    client.post(f"{url_wf}/deactivate", headers={**owner, "If-Match": '"1"'})
    renewed = client.post(f"{url_wf}/activate", headers={**owner, "If-Match": '"1"'}).json()
    assert renewed["webhook_secrets"]["hook"] != token
    _problem(client.post(url, json={}, headers={"X-Webhook-Token": token}), 401, "wrong")


def test_bodies_json_form_text_and_their_limits(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    workflow_app: WorkflowApplication,
    app_settings: Settings,
) -> None:
    _hooked(client, owner, "bodies")
    url = f"/hooks/{org}/bodies"
    form = client.post(
        url, content=b"a=1&b=x&a=2", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert _execution(workflow_app, form).input["body"] == {"a": ["1", "2"], "b": "x"}
    text = client.post(url, content="plain words", headers={"Content-Type": "text/plain"})
    assert _execution(workflow_app, text).input["body"] == "plain words"
    empty = client.post(url)
    assert _execution(workflow_app, empty).input["body"] is None

    before = _head(workflow_app)
    json_type = {"Content-Type": "application/json"}
    _problem(client.post(url, content=b'{"a": "\\u0000"}', headers=json_type), 422)
    _problem(client.post(url, content=b'{"big": 18446744073709551616}', headers=json_type), 422)
    _problem(client.post(url, content=b"{not json", headers=json_type), 422, "not valid JSON")
    _problem(client.post(url, content=b"\xff\xfe", headers=json_type), 422, "UTF-8")
    too_big = b'{"a": "' + b"x" * app_settings.max_body_bytes + b'"}'
    _problem(client.post(url, content=too_big, headers=json_type), 413)
    assert _head(workflow_app) == before


def test_no_content_answers_204(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    _hooked(client, owner, "quiet", response="no_content", method="PUT")
    quiet = client.put(f"/hooks/{org}/quiet", json={"x": 1})
    assert quiet.status_code == 204 and quiet.content == b""
    assert quiet.headers["location"].startswith("/v1/executions/")


def _deduped(
    client: httpx.Client, owner: dict[str, str], path: str, dedupe: dict[str, Any]
) -> None:
    body = webhook_body(path=path)
    body["nodes"][0]["parameters"]["dedupe"] = dedupe
    created = client.post("/v1/workflows", json=body, headers=owner)
    assert created.status_code == 201, created.text
    activated = client.post(
        f"/v1/workflows/{created.json()['id']}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert activated.status_code == 200, activated.text


def test_a_redelivery_with_the_same_dedupe_header_starts_nothing(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    _deduped(client, owner, "dedupe/header", {"source": "header"})
    url = f"/hooks/{org}/dedupe/header"
    first = client.post(url, json={"try": 1}, headers={"Idempotency-Key": "delivery-1"})
    assert first.status_code == 202, first.text
    head = _head(workflow_app)
    again = client.post(url, json={"try": 2}, headers={"Idempotency-Key": "delivery-1"})
    assert again.status_code == 202 and again.json() == first.json()
    assert _head(workflow_app) == head  # nothing recorded
    assert _execution(workflow_app, again).input["body"] == {"try": 1}
    other = client.post(url, json={"try": 3}, headers={"Idempotency-Key": "delivery-2"})
    assert other.json()["execution_id"] != first.json()["execution_id"]
    # Without a key every delivery runs.
    unkeyed = {client.post(url, json={}).json()["execution_id"] for _ in range(2)}
    assert len(unkeyed) == 2
    _problem(client.post(url, json={}, headers={"Idempotency-Key": "k" * 256}), 422, "dedupe key")


def test_racing_redeliveries_make_one_execution_and_identical_answers(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    _deduped(client, owner, "dedupe/race", {"source": "body", "path": "$.event.id"})
    url = f"/hooks/{org}/dedupe/race"
    head = _head(workflow_app)

    def deliver(attempt: int) -> httpx.Response:
        payload = {"event": {"id": "evt_42"}, "attempt": attempt}
        return client.post(url, json=payload)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(deliver, range(100)))
    assert {a.status_code for a in answers} == {202}, {a.text for a in answers}
    assert len({a.content for a in answers}) == 1  # 100 identical answers
    assert _head(workflow_app) == head + 1  # one execution's Created


def test_when_finished_answers_with_the_run_output(
    client: httpx.Client, owner: dict[str, str], org: str
) -> None:
    body = webhook_body(path="answer/me")
    body["nodes"][0]["parameters"]["response"] = "when_finished"
    body["nodes"][1] = {"id": "a", "type": "set", "parameters": {"fields": {"seen": True}}}
    workflow_id = client.post("/v1/workflows", json=body, headers=owner).json()["id"]
    activated = client.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert activated.status_code == 200, activated.text
    called = client.post(f"/hooks/{org}/answer/me?q=1", json={"n": 1})
    assert called.status_code == 200, called.text
    answer = called.json()
    assert answer["status"] == "succeeded" and answer["error"] is None
    [item] = answer["output"]["a"]
    assert item["seen"] is True and item["body"] == {"n": 1} and item["query"] == {"q": "1"}


def test_an_hmac_signature_of_the_raw_body_is_checked_with_its_timestamp(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    _, answer = _hooked(client, owner, "signed/in", auth={"type": "hmac_sha256", "tolerance_s": 60})
    secret = answer["webhook_secrets"]["hook"].encode()
    url = f"/hooks/{org}/signed/in"
    body = b'{"event": {"id": "evt_1"}}'

    def headers(signature: str, timestamp: int) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Webhook-Signature": signature,
            "X-Webhook-Timestamp": str(timestamp),
        }

    now = int(time.time())
    before = _head(workflow_app)
    _problem(client.post(url, content=body), 401, "signature header is missing")
    wrong_key = sign(b"not the secret", now, body)
    _problem(client.post(url, content=body, headers=headers(wrong_key, now)), 401, "does not match")
    other_body = sign(secret, now, b'{"event": {"id": "evt_2"}}')
    _problem(
        client.post(url, content=body, headers=headers(other_body, now)), 401, "does not match"
    )
    stale = sign(secret, now - 600, body)
    _problem(client.post(url, content=body, headers=headers(stale, now - 600)), 401, "60 s")
    assert _head(workflow_app) == before  # nothing refused started anything

    called = client.post(url, content=body, headers=headers(sign(secret, now, body), now))
    assert called.status_code == 202, called.text
    item = _execution(workflow_app, called).input
    assert item["body"] == {"event": {"id": "evt_1"}}
    assert "x-webhook-signature" not in item["headers"]
    for event in workflow_app.events.get(_execution(workflow_app, called).workflow_id):
        assert secret.decode() not in repr(event.__dict__)


def test_an_edit_of_an_active_workflow_answers_the_secret_of_a_hook_it_adds(
    client: httpx.Client, owner: dict[str, str], org: str
) -> None:
    workflow_id, answer = _hooked(client, owner, "edited/open")
    assert "webhook_secrets" not in answer  # auth none needs no secret
    guarded = webhook(node_id="guarded", path="edited/guarded")
    guarded["parameters"]["auth"] = {"type": "header_token"}
    nodes = [*webhook_body(path="edited/open")["nodes"], guarded]
    connections = [{"from": "hook", "to": "a"}, {"from": "guarded", "to": "a"}]
    patched = client.patch(
        f"/v1/workflows/{workflow_id}",
        json={"nodes": nodes, "connections": connections},
        headers={**owner, "If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    [(node_id, token)] = patched.json()["webhook_secrets"].items()
    assert node_id == "guarded"
    url = f"/hooks/{org}/edited/guarded"
    assert client.post(url, json={}, headers={"X-Webhook-Token": token}).status_code == 202
    _problem(client.post(url, json={}), 401)
    # An edit that leaves the hooks as they are makes no new secret.
    renamed = client.patch(
        f"/v1/workflows/{workflow_id}", json={"name": "n"}, headers={**owner, "If-Match": '"2"'}
    )
    assert renamed.status_code == 200 and "webhook_secrets" not in renamed.json()
    assert client.post(url, json={}, headers={"X-Webhook-Token": token}).status_code == 202


def test_rotating_a_secret_replaces_it_and_is_in_the_history(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    workflow_id, answer = _hooked(client, owner, "rotate/me", auth={"type": "header_token"})
    old = answer["webhook_secrets"]["hook"]
    rotate = f"/v1/workflows/{workflow_id}/webhook-secret/rotate"
    _problem(client.post(rotate, json={"node_id": "hook"}, headers=owner), 428)
    match = {**owner, "If-Match": '"1"'}
    _problem(client.post(rotate, json={"node_id": "a"}, headers=match), 422, "'a'")
    _problem(client.post(rotate, json={"node_id": "hook", "x": 1}, headers=match), 422)

    rotated = client.post(rotate, json={"node_id": "hook"}, headers=match)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["version"] == 1
    new = rotated.json()["webhook_secrets"]["hook"]
    assert new != old
    url = f"/hooks/{org}/rotate/me"
    _problem(client.post(url, json={}, headers={"X-Webhook-Token": old}), 401, "wrong")
    assert client.post(url, json={}, headers={"X-Webhook-Token": new}).status_code == 202

    history = client.get(f"/v1/workflows/{workflow_id}/history", headers=owner).json()["items"]
    assert [(i["type"], i["changes"]) for i in history][-1] == (
        "Workflow.WebhookSecretRotated",
        [],
    )
    for event in workflow_app.events.get(uuid.UUID(workflow_id)):
        assert new not in repr(event.__dict__) and old not in repr(event.__dict__)

    client.post(f"/v1/workflows/{workflow_id}/deactivate", headers=match)
    _problem(client.post(rotate, json={"node_id": "hook"}, headers=match), 409, "not active")


def test_a_hook_answers_as_its_current_revision_says_after_when_finished_calls(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    # The process remembers that this route answered when_finished (to pick
    # the pool) and keeps the workflow at its head version; neither may
    # outlive an edit or a deactivation.
    workflow_id, _ = _hooked(client, owner, "then/now", response="when_finished")
    for _ in range(3):
        called = client.post(f"/hooks/{org}/then/now", json={"n": 1})
        assert called.status_code == 200, called.text
        assert _execution(workflow_app, called).workflow_revision == 1
    nodes = webhook_body(path="then/now")["nodes"]
    nodes[0]["parameters"] |= {"auth": {"type": "none"}, "response": "immediately"}
    url = f"/v1/workflows/{workflow_id}"
    edited = client.patch(url, json={"nodes": nodes}, headers={**owner, "If-Match": '"1"'})
    assert edited.status_code == 200, edited.text
    queued = client.post(f"/hooks/{org}/then/now", json={"n": 2})
    assert queued.status_code == 202, queued.text
    assert _execution(workflow_app, queued).workflow_revision == 2
    assert client.post(f"{url}/deactivate", headers={**owner, "If-Match": '"2"'}).status_code == 200
    head = _head(workflow_app)
    _problem(client.post(f"/hooks/{org}/then/now", json={}), 404)
    assert _head(workflow_app) == head
