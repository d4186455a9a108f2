"""The live stream, ``GET /v1/stream``, against a real server and PostgreSQL.

Each test reads the stream over real HTTP (httpx, or a raw socket for the
client that never reads) and checks what arrives against the log itself.
"""

from __future__ import annotations

import queue
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from commands import WorkflowApplication
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_app
from tests.helpers import serving, workflow_body

HEARTBEAT_S = 0.5
PER_ORG = 3
QUEUE_EVENTS = 200


@pytest.fixture(scope="module")
def stream_app(db_target: PgTarget, app_settings: Settings) -> Iterator[tuple[Any, str]]:
    """The write and read APIs with small stream limits: (the app, its URL)."""
    settings = app_settings.model_copy(
        update={
            "stream_heartbeat_s": HEARTBEAT_S,
            "stream_connections_per_org": PER_ORG,
            "stream_queue_events": QUEUE_EVENTS,
            # The latency test sends 100 commands in a row.
            "rate_limit_write_per_s": 0,
            "rate_limit_read_per_s": 0,
        }
    )
    app = create_app(settings, db_target, roles=("write-api", "read-api"))
    with serving(app) as url:
        yield app, url


@pytest.fixture
def url(stream_app: tuple[Any, str]) -> str:
    return stream_app[1]


@pytest.fixture
def auth(org: str, make_key: Callable[[str, str], str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(org, 'viewer')}"}


@pytest.fixture
def editor(org: str, make_key: Callable[[str, str], str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(org, 'editor')}"}


class Message:
    def __init__(self, event_id: int, event: str, data: dict[str, Any], at: float) -> None:
        self.id, self.event, self.data, self.at = event_id, event, data, at


class StreamReader:
    """Reads one stream in a thread: its messages and comments, as they arrive."""

    def __init__(self, url: str, headers: dict[str, str], params: dict[str, str] | None = None):
        self.messages: queue.Queue[Message] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.status: int | None = None
        self.ended = threading.Event()
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(url, headers, params or {}), daemon=True
        )
        self._thread.start()
        assert self.opened.wait(20), "the stream did not open"

    def _read(self, url: str, headers: dict[str, str], params: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30, read=60)) as client,
                client.stream("GET", f"{url}/v1/stream", headers=headers, params=params) as resp,
            ):
                self.status = resp.status_code
                self.opened.set()
                if resp.status_code != 200:
                    resp.read()
                    return
                fields: dict[str, str] = {}
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments.put(line[1:].strip())
                    elif line == "":
                        if "data" in fields:
                            self.messages.put(
                                Message(
                                    int(fields["id"]),
                                    fields["event"],
                                    orjson.loads(fields["data"]),
                                    time.perf_counter(),
                                )
                            )
                        fields = {}
                    else:
                        name, _, value = line.partition(": ")
                        fields[name] = value
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def take(self, count: int, timeout: float = 30) -> list[Message]:
        deadline = time.monotonic() + timeout
        taken = []
        while len(taken) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(taken)} of {count} events arrived"
            taken.append(self.messages.get(timeout=left))
        return taken

    def none_within(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        """Stop reading (the connection closes when the thread ends)."""
        self._stop.set()


def _write_events(
    app: WorkflowApplication, org_id: str, count: int, per_save: int = 100
) -> list[int]:
    """``count`` events of ``org_id`` straight into the log, ``per_save`` per transaction.

    Returns their positions."""
    meta = EventMeta(org_id=org_id, actor="test:bulk", correlation_id="bulk")
    positions: list[int] = []
    while len(positions) < count:
        workflow = Workflow.create(
            workflow_id=uuid.uuid4(), definition=workflow_body("bulk"), meta=meta
        )
        for i in range(min(per_save, count - len(positions)) - 1):
            workflow.update({"description": f"step {i}"}, meta)
        recordings = app.save(workflow)
        positions += [recording.notification.id for recording in recordings]
    return positions


def _create(url: str, headers: dict[str, str], name: str = "wf") -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/workflows", headers=headers, json=workflow_body(name))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _streams_of(stream_app: tuple[Any, str], org_id: str) -> int:
    return int(stream_app[0].state.stream_hub.streams_of(org_id))


def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_event_reaches_a_connected_client_quickly(
    url: str, auth: dict[str, str], editor: dict[str, str], stream_app: tuple[Any, str], org: str
) -> None:
    reader = StreamReader(url, auth)
    _wait_for(lambda: _streams_of(stream_app, org) == 1)
    latencies = []
    with httpx.Client(base_url=url, headers=editor, timeout=30) as client:
        for i in range(100):
            response = client.post("/v1/workflows", json=workflow_body(f"wf {i}"))
            answered = time.perf_counter()
            assert response.status_code == 201, response.text
            created = response.json()
            (message,) = reader.take(1)
            assert message.id == created["position"]
            latencies.append(message.at - answered)
    reader.close()
    data = message.data
    assert message.event == "Workflow.Created"
    assert data["type"] == "Workflow.Created"
    assert data["aggregate_id"] == created["id"]
    assert data["aggregate_type"] == "workflow"
    assert data["position"] == created["position"]
    assert data["revision"] == 1 and data["version"] == 1
    assert data["timestamp"].endswith("+00:00")
    assert data["actor"].startswith("key:") or data["actor"]
    assert {"op": "add", "path": "/name", "value": "wf 99"} in data["patch"]
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"\nstream latency after the command's answer over 100 commands: "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {cuts[94] * 1000:.1f} ms"
    )
    assert cuts[94] < 2.0


def test_an_update_carries_the_patch_history_gives(
    url: str, auth: dict[str, str], editor: dict[str, str]
) -> None:
    created = _create(url, editor)
    reader = StreamReader(url, auth, {"after": str(created["position"])})
    updated = httpx.patch(
        f"{url}/v1/workflows/{created['id']}",
        headers={**editor, "If-Match": '"1"'},
        json={"description": "now described", "tags": ["x"]},
    )
    assert updated.status_code == 200, updated.text
    (message,) = reader.take(1)
    reader.close()
    history = httpx.get(f"{url}/v1/workflows/{created['id']}/history", headers=auth).json()
    assert message.data["patch"] == history["items"][-1]["changes"]
    assert message.data["revision"] == 2 and message.event == "Workflow.Updated"


def test_read_your_writes_with_the_commands_position(
    url: str, auth: dict[str, str], editor: dict[str, str]
) -> None:
    created = _create(url, editor)
    reader = StreamReader(url, auth, {"after": str(created["position"] - 1)})
    (message,) = reader.take(1)
    reader.close()
    assert message.id == created["position"] and message.data["aggregate_id"] == created["id"]


def test_a_reconnect_with_last_event_id_loses_and_repeats_nothing(
    url: str,
    auth: dict[str, str],
    org: str,
    workflow_app: WorkflowApplication,
    make_key: Callable[[str, str], str],
) -> None:
    # Another organisation writes in between, so positions of ours have gaps.
    other = f"org-{uuid.uuid4().hex[:12]}"
    start = _write_events(workflow_app, org, 1)[0]
    expected = [start]
    writing_done = threading.Event()

    def write() -> None:
        for _ in range(20):
            expected.extend(_write_events(workflow_app, org, 500))
            _write_events(workflow_app, other, 50)
        writing_done.set()

    writer = threading.Thread(target=write)
    writer.start()
    received: list[int] = []
    last = start
    reconnects = 0
    # Read a few hundred events per connection, drop it, resume from the last id.
    while not (writing_done.is_set() and received and received[-1] == expected[-1]):
        reader = StreamReader(url, {**auth, "Last-Event-ID": str(last)})
        try:
            for message in reader.take(1, timeout=30) + _take_up_to(reader, 700):
                received.append(message.id)
                last = message.id
                if writing_done.is_set() and message.id == expected[-1]:
                    break
        finally:
            reader.close()
        reconnects += 1
        assert reconnects < 200
    writer.join()
    assert len(expected) == 10_001
    assert received == expected[1:], "a gap or a duplicate across reconnects"
    print(f"\n10,000 events over {reconnects} connections, none lost or repeated")


def _take_up_to(reader: StreamReader, count: int) -> list[Message]:
    taken = []
    for _ in range(count):
        try:
            taken.append(reader.messages.get(timeout=2))
        except queue.Empty:
            break
    return taken


def test_another_organisations_events_never_arrive(
    url: str,
    auth: dict[str, str],
    org: str,
    workflow_app: WorkflowApplication,
    make_key: Callable[[str, str], str],
) -> None:
    other = f"org-{uuid.uuid4().hex[:12]}"
    before = _write_events(workflow_app, other, 50)
    reader = StreamReader(url, auth, {"after": str(before[0] - 1)})
    others = _write_events(workflow_app, other, 200)
    ours = _write_events(workflow_app, org, 20)
    messages = reader.take(20)
    assert reader.none_within(0.5)
    reader.close()
    assert [m.id for m in messages] == ours
    assert not {m.id for m in messages} & set(before + others)
    # And the other organisation's own key sees its events only.
    theirs = StreamReader(
        url, {"Authorization": f"Bearer {make_key(other, 'viewer')}"}, {"after": str(before[0] - 1)}
    )
    assert [m.id for m in theirs.take(250)] == before + others
    theirs.close()


def test_filters_by_type_and_aggregate(
    url: str, auth: dict[str, str], editor: dict[str, str]
) -> None:
    first, second = _create(url, editor, "first"), _create(url, editor, "second")
    after = str(first["position"] - 1)
    by_aggregate = StreamReader(url, auth, {"after": after, "aggregate_id": second["id"]})
    by_type = StreamReader(url, auth, {"after": after, "types": "Workflow.Updated"})
    by_wildcard = StreamReader(url, auth, {"after": after, "types": "Execution.*,Workflow.Deleted"})
    for created in (first, second):
        patched = httpx.patch(
            f"{url}/v1/workflows/{created['id']}",
            headers={**editor, "If-Match": '"1"'},
            json={"description": "x"},
        )
        assert patched.status_code == 200, patched.text
    deleted = httpx.delete(
        f"{url}/v1/workflows/{first['id']}", headers={**editor, "If-Match": '"2"'}
    )
    assert deleted.status_code == 200
    got = by_aggregate.take(2)
    assert [m.event for m in got] == ["Workflow.Created", "Workflow.Updated"]
    assert {m.data["aggregate_id"] for m in got} == {second["id"]}
    assert [(m.event, m.data["aggregate_id"]) for m in by_type.take(2)] == [
        ("Workflow.Updated", first["id"]),
        ("Workflow.Updated", second["id"]),
    ]
    assert [m.event for m in by_wildcard.take(1)] == ["Workflow.Deleted"]
    for reader in (by_aggregate, by_type, by_wildcard):
        assert reader.none_within(0.3)
        reader.close()


def test_execution_progress_arrives(url: str, auth: dict[str, str], editor: dict[str, str]) -> None:
    created = _create(url, editor)
    reader = StreamReader(url, auth, {"after": str(created["position"]), "types": "Execution.*"})
    run = httpx.post(
        f"{url}/v1/workflows/{created['id']}/executions",
        headers=editor,
        json={"input": {"n": 1}, "mode": "sync"},
        timeout=30,
    )
    assert run.status_code == 200, run.text
    execution_id = run.json()["execution_id"]
    seen = []
    while not seen or seen[-1].event != "Execution.Succeeded":
        seen += reader.take(1)
    reader.close()
    assert {m.data["aggregate_id"] for m in seen} == {execution_id}
    assert {m.data["aggregate_type"] for m in seen} == {"execution"}
    assert seen[0].event == "Execution.Queued"
    assert seen[0].data["details"]["workflow_id"] == created["id"]
    nodes = [(m.event, m.data["details"]["node_id"]) for m in seen if "Node" in m.event]
    assert ("Execution.NodeStarted", "a") in nodes and ("Execution.NodeSucceeded", "a") in nodes


@pytest.mark.parametrize(
    ("params", "headers", "named"),
    [
        ({"types": "Workflow.Nope"}, {}, "types"),
        ({"types": "drop table"}, {}, "types"),
        ({"after": "-1"}, {}, "after"),
        ({"after": "9" * 30}, {}, "after"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ],
)
def test_bad_parameters_are_400_naming_them(
    url: str, auth: dict[str, str], params: dict[str, str], headers: dict[str, str], named: str
) -> None:
    response = httpx.get(f"{url}/v1/stream", headers={**auth, **headers}, params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert named in response.json()["detail"]


def test_without_a_key_is_401(url: str) -> None:
    response = httpx.get(f"{url}/v1/stream")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_the_per_organisation_cap_gives_429(
    url: str,
    auth: dict[str, str],
    org: str,
    stream_app: tuple[Any, str],
    make_key: Callable[[str, str], str],
) -> None:
    readers = [StreamReader(url, auth) for _ in range(PER_ORG)]
    assert all(reader.status == 200 for reader in readers)
    refused = httpx.get(f"{url}/v1/stream", headers=auth)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    assert "REPORUNNER_STREAM_CONNECTIONS_PER_ORG" in refused.json()["detail"]
    # Another organisation is not held back by this one's streams.
    other_key = make_key(f"org-{uuid.uuid4().hex[:8]}", "viewer")
    other = StreamReader(url, {"Authorization": f"Bearer {other_key}"})
    assert other.status == 200
    other.close()
    # A closed stream frees its place.
    readers[0].close()
    _wait_for(lambda: _streams_of(stream_app, org) == PER_ORG - 1)
    again = StreamReader(url, auth)
    assert again.status == 200
    for reader in [*readers[1:], again]:
        reader.close()


def test_a_slow_client_is_dropped_while_others_go_on(
    url: str,
    auth: dict[str, str],
    org: str,
    stream_app: tuple[Any, str],
    workflow_app: WorkflowApplication,
) -> None:
    # A client that never reads, with a tiny receive buffer.
    host, port = url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, int(port)))
    slow.sendall(
        f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {auth['Authorization']}\r\n\r\n".encode()
    )
    reader = StreamReader(url, auth)
    _wait_for(lambda: _streams_of(stream_app, org) == 2)
    dropped_before = _dropped(stream_app)
    # Far more bytes than the socket buffers hold, then more events than the queue.
    positions: list[int] = []
    while _streams_of(stream_app, org) == 2:
        positions += _write_events(workflow_app, org, 500)
        assert len(positions) < 50_000, "the slow client was never dropped"
    assert _dropped(stream_app) == dropped_before + 1
    positions += _write_events(workflow_app, org, 100)
    received = [m.id for m in reader.take(len(positions), timeout=60)]
    assert received == positions, "the reading client missed events"
    reader.close()
    # The dropped stream ends: what the server had sent drains, then the connection closes.
    slow.settimeout(30)
    while slow.recv(65536):
        pass
    slow.close()


def _dropped(stream_app: tuple[Any, str]) -> float:
    from infrastructure.metrics import STREAMS_DROPPED

    return float(STREAMS_DROPPED._value.get())


def test_heartbeats_arrive_on_a_quiet_stream(url: str, auth: dict[str, str]) -> None:
    reader = StreamReader(url, {**auth})
    assert reader.comments.get(timeout=5) == "connected"
    started = time.monotonic()
    assert reader.comments.get(timeout=HEARTBEAT_S * 10) == "keep-alive"
    assert reader.comments.get(timeout=HEARTBEAT_S * 10) == "keep-alive"
    assert time.monotonic() - started >= HEARTBEAT_S
    reader.close()
