"""Erasing a data subject, end to end: before and after, every place a payload could hide.

The subject's values (an e-mail and a name, in the input and in node outputs)
are searched for in the raw log bytes, the views, the relay's Redis stream,
an audit export and every API answer; after the erasure the subject reads
erased everywhere, another subject reads in clear, and the audit chain, the
export and a replay check all still verify.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from pydantic import SecretStr

from commands import WorkflowApplication
from infrastructure.audit import verify_export
from infrastructure.bus import events_stream
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from projections.audit_chain import AuditChainFollower, export_org, verify_log
from projections.executions import EXECUTIONS, ExecutionsProjection
from projections.relay import BusConfig, Relay
from projections.runner import Projector, start_in_thread
from projections.store import collection_table
from reporunner.wiring import create_app
from tests.helpers import serving, trigger, webhook_body, workflow_body
from tests.integration.test_cli import ROOT, _url

ADA_EMAIL = "ada.lovelace.7731@example.org"
ADA_NAME = "Augusta Ada King-Noel"
BOB_EMAIL = "bob.babbage.2290@example.net"
BOB_NAME = "Charles Babbage Jr"
ADA = {"customer": {"id": "cust-ada-7731", "email": ADA_EMAIL, "name": ADA_NAME}}
BOB = {"customer": {"id": "cust-bob-2290", "email": BOB_EMAIL, "name": BOB_NAME}}
ADA_VALUES = [ADA_EMAIL.encode(), ADA_NAME.encode(), b"cust-ada-7731"]
BOB_VALUES = [BOB_EMAIL.encode(), BOB_NAME.encode()]
ERASED = {"$erased": True}


@pytest.fixture(scope="module")
def master_key() -> str:
    # The suite's key: every test of the run shares its database's data keys.
    return os.environ["REPORUNNER_MASTER_KEY"]


@pytest.fixture(scope="module")
def sealing_url(db_target: PgTarget, app_settings: Settings, master_key: str) -> Iterator[str]:
    settings = app_settings.model_copy(
        update={"seal_payloads": True, "master_key": SecretStr(master_key)}
    )
    with serving(create_app(settings, db_target, roles=("write-api", "read-api"))) as url:
        yield url


@pytest.fixture
def api(sealing_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sealing_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def executions_projector(workflow_app: WorkflowApplication, db_target: PgTarget) -> Iterator[None]:
    stop = threading.Event()
    projector = Projector(workflow_app, db_target, ExecutionsProjection(), poll_interval=0.2)
    thread = start_in_thread(projector, stop)
    yield
    stop.set()
    thread.join(timeout=10)


def _headers(make_key: Callable[[str, str], str], org: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(org, role)}"}


def _workflow(api: httpx.Client, owner: dict[str, str]) -> str:
    nodes = [
        trigger(),
        {"id": "copy", "type": "noop", "parameters": {}},
        {"id": "tag", "type": "set", "parameters": {"fields": {"seen": True}}},
        {"id": "boom", "type": "stop_and_error", "parameters": {"message": "declined"}},
    ]
    ids = [node["id"] for node in nodes]
    body = workflow_body(
        nodes=nodes,
        connections=[{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
        settings={"data_subject": "$.customer.id"},
    )
    response = api.post("/v1/workflows", json=body, headers=owner)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _run(api: httpx.Client, owner: dict[str, str], workflow_id: str, item: Any) -> dict[str, Any]:
    response = api.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": item, "mode": "sync"},
        headers=owner,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _document(
    api: httpx.Client, owner: dict[str, str], execution_id: str, position: int
) -> dict[str, Any]:
    response = api.get(
        f"/v1/executions/{execution_id}",
        headers={**owner, "X-Min-Position": str(position)},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _log_bytes(db_target: PgTarget) -> bytes:
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute("SELECT state FROM reporunner_events").fetchall()
    return b"".join(bytes(row[0]) for row in rows)


def _view_bytes(db_target: PgTarget, org: str) -> bytes:
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute(
            f"SELECT data::text FROM {collection_table(EXECUTIONS)} WHERE org_id = %s", (org,)
        ).fetchall()
    assert rows, "the executions view holds this organisation's executions"
    return "".join(row[0] for row in rows).encode()


def _stream_bytes(workflow_app: WorkflowApplication, db_target: PgTarget, org: str) -> bytes:
    prefix = f"reporunner-test-erasure-{uuid.uuid4().hex[:8]}"
    relay = Relay(
        workflow_app,
        db_target,
        os.environ["REDIS_URL"],
        BusConfig(prefix=prefix),
        name=f"relay-erasure-{uuid.uuid4().hex[:8]}",
    )
    try:
        with relay.connect() as conn:
            relay.ensure_tracking(conn)
            relay.reconcile(conn)
            relay.catch_up(conn)
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        entries = client.xrange(events_stream(prefix, org))
        client.delete(events_stream(prefix, org), f"{prefix}:events")
        client.close()
    finally:
        relay.redis.close()
    assert entries, "the relay published this organisation's events"
    return b"".join(value for _, fields in entries for value in fields.values())


def _export_bytes(
    db_target: PgTarget, settings: Settings, org: str, tmp_path: Path, name: str
) -> bytes:
    follower = AuditChainFollower.from_settings(db_target, settings)
    with follower.connect() as conn:
        follower.catch_up(conn)
    out = tmp_path / f"{name}.jsonl"
    export_org(db_target, org, None, None, out, settings.audit_key)
    checked = verify_export(out, settings.audit_key)
    assert checked.ok, checked.reason
    return out.read_bytes()


def _summary(api: httpx.Client, owner: dict[str, str], position: int) -> Any:
    # A fixed period, so that two summaries compare.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    period = {"since": today.isoformat(), "until": (today + timedelta(days=1)).isoformat()}
    response = api.get(
        "/v1/dashboards/summary",
        params=period,
        headers={**owner, "X-Min-Position": str(position)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["totals"]["failed"] >= 2, body
    return body


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (the relay)")
def test_erasing_a_subject_leaves_their_payloads_unreadable_everywhere_and_others_intact(
    api: httpx.Client,
    executions_projector: None,
    make_key: Callable[[str, str], str],
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    master_key: str,
    app_settings: Settings,
    org: str,
    tmp_path: Path,
) -> None:
    owner = _headers(make_key, org, "owner")
    workflow_id = _workflow(api, owner)
    ada = _run(api, owner, workflow_id, ADA)
    bob = _run(api, owner, workflow_id, BOB)
    # The sync caller reads its answer in clear.
    assert ada["status"] == "failed" and "declined" in ada["error"]
    ada_doc = _document(api, owner, ada["execution_id"], bob["position"])
    assert ada_doc["input"] == ADA
    outputs = {run["node_id"]: run["outputs"] for run in ada_doc["node_runs"]}
    assert outputs["copy"] == {"main": [ADA]}
    assert outputs["tag"] == {"main": [{**ADA, "seen": True}]}
    assert "declined" in ada_doc["error"]
    listed = api.get(f"/v1/workflows/{workflow_id}/executions", headers=owner).json()["items"]
    assert {item["id"] for item in listed} == {ada["execution_id"], bob["execution_id"]}
    assert all("declined" in item["error"] for item in listed)
    summary_before = _summary(api, owner, bob["position"])

    # Before: no plaintext anywhere but in the API's answers.
    stores = {
        "log": _log_bytes(db_target),
        "views": _view_bytes(db_target, org),
        "streams": _stream_bytes(workflow_app, db_target, org),
        "export": _export_bytes(db_target, app_settings, org, tmp_path, "before"),
    }
    for where, raw in stores.items():
        for value in ADA_VALUES + BOB_VALUES:
            assert value not in raw, f"{value!r} in the {where}"
    assert b"$sealed" in stores["export"] and b"$sealed" in stores["views"]
    # The relay's envelopes are payload-free: no ciphertext either.
    assert b"$sealed" not in stores["streams"] and b"sealed_fields" in stores["streams"]

    # Only owners erase.
    editor = _headers(make_key, org, "editor")
    refused = api.post("/v1/data-subjects/cust-ada-7731/erase", headers=editor)
    assert refused.status_code == 403
    erased = api.post("/v1/data-subjects/cust-ada-7731/erase", headers=owner)
    assert erased.status_code == 200, erased.text
    answer = erased.json()
    assert answer["erased_now"] is True and answer["vacuumed"] is True
    assert answer["erased_by"].startswith("apikey:")
    assert "cust-ada-7731" not in erased.text
    again = api.post("/v1/data-subjects/cust-ada-7731/erase", headers=owner).json()
    assert again["erased_now"] is False and again["position"] == answer["position"]

    # After: Ada reads erased in every answer, Bob in clear.
    position = answer["position"]
    ada_after = _document(api, owner, ada["execution_id"], position)
    assert ada_after["input"] == ERASED and ada_after["error"] == ERASED
    assert all(run["outputs"] == ERASED for run in ada_after["node_runs"] if run["outputs"])
    assert ada_after["status"] == "failed" and ada_after["node_summary"] == ada_doc["node_summary"]
    bob_after = _document(api, owner, bob["execution_id"], position)
    assert bob_after["input"] == BOB and "declined" in bob_after["error"]
    listed = api.get(f"/v1/workflows/{workflow_id}/executions", headers=owner).json()["items"]
    errors = {item["id"]: item["error"] for item in listed}
    assert errors[ada["execution_id"]] == ERASED and "declined" in errors[bob["execution_id"]]
    # The dashboards count what they counted.
    assert _summary(api, owner, position) == summary_before
    # The Erased event names no one.
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT state FROM reporunner_events WHERE topic LIKE %s ORDER BY notification_id "
            "DESC LIMIT 1",
            ("%DataSubject.Erased",),
        ).fetchone()
        assert row is not None
        assert answer["subject_scope"].encode() in bytes(row[0])
        # The destroyed key is gone from the table (no wrapped bytes kept).
        wrapped = conn.execute(
            "SELECT wrapped FROM data_keys WHERE org_id = %s AND purpose = 'subject' "
            "AND scope = %s",
            (org, answer["subject_scope"]),
        ).fetchone()
        assert wrapped == (None,)
    # Retrying or running Ada again is refused; Bob retries fine.
    retry = api.post(
        f"/v1/executions/{ada['execution_id']}/retry", json={"from": "start"}, headers=owner
    )
    assert retry.status_code == 409 and retry.json()["type"].endswith("execution-payload-erased")
    rerun = api.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": ADA, "mode": "sync"},
        headers=owner,
    )
    assert rerun.status_code == 409 and rerun.json()["type"].endswith("data-subject-erased")
    assert _run(api, owner, workflow_id, BOB)["status"] == "failed"

    # The exported ciphertext still verifies; the audit chain and the views too.
    export_after = _export_bytes(db_target, app_settings, org, tmp_path, "after")
    assert stores["export"].split(b"\n")[0] in export_after  # the same events, byte for byte
    for value in ADA_VALUES + BOB_VALUES:
        assert value not in export_after
    verified = verify_log(db_target, app_settings.audit_key)
    assert verified.ok, verified.reason
    env = {
        **os.environ,
        "DATABASE_URL": _url(db_target),
        "REPORUNNER_LOG_FORMAT": "json",
        "REPORUNNER_MASTER_KEY": master_key,
    }
    done = subprocess.run(
        [sys.executable, "-m", "reporunner", "replay", "--check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    # The command line erases the same way (and is idempotent with the API).
    done = subprocess.run(
        [sys.executable, "-m", "reporunner", "erase", "--org", org, "--subject", "cust-bob-2290"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"erased_now":true' in done.stdout
    # Another process's key cache may hold Bob's key for a few seconds (README);
    # the log itself no longer opens for him.
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM data_keys WHERE org_id = %s AND purpose = 'subject' "
            "AND wrapped IS NULL",
            (org,),
        ).fetchone()
    assert row == (2,)


def test_a_webhook_body_is_sealed_under_its_subject_and_answered_in_clear(
    api: httpx.Client,
    make_key: Callable[[str, str], str],
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    org: str,
) -> None:
    owner = _headers(make_key, org, "owner")
    body = webhook_body(path="signups/new")
    body["nodes"][0]["parameters"] |= {"response": "when_finished"}
    body["settings"] = {"data_subject": "$.body.customer.id"}
    created = api.post("/v1/workflows", json=body, headers=owner)
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    activated = api.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert activated.status_code == 200, activated.text
    called = api.post(f"/hooks/{org}/signups/new", json=ADA)
    assert called.status_code == 200, called.text
    assert called.json()["output"]["a"][0]["body"] == ADA  # the caller reads it in clear
    execution_id = called.json()["execution_id"]
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT state FROM reporunner_events WHERE originator_id = %s", (execution_id,)
        ).fetchall()
    raw = b"".join(bytes(row[0]) for row in rows)
    for value in ADA_VALUES:
        assert value not in raw
    recorded = workflow_app.repository.get(uuid.UUID(execution_id))
    # Sealed under the day's key and the subject's (the id found in the body).
    assert len(recorded.input["$sealed"]["keys"]) == 2  # type: ignore[attr-defined]
