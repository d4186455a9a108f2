"""A whole deployment on one box, a mixed load over its ports, faults, and the checks after.

``Cluster`` starts a PostgreSQL primary and a Redis of its own (so both can be
restarted without touching the machine's) and every role as separate
``reporunner serve --only ROLE`` processes, each on free ports. ``run_chaos``
drives the load (``LoadClient`` threads), kills processes and restarts the
primary and Redis (``FaultInjector``), then checks what the log, the views
and the stream hold against every answer the clients were given
(``check``). ``tests/cluster/test_chaos.py`` runs it bounded; ``bench/chaos.py``
runs it for minutes. Nothing is left running afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

import migrations
from infrastructure.crypto import MasterKey
from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from tests.cluster.postgres import PostgresCluster
from tests.conftest import key_maker
from tests.helpers import free_port, noop, webhook, workflow_body

ROOT = Path(__file__).resolve().parents[2]

#: Every role, two processes each (the issue's deployment).
ROLES = ("write-api", "read-api", "projections", "worker", "relay", "scheduler")
TERMINAL = frozenset({"Succeeded", "Failed", "Canceled", "Crashed"})
BUS_PREFIX = "reporunner"
DBNAME = "reporunner"

# Small pools: 12 processes (each with a few pools) on one primary; settings
# that make a killed process' work come back quickly.
SERVICE_ENV = {
    "REPORUNNER_LOG_FORMAT": "json",
    "REPORUNNER_LOG_LEVEL": "info",
    "REPORUNNER_DB_POOL_SIZE": "3",
    "REPORUNNER_DB_MAX_OVERFLOW": "3",
    "REPORUNNER_COMMAND_THREADS": "4",
    "REPORUNNER_WORKER_CONCURRENCY": "2",
    "REPORUNNER_EXECUTION_LEASE_S": "3",
    "REPORUNNER_PROJECTION_POLL_S": "0.2",
    "REPORUNNER_SCHEDULER_TICK_S": "0.5",
    "REPORUNNER_MIN_POSITION_WAIT_S": "5",
    "REPORUNNER_RATE_LIMIT_WRITE_PER_S": "10000",
    "REPORUNNER_RATE_LIMIT_WRITE_BURST": "10000",
    "REPORUNNER_RATE_LIMIT_READ_PER_S": "10000",
    "REPORUNNER_RATE_LIMIT_READ_BURST": "10000",
    "REPORUNNER_BUS_PREFIX": BUS_PREFIX,
    # Serving on an external database needs a master key: one for the whole cluster.
    "REPORUNNER_MASTER_KEY": os.environ.get("REPORUNNER_MASTER_KEY")
    or MasterKey.generate().encoded(),
}


def _has_setting(name: str) -> bool:
    return name in Settings.model_fields


# --------------------------------------------------------------------------- cluster


class RedisServer:
    """``redis-server`` as a child process without persistence: a restart loses its data."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on PATH"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    client.ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis did not start; see {self.log_path}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Service:
    """One ``serve --only ROLE`` process; restarted on the same ports."""

    role: str
    index: int
    port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        # /healthz and /readyz: on the metrics port, which every role serves.
        return f"http://127.0.0.1:{self.metrics_port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    """A primary, a Redis and two processes of every role, all children of this process."""

    def __init__(self, workdir: Path, *, per_role: int = 2) -> None:
        self.workdir = workdir
        self.postgres: PostgresCluster | None = None
        self.redis = RedisServer(workdir / "redis.log")
        self.services: list[Service] = [
            Service(role, i, free_port(), free_port(), workdir / f"{role}-{i}.log")
            for role in ROLES
            for i in range(per_role)
        ]

    @property
    def primary(self) -> PostgresCluster:
        assert self.postgres is not None, "the cluster is not started"
        return self.postgres

    @property
    def target(self) -> PgTarget:
        return PgTarget.from_url(self.primary.primary.url(DBNAME))

    @property
    def read_target(self) -> PgTarget:
        """Where the read APIs read: the replica, once the settings know a read database."""
        replica = self.primary.replica
        if replica is None or not _has_setting("read_database_url"):
            return self.target
        return PgTarget.from_url(replica.url(DBNAME))

    def of_role(self, role: str) -> list[Service]:
        return [service for service in self.services if service.role == role]

    def urls(self, role: str) -> list[str]:
        return [service.base_url for service in self.of_role(role)]

    def start(self) -> None:
        # 12 processes with a few small pools each: more than the default 100.
        self.postgres = PostgresCluster.start(
            with_replica=True, server_settings={"max_connections": "300"}
        )
        self.primary.primary.query(f'CREATE DATABASE "{DBNAME}"')
        migrations.upgrade(self.target)
        self.redis.start()
        for service in self.services:
            self.start_service(service)
        for service in self.services:
            self.wait_ready(service, timeout=180)

    def env(self, service: Service) -> dict[str, str]:
        env = {
            **os.environ,
            **SERVICE_ENV,
            "DATABASE_URL": self.target.url(),
            "REDIS_URL": self.redis.url,
        }
        if service.role == "read-api" and _has_setting("read_database_url"):
            env["REPORUNNER_READ_DATABASE_URL"] = self.read_target.url()
        return env

    def start_service(self, service: Service) -> None:
        with open(service.log_path, "ab") as log:
            service.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "reporunner", "serve", "--only", service.role),
                    *("--port", str(service.port), "--metrics-port", str(service.metrics_port)),
                    "--no-migrate",
                ],
                env=self.env(service),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        service.starts += 1

    def kill(self, service: Service) -> None:
        assert service.process is not None
        service.process.send_signal(signal.SIGKILL)
        service.process.wait()

    def readiness(self, service: Service) -> str:
        """What ``/readyz`` answers now, for a report."""
        try:
            answer = httpx.get(service.ops_url + "/readyz", timeout=10)
        except httpx.HTTPError as exc:
            return f"no answer ({type(exc).__name__})"
        return f"{answer.status_code} {answer.text[:300]}"

    def ready(self, service: Service) -> bool:
        try:
            # A saturated process may take seconds to answer; slow is not unready.
            return httpx.get(service.ops_url + "/readyz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, service: Service, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(service):
            if not service.alive():
                raise RuntimeError(f"{service.name} exited; see {service.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.name} not ready in {timeout} s")
            time.sleep(0.25)

    def close(self) -> None:
        for service in self.services:
            if service.alive():
                assert service.process is not None
                service.process.terminate()
        for service in self.services:
            if service.process is not None:
                try:
                    service.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    service.process.kill()
                    service.process.wait()
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.cleanup()


@contextmanager
def running_cluster(workdir: Path | None = None) -> Iterator[Cluster]:
    """A started cluster; everything it started is stopped afterwards, whatever happens."""
    directory = workdir or Path(tempfile.mkdtemp(prefix="reporunner-cluster-"))
    directory.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# --------------------------------------------------------------------------- load


@dataclass
class Ack:
    """A command a client got a 2xx for: what it sent and what it was told."""

    kind: str
    key: str
    method: str
    url_path: str
    body: Any
    headers: dict[str, str]
    answer: dict[str, Any]
    aggregate_id: str
    version: int | None
    position: int | None


@dataclass
class Stats:
    """What every client saw, merged (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acks: list[Ack] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 500s: failures, with the body
    unexpected: list[str] = field(default_factory=list)  # 4xx the load never asks for
    unacknowledged: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    retries_mismatched: list[str] = field(default_factory=list)
    reads: int = 0
    reads_stale: list[str] = field(default_factory=list)
    reads_unavailable: int = 0

    def count(self, what: str) -> None:
        with self.lock:
            self.statuses[what] += 1


class Commands:
    """Commands sent until acknowledged, on any of the given ports, with one Idempotency-Key.

    A 503 (a dependency down), a connection error or a timeout is retried on
    another process with the same key: the command takes effect once whatever
    happened to the earlier tries. Every 5xx is counted; 500s are kept as failures.
    """

    def __init__(self, stats: Stats, headers: dict[str, str], give_up_s: float = 90) -> None:
        self.stats = stats
        self.headers = headers
        self.give_up_s = give_up_s
        self.http = httpx.Client(timeout=15)

    def send(
        self,
        urls: list[str],
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        *,
        what: str,
    ) -> httpx.Response | None:
        deadline = time.monotonic() + self.give_up_s
        while time.monotonic() < deadline:
            base = random.choice(urls)
            try:
                response = self.http.request(
                    method, base + path, json=body, headers={**self.headers, **headers}
                )
            except httpx.TransportError as exc:
                self.stats.count(f"connection error ({type(exc).__name__})")
                time.sleep(0.2)
                continue
            status = response.status_code
            if status >= 500:
                self.stats.count(str(status))
                if status != 503:
                    with self.stats.lock:
                        self.stats.server_errors.append(
                            f"{status} {method} {path}: {response.text[:300]}"
                        )
                time.sleep(0.2)
                continue
            self.stats.count(str(status))
            if status < 300:
                return response
            with self.stats.lock:
                self.stats.unexpected.append(f"{status} {method} {path}: {response.text[:300]}")
            return None
        with self.stats.lock:
            self.stats.unacknowledged[what] += 1
        return None

    def close(self) -> None:
        self.http.close()


class LoadClient(threading.Thread):
    """One organisation's client: a mix of every kind of command and read, until stopped."""

    MIX = (
        ("create", 2),
        ("update", 3),
        ("run_async", 2),
        ("run_sync", 1),
        ("hook", 2),
        ("resend", 2),
        ("read", 4),
    )

    def __init__(self, cluster: Cluster, org: str, api_key: str, stats: Stats) -> None:
        super().__init__(name=f"load-{org}", daemon=True)
        self.cluster = cluster
        self.org = org
        self.stats = stats
        self.commands = Commands(stats, {"Authorization": f"Bearer {api_key}"})
        self.stop = threading.Event()
        self.versions: dict[str, int] = {}  # workflow id -> its version, as last answered
        self.acks: list[Ack] = []
        self.runner_id = ""
        self.hook_path = f"chaos/{org}"
        self.error: BaseException | None = None

    # -- commands

    def command(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> Ack | None:
        key = f"{kind}-{uuid.uuid4().hex}"
        sent = {**(headers or {}), "Idempotency-Key": key}
        response = self.commands.send(
            self.cluster.urls("write-api"), method, path, body, sent, what=kind
        )
        if response is None:
            return None
        answer = response.json() if response.content else {}
        aggregate = answer.get("id") or answer.get("execution_id")
        ack = Ack(
            kind=kind,
            key=key,
            method=method,
            url_path=path,
            body=body,
            headers=sent,
            answer=answer,
            aggregate_id=str(aggregate),
            version=answer.get("version"),
            position=answer.get("position"),
        )
        if kind in ("create", "update", "activate") and ack.version is not None:
            self.versions[ack.aggregate_id] = ack.version
        self.acks.append(ack)
        with self.stats.lock:
            self.stats.acks.append(ack)
        return ack

    def setup(self) -> None:
        runner = self.command("create", "POST", "/v1/workflows", workflow_body("runner"))
        hooked_body = workflow_body(
            "hooked",
            nodes=[webhook(path=self.hook_path), noop("a")],
            connections=[{"from": "hook", "to": "a"}],
        )
        hooked_body["nodes"][0]["parameters"]["dedupe"] = {"source": "header"}
        hooked = self.command("create", "POST", "/v1/workflows", hooked_body)
        assert runner is not None and hooked is not None, "setup commands were not acknowledged"
        self.runner_id = runner.aggregate_id
        activated = self.command(
            "activate",
            "POST",
            f"/v1/workflows/{hooked.aggregate_id}/activate",
            None,
            {"If-Match": f'"{hooked.version}"'},
        )
        assert activated is not None, "activating the webhook workflow was not acknowledged"

    def run(self) -> None:
        kinds = [kind for kind, _ in self.MIX]
        weights = [weight for _, weight in self.MIX]
        try:
            while not self.stop.is_set():
                getattr(self, random.choices(kinds, weights)[0])()
        except BaseException as exc:  # a harness bug: shown by the checks, not swallowed
            self.error = exc
            raise

    def create(self) -> None:
        self.command("create", "POST", "/v1/workflows", workflow_body(f"w-{uuid.uuid4().hex[:8]}"))

    def update(self) -> None:
        editable = [wid for wid in self.versions if wid != self.runner_id]
        if not editable:
            return self.create()
        workflow_id = random.choice(editable)
        self.command(
            "update",
            "PATCH",
            f"/v1/workflows/{workflow_id}",
            {"description": uuid.uuid4().hex},  # always a change: every PATCH is an event
            {"If-Match": f'"{self.versions[workflow_id]}"'},
        )

    def run_async(self) -> None:
        body = {"mode": "async", "input": {"n": random.randint(0, 1000)}}
        self.command("run_async", "POST", f"/v1/workflows/{self.runner_id}/executions", body)

    def run_sync(self) -> None:
        body = {"mode": "sync", "input": {"n": random.randint(0, 1000)}}
        self.command("run_sync", "POST", f"/v1/workflows/{self.runner_id}/executions", body)

    def hook(self) -> None:
        self.command("hook", "POST", f"/hooks/{self.org}/{self.hook_path}", {"n": 1})

    def resend(self) -> None:
        """An idempotent retry: the same request with the same key must get the same answer."""
        earlier = [
            ack for ack in self.acks if ack.kind in ("create", "update", "run_async", "hook")
        ]
        if not earlier:
            return
        ack = random.choice(earlier)
        response = self.commands.send(
            self.cluster.urls("write-api"),
            ack.method,
            ack.url_path,
            ack.body,
            ack.headers,
            what="resend",
        )
        if response is None:
            return
        with self.stats.lock:
            self.stats.retries += 1
            answer = response.json() if response.content else {}
            # A run's answer tells its status now; the same execution is what must not change.
            same = ("execution_id",) if "execution_id" in ack.answer else tuple(ack.answer)
            if {k: answer.get(k) for k in same} != {k: ack.answer[k] for k in same}:
                self.stats.retries_mismatched.append(
                    f"{ack.kind} {ack.key}: {ack.answer} then {answer}"
                )

    def read(self) -> None:
        """Read one's own write with X-Min-Position on a read API: never older than answered."""
        written = [ack for ack in self.acks if ack.position is not None]
        if not written:
            return
        ack = random.choice(written)
        if ack.kind in ("run_async", "run_sync"):
            path = f"/v1/executions/{ack.aggregate_id}"
        else:
            path = f"/v1/workflows/{ack.aggregate_id}"
        headers = {**self.commands.headers, "X-Min-Position": str(ack.position)}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                response = self.commands.http.get(
                    random.choice(self.cluster.urls("read-api")) + path, headers=headers
                )
            except httpx.TransportError as exc:
                self.stats.count(f"connection error ({type(exc).__name__})")
                time.sleep(0.2)
                continue
            self.stats.count(f"read {response.status_code}")
            if response.status_code == 503:
                with self.stats.lock:
                    self.stats.reads_unavailable += 1
                time.sleep(0.2)
                continue
            with self.stats.lock:
                self.stats.reads += 1
                if response.status_code >= 500:
                    self.stats.server_errors.append(f"read {path}: {response.text[:300]}")
                elif response.status_code != 200:
                    self.stats.reads_stale.append(
                        f"{response.status_code} {path} at {ack.position}"
                    )
                elif ack.version is not None and response.json().get("version", 0) < ack.version:
                    self.stats.reads_stale.append(f"{path}: older than version {ack.version}")
            return


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str  # "kill <role>", "restart postgres", "restart redis"
    target: str
    at_s: float
    recovery_s: float | None = None  # the probe passed again; None: not within the bound
    restart_s: float | None = None  # a killed process' replacement was ready again


class FaultInjector(threading.Thread):
    """Every ``interval_s``, kill -9 a process of the next role (the roles in shuffled
    cycles, so all are covered) and restart it; restart the primary once and Redis once.
    Recovery is timed until a probe write is acknowledged, readable and published."""

    def __init__(
        self,
        cluster: Cluster,
        probe: Callable[[], bool],
        *,
        kills: int,
        interval_s: float,
        duration_s: float | None = None,
        recovery_bound_s: float = 90,
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.cluster = cluster
        self.probe = probe
        self.kills = kills  # how many, unless for a duration
        self.duration_s = duration_s
        self.interval_s = interval_s
        self.recovery_bound_s = recovery_bound_s
        self.faults: list[Fault] = []
        self.watchers: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.started_at = 0.0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
            raise

    def done(self, kills: int) -> bool:
        if self.duration_s is not None:
            return time.monotonic() - self.started_at >= self.duration_s
        return kills >= self.kills

    def progress(self, kills: int) -> float:
        if self.duration_s is not None:
            return (time.monotonic() - self.started_at) / self.duration_s
        return kills / max(1, self.kills)

    def _run(self) -> None:
        """Kills over the roles in shuffled cycles (every role in each cycle), the
        primary's restart a third of the way, Redis' at two thirds."""
        self.started_at = time.monotonic()
        restarts = [(1 / 3, self.restart_postgres), (2 / 3, self.restart_redis)]
        cycle: list[str] = []
        kills = 0
        while not self.done(kills):
            next_at = time.monotonic() + self.interval_s
            if restarts and self.progress(kills) >= restarts[0][0]:
                restarts.pop(0)[1]()
            else:
                if not cycle:
                    cycle = random.sample(ROLES, len(ROLES))
                kills += self.kill(cycle.pop())
            time.sleep(max(0.0, next_at - time.monotonic()))
        for _, restart in restarts:
            restart()

    def _timed(
        self, kind: str, target: str, act: Callable[[], None], ok: Callable[[], bool]
    ) -> Fault:
        fault = Fault(kind, target, at_s=time.monotonic() - self.started_at)
        started = time.monotonic()
        act()
        deadline = started + self.recovery_bound_s
        while time.monotonic() < deadline:
            if ok():
                fault.recovery_s = time.monotonic() - started
                break
            time.sleep(0.1)
        self.faults.append(fault)
        return fault

    def kill(self, role: str) -> bool:
        """Kill one process of ``role`` and restart it, once every process of the role is
        up (the role stays served: the failover is what is measured, not an outage of
        the role). Recovery is the probe's; the replacement's start is timed apart, in
        the background. False if the role did not become whole within the bound."""
        group = self.cluster.of_role(role)
        deadline = time.monotonic() + self.recovery_bound_s * 3
        while not all(self.cluster.ready(service) for service in group):
            if time.monotonic() > deadline:
                unready = ", ".join(
                    f"{service.name}: {self.cluster.readiness(service)}"
                    for service in group
                    if not self.cluster.ready(service)
                )
                self.faults.append(Fault(f"kill {role}", f"(never ready: {unready})", 0))
                return False
            time.sleep(0.25)
        victim = random.choice(group)
        killed = time.monotonic()

        def act() -> None:
            self.cluster.kill(victim)
            self.cluster.start_service(victim)

        fault = self._timed(f"kill {role}", victim.name, act, self.probe)
        watcher = threading.Thread(
            target=self._time_restart, args=(fault, victim, killed), daemon=True
        )
        watcher.start()
        self.watchers.append(watcher)
        return True

    def _time_restart(self, fault: Fault, service: Service, killed: float) -> None:
        deadline = killed + 600  # a loaded box takes minutes to start a process
        while time.monotonic() < deadline and service.alive():
            if self.cluster.ready(service):
                fault.restart_s = time.monotonic() - killed
                return
            time.sleep(0.25)

    def restart_postgres(self) -> None:
        self._timed("restart postgres", "primary", self.cluster.primary.primary.restart, self.probe)

    def restart_redis(self) -> None:
        self._timed("restart redis", "redis", self.cluster.redis.restart, self.probe)


class Probe:
    """A write and its read back: the whole path works again (API, PostgreSQL,
    projections, and the relay publishing it to the stream)."""

    def __init__(self, cluster: Cluster, client: LoadClient) -> None:
        self.cluster = cluster
        self.client = client
        self.commands = Commands(client.stats, client.commands.headers, give_up_s=5)

    def __call__(self) -> bool:
        key = f"probe-{uuid.uuid4().hex}"
        response = self.commands.send(
            self.cluster.urls("write-api"),
            "POST",
            "/v1/workflows",
            workflow_body("probe"),
            {"Idempotency-Key": key},
            what="probe",
        )
        if response is None:
            return False
        answer = response.json()
        ack = Ack(
            "create", key, "POST", "/v1/workflows", None, {}, answer,
            str(answer["id"]), answer["version"], answer["position"],
        )  # fmt: skip
        with self.client.stats.lock:
            self.client.stats.acks.append(ack)
        headers = {**self.commands.headers, "X-Min-Position": str(ack.position)}
        try:
            read = self.commands.http.get(
                random.choice(self.cluster.urls("read-api")) + f"/v1/workflows/{ack.aggregate_id}",
                headers=headers,
            )
            with redis.Redis.from_url(self.cluster.redis.url, socket_timeout=1) as bus:
                published = bool(
                    bus.xrange(f"{BUS_PREFIX}:events", f"{ack.position}-0", f"{ack.position}-0")
                )
        except (httpx.HTTPError, redis.RedisError):
            return False
        return read.status_code == 200 and published


# --------------------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    ok: bool
    figure: str
    detail: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    duration_s: float
    faults: list[Fault]
    stats: Stats
    checks: list[Check]
    log_events: int

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def table(self) -> str:
        lines = [f"chaos run: {self.duration_s:.0f} s, {self.log_events} events in the log"]
        by_kind = Counter(ack.kind for ack in self.stats.acks)
        lines.append(
            f"acknowledged commands: {len(self.stats.acks)} ("
            + ", ".join(f"{kind} {count}" for kind, count in sorted(by_kind.items()))
            + ")"
        )
        lines.append(
            "responses: "
            + ", ".join(f"{what} x{count}" for what, count in sorted(self.stats.statuses.items()))
        )
        lines.append(f"{'fault':<22}{'count':>6}  {'recovery s':<24}{'process restart s':<24}")
        lines.append(f"{'':<30}{'min / median / max':<24}{'min / median / max':<24}")
        by_fault: dict[str, list[Fault]] = defaultdict(list)
        for fault in self.faults:
            by_fault[fault.kind].append(fault)
        for kind, faults in sorted(by_fault.items()):
            recovered = _spread([f.recovery_s for f in faults])
            restarted = _spread([f.restart_s for f in faults]) if kind.startswith("kill") else ""
            lines.append(f"{kind:<22}{len(faults):>6}  {recovered:<24}{restarted:<24}")
        lines.append(f"{'check':<52}{'result':>8}  figure")
        for check in self.checks:
            lines.append(f"{check.name:<52}{'ok' if check.ok else 'FAILED':>8}  {check.figure}")
            lines.extend(f"    {line}" for line in check.detail[:8])
            if len(check.detail) > 8:
                lines.append(f"    ... and {len(check.detail) - 8} more")
        return "\n".join(lines)


def _spread(times: list[float | None]) -> str:
    done = sorted(t for t in times if t is not None)
    missed = len(times) - len(done)
    span = f"{done[0]:.2f} / {statistics.median(done):.2f} / {done[-1]:.2f}" if done else "-"
    return span + (f" ({missed} never)" if missed else "")


@dataclass
class LogEvent:
    position: int
    aggregate_id: str
    version: int
    type: str
    state: dict[str, Any]


def read_log(target: PgTarget) -> list[LogEvent]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM reporunner_events ORDER BY notification_id"
        ).fetchall()
    events = []
    for position, aggregate_id, version, topic, state in rows:
        event_type = topic.rsplit(":", 1)[-1]  # "domain.execution:Execution.Queued"
        wants_state = event_type in ("Timetable.Fired",)
        events.append(
            LogEvent(
                position,
                str(aggregate_id),
                version,
                event_type,
                json.loads(bytes(state)) if wants_state else {},
            )
        )
    return events


def _short(items: list[Any], limit: int = 5) -> str:
    return ", ".join(str(item) for item in items[:limit]) + (" ..." if len(items) > limit else "")


def check_commands(stats: Stats, log: list[LogEvent]) -> list[Check]:
    """Every acknowledged command at its answered position, and each took effect once."""
    by_position = {event.position: event for event in log}
    misplaced = []
    for ack in stats.acks:
        if ack.position is None:
            continue
        event = by_position.get(ack.position)
        if event is None or event.aggregate_id != ack.aggregate_id:
            misplaced.append(f"{ack.kind} {ack.aggregate_id} at {ack.position}: {event}")
        elif ack.kind == "create" and event.version != ack.version:
            misplaced.append(
                f"{ack.kind} {ack.aggregate_id} v{ack.version}: log has v{event.version}"
            )
    positioned = sum(ack.position is not None for ack in stats.acks)
    checks = [
        Check(
            "acknowledged commands in the log at their position",
            not misplaced,
            f"{positioned - len(misplaced)} of {positioned} found, {len(misplaced)} lost or moved",
            misplaced,
        )
    ]

    # Once: the log holds exactly the effects acknowledged. A command given up
    # on (never acknowledged) may have committed before its answer was lost:
    # at most one unacknowledged effect per such command is allowed.
    created_log = Counter(e.aggregate_id for e in log if e.type == "Workflow.Created")
    created_acked = {a.aggregate_id for a in stats.acks if a.kind == "create"}
    updates_log = Counter(e.aggregate_id for e in log if e.type == "Workflow.Updated")
    updates_acked = Counter(a.aggregate_id for a in stats.acks if a.kind == "update")
    fired = {e.state.get("execution_id") for e in log if e.type == "Timetable.Fired"}
    queued_log = Counter(e.aggregate_id for e in log if e.type == "Execution.Queued")
    runs_acked = {a.aggregate_id for a in stats.acks if a.kind in ("run_async", "run_sync", "hook")}
    wrong = [f"workflow {w}: acknowledged, no Created" for w in created_acked - set(created_log)]
    wrong += [f"execution {e}: acknowledged, never queued" for e in runs_acked - set(queued_log)]
    wrong += [f"execution {e}: queued {n} times" for e, n in queued_log.items() if n != 1]
    wrong += [
        f"workflow {w}: {updates_acked[w]} updates acknowledged, {updates_log[w]} in the log"
        for w in set(updates_acked) | set(updates_log)
        if updates_log[w] < updates_acked[w]
    ]
    unacknowledged = [
        f"workflow {w}: created, not acknowledged" for w in set(created_log) - created_acked
    ]
    unacknowledged += [
        f"execution {e}: queued, not acknowledged" for e in set(queued_log) - runs_acked - fired
    ]
    unacknowledged += [
        f"workflow {w}: {updates_log[w] - updates_acked[w]} updates not acknowledged"
        for w in updates_log
        if updates_log[w] > updates_acked[w]
    ]
    allowance = sum(stats.unacknowledged.values())
    checks.append(
        Check(
            "each acknowledged command took effect once",
            not wrong and len(unacknowledged) <= allowance,
            f"{len(created_acked)} creates, {sum(updates_acked.values())} updates, "
            f"{len(runs_acked)} runs: {len(wrong)} missing or duplicated, "
            f"{len(unacknowledged)} effects unacknowledged (allowed: {allowance} given up)",
            wrong + unacknowledged,
        )
    )
    checks.append(
        Check(
            "idempotent retries answered the first answer",
            not stats.retries_mismatched,
            f"{stats.retries} retries, {len(stats.retries_mismatched)} different answers",
            stats.retries_mismatched,
        )
    )
    checks.append(
        Check(
            "reads with X-Min-Position saw the write",
            not stats.reads_stale,
            f"{stats.reads} reads, {len(stats.reads_stale)} stale, "
            f"{stats.reads_unavailable} 503 after the bounded wait",
            stats.reads_stale,
        )
    )
    checks.append(
        Check(
            "no 500 answered to a client",
            not stats.server_errors,
            f"{len(stats.server_errors)} 500s, "
            f"{stats.statuses['503']} 503s (dependency down: fine)",
            stats.server_errors,
        )
    )
    # The probe polls (a few seconds per try) while a fault lasts: its give-ups are not lost.
    given_up = {what: n for what, n in stats.unacknowledged.items() if what != "probe"}
    checks.append(
        Check(
            "no unexpected 4xx, nothing given up",
            not stats.unexpected and not given_up,
            f"{len(stats.unexpected)} unexpected, given up: {dict(given_up) or 0}",
            stats.unexpected,
        )
    )
    return checks


def check_executions(log: list[LogEvent], target: PgTarget) -> list[Check]:
    queued = [e.aggregate_id for e in log if e.type == "Execution.Queued"]
    ended = Counter(
        e.aggregate_id
        for e in log
        if e.type.startswith("Execution.") and e.type.split(".")[1] in TERMINAL
    )
    stuck = [eid for eid in queued if ended[eid] == 0]
    twice = [eid for eid, n in ended.items() if n > 1]
    with psycopg.connect(target.conninfo()) as conn:
        in_queue = conn.execute("SELECT count(*) FROM execution_queue").fetchone()
    outcomes = Counter(
        e.type.split(".")[1]
        for e in log
        if e.type.startswith("Execution.") and e.type.split(".")[1] in TERMINAL
    )
    fired = [
        (e.state.get("workflow_id"), e.state.get("node_id"), e.state.get("instant"))
        for e in log
        if e.type == "Timetable.Fired"
    ]
    fired_twice = [instant for instant, n in Counter(fired).items() if n > 1]
    return [
        Check(
            "every accepted execution reached a terminal state",
            not stuck and not twice and in_queue == (0,),
            f"{len(queued)} queued, {len(stuck)} stuck, {len(twice)} ended twice, "
            f"{in_queue[0] if in_queue else '?'} rows left in the queue; "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
            [f"stuck: {_short(stuck)}"] * bool(stuck)
            + [f"ended twice: {_short(twice)}"] * bool(twice),
        ),
        Check(
            "no schedule instant fired twice",
            not fired_twice and bool(fired),
            f"{len(fired)} fired, {len(fired_twice)} twice",
            [str(instant) for instant in fired_twice] or ["nothing fired"] * (not fired),
        ),
    ]


def check_stream(log: list[LogEvent], redis_url: str) -> Check:
    with redis.Redis.from_url(redis_url, decode_responses=True) as bus:
        ids = [entry_id for entry_id, _ in bus.xrange(f"{BUS_PREFIX}:events")]
    published = [int(entry_id.split("-")[0]) for entry_id in ids]
    expected = [event.position for event in log]
    seen = set(published)
    missing = [p for p in expected if p not in seen]
    duplicated = len(published) - len(seen)
    unknown = sorted(seen - set(expected))
    detail = []
    if missing:
        detail.append(
            f"missing positions {missing[0]}..{missing[-1]} ({len(missing)}): the stream has a gap"
        )
    if unknown:
        detail.append(f"positions not in the log: {_short(unknown)}")
    return Check(
        "the stream holds every event once, in log order",
        published == expected,
        f"{len(published)} entries for {len(expected)} events, "
        f"{len(missing)} missing, {duplicated} twice",
        detail,
    )


def check_cli(target: PgTarget) -> list[Check]:
    checks = []
    for name, argv in (
        ("replay --check equal", ["replay", "--check"]),
        ("audit verify ok", ["audit", "verify"]),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "reporunner", *argv],
            env={**os.environ, "DATABASE_URL": target.url(), "REPORUNNER_LOG_FORMAT": "json"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = (done.stdout + done.stderr).strip().splitlines()
        checks.append(
            Check(
                name,
                done.returncode == 0,
                f"exit {done.returncode}",
                output[-6:] if done.returncode else [],
            )
        )
    return checks


def check_process_logs(cluster: Cluster) -> Check:
    """No process answered a 500 or logged an unhandled error (503s are counted)."""
    errors: list[str] = []
    unavailable = 0
    for service in cluster.services:
        for line in service.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            status = entry.get("status") if entry.get("event") == "request" else None
            if status == 503:
                unavailable += 1
            failed = isinstance(status, int) and status >= 500 and status != 503
            if failed or entry.get("event") == "unhandled error":
                cause = str(entry.get("exception", ""))[-200:]
                errors.append(
                    f"{service.name}: {entry.get('event')} {entry.get('path', '')} "
                    f"{status or ''} {cause}"
                )
    return Check(
        "no 500 in any process log",
        not errors,
        f"{len(errors)} 500s or unhandled errors, {unavailable} 503s logged",
        errors,
    )


def wait_settled(cluster: Cluster, timeout_s: float) -> float:
    """Wait (bounded) until the queue is empty, every view and the stream are at the log's head."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            with psycopg.connect(cluster.target.conninfo()) as conn:
                head = conn.execute(
                    "SELECT coalesce(max(notification_id), 0) FROM reporunner_events"
                ).fetchone()
                queued = conn.execute("SELECT count(*) FROM execution_queue").fetchone()
                behind = conn.execute(
                    "SELECT count(*) FROM projection_tracking WHERE position < %s",
                    (head[0] if head else 0,),
                ).fetchone()
            with redis.Redis.from_url(cluster.redis.url, decode_responses=True) as bus:
                last = bus.xrevrange(f"{BUS_PREFIX}:events", count=1)
            published = int(last[0][0].split("-")[0]) if last else 0
            if head and queued == (0,) and behind == (0,) and published >= head[0]:
                return time.monotonic() - started
        except (psycopg.Error, redis.RedisError):
            pass
        time.sleep(0.5)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the run


def run_chaos(
    *,
    kills: int,
    interval_s: float,
    duration_s: float | None = None,
    clients: int = 4,
    settle_s: float = 60,
    workdir: Path | None = None,
    out: Callable[[str], None] = print,
) -> ChaosReport:
    """Start a cluster, load it while ``kills`` kills (or as many as fit in ``duration_s``)
    and two restarts happen ``interval_s`` apart, then check everything."""
    starting = time.monotonic()
    with running_cluster(workdir) as cluster:
        out(
            f"cluster up in {time.monotonic() - starting:.0f} s: {len(cluster.services)} "
            f"processes, logs in {cluster.workdir}"
        )
        make_key = key_maker(cluster.target)
        stats = Stats()
        orgs = [f"org-chaos-{i}" for i in range(clients)]
        load = [LoadClient(cluster, org, make_key(org, "owner"), stats) for org in orgs]
        for client in load:
            client.setup()
        probe = Probe(cluster, load[0])
        scheduler = _activate_schedule(load[0])
        faults = FaultInjector(
            cluster, probe, kills=kills, interval_s=interval_s, duration_s=duration_s
        )
        started = time.monotonic()
        for client in load:
            client.start()
        faults.start()
        faults.join()
        for watcher in faults.watchers:
            watcher.join()
        for client in load:
            client.stop.set()
        for client in load:
            client.join(timeout=120)
        _deactivate_schedule(load[0], scheduler)
        for client in load:
            client.commands.close()
        ran_s = time.monotonic() - started
        # Every process up again (a fault's replacement may still be starting).
        for service in cluster.services:
            if not service.alive():
                cluster.start_service(service)
            cluster.wait_ready(service, timeout=120)
        settled_s = wait_settled(cluster, settle_s)
        out(f"load and faults: {ran_s:.0f} s; settled in {settled_s:.1f} s")
        log = read_log(cluster.target)
        checks = check_commands(stats, log)
        checks += check_executions(log, cluster.target)
        checks.append(check_stream(log, cluster.redis.url))
        checks += check_cli(cluster.target)
        checks.append(check_process_logs(cluster))
        kinds = {fault.kind for fault in faults.faults}
        roles_killed = {kind.removeprefix("kill ") for kind in kinds if kind.startswith("kill ")}
        harness_errors = [
            repr(e) for e in [faults.error, *(c.error for c in load)] if e is not None
        ]
        checks.append(
            Check(
                "faults: every role killed, primary and Redis restarted, all recovered",
                set(ROLES) <= roles_killed
                and {"restart postgres", "restart redis"} <= kinds
                and all(f.recovery_s is not None for f in faults.faults)
                and not harness_errors,
                f"{sum(k.startswith('kill') for k in (f.kind for f in faults.faults))} kills, "
                f"{sum(f.recovery_s is None for f in faults.faults)} not recovered",
                harness_errors
                + [
                    f"{f.kind} {f.target} at {f.at_s:.0f} s: no recovery"
                    for f in faults.faults
                    if f.recovery_s is None
                ],
            )
        )
        return ChaosReport(ran_s, faults.faults, stats, checks, len(log))


def _activate_schedule(client: LoadClient) -> str:
    """A workflow firing every second, so the schedulers' failover is checked too."""
    body = workflow_body(
        "ticking",
        nodes=[
            {"id": "tick", "type": "schedule_trigger", "parameters": {"interval_s": 1}},
            noop("a"),
        ],
        connections=[{"from": "tick", "to": "a"}],
    )
    created = client.command("create", "POST", "/v1/workflows", body)
    assert created is not None
    activated = client.command(
        "activate", "POST", f"/v1/workflows/{created.aggregate_id}/activate", None,
        {"If-Match": f'"{created.version}"'},
    )  # fmt: skip
    assert activated is not None
    return created.aggregate_id


def _deactivate_schedule(client: LoadClient, workflow_id: str) -> None:
    done = client.command(
        "deactivate", "POST", f"/v1/workflows/{workflow_id}/deactivate", None,
        {"If-Match": f'"{client.versions[workflow_id]}"'},
    )  # fmt: skip
    assert done is not None, "deactivating the schedule was not acknowledged"
