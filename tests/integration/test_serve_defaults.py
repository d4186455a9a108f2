"""Plain ``reporunner serve`` with several HTTP workers: the followers run once, apart,
at a lower priority, and the start says how the processes are laid out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from infrastructure.database import PgTarget
from reporunner.serve_plan import FOLLOWERS_NICE
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing is Linux")


def _children(server: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(server.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_serve_with_every_role_runs_http_workers_and_one_followers_process_below_them(
    db_target: PgTarget, make_key: Callable[[str, str], str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_target.url(), "REPORUNNER_LOG_FORMAT": "json"}
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "reporunner", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {make_key('serve-defaults', 'owner')}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if "{" in line]
        serving = next(line for line in lines if line.get("event") == "serving")
        assert serving["workers"] == 2 and serving["cores"] >= 1
        assert serving["processes"] == [
            {"roles": ["write-api", "read-api"], "processes": 2, "http": True},
            {
                "roles": ["projections", "worker", "relay", "scheduler"],
                "processes": 1,
                "http": False,
                "nice": FOLLOWERS_NICE,
            },
        ]
        children = _children(server)
        assert len(children) == 3, [c.cmdline() for c in children]
        supervisor_nice = psutil.Process(server.pid).nice()
        niceness = sorted(child.nice() for child in children)
        assert niceness == [supervisor_nice, supervisor_nice, supervisor_nice + FOLLOWERS_NICE]
        # The followers' process runs the queue's workers and the views.
        created = httpx.post(
            base + "/v1/workflows",
            json={"name": "d", "nodes": [{"id": "s", "type": "manual_trigger", "parameters": {}}]},
            headers=headers,
        ).json()
        queued = httpx.post(
            f"{base}/v1/workflows/{created['id']}/executions",
            json={"mode": "async"},
            headers=headers,
        ).json()
        while True:
            execution = httpx.get(
                f"{base}/v1/executions/{queued['execution_id']}",
                headers={**headers, "X-Min-Position": str(queued["position"])},
                timeout=10,
            )
            if execution.status_code == 200 and execution.json()["status"] == "succeeded":
                break
            assert time.monotonic() < deadline + 30, execution.text
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=40)
    assert server.returncode == 0, log_path.read_text()
    assert not any(
        child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children
    )
