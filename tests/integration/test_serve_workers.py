"""``reporunner serve --workers N``: one listening socket per worker, supervised."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from infrastructure.database import PgTarget
from tests.helpers import free_port
from tests.integration.test_cli import _url

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing is Linux")


def _start(target: PgTarget, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": _url(target), "REPORUNNER_LOG_FORMAT": "json"}
    env.pop("REDIS_URL", None)
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "reporunner", "serve", "--only", "write-api"),
            *("--port", str(port), "--workers", str(workers), "--no-migrate"),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _http_workers(server: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The supervisor's worker processes (not multiprocessing's helpers)."""
    workers: list[psutil.Process] = []
    try:
        children = psutil.Process(server.pid).children()
    except psutil.NoSuchProcess:  # the supervisor itself has stopped
        return workers
    for child in children:
        # A worker the test just killed can vanish between listing and reading.
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.NoSuchProcess:
            continue
    return workers


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _serving(target: PgTarget, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    server = _start(target, port, workers)
    try:
        _wait(lambda: server.poll() is not None or _ready(f"http://127.0.0.1:{port}"), "ready")
        assert server.poll() is None, server.communicate()[0].decode()
        _wait(lambda: _listening(server, port) == workers, f"{workers} listening workers")
        yield server, port
    finally:
        if server.poll() is None:
            server.terminate()
            server.communicate(timeout=40)


def _listening(server: subprocess.Popen[bytes], port: int) -> int:
    """How many workers listen on ``port`` (each has its own socket)."""
    return sum(
        any(
            conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
            for conn in worker.net_connections(kind="tcp")
        )
        for worker in _http_workers(server)
    )


def _connected_to(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for conn in process.net_connections(kind="tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
    )


def test_keep_alive_connections_spread_over_every_worker(db_target: PgTarget) -> None:
    with _serving(db_target, workers=2) as (server, port):
        # Opened in one burst, as a client pool does: with one shared socket
        # the first worker to wake accepted nearly all of them.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        try:
            for client in clients:
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for client in clients:
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
            counts = [_connected_to(worker, port) for worker in _http_workers(server)]
        finally:
            for client in clients:
                client.close()
    assert sum(counts) == 32
    assert min(counts) > 0, counts  # all 32 on one worker: odds 2 in 2**32


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(db_target: PgTarget) -> None:
    with _serving(db_target, workers=2) as (server, port):
        victim = _http_workers(server)[0]
        victim.kill()
        _wait(
            lambda: (
                victim.pid not in {w.pid for w in _http_workers(server)}
                and len(_http_workers(server)) == 2
            ),
            "a replacement worker",
        )
        _wait(lambda: _listening(server, port) == 2, "the replacement listening")
        workers = _http_workers(server)
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=40)[0].decode()
        assert server.returncode == 0, output
        assert "http worker died; replacing it" in output
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_a_killed_supervisor_takes_its_processes_with_it(db_target: PgTarget) -> None:
    # Every role: HTTP workers and the followers' process. Orphans would keep
    # the port (SO_REUSEPORT) beside a restarted service's workers.
    port = free_port()
    env = {**os.environ, "DATABASE_URL": _url(db_target), "REPORUNNER_LOG_FORMAT": "json"}
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "reporunner", "serve"),
            *("--port", str(port), "--workers", "2", "--no-migrate"),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        _wait(lambda: _ready(f"http://127.0.0.1:{port}"), "ready", timeout=60)
        _wait(lambda: _listening(server, port) == 2, "2 listening workers")
        children += _http_workers(server)  # the followers' process too: spawned alike
        assert len(children) == 3, children
        server.kill()
        server.wait()

        def gone(process: psutil.Process) -> bool:
            try:
                return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        _wait(lambda: all(gone(child) for child in children), "the orphans to end")
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        if server.poll() is None:
            server.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_a_taken_port_fails_at_once_with_a_message(db_target: PgTarget) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = _start(db_target, taken.getsockname()[1], workers=2)
        output = server.communicate(timeout=60)[0].decode()
    assert server.returncode != 0
    assert "cannot listen" in output


def test_workers_dying_over_and_over_stop_the_service(db_target: PgTarget) -> None:
    with _serving(db_target, workers=2) as (server, _):
        killed: set[int] = set()
        while server.poll() is None and len(killed) < 12:
            for worker in _http_workers(server):
                if worker.pid not in killed:
                    killed.add(worker.pid)
                    with contextlib.suppress(psutil.NoSuchProcess):
                        worker.kill()
            time.sleep(0.2)
        output = server.communicate(timeout=40)[0].decode()
    # The sixth death within a minute is one too many.
    assert server.returncode == 1, output
    assert output.count("http worker died; replacing it") == 5
    assert "keeps dying; stopping" in output


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_the_embedded_postgresql_too(tmp_path: Path, workers: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"REPORUNNER_DATA_DIR": str(tmp_path), "REPORUNNER_LOG_FORMAT": "json"}
    server = subprocess.Popen(
        [sys.executable, "-m", "reporunner", "serve", "--port", f"{port}", f"--workers={workers}"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: server.poll() is not None or _ready(f"http://127.0.0.1:{port}"), "ready", 90)
        assert server.poll() is None, server.communicate()[0].decode()

        def embedded_postgres() -> list[psutil.Process]:
            pgdata = str(tmp_path / "pgdata")
            return [
                p
                for p in psutil.process_iter(["cmdline"])
                if pgdata in " ".join(p.info["cmdline"] or [])
                and "postgres" in p.info["cmdline"][0]
            ]

        assert embedded_postgres()
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0].decode()
        assert server.returncode == 0, output
        _wait(lambda: not embedded_postgres(), "the embedded PostgreSQL to stop")
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
