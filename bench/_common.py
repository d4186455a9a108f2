"""Shared benchmark plumbing: a scratch database and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

import migrations
from infrastructure.crypto import MasterKey
from infrastructure.database import DatabaseUrlError, PgTarget
from infrastructure.embedded import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
# One master key for the benchmark's processes (an external database needs one);
# every child process inherits it from the environment.
os.environ.setdefault("REPORUNNER_MASTER_KEY", MasterKey.generate().encoded())


@contextmanager
def scratch_database() -> Iterator[PgTarget]:
    """A fresh, migrated database on ``BENCH_DATABASE_URL``/``DATABASE_URL``, or embedded."""
    variable = "BENCH_DATABASE_URL" if os.environ.get("BENCH_DATABASE_URL") else "DATABASE_URL"
    url = os.environ.get(variable)
    if url:
        try:
            server = PgTarget.from_url(url, variable=variable)
        except DatabaseUrlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        server = start_embedded_postgres(
            Path(tempfile.mkdtemp(prefix="reporunner-bench-")), delete_at_exit=True
        )
    name = f"reporunner_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    target = server.with_dbname(name)
    migrations.upgrade(target)
    try:
        yield target
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(target: PgTarget) -> str:
    return target.url()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_key(target: PgTarget, org: str, role: str = "owner") -> str:
    env = {**os.environ, "DATABASE_URL": database_url(target), "REPORUNNER_LOG_LEVEL": "warning"}
    out = subprocess.run(
        [sys.executable, "-m", "reporunner", "keys", "create", "--org", org, "--role", role],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def running_server(
    target: PgTarget, *, workers: int | None = 1, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """``reporunner serve`` in a child process; yields its base URL.

    ``workers=None``: serve's own default (an HTTP process per core)."""
    port = _free_port()
    # Default logging (one JSON access line per request) as in production.
    # Without Redis: no read cache (it would answer repeated queries from
    # memory) and no rate limits (they would throttle the load we generate).
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env |= {"DATABASE_URL": database_url(target), **(extra_env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reporunner",
            "serve",
            "--port",
            str(port),
            "--no-migrate",
            *(() if workers is None else ("--workers", str(workers))),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "server did not start: " + (proc.stderr.read().decode() if proc.stderr else "")
                )
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def raw_read_rate(target: PgTarget, page: int = 5000) -> float:
    """Events/s of reading the whole log through eventsourcing's recorder (printed):
    what a projection's rebuild rate is compared with, in the same run."""
    from commands import WorkflowApplication
    from infrastructure.eventstore import eventsourcing_env
    from infrastructure.settings import Settings

    app = WorkflowApplication(
        env=eventsourcing_env(target, Settings(database_url="postgresql://unused"))
    )
    started = time.perf_counter()
    count, position = 0, 0
    while True:
        rows = app.recorder.select_notifications(position + 1, page)
        if not rows:
            break
        count += len(rows)
        position = rows[-1].id
    elapsed = time.perf_counter() - started
    app.close()
    rate = count / elapsed
    print(f"raw read of the log (select_notifications, pages of {page:,}): {rate:,.0f} events/s")
    return rate
