"""Failover of the single-active roles: two real ``serve --only ROLE`` processes, one killed.

Per role: the first process becomes active for each of its followers, a
second one stands by, events keep flowing from this test, the active process
is killed with SIGKILL, and the standby must take over every follower within
``TAKEOVER_LIMIT_S`` (measured from the kill to the ``follower active`` line
of the standby's log, and printed). Then, from the log and the outputs,
nothing was done twice or skipped: the views equal a rebuild from the log,
every ended run is recorded once in its workflow, every failure that asks
for a retry got exactly one, the audit chain verifies with one link per
event, and the relay's stream holds every event once, in log order.

The scheduler's failover is ``test_scheduler_failover.py``.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from prometheus_client import REGISTRY

from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.auto_retries import AutoRetrier, retry_id
from commands.models import RunWorkflow, UpdateWorkflow
from commands.workflow_runs import WorkflowRunsRecorder
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, decode_event
from infrastructure.settings import Settings
from projections.audit_chain import AuditChainFollower, verify_log
from projections.follower import connect as follower_connection
from projections.follower import lock_session
from projections.rebuild import verify
from projections.relay import BusConfig, Relay
from projections.runner import Projector
from reporunner.wiring import (
    all_projections,
    create_execution_services,
    create_workflow_application,
)
from tests.helpers import free_port, noop, scratch_database, trigger, workflow_body
from tests.integration.test_cli import ROOT

TAKEOVER_LIMIT_S = 5.0
PROJECTIONS_FOLLOWERS = ("workflows", "executions", "workflow-runs", "auto-retries", "audit-chain")
REDIS_URL = os.environ.get("REDIS_URL")


class RoleProcess:
    """One ``reporunner serve --only ROLE`` process, its JSON log in a file."""

    def __init__(self, target: PgTarget, role: str, log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("REPORUNNER_") and key != "REDIS_URL"
        }
        base |= {
            "DATABASE_URL": target.url(),
            # The run's one master key (tests/conftest.py): a start without it exits 2.
            "REPORUNNER_MASTER_KEY": os.environ["REPORUNNER_MASTER_KEY"],
            "REPORUNNER_LOG_FORMAT": "json",
            # PostgreSQL's connections are shared with the rest of the suite.
            "REPORUNNER_DB_POOL_SIZE": "2",
            **env,
        }
        with log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "reporunner", "serve", "--only", role),
                    *("--no-migrate", "--port", str(free_port())),
                ],
                env=base,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[dict[str, Any]]:
        """The log lines written so far (a line being written is left for later)."""
        found = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict):
                found.append(line)
        return found

    def said(self, event: str, follower: str) -> list[float]:
        """When (Unix time, from the log) this process logged ``event`` for ``follower``.

        A process that exited meanwhile fails the test, with its log's end.
        """
        if self.process.poll() not in (None, -signal.SIGKILL):
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise AssertionError(f"{self.log_path.name} exited {self.process.returncode}: {tail}")
        return [
            datetime.fromisoformat(line["timestamp"]).timestamp()
            for line in self.lines()
            if line.get("event") == event and line.get("follower") == follower
        ]

    def kill(self) -> float:
        """SIGKILL; return when it was sent (Unix time)."""
        killed_at = time.time()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        return killed_at

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Traffic:
    """Commands from this process, in a thread, until stopped: the log keeps moving."""

    def __init__(self, step: Callable[[int], None]) -> None:
        self.step = step
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step(self.done)
                self.done += 1
                self._stop.wait(0.01)  # the two processes under test need the CPU too
        except BaseException as exc:  # the test reports it
            self.error = exc

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.error is None, f"traffic failed: {self.error!r}"


def fail_over(
    target: PgTarget,
    role: str,
    followers: tuple[str, ...],
    tmp_path: Path,
    env: dict[str, str],
    traffic: Traffic,
    wait_caught_up: Callable[[], None],
) -> dict[str, float]:
    """Run the kill scenario for one role; return each follower's takeover time (s)."""
    first = RoleProcess(target, role, tmp_path / f"{role}-first.log", env)
    second: RoleProcess | None = None
    try:
        until(lambda: all(first.said("follower active", f) for f in followers), "the first active")
        second = RoleProcess(target, role, tmp_path / f"{role}-second.log", env)
        with traffic:
            until(
                lambda: all(second.said("follower standing by", f) for f in followers),
                "the second standing by",
            )
            time.sleep(1.0)  # events flow through the first process
            done_before = traffic.done
            killed_at = first.kill()
            standby = second
            until(lambda: all(standby.said("follower active", f) for f in followers), "takeover")
            time.sleep(1.0)  # and through the second one
            assert traffic.done > done_before, "no command went through across the kill"
        wait_caught_up()
        took = {f: second.said("follower active", f)[0] - killed_at for f in followers}
        # From the log: one instance active at a time, the second only after the kill.
        for follower in followers:
            assert len(first.said("follower active", follower)) == 1
            assert len(second.said("follower active", follower)) == 1
            assert second.said("follower standing by", follower)[0] < killed_at
        errors = [line for line in second.lines() if line.get("level") in ("error", "critical")]
        assert errors == [], errors
        return took
    finally:
        first.stop()
        if second is not None:
            second.stop()


def report(role: str, took: dict[str, float]) -> None:
    shown = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in took.items())
    print(f"\n{role} takeover after kill -9: {shown}")
    slow = {name: seconds for name, seconds in took.items() if seconds > TAKEOVER_LIMIT_S}
    assert not slow, f"takeover slower than {TAKEOVER_LIMIT_S} s: {slow}"


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_failover") as target:
        yield target


@pytest.fixture
def app(target: PgTarget, app_settings: Settings) -> Iterator[WorkflowApplication]:
    app = create_workflow_application(target, app_settings)
    yield app
    app.close()


def _ctx(org: str) -> CommandContext:
    return CommandContext(org_id=org, actor="apikey:failover", correlation_id="failover")


def _head(target: PgTarget) -> int:
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute(
            f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _positions(target: PgTarget) -> dict[str, int]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute("SELECT name, position FROM projection_tracking").fetchall()
    return {str(name): int(position) for name, position in rows}


def _position(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(
        "SELECT position FROM projection_tracking WHERE name = %s", (name,)
    ).fetchone()
    return int(row[0]) if row else 0


def _caught_up(target: PgTarget, followers: tuple[str, ...]) -> Callable[[], None]:
    def wait() -> None:
        head = _head(target)
        until(
            lambda: all(_positions(target).get(f, 0) >= head for f in followers),
            f"every follower at the head {head}",
        )

    return wait


def _events(app: WorkflowApplication, target: PgTarget, topic_end: str) -> list[Any]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE topic LIKE %s ORDER BY notification_id",
            (f"%{topic_end}",),
        ).fetchall()
    return [decode_event(app.mapper, *row) for row in rows]


# -- the roles ------------------------------------------------------------------------


class Commands:
    """Edits, runs that succeed and runs that fail (each asking for one retry), by step."""

    def __init__(self, app: WorkflowApplication, target: PgTarget, settings: Settings, org: str):
        self.workflows = WorkflowCommands(app)
        self.services = create_execution_services(app, self.workflows, target, settings)
        self.ctx = _ctx(org)
        create = self.workflows.create
        self.succeeding = create(CreateWorkflow(**workflow_body("ok")), self.ctx).workflow_id
        boom = {"id": "boom", "type": "stop_and_error", "parameters": {"message": "always"}}
        self.failing = create(
            CreateWorkflow(
                **workflow_body(
                    "boom",
                    nodes=[trigger(), boom],
                    connections=[{"from": "start", "to": "boom"}],
                    # Nothing runs the retries here (no worker): one each, queued.
                    settings={"retry": {"max_attempts": 2, "backoff_ms": 60_000}},
                )
            ),
            self.ctx,
        ).workflow_id

    def step(self, n: int) -> None:
        if n % 3 == 0:
            result = self.workflows.create(CreateWorkflow(**workflow_body(f"wf-{n}")), self.ctx)
            self.workflows.update(
                result.workflow_id, UpdateWorkflow(name=f"edited-{n}"), 1, self.ctx
            )
        else:
            workflow_id = self.succeeding if n % 3 == 1 else self.failing
            self.services.commands.start(workflow_id, RunWorkflow(mode="sync"), self.ctx)

    def close(self) -> None:
        self.services.close()


def assert_views_equal_a_replay(app: WorkflowApplication, target: PgTarget) -> None:
    for projection in all_projections():
        result = verify(Projector(app, target, projection))
        assert result.ok, (projection.name, result.differences)


def assert_every_run_recorded_once(app: WorkflowApplication, target: PgTarget) -> None:
    """Every ended execution has exactly one ``Executed`` in its workflow."""
    ended = [
        e.originator_id
        for suffix in ("Execution.Succeeded", "Execution.Failed")
        for e in _events(app, target, suffix)
    ]
    recorded = Counter(uuid.UUID(e.execution_id) for e in _events(app, target, "Workflow.Executed"))
    assert len(ended) > 5
    assert recorded == Counter(ended)


def assert_every_failure_retried_once(app: WorkflowApplication, target: PgTarget) -> None:
    """Every failed (first) attempt has exactly one retry, under its retry id."""
    failed = [e.originator_id for e in _events(app, target, "Execution.Failed")]
    retries = Counter(
        (e.originator_id, e.retry_of)
        for e in _events(app, target, "Execution.Queued")
        if getattr(e, "retry_of", None) is not None
    )
    assert failed
    assert retries == Counter({(retry_id(f), f): 1 for f in failed})


def assert_the_chain_whole(target: PgTarget) -> None:
    """The audit chain verifies, with one link per event and none twice."""
    verified = verify_log(target, None)
    assert verified.ok, verified
    assert verified.unchained == 0
    with psycopg.connect(target.conninfo()) as conn:
        links = conn.execute(
            "SELECT count(*), count(DISTINCT position) FROM audit_chain"
        ).fetchone()
        events = conn.execute(f"SELECT count(*) FROM {EVENTS_TABLE}").fetchone()
    assert links is not None and events is not None
    assert links[0] == links[1] == events[0] == verified.events


def assert_the_streams_whole(client: redis.Redis, prefix: str, target: PgTarget, org: str) -> None:
    """Every event once, in log order, in the all-events stream and the organisation's."""
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute(
            f"SELECT notification_id, state FROM {EVENTS_TABLE} ORDER BY notification_id"
        ).fetchall()
    positions = [int(position) for position, _ in rows]
    entries = client.xrange(f"{prefix}:events")
    published = [int(fields[b"position"]) for _, fields in entries]
    ids = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
    assert len(positions) > 20
    assert published == ids == positions
    # The organisation's stream holds its events; the only others are the first
    # start's owner key, of organisation "default".
    orgs = {int(position): orjson.loads(state)["meta"]["org_id"] for position, state in rows}
    assert set(orgs.values()) <= {org, "default"}
    org_entries = client.xrange(f"{prefix}:events:{org}")
    assert [int(fields[b"position"]) for _, fields in org_entries] == [
        position for position in positions if orgs[position] == org
    ]


@contextmanager
def private_streams() -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client and a stream prefix of this test's own, deleted after."""
    assert REDIS_URL is not None
    prefix = f"reporunner-failover-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client, prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


# -- the roles ------------------------------------------------------------------------


@pytest.mark.slow  # two process starts: ~25 s at rest, more on a busy machine
def test_projections_fail_over_without_doing_anything_twice_or_skipping(
    target: PgTarget, app: WorkflowApplication, app_settings: Settings, org: str, tmp_path: Path
) -> None:
    commands = Commands(app, target, app_settings, org)
    try:
        took = fail_over(
            target,
            "projections",
            PROJECTIONS_FOLLOWERS,
            tmp_path,
            # A long poll: NOTIFY wakes the active one, and the standby's
            # tries for the lock must not wait for a poll.
            {"REPORUNNER_PROJECTION_POLL_S": "10"},
            Traffic(commands.step),
            _caught_up(target, PROJECTIONS_FOLLOWERS),
        )
    finally:
        commands.close()
    report("projections", took)
    assert_views_equal_a_replay(app, target)
    assert_every_run_recorded_once(app, target)
    assert_every_failure_retried_once(app, target)
    assert_the_chain_whole(target)


@pytest.mark.slow
@pytest.mark.skipif(REDIS_URL is None, reason="the relay needs REDIS_URL")
def test_the_relay_fails_over_and_the_stream_holds_every_event_once_in_order(
    target: PgTarget, app: WorkflowApplication, org: str, tmp_path: Path
) -> None:
    assert REDIS_URL is not None
    workflows = WorkflowCommands(app)
    ctx = _ctx(org)

    def step(n: int) -> None:
        workflows.create(
            CreateWorkflow(**workflow_body(f"wf-{n}", nodes=[trigger(), noop("a")])), ctx
        )

    with private_streams() as (client, prefix):
        took = fail_over(
            target,
            "relay",
            ("relay",),
            tmp_path,
            {
                "REDIS_URL": REDIS_URL,
                "REPORUNNER_BUS_PREFIX": prefix,
                "REPORUNNER_PROJECTION_POLL_S": "10",
                # Small batches: a kill is likely to land between a publish and its commit.
                "REPORUNNER_BUS_RELAY_BATCH": "5",
            },
            Traffic(step),
            _caught_up(target, ("relay",)),
        )
        report("relay", took)
        assert_the_streams_whole(client, prefix, target, org)


# -- two acting at once ---------------------------------------------------------------


def race(target: PgTarget, name: str, *instances: Callable[[], object]) -> None:
    """Run each instance's batches in a thread of its own, all at once, until ``name``
    reaches the head: two leaders, as a leader cut off from its lock but not from the
    log would make. Every batch is tried by both; the commits must let one through."""
    head = _head(target)
    failures: list[BaseException] = []

    def run(batch: Callable[[], object]) -> None:
        try:
            with psycopg.connect(target.conninfo(), autocommit=True) as conn:
                while _position(conn, name) < head:
                    batch()
        except BaseException as exc:  # the test reports it
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(batch,)) for batch in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), f"{name} never reached {head}"
    assert failures == []


def test_two_instances_acting_at_once_still_apply_each_event_once(
    target: PgTarget, app: WorkflowApplication, app_settings: Settings, org: str
) -> None:
    """The lock only elects: what the README's Failover says fences each commit holds."""
    commands = Commands(app, target, app_settings, org)
    try:
        for n in range(45):
            commands.step(n)
        services = commands.services
        batch = 3  # many small batches: many chances to collide
        with ExitStack() as stack:
            for projection in all_projections():
                projectors = [Projector(app, target, projection) for _ in range(2)]
                conns = [stack.enter_context(p.connect()) for p in projectors]
                projectors[0].ensure_tracking(conns[0])
                race(
                    target,
                    projection.name,
                    *(
                        functools.partial(p.run_batch, c, batch)
                        for p, c in zip(projectors, conns, strict=True)
                    ),
                )
            recorders = [WorkflowRunsRecorder(app, batch) for _ in range(2)]
            recorders[0].ensure_tracking()
            race(target, recorders[0].name, *(r.run_batch for r in recorders))
            retriers = [AutoRetrier(services.commands, batch) for _ in range(2)]
            retriers[0].ensure_tracking()
            race(target, retriers[0].name, *(r.run_batch for r in retriers))
            chains = [AuditChainFollower(target, key=None, batch_size=batch) for _ in range(2)]
            chain_conns = [stack.enter_context(c.connect()) for c in chains]
            race(
                target,
                "audit-chain",
                *(
                    functools.partial(c.run_batch, conn)
                    for c, conn in zip(chains, chain_conns, strict=True)
                ),
            )
    finally:
        commands.close()
    assert_views_equal_a_replay(app, target)
    assert_every_run_recorded_once(app, target)
    assert_every_failure_retried_once(app, target)
    assert_the_chain_whole(target)


@pytest.mark.skipif(REDIS_URL is None, reason="the relay needs REDIS_URL")
def test_two_relays_acting_at_once_still_publish_each_event_once_in_order(
    target: PgTarget, app: WorkflowApplication, org: str
) -> None:
    assert REDIS_URL is not None
    workflows = WorkflowCommands(app)
    for n in range(30):
        workflows.create(CreateWorkflow(**workflow_body(f"wf-{n}")), _ctx(org))
    with private_streams() as (client, prefix), ExitStack() as stack:
        relays = [Relay(app, target, REDIS_URL, BusConfig(prefix=prefix)) for _ in range(2)]
        conns = [stack.enter_context(r.connect()) for r in relays]
        relays[0].ensure_tracking(conns[0])

        def publish(relay: Relay, conn: psycopg.Connection[Any]) -> None:
            try:
                relay.publish_batch(conn, 2)
            except RuntimeError as exc:
                # The other one moved the position first: its batch stands, this
                # one's entries were refused by Redis (or are the same ones).
                assert "moved away" in str(exc)

        race(
            target,
            "relay",
            *(functools.partial(publish, r, c) for r, c in zip(relays, conns, strict=True)),
        )
        assert_the_streams_whole(client, prefix, target, org)


# -- the election's parts -------------------------------------------------------------


def test_a_lock_session_has_keepalives_that_free_the_lock_soon_after_its_host_is_gone(
    target: PgTarget,
) -> None:
    with follower_connection(target, "reporunner-test") as conn:
        if conn.info.host.startswith("/"):
            pytest.skip("a Unix socket: PostgreSQL sees a dead peer at once, keepalives are off")
        lock_session(conn)
        names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        shown = [conn.execute(f"SHOW {name}").fetchone() for name in names]
        assert conn.autocommit
    # Seconds, seconds and a count (by default the OS's: two hours idle, typically).
    assert [row[0] if row else None for row in shown] == ["2", "1", "2"]


def test_a_stop_ends_an_active_followers_wait_at_once_whatever_its_poll(
    target: PgTarget,
) -> None:
    """A rolling restart (SIGTERM) frees the lock now, not after ``poll_s``."""
    follower = AuditChainFollower(target, key=None, poll_interval=30)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        until(
            lambda: REGISTRY.get_sample_value(
                "reporunner_follower_active", {"follower": follower.name}
            ),
            "the follower active",
        )
        time.sleep(0.5)  # into its wait for events
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive(), "the follower kept waiting for its poll"
    assert REGISTRY.get_sample_value("reporunner_follower_active", {"follower": follower.name}) == 0


class _KeepsConnections(AuditChainFollower):
    """The audit chain follower, keeping the connections it opens (its lock's first)."""

    def __init__(self, target: PgTarget) -> None:
        super().__init__(target, key=None, poll_interval=0.2)
        self.opened: list[psycopg.Connection[Any]] = []

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        conn = super().connect(autocommit=autocommit)
        self.opened.append(conn)
        return conn


def test_a_leader_whose_session_lost_its_lock_stands_down_and_takes_it_again(
    target: PgTarget,
) -> None:
    """As behind a transaction-mode pool: the session lives on, the lock is gone."""
    follower = _KeepsConnections(target)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run_forever, args=(stop,), daemon=True)

    def active() -> bool:
        sample = REGISTRY.get_sample_value(
            "reporunner_follower_active", {"follower": "audit-chain"}
        )
        return sample == 1

    thread.start()
    try:
        until(active, "the follower active")
        lock_conn = follower.opened[0]
        lock_conn.execute("SELECT pg_advisory_unlock_all()")
        until(lambda: lock_conn.closed, "the leader to stand down")
        # A new lock session (and its work and listen connections), active again.
        until(lambda: len(follower.opened) >= 6 and active(), "the lock taken again")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
