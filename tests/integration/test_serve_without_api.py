"""Roles without an API bind no API port (issue 15): two on one host need no --port each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from infrastructure.database import PgTarget
from tests.helpers import free_port, scratch_database

ROOT = Path(__file__).resolve().parents[2]


class _Serve:
    """A ``serve`` subprocess whose output lines are collected as they come."""

    def __init__(self, target: PgTarget, *args: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": target.url(),
            "REPORUNNER_LOG_FORMAT": "json",
            # Small pools: these processes share the test server's connections.
            "REPORUNNER_DB_POOL_SIZE": "1",
            "REPORUNNER_DB_MAX_OVERFLOW": "1",
        }
        env.pop("REDIS_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reporunner", "serve", *args, "--no-migrate"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, (
                f"exited {self.process.returncode}:\n{self.output()}"
            )
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()}"
            time.sleep(0.1)

    def listening_ports(self) -> set[int]:
        return {
            conn.laddr.port
            for conn in psutil.Process(self.process.pid).net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN
        }

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=40)
        self._reader.join(timeout=5)
        return code


@pytest.fixture(scope="module")
def target(server_target: PgTarget) -> Iterator[PgTarget]:
    # Their projectors elect by advisory lock, per database: keep them off the shared one.
    with scratch_database(server_target, "reporunner_no_api_port") as target:
        yield target


@contextmanager
def _serving(target: PgTarget, *argument_lists: tuple[str, ...]) -> Iterator[list[_Serve]]:
    with ExitStack() as stack:
        processes = [_Serve(target, *args) for args in argument_lists]
        for process in processes:
            stack.callback(process.stop)
        yield processes
        for process in processes:
            assert process.stop() == 0, process.output()
            assert "Traceback" not in process.output(), process.output()


def test_two_projections_processes_on_one_port_both_run_and_bind_nothing(
    target: PgTarget,
) -> None:
    port = str(free_port())
    args = ("--only", "projections", "--port", port)
    with _serving(target, args, args) as processes:
        for process in processes:
            process.wait_for("running without an API port")
        time.sleep(1)  # the second exited 3 at once, when it still bound the port
        for process in processes:
            assert process.process.poll() is None, process.output()
            assert process.listening_ports() == set(), process.output()
    assert all("running without an API port" in p.output() for p in processes)
    assert all('"stopped"' in p.output() for p in processes)


def test_a_role_without_api_still_serves_its_metrics_port(target: PgTarget) -> None:
    port = str(free_port())
    metrics_ports = [free_port(), free_port()]
    with _serving(
        target,
        ("--only", "scheduler", "--port", port, "--metrics-port", str(metrics_ports[0])),
        ("--only", "projections", "--port", port, "--metrics-port", str(metrics_ports[1])),
    ) as processes:
        for process, metrics_port in zip(processes, metrics_ports, strict=True):
            base = f"http://127.0.0.1:{metrics_port}"
            deadline = time.monotonic() + 60
            while True:
                assert process.process.poll() is None, process.output()
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, process.output()
                time.sleep(0.2)
            assert httpx.get(base + "/metrics", timeout=5).status_code == 200
            assert httpx.get(base + "/v1/workflows", timeout=5).status_code == 404
            assert process.listening_ports() == {metrics_port}


def test_workers_flag_is_refused_for_roles_without_an_api(target: PgTarget) -> None:
    process = _Serve(target, "--only", "projections", "--workers", "2")
    assert process.process.wait(timeout=60) == 2
    process.stop()
    assert "start more processes of the role instead" in process.output()
