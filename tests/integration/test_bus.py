"""The relay and the consumer library against the real Redis and PostgreSQL.

The module has a database of its own (its log gets big). Every stream lives
under a prefix of this run's own (``reporunner-test-<uuid>``), deleted at the
end; each test takes a sub-prefix and a relay name (its tracking row and lock)
of its own. The Redis-restart test runs a throwaway ``redis-server`` rather
than touch the shared one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

import migrations
from commands import (
    CommandContext,
    CreateWorkflow,
    UpdateWorkflow,
    WorkflowApplication,
    WorkflowCommands,
)
from commands.models import RunWorkflow
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.bus import (
    Consumer,
    Message,
    bus_status,
    connect,
    dlq_list,
    dlq_purge,
    dlq_replay,
    dlq_stream,
    events_stream,
    retry_stream,
)
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE
from infrastructure.settings import Settings
from projections.relay import (
    BusConfig,
    Relay,
    RelayConflict,
    relay_status,
    start_relay_in_thread,
)
from reporunner.wiring import create_execution_services, create_workflow_application
from tests.helpers import free_port, trigger, workflow_body

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_target(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this module's own (overriding the session's).

    Its log gets tens of thousands of events; in the session's log they would
    slow every test that rebuilds views from the whole log.
    """
    name = f"reporunner_test_bus_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_target.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    target = server_target.with_dbname(name)
    migrations.upgrade(target)
    try:
        yield target
    finally:
        with psycopg.connect(server_target.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def workflow_app(db_target: PgTarget, app_settings: Settings) -> Iterator[WorkflowApplication]:
    app = create_workflow_application(db_target, app_settings)
    yield app
    app.close()


@pytest.fixture(scope="module")
def commands(workflow_app: WorkflowApplication) -> WorkflowCommands:
    return WorkflowCommands(workflow_app)


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = connect(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def run_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"reporunner-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def prefix(run_prefix: str) -> str:
    return f"{run_prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_relay(
    workflow_app: WorkflowApplication, db_target: PgTarget, prefix: str
) -> Iterator[Callable[..., Relay]]:
    """Relays on this test's prefix, all sharing one tracking row of the test's own."""
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    made: list[Relay] = []

    def make(relay_class: type[Relay] = Relay, redis_url: str = REDIS_URL, **options: Any) -> Relay:
        config = BusConfig(
            prefix=prefix,
            relay_batch=options.pop("relay_batch", 1000),
            stream_maxlen=options.pop("stream_maxlen", 1_000_000),
        )
        relay = relay_class(workflow_app, db_target, redis_url, config, name=name, **options)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.redis.close()


def _ctx(org: str) -> CommandContext:
    return CommandContext(org_id=org, actor="apikey:test", correlation_id="bus-test")


def _seed(app: WorkflowApplication, org: str, count: int) -> None:
    """``count`` Created events for ``org``, a thousand per save."""
    meta = EventMeta(org_id=org, actor="apikey:seed", correlation_id="seed")
    for start in range(0, count, 1000):
        workflows = [
            Workflow.create(workflow_id=uuid.uuid4(), definition=workflow_body(f"w{i}"), meta=meta)
            for i in range(start, min(count, start + 1000))
        ]
        app.save(*workflows)


def _publish_all(relay: Relay) -> None:
    with relay.connect() as conn:
        relay.ensure_tracking(conn)
        relay.reconcile(conn)
        relay.catch_up(conn)


def _log_positions(
    db_target: PgTarget, org: str | None = None, upto: int | None = None
) -> list[int]:
    query = f"SELECT notification_id FROM {EVENTS_TABLE} WHERE notification_id <= %s"
    params: list[Any] = [upto if upto is not None else 2**62]
    if org is not None:
        query += " AND convert_from(state, 'UTF8')::jsonb #>> '{meta,org_id}' = %s"
        params.append(org)
    with psycopg.connect(db_target.conninfo()) as conn:
        return [row[0] for row in conn.execute(query + " ORDER BY 1", params)]


def _head(db_target: PgTarget) -> int:
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}")
        return int(row.fetchone()[0])  # type: ignore[index]


def _stream_positions(client: redis.Redis, stream: str) -> list[int]:
    """The entry ids of a stream as positions, checking each is ``<position>-0``."""
    positions: list[int] = []
    start = "-"
    while True:
        entries: Any = client.xrange(stream, start, "+", count=5000)
        if not entries:
            return positions
        for entry, fields in entries:
            assert entry == f"{fields['position']}-0"
            positions.append(int(fields["position"]))
        start = "(" + entries[-1][0]


def _bus_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``reporunner bus ...`` in a process of its own: the CLI configures logging globally."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from reporunner.bus_cli import bus_app; bus_app()",
            *args,
            "--redis-url",
            REDIS_URL,
        ],
        env={**os.environ, "REPORUNNER_LOG_FORMAT": "json"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _poll_until(consumers: list[Consumer], done: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        if not sum(consumer.poll_once(block_ms=20) for consumer in consumers):
            time.sleep(0.01)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the relay --------------------------------------------------------------------------


def test_relay_publishes_the_whole_log_in_order(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    db_target: PgTarget,
    redis_client: redis.Redis,
    make_relay: Callable[..., Relay],
    prefix: str,
    org: str,
) -> None:
    _seed(workflow_app, org, 10_000)
    created = commands.create(CreateWorkflow(**workflow_body("edited")), _ctx(org))
    updated = commands.update(created.workflow_id, UpdateWorkflow(name="renamed"), 1, _ctx(org))
    relay = make_relay()

    _publish_all(relay)

    head = relay.status().position
    assert head == _head(db_target) and relay.status().lag == 0
    assert _stream_positions(redis_client, events_stream(prefix)) == _log_positions(
        db_target, upto=head
    )
    org_positions = _stream_positions(redis_client, events_stream(prefix, org))
    assert org_positions == _log_positions(db_target, org)
    assert len(org_positions) == 10_002
    assert relay.already_published == 0
    entry: Any = redis_client.xrange(
        events_stream(prefix, org), f"{updated.position}-0", f"{updated.position}-0"
    )
    fields = entry[0][1]
    assert fields["type"] == "Workflow.Updated"
    assert fields["aggregate_id"] == str(created.workflow_id)
    assert (fields["version"], fields["org_id"], fields["actor"]) == ("2", org, "apikey:test")
    assert fields["correlation_id"] == "bus-test"
    assert fields["timestamp"].endswith("+00:00")
    message = Message.from_entry(events_stream(prefix, org), entry[0][0], fields, attempt=1)
    assert message.data["changes"] == {"name": "renamed"}
    assert message.data["meta"]["org_id"] == org


def test_relay_killed_between_publishing_and_committing_leaves_no_gap_nor_duplicate(
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    redis_client: redis.Redis,
    make_relay: Callable[..., Relay],
    prefix: str,
    org: str,
) -> None:
    class KilledBeforeCommit(Relay):
        def commit_position(self, conn: psycopg.Connection[Any], after: int, last: int) -> None:
            raise RuntimeError("killed between XADD and the position commit")

    _seed(workflow_app, org, 600)
    killed = make_relay(KilledBeforeCommit, relay_batch=500)
    with killed.connect() as conn:
        killed.ensure_tracking(conn)
        with pytest.raises(RuntimeError, match="killed"):
            killed.publish_batch(conn)
    first_batch = _stream_positions(redis_client, events_stream(prefix))
    assert len(first_batch) == 500
    assert relay_status_position(db_target, killed.name) == 0

    restarted = make_relay(relay_batch=500)
    _publish_all(restarted)

    # The first batch again: every entry refused (all-events and organisation stream).
    assert restarted.already_published == 2 * 500
    head = restarted.status().position
    assert _stream_positions(redis_client, events_stream(prefix)) == _log_positions(
        db_target, upto=head
    )
    assert _stream_positions(redis_client, events_stream(prefix, org)) == _log_positions(
        db_target, org
    )


def test_a_relay_whose_streams_were_lost_publishes_the_retained_window_again(
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    redis_client: redis.Redis,
    make_relay: Callable[..., Relay],
    prefix: str,
    org: str,
) -> None:
    _seed(workflow_app, org, 300)
    relay = make_relay(stream_maxlen=100)
    head = _head(db_target)
    with relay.connect() as conn:
        relay.ensure_tracking(conn)
        # Published up to the head, then Redis lost the streams (no such stream now).
        relay.commit_position(conn, 0, head)
        relay.reconcile(conn)
        assert relay.status().position == head - 100
        relay.catch_up(conn)
        assert _stream_positions(redis_client, events_stream(prefix)) == list(
            range(head - 99, head + 1)
        )
        # A stream ahead of the log (another deployment on this prefix?): refuse.
        redis_client.xadd(
            events_stream(prefix), {"position": str(head + 1000)}, id=f"{head + 1000}-0"
        )
        with pytest.raises(RelayConflict, match="beyond the log's head"):
            relay.reconcile(conn)
    # Running, it keeps retrying and says why in its status.
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,))
    thread.start()
    try:
        _wait_for(lambda: relay.status().failing_since is not None, 10, "the relay to fail")
        assert relay.status().summary().startswith("failing since")
        assert "RelayConflict" in relay.status().summary()
    finally:
        stop.set()
        thread.join(timeout=10)


def relay_status_position(db_target: PgTarget, name: str) -> int:
    with psycopg.connect(db_target.conninfo()) as conn:
        return relay_status(conn, REDIS_URL, name=name).position


class ThrowawayRedis:
    """A redis-server of the test's own, to kill and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = connect(self.url)
        try:
            _wait_for(lambda: _pings(client), 10, "redis-server to start")
        finally:
            client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    server = ThrowawayRedis(tmp_path)
    yield server
    if server.process is not None:
        server.kill()


def test_relay_rides_out_a_redis_restart_under_load(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    db_target: PgTarget,
    make_relay: Callable[..., Relay],
    throwaway_redis: ThrowawayRedis,
    prefix: str,
    org: str,
) -> None:
    throwaway_redis.start()
    stop = threading.Event()
    relay, thread = start_relay_in_thread(
        db_target,
        workflow_app,
        throwaway_redis.url,
        BusConfig(prefix=prefix, relay_batch=500),
        stop,
        name=f"relay-test-{uuid.uuid4().hex[:8]}",
        poll_s=0.2,
        retry_base_s=0.05,
        retry_cap_s=0.4,
    )
    writes: list[int] = []
    failures: list[BaseException] = []
    writing = threading.Event()

    def write_continuously() -> None:
        while not writing.is_set():
            try:
                writes.append(
                    commands.create(CreateWorkflow(**workflow_body()), _ctx(org)).position
                )
            except BaseException as exc:
                failures.append(exc)
            time.sleep(0.002)

    writer = threading.Thread(target=write_continuously)
    writer.start()
    try:
        _wait_for(lambda: len(writes) > 50 and relay.status().position >= writes[50], 20, "relay")
        with psycopg.connect(db_target.conninfo()) as conn:
            assert relay_status(conn, throwaway_redis.url, name=relay.name).active
        throwaway_redis.kill()
        _wait_for(lambda: not relay.status().redis_ok, 10, "the relay to notice")
        written_while_down = len(writes)
        _wait_for(lambda: len(writes) > written_while_down + 100, 20, "writes while down")
        assert relay.status().redis_down_since is not None
        assert relay.status().lag > 0
        assert "redis down since" in relay.status().summary()
        throwaway_redis.start()
        _wait_for(lambda: relay.status().redis_ok, 10, "the relay to reconnect")
    finally:
        writing.set()
        writer.join(timeout=10)
    assert not failures, failures[:3]
    head = _head(db_target)
    _wait_for(lambda: relay.status().position == head, 30, "the relay to catch up")
    stop.set()
    thread.join(timeout=10)

    # The new Redis lost everything: the relay noticed and published the whole log again.
    client = connect(throwaway_redis.url)
    try:
        assert _stream_positions(client, events_stream(prefix)) == _log_positions(
            db_target, upto=head
        )
        org_positions = _stream_positions(client, events_stream(prefix, org))
        assert org_positions == _log_positions(db_target, org)
        assert set(writes) <= set(org_positions)
    finally:
        client.close()
    assert relay.status().summary() in ("ok", "standby")


# -- consumers --------------------------------------------------------------------------


@dataclass
class SharedBus:
    """One relay for the consumer tests: each publishes only the events since the last."""

    prefix: str
    relay: Relay

    def publish(self) -> None:
        _publish_all(self.relay)


@pytest.fixture(scope="module")
def bus(
    workflow_app: WorkflowApplication, db_target: PgTarget, run_prefix: str
) -> Iterator[SharedBus]:
    prefix = f"{run_prefix}:consumers"
    relay = Relay(
        workflow_app,
        db_target,
        REDIS_URL,
        BusConfig(prefix=prefix),
        name=f"relay-test-{uuid.uuid4().hex[:8]}",
    )
    yield SharedBus(prefix, relay)
    relay.redis.close()


@pytest.fixture
def group() -> str:
    """A consumer group per test: dead letters are per group."""
    return f"g-{uuid.uuid4().hex[:8]}"


def _consumer(
    bus: SharedBus,
    group: str,
    org: str,
    name: str,
    handler: Callable[[Message], object],
    **options: Any,
) -> Consumer:
    return Consumer(
        REDIS_URL, group, name, handler=handler, org_id=org, prefix=bus.prefix, **options
    )


def test_failing_messages_go_to_the_dead_letters_and_come_back_on_replay(
    commands: WorkflowCommands,
    redis_client: redis.Redis,
    bus: SharedBus,
    group: str,
    org: str,
) -> None:
    first = commands.create(CreateWorkflow(**workflow_body("a")), _ctx(org))
    second = commands.create(CreateWorkflow(**workflow_body("b")), _ctx(org))
    updates = [
        commands.update(workflow.workflow_id, UpdateWorkflow(name="x"), 1, _ctx(org))
        for workflow in (first, second)
    ]
    bus.publish()
    attempts: list[tuple[int, int]] = []
    handled: list[Message] = []
    broken = True

    def handler(message: Message) -> None:
        attempts.append((message.position, message.attempt))
        if broken:
            raise RuntimeError("downstream is broken")
        handled.append(message)

    consumer = _consumer(
        bus,
        group,
        org,
        "c1",
        handler,
        patterns=["Workflow.Updated"],
        max_attempts=3,
        retry_base_s=0.05,
        retry_cap_s=0.1,
    )
    _poll_until([consumer], lambda: len(dlq_list(redis_client, group, prefix=bus.prefix)) == 2)

    # Created events did not match: acknowledged, never handled. Each update: three tries.
    assert sorted(attempts) == sorted((u.position, n) for u in updates for n in (1, 2, 3))
    letters = dlq_list(redis_client, group, prefix=bus.prefix)
    assert [letter.position for letter in letters] == [u.position for u in updates]
    assert letters[0].error == "RuntimeError: downstream is broken"
    assert letters[0].attempts == 3
    assert letters[0].type == "Workflow.Updated"
    assert letters[0].source_stream == events_stream(bus.prefix, org)
    assert letters[0].source_id == f"{updates[0].position}-0"
    assert letters[0].consumer == "c1"
    assert set(letters[0].message) >= {"position", "type", "data", "aggregate_id"}
    status = bus_status(redis_client, prefix=bus.prefix)
    assert status.dead_letters[group] == 2
    (org_stream,) = [s for s in status.streams if s.name == events_stream(bus.prefix, org)]
    assert [(g.name, g.pending, g.lag) for g in org_stream.groups] == [(group, 0, 0)]

    listed = _bus_cli("dlq", "list", "--group", group, "--prefix", bus.prefix)
    assert listed.returncode == 0, listed.stderr
    assert "downstream is broken" in listed.stdout

    broken = False
    assert dlq_replay(redis_client, group, [letters[0].id], prefix=bus.prefix) == [letters[0].id]
    _poll_until([consumer], lambda: len(handled) == 1)
    assert handled[0].position == updates[0].position
    assert handled[0].stream == retry_stream(group, bus.prefix)
    assert handled[0].attempt == 1
    assert redis_client.xlen(retry_stream(group, bus.prefix)) == 0  # handled entries are removed

    replayed = _bus_cli("dlq", "replay", "--group", group, "--id", "1-0", "--prefix", bus.prefix)
    assert replayed.returncode == 1 and "no such dead letters: 1-0" in replayed.stderr
    shown = _bus_cli("status", "--prefix", bus.prefix)
    assert shown.returncode == 0, shown.stderr
    assert events_stream(bus.prefix, org) in shown.stdout
    assert dlq_purge(redis_client, group, prefix=bus.prefix) == 1
    assert redis_client.exists(dlq_stream(group, bus.prefix)) == 0
    assert len(handled) == 1


def test_replaying_all_dead_letters(
    commands: WorkflowCommands,
    redis_client: redis.Redis,
    bus: SharedBus,
    group: str,
    org: str,
) -> None:
    for name in ("a", "b", "c"):
        commands.create(CreateWorkflow(**workflow_body(name)), _ctx(org))
    bus.publish()
    seen: list[int] = []
    failing = True

    def handler(message: Message) -> None:
        if failing:
            raise ValueError("no")
        seen.append(message.position)

    consumer = _consumer(bus, group, org, "c1", handler, max_attempts=1)
    _poll_until([consumer], lambda: len(dlq_list(redis_client, group, prefix=bus.prefix)) == 3)
    failing = False
    assert len(dlq_replay(redis_client, group, prefix=bus.prefix)) == 3
    _poll_until([consumer], lambda: len(seen) == 3)
    assert seen == sorted(seen)
    assert dlq_list(redis_client, group, prefix=bus.prefix) == []


def _recorder(positions: list[int]) -> Callable[[Message], None]:
    return lambda message: positions.append(message.position)


def test_two_consumers_of_one_group_split_the_work(
    workflow_app: WorkflowApplication,
    redis_client: redis.Redis,
    bus: SharedBus,
    group: str,
    db_target: PgTarget,
    org: str,
) -> None:
    _seed(workflow_app, org, 200)
    bus.publish()
    got: dict[str, list[int]] = {"a": [], "b": []}
    consumers = [
        _consumer(bus, group, org, name, _recorder(got[name]), batch_size=7) for name in got
    ]
    _poll_until(consumers, lambda: len(got["a"]) + len(got["b"]) >= 200)
    for consumer in consumers:  # nothing more arrives
        assert consumer.poll_once() == 0
    assert got["a"] and got["b"]
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == _log_positions(db_target, org)
    assert redis_client.xpending(events_stream(bus.prefix, org), group)["pending"] == 0


def test_a_dead_consumers_pending_entry_is_claimed_by_another(
    commands: WorkflowCommands,
    redis_client: redis.Redis,
    bus: SharedBus,
    group: str,
    org: str,
) -> None:
    class ConsumerDied(BaseException):
        """Not an Exception: it escapes the library, like the process dying mid-handler."""

    created = commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    bus.publish()

    def die(message: Message) -> None:
        raise ConsumerDied

    doomed = _consumer(bus, group, org, "doomed", die)
    with pytest.raises(ConsumerDied):
        doomed.poll_once()
    stream = events_stream(bus.prefix, org)
    assert redis_client.xpending(stream, group)["consumers"] == [{"name": "doomed", "pending": 1}]

    rescued: list[Message] = []
    rescuer = _consumer(bus, group, org, "rescuer", rescued.append, claim_idle_s=0.2)
    assert rescuer.poll_once() == 0  # not idle long enough yet
    time.sleep(0.25)
    assert rescuer.poll_once() == 1
    assert [(m.position, m.attempt) for m in rescued] == [(created.position, 2)]
    assert redis_client.xpending(stream, group)["pending"] == 0


def test_a_message_that_keeps_killing_its_consumers_is_dead_lettered(
    commands: WorkflowCommands,
    redis_client: redis.Redis,
    bus: SharedBus,
    group: str,
    org: str,
) -> None:
    class ConsumerDied(BaseException):
        pass

    def die(message: Message) -> None:
        raise ConsumerDied

    created = commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    bus.publish()
    options: dict[str, Any] = {"max_attempts": 2, "claim_idle_s": 0.05}
    for name in ("first", "second"):
        with pytest.raises(ConsumerDied):
            _consumer(bus, group, org, name, die, **options).poll_once()
        time.sleep(0.06)
    handled: list[Message] = []
    assert _consumer(bus, group, org, "third", handled.append, **options).poll_once() == 1
    assert handled == []
    (letter,) = dlq_list(redis_client, group, prefix=bus.prefix)
    assert letter.position == created.position
    assert letter.error == "delivered 2 times without an acknowledgement"


def test_new_groups_start_at_the_retained_history_or_at_the_end(
    commands: WorkflowCommands,
    bus: SharedBus,
    group: str,
    org: str,
) -> None:
    commands.create(CreateWorkflow(**workflow_body("before")), _ctx(org))
    bus.publish()
    from_history: list[Message] = []
    from_now: list[Message] = []
    consumers = [
        _consumer(bus, group, org, "h", from_history.append),
        _consumer(bus, f"{group}-live", org, "n", from_now.append, start_from="$"),
    ]
    for consumer in consumers:
        consumer.poll_once()
    after = commands.create(CreateWorkflow(**workflow_body("after")), _ctx(org))
    bus.publish()
    _poll_until(consumers, lambda: len(from_history) == 2 and len(from_now) == 1)
    assert [m.data["name"] for m in from_history] == ["before", "after"]
    assert [m.position for m in from_now] == [after.position]


def test_a_failed_execution_reaches_the_example_notifier(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    app_settings: Settings,
    db_target: PgTarget,
    bus: SharedBus,
    org: str,
) -> None:
    services = create_execution_services(workflow_app, commands, db_target, app_settings)
    try:
        boom = {"id": "boom", "type": "stop_and_error", "parameters": {"message": "no"}}
        body = workflow_body(nodes=[trigger(), boom], connections=[{"from": "start", "to": "boom"}])
        created = commands.create(CreateWorkflow(**body), _ctx(org))
        run = services.commands.start(created.workflow_id, RunWorkflow(input={}), _ctx(org))
    finally:
        services.close()
    assert run.status == "failed"
    bus.publish()

    notifier = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "notify_failed.py"), "--org", org],
        env={**os.environ, "REDIS_URL": REDIS_URL, "REPORUNNER_BUS_PREFIX": bus.prefix},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(notifier.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        _wait_for(lambda: any("execution failed" in line for line in lines), 20, "the notifier")
    finally:
        notifier.terminate()
        notifier.wait(timeout=10)
        reader.join(timeout=10)
    (line,) = [line for line in lines if "execution failed" in line]
    assert str(run.execution_id) in line and "boom" in line


def test_redis_losing_its_data_between_batches_is_noticed_and_the_stream_refilled(
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    redis_client: redis.Redis,
    make_relay: Callable[..., Relay],
    prefix: str,
    org: str,
) -> None:
    """Issue 15: Redis restarted between two batches, its client reconnected silently,
    and the events published before were gone from the stream, with nothing logged."""
    _seed(workflow_app, org, 30)
    relay = make_relay(poll_s=0.1, relay_batch=200)
    losses = REGISTRY.get_sample_value("reporunner_relay_redis_data_losses_total") or 0.0
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,))
    with capture_logs() as logs:
        thread.start()
        try:
            _wait_for(lambda: relay.status().position >= _head(db_target), 30, "the relay")
            # The relay stays connected while its streams vanish (a flush of this
            # test's keys only: the Redis is shared).
            redis_client.delete(*redis_client.scan_iter(match=f"{prefix}:*"))
            _seed(workflow_app, org, 10)
            _wait_for(lambda: relay.redis_data_losses == 1, 30, "the relay to notice")
            _wait_for(lambda: relay.status().position >= _head(db_target), 30, "republishing")
        finally:
            stop.set()
            thread.join(timeout=10)
    # Every event once, in log order, in both streams.
    assert _stream_positions(redis_client, events_stream(prefix)) == _log_positions(db_target)
    assert _stream_positions(redis_client, events_stream(prefix, org)) == _log_positions(
        db_target, org
    )
    [warning] = [entry for entry in logs if "lost data" in entry["event"]]
    assert warning["log_level"] == "warning"
    assert warning["redis_last_position"] == 0 and warning["resume_after"] == 0
    assert warning["relay_position"] > 0
    assert REGISTRY.get_sample_value("reporunner_relay_redis_data_losses_total") == losses + 1
